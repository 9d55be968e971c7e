//! Image upload: create the image record, stream the bytes with
//! `PUT /images/{uuid}/file` (with their sha256 for Prism to check), then
//! check every task the image carries and the disk size Prism reports.
//! Large uploads are where Prism fails in practice: the timeout scales with
//! the size, and a failed attempt deletes its half-made image before the next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{error_message, task_uuids, PrismError};
use super::{job_image_name, tag, ImageSource, NutanixConfig, NutanixProvider};
use crate::cluster::{ClusterError, ClusterImage, ImageFile, Progress};
use crate::domain::JobId;

pub(super) async fn upload(
    p: &NutanixProvider,
    job: JobId,
    image: &ImageFile,
    progress: Progress<'_>,
) -> Result<ClusterImage, ClusterError> {
    let name = job_image_name(job);
    // Images of earlier attempts (complete or half-made) go first: one image per job.
    for (uuid, n, _) in p.owned("image").await? {
        if n == name {
            tracing::info!(image = %uuid, "deleting the image of an earlier attempt");
            p.delete_entity("image", &uuid).await?;
        }
    }
    let cfg = &p.client.cfg;
    let attempts = cfg.max_attempts.max(1);
    let mut delay = Duration::from_millis(cfg.retry_backoff_ms.max(1));
    let mut attempt = 1;
    loop {
        let mut created = None;
        let result = once(p, job, &name, image, progress, &mut created).await;
        let e = match result {
            Ok(image) => return Ok(image),
            Err(e) => e,
        };
        if let Some(uuid) = created {
            if let Err(d) = p.delete_entity("image", &uuid).await {
                tracing::warn!(image = %uuid, error = %d, "could not delete a failed upload's image");
            }
        }
        if !retryable(&e) || attempt >= attempts {
            return Err(ClusterError::Api {
                provider: p.name.clone(),
                retryable: retryable(&e),
                message: format!("image upload (attempt {attempt} of {attempts}): {e}"),
            });
        }
        tracing::warn!(error = %e, attempt, "image upload failed; retrying with a new image");
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

/// An image-service task that failed after the bytes arrived may pass on a
/// new upload; a failed create (bad spec) will not.
fn retryable(e: &PrismError) -> bool {
    e.is_retryable()
        || matches!(e, PrismError::TaskFailed { operation, .. } if !operation.contains("create"))
}

async fn once(
    p: &NutanixProvider,
    job: JobId,
    name: &str,
    image: &ImageFile,
    progress: Progress<'_>,
    created: &mut Option<String>,
) -> Result<ClusterImage, PrismError> {
    let cfg = &p.client.cfg;
    let size = image.file_size;
    let mut body = json!({
        "api_version": "3.1.0",
        "metadata": {"kind": "image", "categories": p.categories()},
        "spec": {
            "name": name,
            "description": tag(job),
            "resources": {
                // terraform-provider-nutanix: ISO_IMAGE by extension, else DISK_IMAGE.
                "image_type": if image.is_iso() { "ISO_IMAGE" } else { "DISK_IMAGE" },
                // Checked by Prism against a source_uri download (v3 ImageResources.checksum).
                "checksum": {"checksum_algorithm": "SHA_256", "checksum_value": image.sha256()},
            },
        },
    });
    let pull = cfg.image_source() == ImageSource::Url;
    if pull {
        body["spec"]["resources"]["source_uri"] = json!(cfg.pull_url(job));
    }
    let answer = p.client.call(Method::POST, "/images", Some(&body)).await?;
    let uuid = answer
        .pointer("/metadata/uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| PrismError::Protocol("the image create answer has no metadata.uuid".into()))?
        .to_string();
    *created = Some(uuid.clone());
    if pull {
        // Prism downloads the file within the create task.
        progress(0, size);
        let on_percent = |pct: u64| progress(size * pct / 100, size);
        for t in task_uuids(&answer) {
            p.client
                .wait_task_within(&t, upload_timeout(cfg, size), &on_percent)
                .await?;
        }
    } else {
        for t in task_uuids(&answer) {
            p.client.wait_task(&t).await?;
        }
        put_file(p, &uuid, image, progress).await?;
    }
    // Prism records the upload as further tasks on the image: all must succeed.
    let image_path = format!("/images/{uuid}");
    let limit = Instant::now() + Duration::from_secs(p.client.cfg.task_timeout_secs.max(1));
    loop {
        let img = p.client.call(Method::GET, &image_path, None).await?;
        for t in task_uuids(&img) {
            p.client.wait_task(&t).await?;
        }
        let state = img
            .pointer("/status/state")
            .and_then(Value::as_str)
            .unwrap_or("");
        match state {
            "COMPLETE" => {
                // `size_bytes` is the disk Prism made of the image (a qcow2's
                // virtual size, not the file's length): it must be all of it.
                let held = img
                    .pointer("/status/resources/size_bytes")
                    .and_then(Value::as_u64);
                let want = image.virtual_size;
                if held != Some(want) {
                    return Err(PrismError::Protocol(format!(
                        "Prism Central reports a disk of {} for the image, vmscan's holds {want} bytes (virtual size)",
                        held.map(|n| format!("{n} bytes"))
                            .unwrap_or_else(|| "an unknown size".into())
                    )));
                }
                progress(size, size);
                return Ok(ClusterImage {
                    id: uuid,
                    name: name.to_string(),
                    size,
                    virtual_size: want,
                });
            }
            "ERROR" => {
                return Err(PrismError::Protocol(format!(
                    "image {uuid} is in state ERROR: {}",
                    error_message(&img["status"].to_string())
                )))
            }
            _ if Instant::now() >= limit => {
                return Err(PrismError::TaskTimeout {
                    uuid,
                    state: state.to_string(),
                    secs: p.client.cfg.task_timeout_secs,
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(p.client.cfg.task_poll_ms.max(10))).await,
        }
    }
}

/// Big images may take long: the base plus one second per `upload_min_bytes_per_sec`.
pub(super) fn upload_timeout(cfg: &NutanixConfig, size: u64) -> Duration {
    Duration::from_secs(cfg.upload_base_secs + size / cfg.upload_min_bytes_per_sec.max(1))
}

/// Streams the file (never whole in memory), reporting progress twice a second.
async fn put_file(
    p: &NutanixProvider,
    uuid: &str,
    image: &ImageFile,
    progress: Progress<'_>,
) -> Result<(), PrismError> {
    let cfg = &p.client.cfg;
    let (path, size) = (image.path.as_path(), image.file_size);
    let timeout =
        Duration::from_secs(cfg.upload_base_secs + size / cfg.upload_min_bytes_per_sec.max(1));
    let sent = Arc::new(AtomicU64::new(0));
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| PrismError::Protocol(format!("{}: {e}", path.display())))?;
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |c| {
        if let Ok(b) = c {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
    });
    let url_path = format!("/images/{uuid}/file");
    let request = p
        .client
        .http()
        .put(p.client.url(&url_path))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, size)
        // Prism verifies the bytes against these and fails the upload task on
        // a mismatch (terraform-provider-nutanix UploadImage; hex as in checksum_value).
        .header("X-Nutanix-Checksum-Type", "SHA_256")
        .header("X-Nutanix-Checksum-Bytes", image.sha256())
        .timeout(timeout)
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tokio::pin!(request);
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            PrismError::Transport {
                method: Method::PUT,
                path: url_path.clone(),
                reason: format!(
                    "timed out after {} s (upload_base_secs + size / upload_min_bytes_per_sec)",
                    timeout.as_secs()
                ),
            }
        } else {
            PrismError::unanswered(Method::PUT, &url_path, &e)
        }
    };
    let resp = loop {
        tokio::select! {
            r = &mut request => break r.map_err(failed)?,
            _ = tokio::time::sleep(Duration::from_millis(500)) => progress(sent.load(Ordering::Relaxed).min(size), size),
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(PrismError::Http {
            method: Method::PUT,
            path: url_path,
            status,
            message: error_message(&text),
        });
    }
    progress(size, size);
    Ok(())
}
