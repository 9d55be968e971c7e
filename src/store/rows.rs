//! Row shapes as the database returns them, and their conversion to domain types.

use super::{Job, LogLevel, LogLine, Resource, StageRun, StoreError, StoreResult};
use crate::domain::{BatchId, JobId, JobState, StageState};

#[derive(sqlx::FromRow)]
pub struct JobRow {
    id: String,
    url: String,
    checksum: Option<String>,
    requested_by: Option<String>,
    email: Option<String>,
    note: Option<String>,
    options: String,
    state: String,
    current_stage: Option<String>,
    error: Option<String>,
    attempt: i64,
    run_base_attempt: i64,
    lease_expiries: i64,
    locked_by: Option<String>,
    lease_expires_at: Option<i64>,
    wake_at: Option<i64>,
    wait_reason: Option<String>,
    cancel_requested: bool,
    abort_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    log_dropped: i64,
    batch_id: Option<String>,
}

pub fn job_id(s: &str) -> StoreResult<JobId> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("job id: {e}")))
}

pub fn batch_id(s: &str) -> StoreResult<BatchId> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("batch id: {e}")))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> StoreResult<Job> {
        Ok(Job {
            id: job_id(&r.id)?,
            url: r.url,
            checksum: r.checksum,
            requested_by: r.requested_by,
            email: r.email,
            note: r.note,
            options: json(&r.options),
            state: r
                .state
                .parse::<JobState>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            current_stage: r.current_stage,
            error: r.error,
            attempt: r.attempt,
            run_base_attempt: r.run_base_attempt,
            lease_expiries: r.lease_expiries,
            locked_by: r.locked_by,
            lease_expires_at: r.lease_expires_at,
            wake_at: r.wake_at,
            wait_reason: r.wait_reason,
            cancel_requested: r.cancel_requested,
            abort_reason: r.abort_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            log_dropped: r.log_dropped,
            batch_id: r.batch_id.as_deref().map(batch_id).transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct StageRunRow {
    id: i64,
    job_id: String,
    attempt: i64,
    stage: String,
    state: String,
    started_at: i64,
    finished_at: Option<i64>,
    duration_ms: Option<i64>,
    detail: String,
    error: Option<String>,
}

impl TryFrom<StageRunRow> for StageRun {
    type Error = StoreError;
    fn try_from(r: StageRunRow) -> StoreResult<StageRun> {
        Ok(StageRun {
            id: r.id,
            job_id: job_id(&r.job_id)?,
            attempt: r.attempt,
            stage: r.stage,
            state: r
                .state
                .parse::<StageState>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms,
            detail: json(&r.detail),
            error: r.error,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct LogRow {
    id: i64,
    ts: i64,
    stage: Option<String>,
    level: String,
    message: String,
}

impl From<LogRow> for LogLine {
    fn from(r: LogRow) -> LogLine {
        LogLine {
            id: r.id,
            ts: r.ts,
            stage: r.stage,
            level: LogLevel::parse(&r.level),
            message: r.message,
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct ResourceRow {
    id: i64,
    job_id: String,
    kind: String,
    provider: String,
    external_id: String,
    detail: String,
    created_at: i64,
    deleted_at: Option<i64>,
}

impl TryFrom<ResourceRow> for Resource {
    type Error = StoreError;
    fn try_from(r: ResourceRow) -> StoreResult<Resource> {
        Ok(Resource {
            id: r.id,
            job_id: job_id(&r.job_id)?,
            kind: r.kind,
            provider: r.provider,
            external_id: r.external_id,
            detail: json(&r.detail),
            created_at: r.created_at,
            deleted_at: r.deleted_at,
        })
    }
}

pub fn collect<R, T>(rows: Vec<R>) -> StoreResult<Vec<T>>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}
