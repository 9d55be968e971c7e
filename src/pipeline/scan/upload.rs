//! cluster-upload: puts the image into the cluster's image store, with
//! progress, and records it so teardown can remove it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{image_path, ScanEnv};
use crate::cluster::{ClusterError, ImageFile, ImageFileError};
use crate::domain::{fmt_bytes, StageName};
use crate::pipeline::image_format::ImageFormat;
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no image to upload: the intake stages recorded no path")]
    NoImage,
    #[error(transparent)]
    Image(#[from] ImageFileError),
    #[error("upload to {cluster} failed: {source}")]
    Cluster {
        cluster: String,
        source: ClusterError,
    },
}

/// The image with its virtual size and sha256: from convert when it wrote
/// this file, else read from the file (the virtual size as inspect's qemu-img saw it).
async fn image_file(ctx: &StageCtx, path: &std::path::Path) -> Result<ImageFile, UploadError> {
    let same = |stage| {
        ctx.output_of(stage)
            .filter(|o| o.get("path").and_then(|p| p.as_str()) == path.to_str())
    };
    let format = |o: &serde_json::Value| {
        serde_json::from_value::<ImageFormat>(o.get("format")?.clone()).ok()
    };
    if let Some(c) = same(StageName::Convert) {
        let u = |k: &str| c.get(k).and_then(|v| v.as_u64());
        if let (Some(f), Some(vs), Some(fs), Some(sha)) = (
            format(c),
            u("virtual_size"),
            u("file_size"),
            c.get("sha256").and_then(|v| v.as_str()),
        ) {
            return Ok(ImageFile::new(path.to_path_buf(), f, fs, vs, sha)?);
        }
    }
    let mut image = ImageFile::read(path).await?;
    if let Some(vs) = same(StageName::Inspect)
        .and_then(|i| i.get("virtual_size"))
        .and_then(|v| v.as_u64())
    {
        image.virtual_size = vs;
    }
    Ok(image)
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
        let image = image_file(ctx, &path).await?;
        let size = image.file_size;
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
        let upload = provider.upload_image(ctx.job.id, &image, &progress);
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
