-- Batches: the images of one manifest, submitted together. A batch is
-- closed once, when its last job has ended: the conditional UPDATE that
-- sets closed_at is won by exactly one transaction, which also records the
-- batch's summary notification.
CREATE TABLE batches (
    id           TEXT COLLATE "C" PRIMARY KEY,        -- UUID v7, sorts by creation time
    requested_by TEXT,
    owner        TEXT,                     -- the manifest's owner (team)
    created_at   BIGINT NOT NULL,
    closed_at    BIGINT,                   -- NULL: jobs still to end (or a retry reopened it)
    jira_key     TEXT,                     -- the summary's Jira ticket
    jira_url     TEXT
);
CREATE INDEX batches_open ON batches (id) WHERE closed_at IS NULL;
CREATE INDEX batches_requested_by_id ON batches (requested_by, id);

ALTER TABLE jobs ADD COLUMN batch_id TEXT COLLATE "C" REFERENCES batches (id);
CREATE INDEX jobs_batch ON jobs (batch_id, id) WHERE batch_id IS NOT NULL;
