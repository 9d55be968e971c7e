//! cluster-upload: puts the image into the cluster's image store, with
//! progress, and records it so teardown can remove it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{image_path, ScanEnv};
use crate::cluster::ClusterError;
use crate::domain::{fmt_bytes, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no image to upload: the intake stages recorded no path")]
    NoImage,
    #[error("upload to {cluster} failed: {source}")]
    Cluster {
        cluster: String,
        source: ClusterError,
    },
}

impl StageFailure for UploadError {
    fn is_retryable(&self) -> bool {
        matches!(self, UploadError::Cluster { source, .. } if source.is_retryable())
    }
}

pub struct ClusterUploadStage {
    env: Arc<ScanEnv>,
}

impl ClusterUploadStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        ClusterUploadStage { env }
    }
}

#[async_trait]
impl Stage for ClusterUploadStage {
    fn name(&self) -> StageName {
        StageName::ClusterUpload
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let path = image_path(ctx).ok_or(UploadError::NoImage)?;
        let provider = self.env.provider(ctx)?;
        let cluster = provider.name();
        let size = tokio::fs::metadata(&path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let endpoint = provider.endpoint();
        ctx.set_detail(json!({"cluster": cluster, "endpoint": endpoint, "source": path.display().to_string(), "size": size, "size_human": fmt_bytes(size), "progress": 0.0}), true)
            .await?;
        ctx.info(format!(
            "uploading {} ({}) to {cluster}{}",
            path.display(),
            fmt_bytes(size),
            endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
        ))
        .await?;

        let done = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(size));
        let (d, t) = (done.clone(), total.clone());
        let progress = move |n: u64, of: u64| {
            d.store(n, Ordering::Relaxed);
            t.store(of, Ordering::Relaxed);
        };
        let upload = provider.upload_image(ctx.job.id, &path, &progress);
        tokio::pin!(upload);
        let image = loop {
            tokio::select! {
                r = &mut upload => break r,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let (n, of) = (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
                    let p = if of == 0 { 0.0 } else { n as f64 / of as f64 };
                    ctx.set_detail(json!({"bytes": n, "total_bytes": of, "progress": p}), false).await?;
                }
            }
        }
        .map_err(|source| UploadError::Cluster { cluster: cluster.clone(), source })?;
        ctx.record_resource(
            "image",
            &cluster,
            &image.id,
            &json!({"name": image.name, "size": image.size}),
        )
        .await?;
        ctx.set_detail(
            json!({"image": image, "progress": 1.0, "bytes": image.size}),
            true,
        )
        .await?;
        ctx.info(format!(
            "image {} ({}) is in {cluster}",
            image.name,
            fmt_bytes(image.size)
        ))
        .await?;
        Ok(StageOutcome::Done)
    }
}
