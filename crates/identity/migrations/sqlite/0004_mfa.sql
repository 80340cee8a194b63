-- The second factor: a TOTP secret per account (RFC 6238), its single-use
-- recovery codes, and the short-lived challenges of logins waiting for a code.
CREATE TABLE identity_mfa (
    user_id      TEXT PRIMARY KEY NOT NULL CONSTRAINT identity_mfa_user_fkey REFERENCES identity_users (id),
    -- The TOTP secret, base32 (see docs/security.md on how it is kept).
    secret       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- NULL while the enrolment waits for its first code.
    confirmed_at INTEGER,
    -- The last time step (Unix time / 30) whose code was accepted. Codes of that
    -- step or an earlier one are refused: each code works once.
    last_step    INTEGER
);

CREATE TABLE identity_recovery_codes (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL CONSTRAINT identity_recovery_codes_user_fkey REFERENCES identity_users (id),
    -- SHA-256 of the normalised code, hex. The code itself is shown once.
    code_hash  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE UNIQUE INDEX identity_recovery_codes_user_hash_key ON identity_recovery_codes (user_id, code_hash);

CREATE TABLE identity_mfa_challenges (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL CONSTRAINT identity_mfa_challenges_user_fkey REFERENCES identity_users (id),
    -- SHA-256 of the challenge token, hex.
    token_hash TEXT NOT NULL CONSTRAINT identity_mfa_challenges_hash_key UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- Wrong codes sent with this challenge; at the limit it is spent.
    attempts   INTEGER NOT NULL DEFAULT 0,
    used_at    INTEGER
);
CREATE INDEX identity_mfa_challenges_expires_idx ON identity_mfa_challenges (expires_at);
