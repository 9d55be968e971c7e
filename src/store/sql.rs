//! Every SQL statement vmscan runs. Both backends share these texts (`$n`
//! placeholders work for SQLite and PostgreSQL); only claiming differs.

/// The job columns, in one place for every SELECT and RETURNING.
macro_rules! job_cols {
    () => {
        "id, url, checksum, requested_by, email, note, options, state, current_stage, error, \
         attempt, run_base_attempt, lease_expiries, locked_by, lease_expires_at, wake_at, wait_reason, \
         cancel_requested, abort_reason, created_at, updated_at, started_at, finished_at, log_dropped, batch_id"
    };
}

/// The worker fence: $1 job, $2 worker, $3 attempt.
macro_rules! fence {
    () => {
        "id = $1 AND locked_by = $2 AND attempt = $3 AND state = 'running'"
    };
}

/// The fence for statements on child tables.
macro_rules! fence_exists {
    () => {
        concat!("EXISTS (SELECT 1 FROM jobs WHERE ", fence!(), ")")
    };
}

pub const SELECT_JOBS: &str = concat!("SELECT ", job_cols!(), " FROM jobs");

pub const INSERT_JOB: &str = concat!(
    "INSERT INTO jobs (id, url, checksum, requested_by, email, note, options, state, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $8) RETURNING ",
    job_cols!()
);

pub const GET_JOB: &str = concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1");

/// Jobs a user submitted since a time (the per-user submission limit).
pub const COUNT_RECENT_JOBS: &str =
    "SELECT COUNT(*) FROM jobs WHERE requested_by = $1 AND created_at >= $2";

/// Jobs per state: the folded base plus the deltas the triggers added since
/// (migration 0008), in one statement so both come from one snapshot. Its
/// cost follows the number of states and unfolded changes, not the history.
pub const COUNT_BY_STATE: &str = "SELECT state, CAST(SUM(n) AS BIGINT) AS n FROM \
     (SELECT state, n FROM job_counts UNION ALL SELECT state, n FROM job_count_deltas) t \
     GROUP BY state HAVING SUM(n) <> 0 ORDER BY state";

/// Takes the deltas this transaction folds; rows a concurrent fold already
/// took are not returned (on PostgreSQL it waits for that fold, then skips them).
pub const TAKE_COUNT_DELTAS: &str = "DELETE FROM job_count_deltas RETURNING state, n";

/// Adds folded deltas to a state's base count.
pub const ADD_JOB_COUNT: &str = "INSERT INTO job_counts (state, n) VALUES ($1, $2) \
     ON CONFLICT (state) DO UPDATE SET n = job_counts.n + excluded.n";

/// The queue's length: a range of the (state) index, so its cost follows
/// the queue, not the history (every submission asks).
pub const COUNT_QUEUED: &str = "SELECT COUNT(*) FROM jobs WHERE state = 'queued'";

/// A job that never ran is cancelled on the spot.
pub const CANCEL_UNSTARTED: &str = "UPDATE jobs SET state = 'cancelled', cancel_requested = TRUE, error = 'cancelled before it started', \
     finished_at = $2, updated_at = $2 \
     WHERE id = $1 AND state = 'queued' AND NOT EXISTS (SELECT 1 FROM stage_runs WHERE job_id = $1)";

/// A running or parked job is flagged; a parked one is woken so its teardown runs now.
pub const CANCEL_REQUEST: &str = "UPDATE jobs SET cancel_requested = TRUE, updated_at = $2, \
     wake_at = CASE WHEN state = 'waiting' THEN $2 ELSE wake_at END \
     WHERE id = $1 AND state IN ('queued', 'running', 'waiting')";

pub const RETRY: &str = "UPDATE jobs SET state = 'queued', error = NULL, cancel_requested = FALSE, abort_reason = NULL, \
     lease_expiries = 0, run_base_attempt = attempt + 1, current_stage = NULL, wake_at = NULL, wait_reason = NULL, \
     finished_at = NULL, updated_at = $2 \
     WHERE id = $1 AND state IN ('failed', 'cancelled')";

pub const STAGE_RUNS: &str = "SELECT id, job_id, attempt, stage, state, started_at, finished_at, duration_ms, detail, error \
     FROM stage_runs WHERE job_id = $1 ORDER BY id";

pub const LOG_AFTER: &str = "SELECT id, ts, stage, level, message FROM job_log WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3";

pub const LOG_TAIL: &str = "SELECT id, ts, stage, level, message FROM \
     (SELECT id, ts, stage, level, message FROM job_log WHERE job_id = $1 ORDER BY id DESC LIMIT $2) t ORDER BY id";

pub const RESOURCES: &str =
    "SELECT id, job_id, kind, provider, external_id, detail, created_at, deleted_at \
     FROM resources WHERE job_id = $1 ORDER BY id";

/// Running totals, one row per (stage, state): a scrape costs the same at any job count.
pub const STAGE_STATS: &str =
    "SELECT stage, state, runs, total_ms FROM stage_totals ORDER BY stage, state";

/// Adds one finished run to its (stage, state) total.
pub const ADD_STAGE_TOTAL: &str = "INSERT INTO stage_totals (stage, state, runs, total_ms) VALUES ($1, $2, 1, $3) \
     ON CONFLICT (stage, state) DO UPDATE SET runs = stage_totals.runs + 1, total_ms = stage_totals.total_ms + excluded.total_ms";

/// Marks a resource deleted outside any lease (the janitor, after the job ended).
pub const RESOURCE_GONE: &str = "UPDATE resources SET deleted_at = $4 \
     WHERE job_id = $1 AND provider = $2 AND external_id = $3 AND deleted_at IS NULL";

/// Counts a line written to a job's log; the new count.
pub const COUNT_LOG_LINE: &str =
    "UPDATE jobs SET log_lines = log_lines + 1 WHERE id = $1 RETURNING log_lines";

/// Over the cap: the oldest line after the kept head ($2 lines) goes.
pub const DROP_LOG_LINE: &str = "DELETE FROM job_log WHERE id = \
     (SELECT id FROM job_log WHERE job_id = $1 ORDER BY id LIMIT 1 OFFSET $2)";

pub const COUNT_DROPPED: &str =
    "UPDATE jobs SET log_dropped = log_dropped + 1, log_lines = log_lines - 1 WHERE id = $1";

pub const SYSTEM_LOG: &str =
    "INSERT INTO job_log (job_id, ts, stage, level, message) VALUES ($1, $2, NULL, $3, $4)";

/// Claim: oldest claimable job. SQLite serialises writers, so the subselect is safe there.
pub const CLAIM_SQLITE: &str = concat!("UPDATE jobs SET state = 'running', locked_by = $1, lease_expires_at = $2, attempt = attempt + 1, \
     started_at = COALESCE(started_at, $3), updated_at = $3, wake_at = NULL, wait_reason = NULL \
     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' OR (state = 'waiting' AND wake_at <= $3) ORDER BY id LIMIT 1) \
     RETURNING ", job_cols!());

/// PostgreSQL: rows another claimer holds are skipped, never waited for.
pub const CLAIM_PG: &str = concat!("UPDATE jobs SET state = 'running', locked_by = $1, lease_expires_at = $2, attempt = attempt + 1, \
     started_at = COALESCE(started_at, $3), updated_at = $3, wake_at = NULL, wait_reason = NULL \
     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' OR (state = 'waiting' AND wake_at <= $3) ORDER BY id LIMIT 1 \
     FOR UPDATE SKIP LOCKED) \
     RETURNING ", job_cols!());

// Every write below is fenced (see `fence!`): a worker that lost its lease changes nothing.

pub const RENEW: &str = concat!(
    "UPDATE jobs SET lease_expires_at = $4 WHERE ",
    fence!(),
    " RETURNING cancel_requested"
);

pub const CANCEL_FLAG: &str = concat!("SELECT cancel_requested FROM jobs WHERE ", fence!());

pub const INTERRUPT_STALE: &str = concat!("UPDATE stage_runs SET state = 'interrupted', finished_at = $4, duration_ms = $4 - started_at, \
     error = 'the worker running this stage was lost (crash or expired lease)' \
     WHERE job_id = $1 AND attempt < $3 AND state = 'running' AND", " ", fence_exists!(),
     " RETURNING stage, duration_ms");

pub const START_STAGE: &str = concat!(
    "INSERT INTO stage_runs (job_id, attempt, stage, state, started_at, detail) \
     SELECT $1, $3, $4, 'running', $5, '{}'",
    " WHERE ",
    fence_exists!(),
    " RETURNING id"
);

pub const SET_CURRENT_STAGE: &str = concat!(
    "UPDATE jobs SET current_stage = $4, updated_at = $5",
    " WHERE ",
    fence!()
);

pub const UPDATE_STAGE_DETAIL: &str = concat!(
    "UPDATE stage_runs SET detail = $5 WHERE id = $4 AND",
    " ",
    fence_exists!()
);

pub const FINISH_STAGE: &str = concat!("UPDATE stage_runs SET state = $5, detail = $6, error = $7, finished_at = $8, duration_ms = $8 - started_at \
     WHERE id = $4 AND", " ", fence_exists!(), " RETURNING stage, duration_ms");

pub const APPEND_LOG: &str = concat!(
    "INSERT INTO job_log (job_id, ts, stage, level, message) SELECT $1, $4, $5, $6, $7",
    " WHERE ",
    fence_exists!()
);

pub const RECORD_RESOURCE: &str = concat!(
    "INSERT INTO resources (job_id, kind, provider, external_id, detail, created_at) \
     SELECT $1, $4, $5, $6, $7, $8",
    " WHERE ",
    fence_exists!()
);

pub const RESOURCE_DELETED: &str = concat!(
    "UPDATE resources SET deleted_at = $5 WHERE id = $4 AND job_id = $1 AND",
    " ",
    fence_exists!()
);

pub const PARK: &str = concat!("UPDATE jobs SET state = 'waiting', wake_at = $4, wait_reason = $5, locked_by = NULL, lease_expires_at = NULL, \
     updated_at = $6", " WHERE ", fence!());

pub const FINISH_JOB: &str = concat!(
    "UPDATE jobs SET state = $4, error = $5, finished_at = $6, updated_at = $6, locked_by = NULL, \
     lease_expires_at = NULL, current_stage = NULL, wake_at = NULL, wait_reason = NULL",
    " WHERE ",
    fence!()
);

/// A terminal stage failure, recorded before teardown runs so a resumed job knows.
pub const SET_ERROR: &str = concat!(
    "UPDATE jobs SET error = $4, updated_at = $5 WHERE ",
    fence!()
);

pub const HAND_BACK: &str = concat!(
    "UPDATE jobs SET state = 'queued', locked_by = NULL, lease_expires_at = NULL, updated_at = $4",
    " WHERE ",
    fence!()
);

/// Lost leases under the limit: back to the queue.
pub const REAP_REQUEUE: &str =
    "UPDATE jobs SET state = 'queued', locked_by = NULL, lease_expires_at = NULL, \
     lease_expiries = lease_expiries + 1, updated_at = $1 \
     WHERE state = 'running' AND lease_expires_at < $1 AND lease_expiries + 1 < $2 RETURNING id";

/// At the limit: queued once more, only to tear down what the job created.
pub const REAP_ABORT: &str =
    "UPDATE jobs SET state = 'queued', locked_by = NULL, lease_expires_at = NULL, \
     lease_expiries = lease_expiries + 1, updated_at = $1, abort_reason = $3 \
     WHERE state = 'running' AND lease_expires_at < $1 AND lease_expiries + 1 = $2 RETURNING id";

/// Past the limit (even teardown keeps dying): failed for good.
pub const REAP_FAIL: &str =
    "UPDATE jobs SET state = 'failed', locked_by = NULL, lease_expires_at = NULL, \
     lease_expiries = lease_expiries + 1, updated_at = $1, finished_at = $1, current_stage = NULL, \
     error = COALESCE(abort_reason, $3) \
     WHERE state = 'running' AND lease_expires_at < $1 AND lease_expiries + 1 > $2 RETURNING id";

pub const PG_NOTIFY: &str = "SELECT pg_notify('vmscan_jobs', '')";
pub const PG_CHANNEL: &str = "vmscan_jobs";

pub(super) use job_cols;
