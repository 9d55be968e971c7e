//! A pool of worker loops plus the lease reaper.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::runner::{run_claimed, RunEnv};
use crate::store::LogLevel;

pub struct WorkerPool;

/// Controls a running pool.
pub struct WorkerPoolHandle {
    stop_claiming: CancellationToken,
    hard_stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl WorkerPool {
    /// Starts `config.worker.pool_size` workers and a reaper. `env.hard_stop`
    /// is used as the pool's deadline token.
    pub fn start(env: RunEnv, name: &str) -> WorkerPoolHandle {
        let stop_claiming = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for i in 0..env.config.worker.pool_size {
            let worker = format!("{name}/{i}");
            tasks.spawn(worker_loop(env.clone(), worker, stop_claiming.clone()));
        }
        tasks.spawn(reaper_loop(env.clone(), stop_claiming.clone()));
        WorkerPoolHandle {
            stop_claiming,
            hard_stop: env.hard_stop.clone(),
            tasks,
        }
    }
}

impl WorkerPoolHandle {
    /// Stops claiming, lets running stages finish for up to `grace`, then
    /// stops them and hands their jobs back to the queue.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop_claiming.cancel();
        let hard_stop = self.hard_stop.clone();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { return },
                _ = &mut deadline, if !hard_stop.is_cancelled() => {
                    tracing::warn!("shutdown grace period over; handing running jobs back");
                    hard_stop.cancel();
                }
            }
        }
    }
}

/// A worker's name: host, process id and a random suffix, unique across replicas.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &suffix[suffix.len() - 6..]
    )
}

async fn worker_loop(env: RunEnv, worker: String, stop: CancellationToken) {
    let lease_for = Duration::from_secs(env.config.worker.lease_secs);
    let poll = Duration::from_millis(env.config.worker.poll_interval_ms.max(10));
    let mut signal = env.store.work_signal();
    while !stop.is_cancelled() {
        // Marked seen before the claim: work that arrives during it wakes us at once.
        signal.borrow_and_update();
        match env.store.claim(&worker, lease_for).await {
            Ok(Some((job, lease))) => {
                tracing::info!(job = %job.id, worker = %worker, attempt = lease.attempt, "claimed");
                if let Err(e) = run_claimed(&env, job, lease).await {
                    tracing::error!(worker = %worker, error = %e, "job run stopped on a store error; its lease will expire");
                    tokio::time::sleep(poll).await;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::timeout(poll, signal.changed()) => {}
                }
            }
            Err(e) => {
                tracing::warn!(worker = %worker, error = %e, "claim failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}

async fn reaper_loop(env: RunEnv, stop: CancellationToken) {
    let every = Duration::from_millis((env.config.worker.lease_secs * 1000 / 3).max(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match env
            .store
            .reap_expired(env.config.worker.max_lease_expiries)
            .await
        {
            Ok(report) => {
                for id in &report.requeued {
                    let _ = env
                        .store
                        .append_system_log(
                            *id,
                            LogLevel::Warn,
                            "worker lost (lease expired); job re-queued",
                        )
                        .await;
                }
                for id in &report.aborted {
                    let _ = env
                        .store
                        .append_system_log(*id, LogLevel::Error, "worker lost too many times; job re-queued only to tear down, then it fails")
                        .await;
                }
                for id in &report.failed {
                    let _ = env
                        .store
                        .append_system_log(
                            *id,
                            LogLevel::Error,
                            "worker lost again during teardown; job failed",
                        )
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
        if let Err(e) = env.store.fold_job_counts().await {
            tracing::warn!(error = %e, "folding the job counts failed");
        }
        if let Err(e) = env.store.fold_daily_outcomes().await {
            tracing::warn!(error = %e, "folding the daily outcomes failed");
        }
        if let Err(e) = crate::insights::sample_queue(&env.store).await {
            tracing::warn!(error = %e, "sampling the queue failed");
        }
    }
}
