-- Notifications (email, Jira): an outbox written by the runner's hooks and
-- drained by a delivery loop in any process. A claim sets locked_by and
-- lease_expires_at; a row still 'sending' after its lease is taken over.
ALTER TABLE jobs ADD COLUMN requester_name TEXT;

CREATE TABLE notifications (
    id               BIGSERIAL PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    channel          TEXT NOT NULL,                    -- email | jira
    kind             TEXT NOT NULL,                    -- job_started | stage_started | stage_finished | job_finished
    payload          TEXT NOT NULL DEFAULT '{}',       -- JSON facts of the event; never secrets
    state            TEXT NOT NULL DEFAULT 'pending',  -- pending | sending | sent | failed | skipped
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    locked_by        TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    sent_at          BIGINT
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX notifications_job ON notifications (job_id, channel, id);

-- The Jira ticket of each job: comments and transitions go to it.
CREATE TABLE jira_issues (
    job_id     TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    issue_key  TEXT NOT NULL,
    url        TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
