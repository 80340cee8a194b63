-- Identity: accounts and login sessions. Ids are UUID text, times epoch
-- milliseconds, flags 0/1. A session is one family of refresh tokens: rotating a
-- token adds a row to its family; revoking the session ends them all.
CREATE TABLE identity_users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL CONSTRAINT identity_users_email_key UNIQUE,
    name          TEXT NOT NULL,
    -- argon2id PHC string; NULL for accounts that only log in through a provider.
    password_hash TEXT,
    -- Space-separated role names, sorted: 'customer', 'admin staff', ...
    roles         TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0 CONSTRAINT identity_users_disabled_check CHECK (disabled IN (0, 1)),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX identity_users_created_idx ON identity_users (created_at, id);

CREATE TABLE identity_sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL CONSTRAINT identity_sessions_user_fkey REFERENCES identity_users (id),
    created_at BIGINT NOT NULL,
    -- Set once: logout, password change, reuse of a rotated token, disabled account.
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX identity_sessions_user_idx ON identity_sessions (user_id);

CREATE TABLE identity_refresh_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL CONSTRAINT identity_refresh_tokens_session_fkey REFERENCES identity_sessions (id),
    -- SHA-256 of the token, hex. The token itself is never stored.
    token_hash TEXT NOT NULL CONSTRAINT identity_refresh_tokens_hash_key UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Set when the token is exchanged for the next one; a second use is theft.
    used_at    BIGINT
);
CREATE INDEX identity_refresh_tokens_session_idx ON identity_refresh_tokens (session_id);
