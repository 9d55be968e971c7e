//! The rollups behind the insights page (migration 0013) and their SQL:
//! finished jobs per day, duration histograms per week (stage runs, and
//! boot-to-login per image family), queue samples, and the newest failures.
//! Every read is bounded by a window and costs the same at any history size.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::common::fenced;
use super::{JobState, Lease, PgStore, SqliteStore, StoreError, StoreResult};
use crate::domain::Millis;

pub const DAY_MS: i64 = 86_400_000;
pub const WEEK_MS: i64 = 7 * DAY_MS;
/// Queue samples are taken once per slot, by whichever replica comes first.
pub const SAMPLE_SLOT_MS: i64 = 5 * 60_000;

/// Jobs that ended on one day (UTC) in one final state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayCount {
    /// Days since the Unix epoch.
    pub day: i64,
    pub state: JobState,
    pub jobs: i64,
}

/// One histogram bucket: `runs` durations in `[lo_ms, hi_ms)` in one week
/// for one key (a stage, or an image family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Weeks since the Unix epoch.
    pub week: i64,
    pub key: String,
    pub lo_ms: i64,
    pub hi_ms: i64,
    pub runs: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSample {
    /// Sample time, in [`SAMPLE_SLOT_MS`] slots since the epoch.
    pub slot: i64,
    pub queued: i64,
    pub waiting: i64,
    pub running: i64,
}

/// A failed job's error, as the runner wrote it ("fetch failed: …").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub error: Option<String>,
    pub finished_at: Option<Millis>,
}

#[async_trait]
pub trait InsightsStore: Send + Sync {
    /// Finished jobs per day and outcome from `since_day` on (folded and
    /// not yet folded, read in one statement).
    async fn daily_outcomes(&self, since_day: i64) -> StoreResult<Vec<DayCount>>;
    /// Folds the per-finish deltas into the daily counts (the reaper calls
    /// it); returns the deltas folded.
    async fn fold_daily_outcomes(&self) -> StoreResult<u64>;
    /// Succeeded stage runs' durations from `since_week` on, keyed by stage.
    async fn stage_durations(&self, since_week: i64) -> StoreResult<Vec<Bucket>>;
    /// Boot-to-login times from `since_week` on, keyed by image family.
    async fn boot_durations(&self, since_week: i64) -> StoreResult<Vec<Bucket>>;
    /// Counts one boot-to-login time of the leased job's VM.
    async fn record_boot(&self, lease: &Lease, family: &str, ms: i64) -> StoreResult<()>;
    /// Stores a queue sample for `slot` unless one is there; drops samples
    /// older than `keep_from`.
    async fn sample_queue(&self, sample: QueueSample, keep_from: i64) -> StoreResult<()>;
    async fn queue_samples(&self, since_slot: i64) -> StoreResult<Vec<QueueSample>>;
    /// The newest `limit` failed jobs created since `since` (newest first).
    async fn recent_failures(&self, since: Millis, limit: i64) -> StoreResult<Vec<Failure>>;
}

const DAILY_OUTCOMES: &str = "SELECT day, state, CAST(SUM(n) AS BIGINT) FROM (\
     SELECT day, state, n FROM job_daily WHERE day >= $1 \
     UNION ALL SELECT day, state, n FROM job_daily_deltas WHERE day >= $1) t \
     GROUP BY day, state ORDER BY day, state";
const TAKE_DAILY_DELTAS: &str = "DELETE FROM job_daily_deltas RETURNING day, state, n";
const ADD_DAILY: &str = "INSERT INTO job_daily (day, state, n) VALUES ($1, $2, $3) \
     ON CONFLICT (day, state) DO UPDATE SET n = job_daily.n + excluded.n";
const STAGE_DURATIONS: &str = "SELECT h.week, h.stage, b.lo_ms, b.hi_ms, h.runs \
     FROM stage_weekly h JOIN duration_buckets b ON b.bucket = h.bucket \
     WHERE h.week >= $1 ORDER BY h.week, h.stage, h.bucket";
const BOOT_DURATIONS: &str = "SELECT h.week, h.family, b.lo_ms, b.hi_ms, h.runs \
     FROM boot_weekly h JOIN duration_buckets b ON b.bucket = h.bucket \
     WHERE h.week >= $1 ORDER BY h.week, h.family, h.bucket";
const RECORD_BOOT: &str = "INSERT INTO boot_weekly (week, family, bucket, runs) \
     SELECT $4, $5, b.bucket, 1 FROM duration_buckets b \
     WHERE $6 >= b.lo_ms AND $6 < b.hi_ms AND EXISTS (SELECT 1 FROM jobs WHERE \
     id = $1 AND locked_by = $2 AND attempt = $3 AND state = 'running') \
     ON CONFLICT (week, family, bucket) DO UPDATE SET runs = boot_weekly.runs + 1";
const SAMPLE_QUEUE: &str = "INSERT INTO queue_samples (slot, queued, waiting, running) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (slot) DO NOTHING";
const PRUNE_SAMPLES: &str = "DELETE FROM queue_samples WHERE slot < $1";
const QUEUE_SAMPLES: &str = "SELECT slot, queued, waiting, running FROM queue_samples \
     WHERE slot >= $1 ORDER BY slot";
/// By (state, id): ids are UUID v7, so `id >= $1` is "created since" and
/// the index `jobs_state_id` serves it.
const RECENT_FAILURES: &str = "SELECT error, finished_at FROM jobs \
     WHERE state = 'failed' AND id >= $1 ORDER BY id DESC LIMIT $2";

/// The smallest UUID v7 (as stored: hyphenated) created at `ms`.
fn min_id_at(ms: Millis) -> String {
    let ms = ms.max(0) as u64;
    format!(
        "{:08x}-{:04x}-7000-8000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

fn day_counts(rows: Vec<(i64, String, i64)>) -> StoreResult<Vec<DayCount>> {
    rows.into_iter()
        .map(|(day, state, jobs)| {
            let state = state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("job_daily state: {e}")))?;
            Ok(DayCount { day, state, jobs })
        })
        .collect()
}

fn buckets(rows: Vec<(i64, String, i64, i64, i64)>) -> Vec<Bucket> {
    rows.into_iter()
        .map(|(week, key, lo_ms, hi_ms, runs)| Bucket {
            week,
            key,
            lo_ms,
            hi_ms,
            runs,
        })
        .collect()
}

macro_rules! insights_impl {
    ($store:ty) => {
        #[async_trait]
        impl InsightsStore for $store {
            async fn daily_outcomes(&self, since_day: i64) -> StoreResult<Vec<DayCount>> {
                let rows: Vec<(i64, String, i64)> = sqlx::query_as(DAILY_OUTCOMES)
                    .bind(since_day)
                    .fetch_all(&self.pool)
                    .await?;
                day_counts(rows)
            }

            async fn fold_daily_outcomes(&self) -> StoreResult<u64> {
                let mut tx = self.pool.begin().await?;
                let taken: Vec<(i64, String, i64)> = sqlx::query_as(TAKE_DAILY_DELTAS)
                    .fetch_all(&mut *tx)
                    .await?;
                // Summed here and written in key order, so two replicas
                // folding at once lock rows in the same order.
                let mut sums = BTreeMap::<(i64, String), i64>::new();
                for (day, state, n) in &taken {
                    *sums.entry((*day, state.clone())).or_default() += n;
                }
                for ((day, state), n) in sums {
                    sqlx::query(ADD_DAILY)
                        .bind(day)
                        .bind(state)
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(taken.len() as u64)
            }

            async fn stage_durations(&self, since_week: i64) -> StoreResult<Vec<Bucket>> {
                let rows = sqlx::query_as(STAGE_DURATIONS)
                    .bind(since_week)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(buckets(rows))
            }

            async fn boot_durations(&self, since_week: i64) -> StoreResult<Vec<Bucket>> {
                let rows = sqlx::query_as(BOOT_DURATIONS)
                    .bind(since_week)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(buckets(rows))
            }

            async fn record_boot(&self, lease: &Lease, family: &str, ms: i64) -> StoreResult<()> {
                let r = sqlx::query(RECORD_BOOT)
                    .bind(lease.job_id.to_string())
                    .bind(&lease.worker)
                    .bind(lease.attempt)
                    .bind(crate::domain::now_millis() / WEEK_MS)
                    .bind(family)
                    .bind(ms.max(0))
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn sample_queue(&self, s: QueueSample, keep_from: i64) -> StoreResult<()> {
                sqlx::query(SAMPLE_QUEUE)
                    .bind(s.slot)
                    .bind(s.queued)
                    .bind(s.waiting)
                    .bind(s.running)
                    .execute(&self.pool)
                    .await?;
                sqlx::query(PRUNE_SAMPLES)
                    .bind(keep_from)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn queue_samples(&self, since_slot: i64) -> StoreResult<Vec<QueueSample>> {
                let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(QUEUE_SAMPLES)
                    .bind(since_slot)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(slot, queued, waiting, running)| QueueSample {
                        slot,
                        queued,
                        waiting,
                        running,
                    })
                    .collect())
            }

            async fn recent_failures(
                &self,
                since: Millis,
                limit: i64,
            ) -> StoreResult<Vec<Failure>> {
                let rows: Vec<(Option<String>, Option<i64>)> = sqlx::query_as(RECENT_FAILURES)
                    .bind(min_id_at(since))
                    .bind(limit.clamp(1, 10_000))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(error, finished_at)| Failure { error, finished_at })
                    .collect())
            }
        }
    };
}

insights_impl!(SqliteStore);
insights_impl!(PgStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_id_of_a_millisecond_sorts_before_every_id_made_then() {
        let id = uuid::Uuid::now_v7();
        let ms = id.get_timestamp().unwrap().to_unix();
        let ms = (ms.0 * 1000 + u64::from(ms.1) / 1_000_000) as i64;
        let lo = min_id_at(ms);
        assert!(lo.as_str() <= id.hyphenated().to_string().as_str());
        assert!(min_id_at(ms + 1).as_str() > id.hyphenated().to_string().as_str());
        assert_eq!(lo.len(), 36);
    }
}
