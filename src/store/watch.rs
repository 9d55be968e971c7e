//! Storage of watched sources, their check history and the scheduler's
//! lease. Its SQL lives here. A check that finds a new image records the
//! new fingerprint and queues the scan in one transaction, fenced by the
//! scheduler lease and the fingerprint it started from: a scheduler that
//! dies mid-check leaves nothing behind (the next one redoes the check),
//! and two can never both queue a scan for one change.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::common::bind_new_job;
use super::rows::{job_id, JobRow};
use super::{sql, Job, NewJob, PgStore, SqliteStore, StoreError, StoreResult};
use crate::domain::{now_millis, JobId, Millis};
use crate::watch::WatchKind;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckOutcome {
    /// The same image as last time.
    Unchanged,
    /// A new image: a scan was queued.
    Changed,
    /// The check failed; the watch tries again at its next check.
    Error,
}

impl CheckOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckOutcome::Unchanged => "unchanged",
            CheckOutcome::Changed => "changed",
            CheckOutcome::Error => "error",
        }
    }
}

impl fmt::Display for CheckOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unchanged" => Ok(CheckOutcome::Unchanged),
            "changed" => Ok(CheckOutcome::Changed),
            "error" => Ok(CheckOutcome::Error),
            o => Err(format!("unknown check outcome {o:?}")),
        }
    }
}

/// The submission a watch files for each new image (all but the URL and
/// the checksum, which each check finds), validated as its owner when the
/// watch was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanTemplate {
    /// The login the scans are filed as; none for a watch made with the
    /// CLI, whose scans are the server shell's like `vmscan submit`'s.
    pub requested_by: Option<String>,
    pub email: Option<String>,
    pub note: Option<String>,
    pub options: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Watch {
    pub id: String,
    pub owner: String,
    pub url: String,
    #[serde(serialize_with = "kind_str")]
    pub kind: WatchKind,
    pub pattern: Option<String>,
    pub sums_url: Option<String>,
    pub interval_secs: i64,
    pub template: ScanTemplate,
    pub enabled: bool,
    pub next_check_at: Millis,
    pub last_check_at: Option<Millis>,
    pub last_outcome: Option<CheckOutcome>,
    pub last_message: Option<String>,
    /// The image the last change named, and what identified it.
    pub image_url: Option<String>,
    #[serde(skip)]
    pub fingerprint: Option<String>,
    #[serde(skip)]
    pub etag: Option<String>,
    #[serde(skip)]
    pub last_modified: Option<String>,
    pub checks: i64,
    pub scans: i64,
    pub created_at: Millis,
}

fn kind_str<S: serde::Serializer>(k: &WatchKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

#[derive(Clone, Debug)]
pub struct NewWatch {
    pub owner: String,
    pub url: String,
    pub kind: WatchKind,
    pub sums_url: Option<String>,
    pub interval_secs: i64,
    pub template: ScanTemplate,
}

/// One check, as the watch page lists them.
#[derive(Clone, Debug, Serialize)]
pub struct WatchCheck {
    pub id: i64,
    pub ts: Millis,
    pub outcome: CheckOutcome,
    pub message: String,
    pub image_url: Option<String>,
    pub job_id: Option<JobId>,
}

/// The result of one check, to record.
pub struct CheckRecord<'a> {
    pub watch_id: &'a str,
    /// The fingerprint the check started from: the record only lands if the
    /// watch still has it.
    pub previous: Option<&'a str>,
    pub outcome: CheckOutcome,
    pub message: &'a str,
    pub image_url: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    pub next_check_at: Millis,
    /// The scan to queue (with `Changed`).
    pub job: Option<NewJob>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Done {
        job: Option<JobId>,
    },
    /// The lease was lost or the watch changed (deleted, or checked by
    /// another scheduler) since the check began: nothing was written.
    Lost,
}

#[async_trait]
pub trait WatchStore: Send + Sync {
    async fn create_watch(&self, w: &NewWatch) -> StoreResult<Watch>;
    async fn get_watch(&self, id: &str) -> StoreResult<Option<Watch>>;
    /// Newest first; one owner's, or everyone's.
    async fn list_watches(&self, owner: Option<&str>) -> StoreResult<Vec<Watch>>;
    async fn count_watches(&self, owner: &str) -> StoreResult<i64>;
    async fn delete_watch(&self, id: &str) -> StoreResult<bool>;
    /// Pauses or resumes; a resumed watch is checked at once.
    async fn set_watch_enabled(&self, id: &str, enabled: bool) -> StoreResult<bool>;
    /// Asks for a check now.
    async fn check_watch_now(&self, id: &str) -> StoreResult<bool>;
    async fn watch_checks(&self, id: &str, limit: i64) -> StoreResult<Vec<WatchCheck>>;
    /// Takes or renews the scheduler lease named `name` until `until`;
    /// false while another holder's lease is live.
    async fn acquire_lease(&self, name: &str, holder: &str, until: Millis) -> StoreResult<bool>;
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;
    async fn due_watches(&self, now: Millis, limit: i64) -> StoreResult<Vec<Watch>>;
    /// Records a check (and queues its scan) if `holder` still holds the
    /// `lease` and the watch still has the fingerprint the check started from.
    async fn record_check(
        &self,
        lease: &str,
        holder: &str,
        until: Millis,
        rec: CheckRecord<'_>,
    ) -> StoreResult<Recorded>;
}

macro_rules! watch_cols {
    () => {
        "id, owner, url, kind, pattern, sums_url, interval_secs, template, enabled, next_check_at, \
         last_check_at, last_outcome, last_message, image_url, fingerprint, etag, last_modified, \
         checks, scans, created_at"
    };
}

const INSERT_WATCH: &str = concat!(
    "INSERT INTO watches (id, owner, url, kind, pattern, sums_url, interval_secs, template, enabled, \
     next_check_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9, $9, $9) RETURNING ",
    watch_cols!()
);
const GET_WATCH: &str = concat!("SELECT ", watch_cols!(), " FROM watches WHERE id = $1");
const LIST_WATCHES: &str = concat!("SELECT ", watch_cols!(), " FROM watches ORDER BY id DESC");
const LIST_OWNER_WATCHES: &str = concat!(
    "SELECT ",
    watch_cols!(),
    " FROM watches WHERE owner = $1 ORDER BY id DESC"
);
const COUNT_WATCHES: &str = "SELECT COUNT(*) FROM watches WHERE owner = $1";
const DELETE_CHECKS: &str = "DELETE FROM watch_checks WHERE watch_id = $1";
const DELETE_WATCH: &str = "DELETE FROM watches WHERE id = $1";
const SET_ENABLED: &str =
    "UPDATE watches SET enabled = $2, next_check_at = $3, updated_at = $3 WHERE id = $1";
const CHECK_NOW: &str = "UPDATE watches SET next_check_at = $2, updated_at = $2 WHERE id = $1";
const WATCH_CHECKS: &str = "SELECT id, ts, outcome, message, image_url, job_id FROM watch_checks \
     WHERE watch_id = $1 ORDER BY id DESC LIMIT $2";
const DUE_WATCHES: &str = concat!(
    "SELECT ",
    watch_cols!(),
    " FROM watches WHERE enabled AND next_check_at <= $1 ORDER BY next_check_at, id LIMIT $2"
);
/// Taken when free or expired, renewed by its holder; otherwise no row changes.
const ACQUIRE_LEASE: &str =
    "INSERT INTO leader_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at < $4";
const RELEASE_LEASE: &str = "DELETE FROM leader_leases WHERE name = $1 AND holder = $2";
/// The fence of a record: the live lease, renewed in the same transaction.
const FENCE_LEASE: &str = "UPDATE leader_leases SET expires_at = $3 \
     WHERE name = $1 AND holder = $2 AND expires_at >= $4";
const RECORD_WATCH: &str =
    "UPDATE watches SET last_check_at = $3, last_outcome = $4, last_message = $5, \
     image_url = COALESCE($6, image_url), fingerprint = COALESCE($7, fingerprint), \
     etag = CASE WHEN $7 IS NULL THEN etag ELSE $8 END, \
     last_modified = CASE WHEN $7 IS NULL THEN last_modified ELSE $9 END, \
     next_check_at = $10, checks = checks + 1, scans = scans + $11, updated_at = $3 \
     WHERE id = $1 AND COALESCE(fingerprint, '') = $2";
const INSERT_CHECK: &str =
    "INSERT INTO watch_checks (watch_id, ts, outcome, message, image_url, job_id) \
     VALUES ($1, $2, $3, $4, $5, $6)";

#[derive(sqlx::FromRow)]
struct WatchRow {
    id: String,
    owner: String,
    url: String,
    kind: String,
    pattern: Option<String>,
    sums_url: Option<String>,
    interval_secs: i64,
    template: String,
    enabled: bool,
    next_check_at: i64,
    last_check_at: Option<i64>,
    last_outcome: Option<String>,
    last_message: Option<String>,
    image_url: Option<String>,
    fingerprint: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
    checks: i64,
    scans: i64,
    created_at: i64,
}

impl TryFrom<WatchRow> for Watch {
    type Error = StoreError;
    fn try_from(r: WatchRow) -> StoreResult<Watch> {
        let corrupt =
            |what: &str, e: String| StoreError::Corrupt(format!("watch {}: {what}: {e}", r.id));
        Ok(Watch {
            kind: WatchKind::parse(&r.kind, r.pattern.as_deref())
                .map_err(|e| corrupt("kind", e))?,
            template: serde_json::from_str(&r.template)
                .map_err(|e| corrupt("template", e.to_string()))?,
            last_outcome: r
                .last_outcome
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| corrupt("outcome", e))?,
            id: r.id,
            owner: r.owner,
            url: r.url,
            pattern: r.pattern,
            sums_url: r.sums_url,
            interval_secs: r.interval_secs,
            enabled: r.enabled,
            next_check_at: r.next_check_at,
            last_check_at: r.last_check_at,
            last_message: r.last_message,
            image_url: r.image_url,
            fingerprint: r.fingerprint,
            etag: r.etag,
            last_modified: r.last_modified,
            checks: r.checks,
            scans: r.scans,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CheckRow {
    id: i64,
    ts: i64,
    outcome: String,
    message: String,
    image_url: Option<String>,
    job_id: Option<String>,
}

impl TryFrom<CheckRow> for WatchCheck {
    type Error = StoreError;
    fn try_from(r: CheckRow) -> StoreResult<WatchCheck> {
        Ok(WatchCheck {
            id: r.id,
            ts: r.ts,
            outcome: r.outcome.parse().map_err(StoreError::Corrupt)?,
            message: r.message,
            image_url: r.image_url,
            job_id: r.job_id.as_deref().map(job_id).transpose()?,
        })
    }
}

fn watches(rows: Vec<WatchRow>) -> StoreResult<Vec<Watch>> {
    rows.into_iter().map(Watch::try_from).collect()
}

macro_rules! watch_impl {
    ($store:ty) => {
        #[async_trait]
        impl WatchStore for $store {
            async fn create_watch(&self, w: &NewWatch) -> StoreResult<Watch> {
                let template = serde_json::to_string(&w.template)
                    .map_err(|e| StoreError::Corrupt(format!("watch template: {e}")))?;
                let row: WatchRow = sqlx::query_as(INSERT_WATCH)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&w.owner)
                    .bind(&w.url)
                    .bind(w.kind.as_str())
                    .bind(w.kind.pattern())
                    .bind(&w.sums_url)
                    .bind(w.interval_secs)
                    .bind(template)
                    .bind(now_millis())
                    .fetch_one(&self.pool)
                    .await?;
                Watch::try_from(row)
            }

            async fn get_watch(&self, id: &str) -> StoreResult<Option<Watch>> {
                let row: Option<WatchRow> = sqlx::query_as(GET_WATCH)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Watch::try_from).transpose()
            }

            async fn list_watches(&self, owner: Option<&str>) -> StoreResult<Vec<Watch>> {
                let rows: Vec<WatchRow> = match owner {
                    Some(o) => {
                        sqlx::query_as(LIST_OWNER_WATCHES)
                            .bind(o)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => sqlx::query_as(LIST_WATCHES).fetch_all(&self.pool).await?,
                };
                watches(rows)
            }

            async fn count_watches(&self, owner: &str) -> StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(COUNT_WATCHES)
                    .bind(owner)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }

            async fn delete_watch(&self, id: &str) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(DELETE_CHECKS)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query(DELETE_WATCH).bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(n.rows_affected() == 1)
            }

            async fn set_watch_enabled(&self, id: &str, enabled: bool) -> StoreResult<bool> {
                let n = sqlx::query(SET_ENABLED)
                    .bind(id)
                    .bind(enabled)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(n.rows_affected() == 1)
            }

            async fn check_watch_now(&self, id: &str) -> StoreResult<bool> {
                let n = sqlx::query(CHECK_NOW)
                    .bind(id)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(n.rows_affected() == 1)
            }

            async fn watch_checks(&self, id: &str, limit: i64) -> StoreResult<Vec<WatchCheck>> {
                let rows: Vec<CheckRow> = sqlx::query_as(WATCH_CHECKS)
                    .bind(id)
                    .bind(limit.clamp(1, 1000))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(WatchCheck::try_from).collect()
            }

            async fn acquire_lease(
                &self,
                name: &str,
                holder: &str,
                until: Millis,
            ) -> StoreResult<bool> {
                let n = sqlx::query(ACQUIRE_LEASE)
                    .bind(name)
                    .bind(holder)
                    .bind(until)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(n.rows_affected() == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
                sqlx::query(RELEASE_LEASE)
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn due_watches(&self, now: Millis, limit: i64) -> StoreResult<Vec<Watch>> {
                let rows: Vec<WatchRow> = sqlx::query_as(DUE_WATCHES)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                watches(rows)
            }

            async fn record_check(
                &self,
                lease: &str,
                holder: &str,
                until: Millis,
                rec: CheckRecord<'_>,
            ) -> StoreResult<Recorded> {
                let now = now_millis();
                let mut tx = self.pool.begin().await?;
                let fence = sqlx::query(FENCE_LEASE)
                    .bind(lease)
                    .bind(holder)
                    .bind(until)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if fence.rows_affected() != 1 {
                    return Ok(Recorded::Lost);
                }
                let updated = sqlx::query(RECORD_WATCH)
                    .bind(rec.watch_id)
                    .bind(rec.previous.unwrap_or(""))
                    .bind(now)
                    .bind(rec.outcome.as_str())
                    .bind(rec.message)
                    .bind(rec.image_url)
                    .bind(rec.fingerprint)
                    .bind(rec.etag)
                    .bind(rec.last_modified)
                    .bind(rec.next_check_at)
                    .bind(i64::from(rec.job.is_some()))
                    .execute(&mut *tx)
                    .await?;
                if updated.rows_affected() != 1 {
                    return Ok(Recorded::Lost);
                }
                let mut queued = None;
                if let Some(job) = rec.job {
                    let row: JobRow = bind_new_job!(sqlx::query_as(sql::INSERT_JOB), job, now)
                        .fetch_one(&mut *tx)
                        .await?;
                    let job = Job::try_from(row)?;
                    sqlx::query(sql::SYSTEM_LOG)
                        .bind(job.id.to_string())
                        .bind(now)
                        .bind(super::LogLevel::Info.as_str())
                        .bind(format!("queued by watch {}: {}", rec.watch_id, rec.message))
                        .execute(&mut *tx)
                        .await?;
                    queued = Some(job.id);
                }
                sqlx::query(INSERT_CHECK)
                    .bind(rec.watch_id)
                    .bind(now)
                    .bind(rec.outcome.as_str())
                    .bind(rec.message)
                    .bind(rec.image_url)
                    .bind(queued.map(|j| j.to_string()))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if queued.is_some() {
                    self.notify_work().await;
                }
                Ok(Recorded::Done { job: queued })
            }
        }
    };
}

watch_impl!(SqliteStore);
watch_impl!(PgStore);
