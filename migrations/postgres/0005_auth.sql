-- Who may do what: users (local, or copied from the directory at each login),
-- server-side sessions, API tokens (only their SHA-256 is stored), an
-- append-only audit trail, and who owns each catalog image name.
CREATE TABLE users (
    name          TEXT COLLATE "C" PRIMARY KEY,
    display_name  TEXT,
    email         TEXT,
    role          TEXT NOT NULL,
    source        TEXT NOT NULL,               -- local | ldap
    password_hash TEXT,                        -- local users with a password; argon2id PHC
    groups        TEXT NOT NULL DEFAULT '[]',  -- JSON list of directory group DNs
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    last_login_at BIGINT
);

CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    user_name    TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role         TEXT NOT NULL,
    csrf         TEXT NOT NULL,
    address      TEXT,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_name);

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    user_name    TEXT COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    created_by   TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_name);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    ts      BIGINT NOT NULL,
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
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- A published name belongs to a user (the first to publish it) or a group.
CREATE TABLE image_names (
    name        TEXT PRIMARY KEY,
    owner_user  TEXT,
    owner_group TEXT,
    created_by  TEXT,
    created_at  BIGINT NOT NULL
);
INSERT INTO image_names (name, created_at) SELECT name, MIN(published_at) FROM images GROUP BY name;

ALTER TABLE images ADD COLUMN published_by TEXT;

-- Secrets the replicas share (the key behind image pull URLs), made once.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
