-- The image catalog: one row per published (name, version). `state` is
-- current or deprecated; `deleted_at` hides a record (soft delete, the
-- artifact stays); `purged_at` means the retention rule deleted the artifact.
CREATE TABLE images (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    description   TEXT,
    format        TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    sha1          TEXT NOT NULL,
    md5           TEXT NOT NULL,
    store         TEXT NOT NULL,               -- local / artifactory
    repo          TEXT NOT NULL,
    path          TEXT NOT NULL,
    url           TEXT NOT NULL,
    properties    TEXT NOT NULL DEFAULT '{}',  -- JSON, as deployed
    job_id        TEXT COLLATE "C" REFERENCES jobs (id) ON DELETE SET NULL,
    state         TEXT NOT NULL,
    published_at  BIGINT NOT NULL,
    deprecated_at BIGINT,
    archived_at   BIGINT,
    purged_at     BIGINT,
    deleted_at    BIGINT
);
CREATE UNIQUE INDEX images_name_version ON images (name, version);
CREATE INDEX images_name_published ON images (name, published_at);
