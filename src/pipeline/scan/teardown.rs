//! teardown: runs for every job that created anything, whatever happened
//! before. Deletes the job's VMs (checking they are gone) and images, and
//! marks each resource deleted. Optionally keeps a failed job's VM for a
//! bounded time first.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::ScanEnv;
use crate::cluster::{delete_object, ClusterError, Owned};
use crate::domain::{fmt_millis, now_millis, StageName, StageState};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};

#[derive(Debug, thiserror::Error)]
#[error("could not delete {kind} {id} on {cluster}: {source}")]
pub struct TeardownError {
    kind: String,
    id: String,
    cluster: String,
    source: ClusterError,
}

impl StageFailure for TeardownError {
    fn is_retryable(&self) -> bool {
        false
    }
}

pub struct TeardownStage {
    env: Arc<ScanEnv>,
}

impl TeardownStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        TeardownStage { env }
    }
}

/// Retries a deletion a few times: teardown must not give up on a hiccup.
async fn with_retries<F, Fut>(mut f: F) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClusterError>>,
{
    let mut delay = Duration::from_secs(1);
    let mut last = None;
    for _ in 0..4 {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(last.expect("at least one attempt"))
}

/// Deletes the job's VMs: the recorded ones, and any the cluster holds for
/// this job that were never recorded (a crash right after create).
pub async fn delete_job_vms(ctx: &StageCtx, env: &ScanEnv) -> Result<usize, StageError> {
    delete_kind(ctx, env, "vm").await
}

async fn delete_kind(ctx: &StageCtx, env: &ScanEnv, kind: &str) -> Result<usize, StageError> {
    let job_provider = env.provider(ctx)?;
    let mut deleted = 0;
    let resources = ctx.store().resources(ctx.job.id).await?;
    // Each resource is deleted where it was recorded (the job's cluster).
    for r in resources
        .iter()
        .filter(|r| r.kind == kind && r.deleted_at.is_none())
    {
        let cluster = r.provider.clone();
        let provider = env.clusters.get(&cluster).ok_or_else(|| TeardownError {
            kind: kind.into(),
            id: r.external_id.clone(),
            cluster: cluster.clone(),
            source: ClusterError::Local(format!("cluster {cluster} is no longer configured")),
        })?;
        let id = r.external_id.clone();
        let result = with_retries(|| delete_object(provider.as_ref(), kind, &id)).await;
        result.map_err(|source| TeardownError {
            kind: kind.into(),
            id: id.clone(),
            cluster: cluster.clone(),
            source,
        })?;
        ctx.store().mark_resource_deleted(&ctx.lease, r.id).await?;
        ctx.info(format!("deleted {kind} {id} on {cluster}"))
            .await?;
        deleted += 1;
    }
    // Leftovers tagged with this job that were never recorded.
    let cluster = job_provider.name();
    let owned = job_provider
        .list_owned()
        .await
        .map_err(|source| TeardownError {
            kind: kind.into(),
            id: "(listing)".into(),
            cluster: cluster.clone(),
            source,
        })?;
    for o in owned {
        let (is_kind, id, job) = match &o {
            Owned::Vm { id, job, .. } => (kind == "vm", id.clone(), *job),
            Owned::Image { id, job, .. } => (kind == "image", id.clone(), *job),
        };
        if !is_kind || job != Some(ctx.job.id) {
            continue;
        }
        let result = delete_object(job_provider.as_ref(), kind, &id).await;
        result.map_err(|source| TeardownError {
            kind: kind.into(),
            id: id.clone(),
            cluster: cluster.clone(),
            source,
        })?;
        ctx.warn(format!(
            "deleted unrecorded {kind} {id} left by an interrupted attempt"
        ))
        .await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Tears down everything the job created on the cluster.
pub async fn teardown_job(ctx: &StageCtx, env: &ScanEnv) -> Result<(usize, usize), StageError> {
    let vms = delete_kind(ctx, env, "vm").await?;
    let images = if env.vm.delete_image {
        delete_kind(ctx, env, "image").await?
    } else {
        0
    };
    Ok((vms, images))
}

#[async_trait]
impl Stage for TeardownStage {
    fn name(&self) -> StageName {
        StageName::Teardown
    }

    fn always_runs(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let keep = self.env.vm.keep_failed_secs;
        let failed = ctx.job.error.is_some() && ctx.job.abort_reason.is_none();
        if keep > 0 && failed {
            // Keep the failed VM for debugging, unless the user asked to tear down now (cancel).
            let cancelled = ctx
                .store()
                .cancel_requested(&ctx.lease)
                .await
                .unwrap_or(false)
                || ctx.job.cancel_requested;
            let runs = ctx.store().stage_runs(ctx.job.id).await?;
            let kept_since = runs
                .iter()
                .filter(|r| {
                    r.stage == StageName::Teardown.as_str()
                        && r.attempt >= ctx.job.run_base_attempt
                        && r.state == StageState::Parked
                })
                .map(|r| r.started_at)
                .next();
            let until = kept_since.unwrap_or_else(now_millis) + keep as i64 * 1000;
            if !cancelled && now_millis() < until {
                ctx.set_detail(json!({"kept_until": fmt_millis(until)}), true)
                    .await?;
                return Ok(StageOutcome::Park {
                    until,
                    reason: format!("keeping the failed job's VM for debugging until {}; Cancel tears it down now", fmt_millis(until)),
                });
            }
        }
        let (vms, images) = teardown_job(ctx, &self.env).await?;
        ctx.set_detail(json!({"vms_deleted": vms, "images_deleted": images, "cluster": self.env.provider(ctx)?.name()}), true).await?;
        if vms + images == 0 {
            ctx.info("nothing to tear down").await?;
        }
        Ok(StageOutcome::Done)
    }
}
