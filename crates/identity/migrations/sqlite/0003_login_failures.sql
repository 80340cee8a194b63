-- Consecutive failed logins per email, whether or not an account has that email
-- (so a lock tells nothing about which emails exist), and the lock they lead to.
-- A successful login deletes the row; stale rows are deleted as failures arrive.
CREATE TABLE identity_login_failures (
    email        TEXT PRIMARY KEY NOT NULL,
    failures     INTEGER NOT NULL,
    locked_until INTEGER,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX identity_login_failures_updated_idx ON identity_login_failures (updated_at);
