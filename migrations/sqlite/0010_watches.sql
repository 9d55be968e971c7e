-- Watched sources (issue #19): a URL checked on a schedule; a new image
-- there queues a scan as the watch's owner. `template` is the validated
-- submission (JSON) each scan is filed with; `fingerprint` identifies the
-- image the last change named (a SUMS digest, or ETag / Last-Modified /
-- size), so a check that sees it again queues nothing.
CREATE TABLE watches (
    id            TEXT PRIMARY KEY,          -- UUID v7
    owner         TEXT NOT NULL,
    url           TEXT NOT NULL,
    kind          TEXT NOT NULL,             -- url | pointer | listing
    pattern       TEXT,                      -- listing: file-name pattern
    sums_url      TEXT,                      -- SHA256SUMS-style file naming the image's digest
    interval_secs BIGINT NOT NULL,
    template      TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL,
    next_check_at BIGINT NOT NULL,
    last_check_at BIGINT,
    last_outcome  TEXT,                      -- unchanged | changed | error
    last_message  TEXT,
    image_url     TEXT,
    fingerprint   TEXT,
    etag          TEXT,
    last_modified TEXT,
    checks        BIGINT NOT NULL DEFAULT 0,
    scans         BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX watches_due ON watches (next_check_at) WHERE enabled;
CREATE INDEX watches_owner ON watches (owner, id);

CREATE TABLE watch_checks (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    watch_id  TEXT NOT NULL,
    ts        BIGINT NOT NULL,
    outcome   TEXT NOT NULL,
    message   TEXT NOT NULL,
    image_url TEXT,
    job_id    TEXT                            -- the scan a change queued
);
CREATE INDEX watch_checks_watch ON watch_checks (watch_id, id);

-- Leases of singleton loops (the watch scheduler): one holder at a time,
-- taken over when it expires.
CREATE TABLE leader_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
