//! Runs one claimed job through the pipeline: resumes at the first stage not
//! yet done in this run, parks or retries on request, and always runs the
//! teardown-type stages, even after a failure or a cancel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::events::{JobEvents, StageEnd};
use super::heartbeat::{self, Signals};
use crate::config::Config;
use crate::domain::{fmt_duration_ms, fmt_millis, now_millis, JobState, StageName, StageState};
use crate::pipeline::{Pipeline, StageCtx, StageError, StageOutcome};
use crate::store::{DynStore, Job, Lease, LogLevel, StoreError, StoreResult};

/// Everything a runner needs besides the job.
#[derive(Clone)]
pub struct RunEnv {
    pub store: DynStore,
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    /// Fires at the end of the shutdown grace period: running stages are
    /// stopped and their jobs handed back to the queue.
    pub hard_stop: CancellationToken,
    /// Followers of job life (notifications).
    pub events: Arc<Vec<Arc<dyn JobEvents>>>,
}

impl RunEnv {
    pub fn work_dir(&self, job: &Job) -> PathBuf {
        self.config
            .storage
            .data_dir
            .join("jobs")
            .join(job.id.to_string())
    }
}

/// How a stage's run ended, from the runner's point of view.
enum Ran {
    Done(Result<StageOutcome, StageError>),
    Lost,
    Shutdown,
}

/// Records how a stage run ended and tells the job's followers.
#[allow(clippy::too_many_arguments)]
async fn end_stage(
    env: &RunEnv,
    job: &Job,
    lease: &Lease,
    run_id: i64,
    name: StageName,
    started: std::time::Instant,
    state: StageState,
    detail: &serde_json::Value,
    error: Option<&str>,
) -> StoreResult<()> {
    env.store
        .finish_stage(lease, run_id, state, detail, error)
        .await?;
    let end = StageEnd {
        state,
        duration_ms: started.elapsed().as_millis() as i64,
        detail,
        error,
    };
    for e in env.events.iter() {
        e.stage_finished(job, name, &end).await;
    }
    Ok(())
}

/// Runs a job the caller has claimed. Store errors other than a lost lease are
/// returned; the lease then expires and the reaper gives the job to someone else.
pub async fn run_claimed(env: &RunEnv, job: Job, lease: Lease) -> StoreResult<()> {
    let signals = Signals::default();
    let hb_stop = CancellationToken::new();
    let hb = tokio::spawn(heartbeat::run(
        env.store.clone(),
        lease.clone(),
        Arc::new(env.config.worker.clone()),
        signals.clone(),
        hb_stop.clone(),
    ));
    let result = drive(env, job, &lease, &signals).await;
    hb_stop.cancel();
    let _ = hb.await;
    match result {
        // The job is over and its directory moved aside: free the disk now,
        // after its followers already saw it end.
        Ok(Some(disposal)) => {
            disposal.finish().await;
            Ok(())
        }
        Ok(None) | Err(StoreError::Fenced(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs the job to its end; returns what became of its work directory.
async fn drive(
    env: &RunEnv,
    job: Job,
    lease: &Lease,
    signals: &Signals,
) -> StoreResult<Option<super::workdir::Disposal>> {
    let store = &env.store;
    let stale = store.interrupt_stale_runs(lease).await?;
    if stale > 0 {
        store
            .append_log(lease, None, LogLevel::Warn, "an earlier worker was lost while running this job; resuming from the last finished stage")
            .await?;
    }
    store
        .append_log(
            lease,
            None,
            LogLevel::Info,
            &format!(
                "claimed by worker {} (attempt {})",
                lease.worker, lease.attempt
            ),
        )
        .await?;

    if lease.attempt == job.run_base_attempt {
        for e in env.events.iter() {
            e.job_started(&job).await;
        }
    }

    let runs = store.stage_runs(job.id).await?;
    let this_run: Vec<_> = runs
        .iter()
        .filter(|r| r.attempt >= job.run_base_attempt)
        .collect();
    let mut outputs: HashMap<StageName, serde_json::Value> = HashMap::new();
    for r in this_run.iter().filter(|r| r.state == StageState::Succeeded) {
        if let Ok(name) = r.stage.parse::<StageName>() {
            outputs.insert(name, r.detail.clone());
        }
    }

    let mut cancelled = job.cancel_requested;
    let aborted = job.abort_reason.clone();
    // A running job with an error failed earlier and was interrupted during teardown.
    let mut failure: Option<String> = job.error.clone();
    let work_dir = env.work_dir(&job);
    if let Err(e) = tokio::fs::create_dir_all(&work_dir).await {
        failure = Some(format!(
            "cannot create work directory {}: {e}",
            work_dir.display()
        ));
    }

    for stage in env.pipeline.iter() {
        let name = stage.name();
        if outputs.contains_key(&name) {
            continue;
        }
        let stopping = cancelled || aborted.is_some() || failure.is_some();
        if stopping && !stage.always_runs() {
            continue;
        }
        if signals.cancel.is_cancelled() && !stage.always_runs() {
            cancelled = true;
            continue;
        }
        let run_id = store.start_stage(lease, name).await?;
        let started = std::time::Instant::now();
        for e in env.events.iter() {
            e.stage_started(&job, name).await;
        }
        // Teardown must not be interrupted by the cancel that triggered it.
        let stage_cancel = if stage.always_runs() {
            CancellationToken::new()
        } else {
            signals.cancel.clone()
        };
        let ctx = StageCtx::new(
            job.clone(),
            lease.clone(),
            name,
            env.config.clone(),
            work_dir.clone(),
            stage_cancel.clone(),
            store.clone(),
            run_id,
            outputs.clone(),
        );
        // A panicking stage fails like any other (teardown still runs and the
        // lease is released); it must never take the worker down while the
        // heartbeat keeps the job `running`.
        let guarded = std::panic::AssertUnwindSafe(stage.run(&ctx)).catch_unwind();
        let ran = tokio::select! {
            r = guarded => Ran::Done(r.unwrap_or_else(|p| {
                let message = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(stage = %name, job = %job.id, panic = %message, backtrace = %std::backtrace::Backtrace::force_capture(), "stage panicked");
                Err(StageError::Panicked { stage: name, message })
            })),
            _ = stage_cancel.cancelled() => Ran::Done(Err(StageError::Cancelled)),
            _ = signals.lost.cancelled() => Ran::Lost,
            _ = env.hard_stop.cancelled() => Ran::Shutdown,
        };
        let detail = ctx.detail().await;
        drop(ctx);
        let end = |state: StageState, error: Option<&str>| {
            let error = error.map(str::to_string);
            let (job, detail) = (&job, &detail);
            async move {
                end_stage(
                    env,
                    job,
                    lease,
                    run_id,
                    name,
                    started,
                    state,
                    detail,
                    error.as_deref(),
                )
                .await
            }
        };
        match ran {
            Ran::Lost => return Err(StoreError::Fenced(lease.job_id)),
            Ran::Shutdown => {
                end(
                    StageState::Interrupted,
                    Some("stopped by daemon shutdown; the job was handed back"),
                )
                .await?;
                store
                    .append_log(
                        lease,
                        Some(name),
                        LogLevel::Warn,
                        "daemon shutting down: job handed back to the queue",
                    )
                    .await?;
                return store.hand_back(lease).await.map(|()| None);
            }
            Ran::Done(Ok(StageOutcome::Done)) => {
                end(StageState::Succeeded, None).await?;
                outputs.insert(name, detail.clone());
            }
            Ran::Done(Ok(StageOutcome::Park { until, reason })) => {
                end(StageState::Parked, None).await?;
                store
                    .append_log(
                        lease,
                        Some(name),
                        LogLevel::Info,
                        &format!("waiting: {reason} — next check at {}", fmt_millis(until)),
                    )
                    .await?;
                return store.park(lease, until, &reason).await.map(|()| None);
            }
            Ran::Done(Err(StageError::Cancelled)) => {
                end(StageState::Cancelled, Some("cancelled by user")).await?;
                store
                    .append_log(lease, Some(name), LogLevel::Warn, "cancelled by user")
                    .await?;
                cancelled = true;
            }
            Ran::Done(Err(StageError::Store(StoreError::Fenced(id)))) => {
                return Err(StoreError::Fenced(id))
            }
            Ran::Done(Err(e)) => {
                let msg = e.to_string();
                end(StageState::Failed, Some(&msg)).await?;
                store
                    .append_log(lease, Some(name), LogLevel::Error, &msg)
                    .await?;
                if e.is_retryable() && !stage.always_runs() {
                    let failures = this_run
                        .iter()
                        .filter(|r| r.stage == name.as_str() && r.state == StageState::Failed)
                        .count() as u32
                        + 1;
                    let limit = env.config.pipeline.retry_limit;
                    if failures <= limit {
                        let backoff = env
                            .config
                            .pipeline
                            .retry_backoff_secs
                            .saturating_mul(1 << (failures - 1).min(10));
                        let until = now_millis() + (backoff as i64) * 1000;
                        let reason = format!("{name} failed ({msg}); retry {failures} of {limit}");
                        store
                            .append_log(
                                lease,
                                Some(name),
                                LogLevel::Warn,
                                &format!(
                                    "{reason} at {} (in {})",
                                    fmt_millis(until),
                                    fmt_duration_ms(backoff as i64 * 1000)
                                ),
                            )
                            .await?;
                        return store.park(lease, until, &reason).await.map(|()| None);
                    }
                }
                let reason = format!("{name} failed: {msg}");
                if failure.is_none() {
                    store.set_error(lease, &reason).await?;
                    failure = Some(reason);
                }
            }
        }
    }

    let (state, error) = if let Some(reason) = aborted {
        (JobState::Failed, Some(reason))
    } else if let Some(f) = failure {
        (JobState::Failed, Some(f))
    } else if cancelled {
        (JobState::Cancelled, Some("cancelled by user".to_string()))
    } else {
        (JobState::Succeeded, None)
    };
    let level = if state == JobState::Succeeded {
        LogLevel::Info
    } else {
        LogLevel::Error
    };
    let summary = match &error {
        Some(e) => format!("job {state}: {e}"),
        None => format!("job {state}"),
    };
    store.append_log(lease, None, level, &summary).await?;
    // Teardown ran: nothing logs in to the guest again.
    if let Err(e) = super::workdir::remove_secrets(&work_dir).await {
        store
            .append_log(
                lease,
                None,
                LogLevel::Warn,
                &format!("cannot remove the job's guest credentials: {e}"),
            )
            .await?;
    }
    let keep = env.config.storage.keep_secs(state);
    let disposal = match super::workdir::dispose(&work_dir, keep).await {
        Ok(d) => {
            store
                .append_log(lease, None, LogLevel::Info, &d.describe())
                .await?;
            Some(d)
        }
        Err(e) => {
            store
                .append_log(
                    lease,
                    None,
                    LogLevel::Warn,
                    &format!(
                        "cannot delete the work files in {}: {e}",
                        work_dir.display()
                    ),
                )
                .await?;
            None
        }
    };
    store.finish_job(lease, state, error.as_deref()).await?;
    for e in env.events.iter() {
        e.job_finished(&job, state, error.as_deref()).await;
    }
    Ok(disposal)
}
