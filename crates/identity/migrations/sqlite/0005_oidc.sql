-- Login through OpenID Connect providers: logins in flight (state, nonce and
-- PKCE verifier between the redirect and the callback), and which provider
-- account (issuer's subject) is which of our users.
CREATE TABLE identity_oidc_logins (
    id            TEXT PRIMARY KEY NOT NULL,
    provider      TEXT NOT NULL,
    -- SHA-256 of the state parameter, hex.
    state_hash    TEXT NOT NULL CONSTRAINT identity_oidc_logins_state_key UNIQUE,
    -- SHA-256 of the cookie that binds the login to the browser that started it.
    browser_hash  TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    used_at       INTEGER
);
CREATE INDEX identity_oidc_logins_expires_idx ON identity_oidc_logins (expires_at);

CREATE TABLE identity_oidc_links (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL CONSTRAINT identity_oidc_links_user_fkey REFERENCES identity_users (id),
    -- The verified email the provider gave when the link was made.
    email      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    CONSTRAINT identity_oidc_links_pkey PRIMARY KEY (provider, subject)
);
CREATE INDEX identity_oidc_links_user_idx ON identity_oidc_links (user_id);
