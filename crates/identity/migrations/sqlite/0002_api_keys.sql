-- API keys of service accounts. Only the SHA-256 of a key is stored; the key
-- itself is shown once, when it is created. Revoking a key sets revoked_at.
CREATE TABLE identity_api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    -- The first characters of the key ('agk_' and 8 more), to recognise it by.
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL CONSTRAINT identity_api_keys_hash_key UNIQUE,
    -- Space-separated permission names, sorted: 'catalog:write users:manage'.
    permissions TEXT NOT NULL,
    -- Who created it: a user (usr_…) or another key (key_…), as a wire id.
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX identity_api_keys_created_idx ON identity_api_keys (created_at, id);
