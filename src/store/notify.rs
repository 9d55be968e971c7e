//! Storage of notifications (email, Jira) and their delivery state. Its SQL lives here.
//!
//! The outbox is drained by any number of processes: a claim leases rows
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers), and
//! rows of one job and channel go out in order, so a Jira comment never
//! overtakes the creation of its ticket.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::rows::job_id;
use super::{millis, PgStore, SqliteStore, StoreResult};
use crate::domain::{now_millis, JobId, Millis};

/// One message to deliver on one channel.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    pub id: i64,
    pub job_id: JobId,
    /// `email` | `jira`
    pub channel: String,
    /// `job_started` | `stage_started` | `stage_finished` | `job_finished`
    pub kind: String,
    /// Facts of the event (never secrets).
    pub payload: serde_json::Value,
    /// `pending` | `sending` | `sent` | `failed` | `skipped`
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
}

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    Sent,
    /// Nothing to send (e.g. no recipients); recorded why.
    Skipped(String),
    /// Try again at the given time.
    Retry {
        at: Millis,
        error: String,
    },
    /// Given up (permanent error or out of attempts).
    Failed(String),
    /// Not attempted yet (waiting on something else): the attempt is not counted.
    Defer(Millis),
}

/// The Jira ticket that logs a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JiraIssue {
    pub key: String,
    pub url: String,
}

#[async_trait]
pub trait NotifyStore: Send + Sync {
    async fn enqueue_notification(
        &self,
        job: JobId,
        channel: &str,
        kind: &str,
        payload: &serde_json::Value,
    ) -> StoreResult<i64>;
    /// Leases up to `limit` due notifications to `worker` (attempts + 1).
    async fn claim_notifications(
        &self,
        worker: &str,
        lease_for: Duration,
        limit: i64,
    ) -> StoreResult<Vec<Notification>>;
    /// Records an attempt's outcome; false if the lease was lost meanwhile.
    async fn finish_notification(
        &self,
        id: i64,
        worker: &str,
        outcome: &Delivered,
    ) -> StoreResult<bool>;
    async fn job_notifications(&self, job: JobId) -> StoreResult<Vec<Notification>>;
    async fn jira_issue(&self, job: JobId) -> StoreResult<Option<JiraIssue>>;
    async fn set_jira_issue(&self, job: JobId, issue: &JiraIssue) -> StoreResult<()>;
    async fn set_requester_name(&self, job: JobId, name: &str) -> StoreResult<()>;
    async fn requester_name(&self, job: JobId) -> StoreResult<Option<String>>;
}

const INSERT: &str = "INSERT INTO notifications (job_id, channel, kind, payload, state, attempts, \
     next_attempt_at, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5) RETURNING id";

/// Due rows whose earlier siblings (same job and channel) are all settled.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE notifications SET state = 'sending', locked_by = $1, lease_expires_at = $2, \
             attempts = attempts + 1 \
             WHERE id IN (SELECT n.id FROM notifications n \
             WHERE ((n.state = 'pending' AND n.next_attempt_at <= $3) \
                 OR (n.state = 'sending' AND n.lease_expires_at <= $3)) \
             AND NOT EXISTS (SELECT 1 FROM notifications p WHERE p.job_id = n.job_id \
                 AND p.channel = n.channel AND p.id < n.id AND p.state IN ('pending', 'sending')) \
             ORDER BY n.next_attempt_at, n.id LIMIT $4",
            $lock,
            ") RETURNING id, job_id, channel, kind, payload, state, attempts, next_attempt_at, \
             last_error, created_at, sent_at"
        )
    };
}

const CLAIM_SQLITE: &str = claim_sql!("");
const CLAIM_PG: &str = claim_sql!(" FOR UPDATE SKIP LOCKED");

/// Fenced on the lease holder: $1 id, $2 worker.
const FINISH: &str = "UPDATE notifications SET state = $3, next_attempt_at = $4, last_error = $5, \
     sent_at = $6, attempts = attempts - $7, locked_by = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND locked_by = $2 AND state = 'sending'";

const BY_JOB: &str =
    "SELECT id, job_id, channel, kind, payload, state, attempts, next_attempt_at, \
     last_error, created_at, sent_at FROM notifications WHERE job_id = $1 ORDER BY id";

const GET_ISSUE: &str = "SELECT issue_key, url FROM jira_issues WHERE job_id = $1";
const SET_ISSUE: &str = "INSERT INTO jira_issues (job_id, issue_key, url, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO UPDATE SET issue_key = $2, url = $3";
const SET_NAME: &str = "UPDATE jobs SET requester_name = $2 WHERE id = $1";
const GET_NAME: &str = "SELECT requester_name FROM jobs WHERE id = $1";

type Row = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    Option<i64>,
);

fn to_notification(r: Row) -> StoreResult<Notification> {
    Ok(Notification {
        id: r.0,
        job_id: job_id(&r.1)?,
        channel: r.2,
        kind: r.3,
        payload: serde_json::from_str(&r.4).unwrap_or(serde_json::Value::Null),
        state: r.5,
        attempts: r.6,
        next_attempt_at: r.7,
        last_error: r.8,
        created_at: r.9,
        sent_at: r.10,
    })
}

/// (state, next_attempt_at, last_error, sent_at, attempts to give back)
fn finish_values(o: &Delivered) -> (&'static str, Millis, Option<String>, Option<Millis>, i64) {
    let now = now_millis();
    match o {
        Delivered::Sent => ("sent", now, None, Some(now), 0),
        Delivered::Skipped(why) => ("skipped", now, Some(why.clone()), None, 0),
        Delivered::Retry { at, error } => ("pending", *at, Some(error.clone()), None, 0),
        Delivered::Failed(e) => ("failed", now, Some(e.clone()), None, 0),
        Delivered::Defer(at) => ("pending", *at, None, None, 1),
    }
}

macro_rules! notify_impl {
    ($store:ty, $claim:expr) => {
        #[async_trait]
        impl NotifyStore for $store {
            async fn enqueue_notification(
                &self,
                job: JobId,
                channel: &str,
                kind: &str,
                payload: &serde_json::Value,
            ) -> StoreResult<i64> {
                let (id,): (i64,) = sqlx::query_as(INSERT)
                    .bind(job.to_string())
                    .bind(channel)
                    .bind(kind)
                    .bind(payload.to_string())
                    .bind(now_millis())
                    .fetch_one(&self.pool)
                    .await?;
                Ok(id)
            }

            async fn claim_notifications(
                &self,
                worker: &str,
                lease_for: Duration,
                limit: i64,
            ) -> StoreResult<Vec<Notification>> {
                let now = now_millis();
                let rows: Vec<Row> = sqlx::query_as($claim)
                    .bind(worker)
                    .bind(now + millis(lease_for))
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = rows
                    .into_iter()
                    .map(to_notification)
                    .collect::<StoreResult<Vec<_>>>()?;
                out.sort_by_key(|n| n.id);
                Ok(out)
            }

            async fn finish_notification(
                &self,
                id: i64,
                worker: &str,
                outcome: &Delivered,
            ) -> StoreResult<bool> {
                let (state, next, error, sent, give_back) = finish_values(outcome);
                let done = sqlx::query(FINISH)
                    .bind(id)
                    .bind(worker)
                    .bind(state)
                    .bind(next)
                    .bind(error)
                    .bind(sent)
                    .bind(give_back)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn job_notifications(&self, job: JobId) -> StoreResult<Vec<Notification>> {
                let rows: Vec<Row> = sqlx::query_as(BY_JOB)
                    .bind(job.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(to_notification).collect()
            }

            async fn jira_issue(&self, job: JobId) -> StoreResult<Option<JiraIssue>> {
                let row: Option<(String, String)> = sqlx::query_as(GET_ISSUE)
                    .bind(job.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|(key, url)| JiraIssue { key, url }))
            }

            async fn set_jira_issue(&self, job: JobId, issue: &JiraIssue) -> StoreResult<()> {
                sqlx::query(SET_ISSUE)
                    .bind(job.to_string())
                    .bind(&issue.key)
                    .bind(&issue.url)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_requester_name(&self, job: JobId, name: &str) -> StoreResult<()> {
                sqlx::query(SET_NAME)
                    .bind(job.to_string())
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn requester_name(&self, job: JobId) -> StoreResult<Option<String>> {
                let row: Option<(Option<String>,)> = sqlx::query_as(GET_NAME)
                    .bind(job.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.and_then(|(n,)| n))
            }
        }
    };
}

notify_impl!(SqliteStore, CLAIM_SQLITE);
notify_impl!(PgStore, CLAIM_PG);

#[cfg(test)]
mod tests {
    #[test]
    fn claim_locks_rows_only_on_postgres() {
        assert!(super::CLAIM_PG.contains("LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING"));
        assert!(!super::CLAIM_SQLITE.contains("FOR UPDATE"));
    }
}
