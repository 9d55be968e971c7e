-- Who may do what: users (local, or copied from the directory at each login),
-- server-side sessions, API tokens (only their SHA-256 is stored), an
-- append-only audit trail, and who owns each catalog image name.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    display_name  TEXT,
    email         TEXT,
    role          TEXT NOT NULL,
    source        TEXT NOT NULL,               -- local | ldap
    password_hash TEXT,                        -- local users with a password; argon2id PHC
    groups        TEXT NOT NULL DEFAULT '[]',  -- JSON list of directory group DNs
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_login_at INTEGER
);

CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_name    TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    address      TEXT,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash   TEXT NOT NULL UNIQUE,
    user_name    TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_name);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    actor   TEXT,
    address TEXT,
    action  TEXT NOT NULL,
    object  TEXT,
    outcome TEXT NOT NULL,   -- ok | refused | failed
    detail  TEXT
);
CREATE INDEX audit_ts ON audit_log (ts);
CREATE INDEX audit_action_actor ON audit_log (action, actor, ts);
CREATE INDEX audit_action_address ON audit_log (action, address, ts);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- A published name belongs to a user (the first to publish it) or a group.
CREATE TABLE image_names (
    name        TEXT PRIMARY KEY,
    owner_user  TEXT,
    owner_group TEXT,
    created_by  TEXT,
    created_at  INTEGER NOT NULL
);
INSERT INTO image_names (name, created_at) SELECT name, MIN(published_at) FROM images GROUP BY name;

ALTER TABLE images ADD COLUMN published_by TEXT;

-- Secrets the replicas share (the key behind image pull URLs), made once.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
