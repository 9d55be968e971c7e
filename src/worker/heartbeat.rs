//! Keeps a claimed job's lease alive and notices cancel requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::store::{DynStore, Lease, StoreError};

/// Signals the heartbeat raises for the runner.
#[derive(Clone, Default)]
pub struct Signals {
    /// The user asked to cancel the job.
    pub cancel: CancellationToken,
    /// The lease is gone: stop touching this job at once.
    pub lost: CancellationToken,
}

/// Runs until `stop` fires. Renews the lease every third of its length and
/// checks for cancellation every `cancel_check_ms`.
pub async fn run(
    store: DynStore,
    lease: Lease,
    cfg: Arc<WorkerConfig>,
    signals: Signals,
    stop: CancellationToken,
) {
    let lease_for = Duration::from_secs(cfg.lease_secs);
    let renew_every = lease_for / 3;
    let tick = Duration::from_millis(cfg.cancel_check_ms.max(50)).min(renew_every);
    let mut last_renew = Instant::now();
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let result = if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            store.renew(&lease, lease_for).await
        } else {
            store.cancel_requested(&lease).await
        };
        if result.is_ok() {
            last_ok = Instant::now();
        }
        match result {
            Ok(true) => signals.cancel.cancel(),
            Ok(false) => {}
            Err(StoreError::Fenced(_)) => {
                tracing::warn!(job = %lease.job_id, "lease lost; abandoning the job");
                signals.lost.cancel();
                return;
            }
            // A database hiccup: keep trying until the lease would have expired.
            Err(e) => {
                tracing::warn!(job = %lease.job_id, error = %e, "lease renewal failed");
                if last_ok.elapsed() >= lease_for {
                    signals.lost.cancel();
                    return;
                }
            }
        }
    }
}
