//! Durable state: jobs (which are also the queue), stage runs, the job log and
//! the external resources each job created. The jobs' SQL lives in `sql.rs`;
//! each other group of tables (auth, batches, catalog, insights, notifications,
//! watches) keeps its SQL in its own module.

pub mod auth;
pub mod batch;
pub mod catalog;
mod common;
pub mod insights;
pub mod notify;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod sqlite_wake;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{
    BatchId, ChecksumSpec, JobId, JobState, Millis, SourceUrl, StageName, StageState,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The worker's lease is gone: another worker owns the job now.
    #[error("lease lost: job {0} is no longer held by this worker")]
    Fenced(JobId),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("{0}")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://…")]
    BadUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A job as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: JobId,
    pub url: String,
    pub checksum: Option<String>,
    pub requested_by: Option<String>,
    pub email: Option<String>,
    pub note: Option<String>,
    pub options: serde_json::Value,
    pub state: JobState,
    pub current_stage: Option<String>,
    pub error: Option<String>,
    pub attempt: i64,
    pub run_base_attempt: i64,
    pub lease_expiries: i64,
    pub locked_by: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub wake_at: Option<Millis>,
    pub wait_reason: Option<String>,
    pub cancel_requested: bool,
    pub abort_reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Log lines dropped by the per-job cap (between the head and the tail).
    pub log_dropped: i64,
    /// The batch (manifest) the job was submitted in.
    pub batch_id: Option<BatchId>,
}

/// How much of a job's log is kept: `max_lines` in all, the first
/// `head_lines` and the newest; the ones between are dropped and counted.
#[derive(Debug)]
pub struct LogCap {
    max_lines: std::sync::atomic::AtomicI64,
    head_lines: std::sync::atomic::AtomicI64,
}

impl Default for LogCap {
    fn default() -> Self {
        LogCap {
            max_lines: 20_000.into(),
            head_lines: 2_000.into(),
        }
    }
}

impl LogCap {
    pub fn set(&self, max_lines: i64, head_lines: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.max_lines.store(max_lines.max(2), Relaxed);
        self.head_lines
            .store(head_lines.clamp(1, max_lines.max(2) - 1), Relaxed);
    }

    pub fn get(&self) -> (i64, i64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.max_lines.load(Relaxed), self.head_lines.load(Relaxed))
    }
}
/// Longer lines are cut (a guest can print one endless line).
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// `message` cut to [`MAX_LOG_LINE_BYTES`] on a character boundary.
pub(crate) fn cap_line(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_LOG_LINE_BYTES {
        return message.into();
    }
    let mut end = MAX_LOG_LINE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} more bytes cut)",
        &message[..end],
        message.len() - end
    )
    .into()
}

/// What a submitter provides.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub url: SourceUrl,
    pub checksum: Option<ChecksumSpec>,
    pub requested_by: Option<String>,
    pub email: Option<String>,
    pub note: Option<String>,
    pub options: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageRun {
    pub id: i64,
    pub job_id: JobId,
    pub attempt: i64,
    pub stage: String,
    pub state: StageState,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub duration_ms: Option<i64>,
    pub detail: serde_json::Value,
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    fn parse(s: &str) -> LogLevel {
        match s {
            "debug" => LogLevel::Debug,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub ts: Millis,
    pub stage: Option<String>,
    pub level: LogLevel,
    pub message: String,
}

/// Something outside vmscan that a job created and teardown must remove.
#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    pub id: i64,
    pub job_id: JobId,
    pub kind: String,
    pub provider: String,
    pub external_id: String,
    pub detail: serde_json::Value,
    pub created_at: Millis,
    pub deleted_at: Option<Millis>,
}

/// Proof that a worker holds a job: every worker write is fenced on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub worker: String,
    pub attempt: i64,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub requested_by: Option<String>,
    /// The cluster the job was sent to (`qemu-local`, `nutanix:pc1`).
    pub cluster: Option<String>,
    /// The guest OS chosen at submission (`linux`, `windows`, `auto`).
    pub os: Option<String>,
    /// Words found in the URL, the note or the options (image name,
    /// version, description), case-insensitively.
    pub text: Option<String>,
    /// Keyset paging: only jobs older than this id.
    pub before: Option<JobId>,
    pub limit: i64,
}

/// `s` with LIKE's wildcards (and the escape character) escaped by `\\`.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job had not started; it is cancelled now.
    Cancelled,
    /// The job is running or parked; its worker stops it and tears down.
    Requested,
    /// The job had already finished.
    AlreadyFinal(JobState),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub requeued: Vec<JobId>,
    pub aborted: Vec<JobId>,
    pub failed: Vec<JobId>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageStat {
    pub stage: String,
    pub state: String,
    pub count: i64,
    pub total_ms: i64,
}

/// Storage for jobs and everything hanging off them.
#[async_trait]
pub trait Store:
    auth::AuthStore
    + batch::BatchStore
    + catalog::CatalogStore
    + insights::InsightsStore
    + notify::NotifyStore
    + watch::WatchStore
    + Send
    + Sync
    + 'static
{
    /// Which backend this is ("sqlite" / "postgres"), for logs and metrics.
    fn backend(&self) -> &'static str;
    async fn migrate(&self) -> StoreResult<()>;
    async fn ping(&self) -> StoreResult<()>;

    // -- jobs, as seen by people
    async fn create_job(&self, job: NewJob) -> StoreResult<Job>;
    async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>>;
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    async fn count_by_state(&self) -> StoreResult<Vec<(JobState, i64)>>;
    /// Folds the per-change count deltas into the per-state base, so a
    /// count stays a read of a few rows (the reaper calls it). Safe to run
    /// concurrently from every replica; returns the deltas folded.
    async fn fold_job_counts(&self) -> StoreResult<u64>;
    /// Jobs waiting for a worker (the submission limit's question).
    async fn count_queued(&self) -> StoreResult<i64>;
    /// Jobs `user` submitted since `since`.
    async fn count_recent_jobs(&self, user: &str, since: Millis) -> StoreResult<i64>;
    async fn request_cancel(&self, id: JobId) -> StoreResult<CancelOutcome>;
    async fn retry_job(&self, id: JobId) -> StoreResult<Job>;
    async fn stage_runs(&self, id: JobId) -> StoreResult<Vec<StageRun>>;
    async fn log_lines(&self, id: JobId, after: i64, limit: i64) -> StoreResult<Vec<LogLine>>;
    async fn log_tail(&self, id: JobId, limit: i64) -> StoreResult<Vec<LogLine>>;
    async fn resources(&self, id: JobId) -> StoreResult<Vec<Resource>>;
    async fn stage_stats(&self) -> StoreResult<Vec<StageStat>>;
    /// Marks a job's resource deleted without a lease (cleanup after the job ended).
    async fn resource_gone(&self, id: JobId, provider: &str, external_id: &str) -> StoreResult<()>;
    /// A log line not tied to a lease (API actions, the reaper).
    async fn append_system_log(&self, id: JobId, level: LogLevel, message: &str)
        -> StoreResult<()>;

    // -- the queue, as seen by workers
    async fn claim(&self, worker: &str, lease_for: Duration) -> StoreResult<Option<(Job, Lease)>>;
    /// Extends the lease; returns whether a cancel was requested.
    async fn renew(&self, lease: &Lease, lease_for: Duration) -> StoreResult<bool>;
    async fn cancel_requested(&self, lease: &Lease) -> StoreResult<bool>;
    /// Marks stage runs left `running` by earlier attempts as interrupted.
    async fn interrupt_stale_runs(&self, lease: &Lease) -> StoreResult<u64>;
    async fn start_stage(&self, lease: &Lease, stage: StageName) -> StoreResult<i64>;
    async fn update_stage_detail(
        &self,
        lease: &Lease,
        run: i64,
        detail: &serde_json::Value,
    ) -> StoreResult<()>;
    async fn finish_stage(
        &self,
        lease: &Lease,
        run: i64,
        state: StageState,
        detail: &serde_json::Value,
        error: Option<&str>,
    ) -> StoreResult<()>;
    async fn append_log(
        &self,
        lease: &Lease,
        stage: Option<StageName>,
        level: LogLevel,
        message: &str,
    ) -> StoreResult<()>;
    async fn record_resource(
        &self,
        lease: &Lease,
        kind: &str,
        provider: &str,
        external_id: &str,
        detail: &serde_json::Value,
    ) -> StoreResult<()>;
    async fn mark_resource_deleted(&self, lease: &Lease, resource: i64) -> StoreResult<()>;
    async fn park(&self, lease: &Lease, until: Millis, reason: &str) -> StoreResult<()>;
    async fn finish_job(
        &self,
        lease: &Lease,
        state: JobState,
        error: Option<&str>,
    ) -> StoreResult<()>;
    /// Records why the job will fail while its teardown still runs.
    async fn set_error(&self, lease: &Lease, error: &str) -> StoreResult<()>;
    /// Gives the job back to the queue without penalty (graceful shutdown).
    async fn hand_back(&self, lease: &Lease) -> StoreResult<()>;
    /// Re-queues jobs whose lease expired; after `max_expiries` the job is
    /// queued once more only to tear down, and then failed outright.
    async fn reap_expired(&self, max_expiries: i64) -> StoreResult<ReapReport>;
    /// A counter bumped whenever new work may be available. A worker marks
    /// it seen before claiming, so a bump during the claim is not missed.
    fn work_signal(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The per-job log cap in force.
    fn log_cap(&self) -> &LogCap;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a database URL names and runs its migrations.
pub async fn open(url: &str, max_connections: u32) -> StoreResult<DynStore> {
    let store: DynStore = if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(url, max_connections).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PgStore::connect(url, max_connections).await?)
    } else {
        return Err(StoreError::BadUrl(
            url.split('@').next_back().unwrap_or("").to_string(),
        ));
    };
    store.migrate().await?;
    Ok(store)
}

/// A `Duration` as store milliseconds.
pub(crate) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
