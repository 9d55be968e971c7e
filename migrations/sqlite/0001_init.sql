-- Jobs are the queue: a worker claims a row by setting locked_by/lease_expires_at.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,            -- UUID v7, sorts by creation time
    url              TEXT NOT NULL,
    checksum         TEXT,
    requested_by     TEXT,
    email            TEXT,
    note             TEXT,
    options          TEXT NOT NULL DEFAULT '{}',  -- JSON
    state            TEXT NOT NULL,
    current_stage    TEXT,
    error            TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,  -- bumped by every claim; fences worker writes
    run_base_attempt INTEGER NOT NULL DEFAULT 1,  -- first attempt of the current run (retry starts a new run)
    lease_expiries   INTEGER NOT NULL DEFAULT 0,
    locked_by        TEXT,
    lease_expires_at INTEGER,
    wake_at          INTEGER,
    wait_reason      TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    abort_reason     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX jobs_claimable ON jobs (id) WHERE state IN ('queued', 'waiting');
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_requested_by_id ON jobs (requested_by, id);

CREATE TABLE stage_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    stage       TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    duration_ms INTEGER,
    detail      TEXT NOT NULL DEFAULT '{}',       -- JSON: bytes, sizes, progress, resource ids
    error       TEXT
);
CREATE INDEX stage_runs_job ON stage_runs (job_id, id);

CREATE TABLE job_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts      INTEGER NOT NULL,
    stage   TEXT,
    level   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_log_job ON job_log (job_id, id);

CREATE TABLE resources (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX resources_job ON resources (job_id);
CREATE UNIQUE INDEX resources_unique ON resources (job_id, kind, provider, external_id);
