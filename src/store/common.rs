//! The `Store` implementation both backends share. It is a macro, not a
//! generic, because sqlx's executor bounds make generic code unreadable;
//! each backend expands it with its pool type and its claim statement.

/// Binds the worker fence of a statement: $1 job, $2 worker, $3 attempt.
macro_rules! leased {
    ($query:expr, $lease:expr) => {
        $query
            .bind($lease.job_id.to_string())
            .bind(&$lease.worker)
            .bind($lease.attempt)
    };
}

/// Binds a new job's columns $1…$8: a fresh id, what was submitted, and
/// `now` as created_at/updated_at (single submissions and batches alike).
macro_rules! bind_new_job {
    ($query:expr, $job:expr, $now:expr) => {
        $query
            .bind($crate::domain::JobId::new().to_string())
            .bind($job.url.to_string())
            .bind($job.checksum.map(|c| c.to_string()))
            .bind($job.requested_by)
            .bind($job.email)
            .bind($job.note)
            .bind($job.options.to_string())
            .bind($now)
    };
}

macro_rules! store_impl {
    ($store:ty, $db:ty, $claim:expr) => {
        impl $store {
            /// Keeps a job's log within its [`LogCap`](super::LogCap):
            /// past it, each new line drops the oldest one after the head.
            async fn cap_log(&self, id: JobId) -> StoreResult<()> {
                let n: Option<(i64,)> = sqlx::query_as(sql::COUNT_LOG_LINE)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                let (max, head) = self.log_cap.get();
                if n.is_some_and(|(n,)| n > max) {
                    sqlx::query(sql::DROP_LOG_LINE)
                        .bind(id.to_string())
                        .bind(head)
                        .execute(&self.pool)
                        .await?;
                    sqlx::query(sql::COUNT_DROPPED)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                Self::BACKEND
            }

            fn log_cap(&self) -> &super::LogCap {
                &self.log_cap
            }

            async fn migrate(&self) -> StoreResult<()> {
                Self::MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_job(&self, job: NewJob) -> StoreResult<Job> {
                let now = now_millis();
                let row: JobRow = bind_new_job!(sqlx::query_as(sql::INSERT_JOB), job, now)
                    .fetch_one(&self.pool)
                    .await?;
                self.notify_work().await;
                Job::try_from(row)
            }

            async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>> {
                let row: Option<JobRow> = sqlx::query_as(sql::GET_JOB)
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Job::try_from).transpose()
            }

            async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
                let mut q = sqlx::QueryBuilder::<$db>::new(sql::SELECT_JOBS);
                q.push(" WHERE 1 = 1");
                if let Some(state) = filter.state {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(who) = &filter.requested_by {
                    q.push(" AND requested_by = ").push_bind(who.clone());
                }
                // Options are stored as compact JSON (serde_json), so a
                // key's value is found as its exact serialised pair.
                for (key, value) in [("cluster", &filter.cluster), ("os", &filter.os)] {
                    if let Some(v) = value {
                        let pair = format!("\"{key}\":{}", serde_json::Value::from(v.as_str()));
                        q.push(" AND options LIKE ")
                            .push_bind(format!("%{}%", super::like_escape(&pair)))
                            .push(" ESCAPE '\\'");
                    }
                }
                if let Some(text) = &filter.text {
                    let pat = format!("%{}%", super::like_escape(&text.to_lowercase()));
                    q.push(" AND (LOWER(url) LIKE ")
                        .push_bind(pat.clone())
                        .push(" ESCAPE '\\' OR LOWER(COALESCE(note, '')) LIKE ")
                        .push_bind(pat.clone())
                        .push(" ESCAPE '\\' OR LOWER(options) LIKE ")
                        .push_bind(pat)
                        .push(" ESCAPE '\\')");
                }
                if let Some(before) = filter.before {
                    q.push(" AND id < ").push_bind(before.to_string());
                }
                q.push(" ORDER BY id DESC LIMIT ")
                    .push_bind(filter.limit.clamp(1, 1000));
                let rows: Vec<JobRow> = q.build_query_as().fetch_all(&self.pool).await?;
                collect(rows)
            }

            async fn count_queued(&self) -> StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(sql::COUNT_QUEUED)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }

            async fn count_by_state(&self) -> StoreResult<Vec<(JobState, i64)>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(sql::COUNT_BY_STATE)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|(s, n)| {
                        s.parse::<JobState>()
                            .map(|st| (st, n))
                            .map_err(|e| StoreError::Corrupt(e.to_string()))
                    })
                    .collect()
            }

            async fn fold_job_counts(&self) -> StoreResult<u64> {
                let mut tx = self.pool.begin().await?;
                let taken: Vec<(String, i64)> = sqlx::query_as(sql::TAKE_COUNT_DELTAS)
                    .fetch_all(&mut *tx)
                    .await?;
                // Summed here and written in state order, so two replicas
                // folding at once lock base rows in the same order.
                let mut sums = std::collections::BTreeMap::<String, i64>::new();
                for (state, n) in &taken {
                    *sums.entry(state.clone()).or_default() += n;
                }
                for (state, n) in sums {
                    sqlx::query(sql::ADD_JOB_COUNT)
                        .bind(state)
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(taken.len() as u64)
            }

            async fn count_recent_jobs(&self, user: &str, since: Millis) -> StoreResult<i64> {
                let (n,): (i64,) = sqlx::query_as(sql::COUNT_RECENT_JOBS)
                    .bind(user)
                    .bind(since)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }

            async fn request_cancel(&self, id: JobId) -> StoreResult<CancelOutcome> {
                let now = now_millis();
                let done = sqlx::query(sql::CANCEL_UNSTARTED)
                    .bind(id.to_string())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok(CancelOutcome::Cancelled);
                }
                let flagged = sqlx::query(sql::CANCEL_REQUEST)
                    .bind(id.to_string())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                if flagged.rows_affected() == 1 {
                    self.notify_work().await;
                    return Ok(CancelOutcome::Requested);
                }
                match self.get_job(id).await? {
                    Some(job) => Ok(CancelOutcome::AlreadyFinal(job.state)),
                    None => Err(StoreError::NotFound(id)),
                }
            }

            async fn retry_job(&self, id: JobId) -> StoreResult<Job> {
                let done = sqlx::query(sql::RETRY)
                    .bind(id.to_string())
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                let job = self.get_job(id).await?.ok_or(StoreError::NotFound(id))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!(
                        "job {id} is {}; only failed or cancelled jobs can be retried",
                        job.state
                    )));
                }
                if job.batch_id.is_some() {
                    sqlx::query(super::batch::REOPEN)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                }
                self.notify_work().await;
                Ok(job)
            }

            async fn stage_runs(&self, id: JobId) -> StoreResult<Vec<StageRun>> {
                let rows: Vec<StageRunRow> = sqlx::query_as(sql::STAGE_RUNS)
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                collect(rows)
            }

            async fn log_lines(
                &self,
                id: JobId,
                after: i64,
                limit: i64,
            ) -> StoreResult<Vec<LogLine>> {
                let rows: Vec<LogRow> = sqlx::query_as(sql::LOG_AFTER)
                    .bind(id.to_string())
                    .bind(after)
                    .bind(limit.clamp(1, 5000))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(LogLine::from).collect())
            }

            async fn log_tail(&self, id: JobId, limit: i64) -> StoreResult<Vec<LogLine>> {
                let rows: Vec<LogRow> = sqlx::query_as(sql::LOG_TAIL)
                    .bind(id.to_string())
                    .bind(limit.clamp(1, 5000))
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(LogLine::from).collect())
            }

            async fn resources(&self, id: JobId) -> StoreResult<Vec<Resource>> {
                let rows: Vec<ResourceRow> = sqlx::query_as(sql::RESOURCES)
                    .bind(id.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                collect(rows)
            }

            async fn stage_stats(&self) -> StoreResult<Vec<StageStat>> {
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(sql::STAGE_STATS)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(stage, state, count, total_ms)| StageStat {
                        stage,
                        state,
                        count,
                        total_ms,
                    })
                    .collect())
            }

            async fn resource_gone(
                &self,
                id: JobId,
                provider: &str,
                external_id: &str,
            ) -> StoreResult<()> {
                sqlx::query(sql::RESOURCE_GONE)
                    .bind(id.to_string())
                    .bind(provider)
                    .bind(external_id)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn append_system_log(
                &self,
                id: JobId,
                level: LogLevel,
                message: &str,
            ) -> StoreResult<()> {
                sqlx::query(sql::SYSTEM_LOG)
                    .bind(id.to_string())
                    .bind(now_millis())
                    .bind(level.as_str())
                    .bind(super::cap_line(message).as_ref())
                    .execute(&self.pool)
                    .await?;
                self.cap_log(id).await
            }

            async fn claim(
                &self,
                worker: &str,
                lease_for: Duration,
            ) -> StoreResult<Option<(Job, Lease)>> {
                let now = now_millis();
                let row: Option<JobRow> = sqlx::query_as($claim)
                    .bind(worker)
                    .bind(now + millis(lease_for))
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let job = Job::try_from(row)?;
                let lease = Lease {
                    job_id: job.id,
                    worker: worker.to_string(),
                    attempt: job.attempt,
                };
                Ok(Some((job, lease)))
            }

            async fn renew(&self, lease: &Lease, lease_for: Duration) -> StoreResult<bool> {
                let flag: Option<(bool,)> = leased!(sqlx::query_as(sql::RENEW), lease)
                    .bind(now_millis() + millis(lease_for))
                    .fetch_optional(&self.pool)
                    .await?;
                flag.map(|(f,)| f).ok_or(StoreError::Fenced(lease.job_id))
            }

            async fn cancel_requested(&self, lease: &Lease) -> StoreResult<bool> {
                let flag: Option<(bool,)> = leased!(sqlx::query_as(sql::CANCEL_FLAG), lease)
                    .fetch_optional(&self.pool)
                    .await?;
                flag.map(|(f,)| f).ok_or(StoreError::Fenced(lease.job_id))
            }

            async fn interrupt_stale_runs(&self, lease: &Lease) -> StoreResult<u64> {
                let mut tx = self.pool.begin().await?;
                let runs: Vec<(String, i64)> = leased!(sqlx::query_as(sql::INTERRUPT_STALE), lease)
                    .bind(now_millis())
                    .fetch_all(&mut *tx)
                    .await?;
                for (stage, ms) in &runs {
                    sqlx::query(sql::ADD_STAGE_TOTAL)
                        .bind(stage)
                        .bind(StageState::Interrupted.as_str())
                        .bind(ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(runs.len() as u64)
            }

            async fn start_stage(&self, lease: &Lease, stage: StageName) -> StoreResult<i64> {
                let now = now_millis();
                let id: Option<(i64,)> = leased!(sqlx::query_as(sql::START_STAGE), lease)
                    .bind(stage.as_str())
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                let (id,) = id.ok_or(StoreError::Fenced(lease.job_id))?;
                fenced(
                    leased!(sqlx::query(sql::SET_CURRENT_STAGE), lease)
                        .bind(stage.as_str())
                        .bind(now)
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                    lease,
                )?;
                Ok(id)
            }

            async fn update_stage_detail(
                &self,
                lease: &Lease,
                run: i64,
                detail: &serde_json::Value,
            ) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::UPDATE_STAGE_DETAIL), lease)
                    .bind(run)
                    .bind(detail.to_string())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn finish_stage(
                &self,
                lease: &Lease,
                run: i64,
                state: StageState,
                detail: &serde_json::Value,
                error: Option<&str>,
            ) -> StoreResult<()> {
                // The run and its stage total change together, so /metrics
                // never counts a run twice or misses one.
                let mut tx = self.pool.begin().await?;
                let done: Option<(String, i64)> = leased!(sqlx::query_as(sql::FINISH_STAGE), lease)
                    .bind(run)
                    .bind(state.as_str())
                    .bind(detail.to_string())
                    .bind(error)
                    .bind(now_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                let (stage, ms) = done.ok_or(StoreError::Fenced(lease.job_id))?;
                sqlx::query(sql::ADD_STAGE_TOTAL)
                    .bind(&stage)
                    .bind(state.as_str())
                    .bind(ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn append_log(
                &self,
                lease: &Lease,
                stage: Option<StageName>,
                level: LogLevel,
                message: &str,
            ) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::APPEND_LOG), lease)
                    .bind(now_millis())
                    .bind(stage.map(|s| s.as_str()))
                    .bind(level.as_str())
                    .bind(super::cap_line(message).as_ref())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)?;
                self.cap_log(lease.job_id).await
            }

            async fn record_resource(
                &self,
                lease: &Lease,
                kind: &str,
                provider: &str,
                external_id: &str,
                detail: &serde_json::Value,
            ) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::RECORD_RESOURCE), lease)
                    .bind(kind)
                    .bind(provider)
                    .bind(external_id)
                    .bind(detail.to_string())
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn mark_resource_deleted(&self, lease: &Lease, resource: i64) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::RESOURCE_DELETED), lease)
                    .bind(resource)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn park(&self, lease: &Lease, until: Millis, reason: &str) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::PARK), lease)
                    .bind(until)
                    .bind(reason)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn finish_job(
                &self,
                lease: &Lease,
                state: JobState,
                error: Option<&str>,
            ) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::FINISH_JOB), lease)
                    .bind(state.as_str())
                    .bind(error)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn set_error(&self, lease: &Lease, error: &str) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::SET_ERROR), lease)
                    .bind(error)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)
            }

            async fn hand_back(&self, lease: &Lease) -> StoreResult<()> {
                let r = leased!(sqlx::query(sql::HAND_BACK), lease)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                fenced(r.rows_affected(), lease)?;
                self.notify_work().await;
                Ok(())
            }

            async fn reap_expired(&self, max_expiries: i64) -> StoreResult<ReapReport> {
                let now = now_millis();
                let reason = format!(
                    "the job's worker was lost {max_expiries} times (crash or expired lease); \
                     giving up after tearing down what it created"
                );
                let ids = |rows: Vec<(String,)>| -> StoreResult<Vec<JobId>> {
                    rows.iter().map(|(s,)| job_id(s)).collect()
                };
                let requeued = ids(sqlx::query_as(sql::REAP_REQUEUE)
                    .bind(now)
                    .bind(max_expiries)
                    .fetch_all(&self.pool)
                    .await?)?;
                let aborted = ids(sqlx::query_as(sql::REAP_ABORT)
                    .bind(now)
                    .bind(max_expiries)
                    .bind(&reason)
                    .fetch_all(&self.pool)
                    .await?)?;
                let failed = ids(sqlx::query_as(sql::REAP_FAIL)
                    .bind(now)
                    .bind(max_expiries)
                    .bind(&reason)
                    .fetch_all(&self.pool)
                    .await?)?;
                if !requeued.is_empty() || !aborted.is_empty() {
                    self.notify_work().await;
                }
                Ok(ReapReport {
                    requeued,
                    aborted,
                    failed,
                })
            }

            fn work_signal(&self) -> tokio::sync::watch::Receiver<u64> {
                self.subscribe_work()
            }
        }
    };
}

pub(crate) use bind_new_job;
pub(crate) use leased;
pub(crate) use store_impl;

use super::{Lease, StoreError, StoreResult};

/// A fenced write that touched no row means the lease is gone.
pub(crate) fn fenced(rows: u64, lease: &Lease) -> StoreResult<()> {
    if rows == 0 {
        Err(StoreError::Fenced(lease.job_id))
    } else {
        Ok(())
    }
}
