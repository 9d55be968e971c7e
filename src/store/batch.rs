//! Batches: the images of one manifest, queued together in one transaction
//! and closed once, when the last of their jobs has ended. Its SQL lives here.
//!
//! Closing is a conditional UPDATE of the batch row (`closed_at IS NULL`
//! and no job left to end). Each process tries it after a job of the batch
//! ended (and a sweep retries it); on PostgreSQL two workers ending the last
//! two jobs at once both try, the row lock makes the second re-check
//! `closed_at`, so exactly one wins and records the summary notification in
//! the same transaction.

use async_trait::async_trait;
use serde::Serialize;

use super::common::bind_new_job;
use super::notify::JiraIssue;
use super::rows::{batch_id, collect, JobRow};
use super::sql::job_cols;
use super::{Job, NewJob, PgStore, SqliteStore, StoreResult};
use crate::domain::{now_millis, BatchId, Millis};

#[derive(Clone, Debug, Serialize)]
pub struct Batch {
    pub id: BatchId,
    pub requested_by: Option<String>,
    /// The manifest's owner (team).
    pub owner: Option<String>,
    pub created_at: Millis,
    /// When the summary was recorded; None while jobs are still to end.
    pub closed_at: Option<Millis>,
    pub jira: Option<JiraIssue>,
}

/// A batch to queue: every job is inserted, or none.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub requested_by: Option<String>,
    pub owner: Option<String>,
    /// The requester's display name, recorded on each job for notifications.
    pub requester_name: Option<String>,
    pub jobs: Vec<NewJob>,
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    /// The batch and its jobs, in one transaction.
    async fn create_batch(&self, batch: NewBatch) -> StoreResult<(Batch, Vec<Job>)>;
    async fn get_batch(&self, id: BatchId) -> StoreResult<Option<Batch>>;
    /// The batch's jobs in submission order.
    async fn batch_jobs(&self, id: BatchId) -> StoreResult<Vec<Job>>;
    /// Newest first; only `requested_by`'s when given.
    async fn list_batches(&self, requested_by: Option<&str>, limit: i64)
        -> StoreResult<Vec<Batch>>;
    /// Closes the batch if it is open and every job has ended, recording a
    /// `batch_finished` notification on each of `channels`. True only for
    /// the one call that closed it.
    async fn close_batch(&self, id: BatchId, channels: &[&str]) -> StoreResult<bool>;
    /// Open batches whose jobs have all ended (a close that was missed:
    /// a crash, a job cancelled before it started, one the reaper failed).
    async fn ended_open_batches(&self, limit: i64) -> StoreResult<Vec<BatchId>>;
    async fn set_batch_jira(&self, id: BatchId, issue: &JiraIssue) -> StoreResult<()>;
}

const INSERT_BATCH: &str =
    "INSERT INTO batches (id, requested_by, owner, created_at) VALUES ($1, $2, $3, $4)";

macro_rules! batch_cols {
    () => {
        "id, requested_by, owner, created_at, closed_at, jira_key, jira_url"
    };
}

const INSERT_JOB: &str = concat!(
    "INSERT INTO jobs (id, url, checksum, requested_by, email, note, options, state, created_at, updated_at, \
     batch_id, requester_name) VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $8, $9, $10) RETURNING ",
    job_cols!()
);

const GET: &str = concat!("SELECT ", batch_cols!(), " FROM batches WHERE id = $1");

const JOBS: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE batch_id = $1 ORDER BY id"
);

const LIST_ALL: &str = concat!(
    "SELECT ",
    batch_cols!(),
    " FROM batches ORDER BY id DESC LIMIT $1"
);
const LIST_MINE: &str = concat!(
    "SELECT ",
    batch_cols!(),
    " FROM batches WHERE requested_by = $2 ORDER BY id DESC LIMIT $1"
);

/// The one statement that closes a batch; the loser of a race changes nothing.
const CLOSE: &str = "UPDATE batches SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL \
     AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = $1 \
         AND state NOT IN ('succeeded', 'failed', 'cancelled')) RETURNING id";

/// The summary hangs off the batch's first job (the outbox is per job).
const SUMMARY: &str =
    "INSERT INTO notifications (job_id, channel, kind, payload, state, attempts, \
     next_attempt_at, created_at) SELECT MIN(id), $2, 'batch_finished', $3, 'pending', 0, $4, $4 \
     FROM jobs WHERE batch_id = $1";

const ENDED_OPEN: &str = "SELECT b.id FROM batches b WHERE b.closed_at IS NULL \
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id \
         AND j.state NOT IN ('succeeded', 'failed', 'cancelled')) ORDER BY b.id LIMIT $1";

const SET_JIRA: &str = "UPDATE batches SET jira_key = $2, jira_url = $3 WHERE id = $1";

/// A retried job reopens its batch: a new summary follows its new ending.
pub(super) const REOPEN: &str =
    "UPDATE batches SET closed_at = NULL WHERE id = (SELECT batch_id FROM jobs WHERE id = $1)";

type Row = (
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn to_batch(r: Row) -> StoreResult<Batch> {
    Ok(Batch {
        id: batch_id(&r.0)?,
        requested_by: r.1,
        owner: r.2,
        created_at: r.3,
        closed_at: r.4,
        jira: match (r.5, r.6) {
            (Some(key), Some(url)) => Some(JiraIssue { key, url }),
            _ => None,
        },
    })
}

macro_rules! batch_impl {
    ($store:ty) => {
        #[async_trait]
        impl BatchStore for $store {
            async fn create_batch(&self, b: NewBatch) -> StoreResult<(Batch, Vec<Job>)> {
                let id = BatchId::new();
                let now = now_millis();
                let mut tx = self.pool.begin().await?;
                sqlx::query(INSERT_BATCH)
                    .bind(id.to_string())
                    .bind(&b.requested_by)
                    .bind(&b.owner)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let mut rows: Vec<JobRow> = Vec::with_capacity(b.jobs.len());
                for job in b.jobs {
                    rows.push(
                        bind_new_job!(sqlx::query_as(INSERT_JOB), job, now)
                            .bind(id.to_string())
                            .bind(&b.requester_name)
                            .fetch_one(&mut *tx)
                            .await?,
                    );
                }
                tx.commit().await?;
                self.notify_work().await;
                let batch = Batch {
                    id,
                    requested_by: b.requested_by,
                    owner: b.owner,
                    created_at: now,
                    closed_at: None,
                    jira: None,
                };
                Ok((batch, collect(rows)?))
            }

            async fn get_batch(&self, id: BatchId) -> StoreResult<Option<Batch>> {
                let row: Option<Row> = sqlx::query_as(GET)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(to_batch).transpose()
            }

            async fn batch_jobs(&self, id: BatchId) -> StoreResult<Vec<Job>> {
                let rows: Vec<JobRow> = sqlx::query_as(JOBS)
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                collect(rows)
            }

            async fn list_batches(
                &self,
                requested_by: Option<&str>,
                limit: i64,
            ) -> StoreResult<Vec<Batch>> {
                let limit = limit.clamp(1, 500);
                let rows: Vec<Row> = match requested_by {
                    Some(who) => {
                        sqlx::query_as(LIST_MINE)
                            .bind(limit)
                            .bind(who)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => {
                        sqlx::query_as(LIST_ALL)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                rows.into_iter().map(to_batch).collect()
            }

            async fn close_batch(&self, id: BatchId, channels: &[&str]) -> StoreResult<bool> {
                let now = now_millis();
                let mut tx = self.pool.begin().await?;
                let won: Option<(String,)> = sqlx::query_as(CLOSE)
                    .bind(id.to_string())
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if won.is_none() {
                    return Ok(false);
                }
                let payload = serde_json::json!({"batch": id.to_string()}).to_string();
                for channel in channels {
                    sqlx::query(SUMMARY)
                        .bind(id.to_string())
                        .bind(*channel)
                        .bind(&payload)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn ended_open_batches(&self, limit: i64) -> StoreResult<Vec<BatchId>> {
                let rows: Vec<(String,)> = sqlx::query_as(ENDED_OPEN)
                    .bind(limit.clamp(1, 1000))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|(s,)| batch_id(s)).collect()
            }

            async fn set_batch_jira(&self, id: BatchId, issue: &JiraIssue) -> StoreResult<()> {
                sqlx::query(SET_JIRA)
                    .bind(id.to_string())
                    .bind(&issue.key)
                    .bind(&issue.url)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

batch_impl!(SqliteStore);
batch_impl!(PgStore);
