//! The cluster janitor: at start-up and then periodically, removes VMs and
//! images of this installation's jobs that have ended, so nothing is left
//! running even when a teardown never got to run.
//!
//! What is ours is decided by the job id in the object's name or tag: a
//! UUIDv7 that only this installation's database holds. A `vmscan-*` object
//! whose job is not in our database (another installation's on a shared
//! cluster, or a person's) is never touched.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::{delete_object, ClusterProvider, Clusters, Owned};
use crate::store::{DynStore, LogLevel};

/// One sweep; returns how many objects were removed.
pub async fn sweep(store: &DynStore, provider: &Arc<dyn ClusterProvider>) -> usize {
    let owned = match provider.list_owned().await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "janitor: cannot list cluster objects");
            return 0;
        }
    };
    let cluster = provider.name();
    let mut removed = 0;
    for o in owned {
        let (kind, id, name, job) = match &o {
            Owned::Vm { id, name, job } => ("vm", id, name, *job),
            Owned::Image { id, name, job } => ("image", id, name, *job),
        };
        let ours_and_ended = match job {
            Some(j) => match store.get_job(j).await {
                Ok(Some(job)) => job.state.is_final(),
                // Not one of our jobs: someone else's object.
                Ok(None) => false,
                Err(_) => false,
            },
            None => false,
        };
        if !ours_and_ended {
            continue;
        }
        let result = delete_object(provider.as_ref(), kind, id).await;
        match result {
            Ok(()) => {
                removed += 1;
                tracing::warn!(kind, id = %id, name = %name, "janitor removed a leftover");
                if let Some(j) = job {
                    let _ = store.resource_gone(j, &cluster, id).await;
                    let _ = store
                        .append_system_log(
                            j,
                            LogLevel::Warn,
                            &format!("janitor removed leftover {kind} {name} on {cluster}"),
                        )
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(kind, id = %id, error = %e, "janitor could not remove a leftover")
            }
        }
    }
    removed
}

pub async fn run(
    store: DynStore,
    clusters: Arc<Clusters>,
    storage: crate::config::StorageConfig,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        for provider in clusters.all() {
            sweep(&store, &provider).await;
        }
        super::workdir::sweep(&store, &storage).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
