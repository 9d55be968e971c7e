//! Glance v2: images created private and tagged with the job, the file
//! streamed up (hashed while it goes), waited for until `active`, checked
//! against Glance's own hash, listed and deleted.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use digest::Digest;
use futures::StreamExt;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::error::{error_message, OsError};
use super::http::{backoff, Api, Service};
use super::JOB_KEY;
use crate::domain::{ChecksumAlgo, JobId};

/// An image as Glance shows it.
#[derive(Clone, Debug)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub status: String,
    pub size: Option<u64>,
    pub hash_algo: Option<String>,
    pub hash_value: Option<String>,
    pub job: Option<String>,
}

impl Image {
    fn of(v: &Value) -> Image {
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        Image {
            id: s("id").unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            status: s("status").unwrap_or_default(),
            size: v["size"].as_u64(),
            hash_algo: s("os_hash_algo"),
            hash_value: s("os_hash_value"),
            job: s(JOB_KEY),
        }
    }
}

/// Glance's `disk_format` for the file's first bytes (raw when nothing else matches).
pub async fn disk_format(path: &Path) -> std::io::Result<&'static str> {
    use crate::pipeline::image_format::{image_signatures, ImageFormat};
    let mut f = tokio::fs::File::open(path).await?;
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    head.truncate(n);
    Ok(match image_signatures(&head, &[]).first() {
        Some(ImageFormat::Qcow2) => "qcow2",
        Some(ImageFormat::Vmdk) => "vmdk",
        Some(ImageFormat::Vhdx) => "vhdx",
        Some(ImageFormat::Vhd) => "vhd",
        Some(ImageFormat::Vdi) => "vdi",
        Some(ImageFormat::Iso) => "iso",
        _ => "raw",
    })
}

pub async fn create(
    api: &Api,
    name: &str,
    job: JobId,
    disk_format: &str,
) -> Result<Image, OsError> {
    let body = json!({
        "name": name,
        "disk_format": disk_format,
        "container_format": "bare",
        "visibility": "private",
        JOB_KEY: job.to_string(),
    });
    let a = api
        .call(
            Service::Image,
            Method::POST,
            "/v2/images",
            Some(&body),
            false,
        )
        .await?;
    let img = Image::of(&a.body);
    if img.id.is_empty() {
        return Err(OsError::other(format!(
            "Glance created image {name} but returned no id: {}",
            a.body
        )));
    }
    Ok(img)
}

pub async fn get(api: &Api, id: &str) -> Result<Image, OsError> {
    Ok(Image::of(
        &api.get(Service::Image, &format!("/v2/images/{id}")).await?,
    ))
}

/// Every image the project sees (following `next`).
pub async fn list(api: &Api, filter: &str) -> Result<Vec<Image>, OsError> {
    let next = |page: &Value| {
        let (_, query) = page["next"].as_str()?.split_once('?')?;
        Some(format!("/v2/images?{query}"))
    };
    let first = format!("/v2/images?limit=100{filter}");
    let all = api.get_all(Service::Image, first, "images", next).await?;
    Ok(all.iter().map(Image::of).collect())
}

/// Deletes the image and checks it is gone. Missing = done.
pub async fn delete(api: &Api, id: &str) -> Result<(), OsError> {
    match api
        .call(
            Service::Image,
            Method::DELETE,
            &format!("/v2/images/{id}"),
            None,
            true,
        )
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    }
    let limit = Duration::from_secs(api.cfg.task_timeout_secs.max(1));
    let start = Instant::now();
    loop {
        match get(api, id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
            Ok(img) if matches!(img.status.as_str(), "deleted" | "pending_delete") => return Ok(()),
            Ok(img) if start.elapsed() > limit => {
                return Err(OsError::other(format!(
                    "Glance image {id} is still there ({}) {} s after it was deleted",
                    img.status,
                    limit.as_secs()
                )))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(api.cfg.poll_ms)).await,
        }
    }
}

/// What the upload computed while streaming.
pub struct Sent {
    pub bytes: u64,
    pub sha512: String,
}

/// `PUT /v2/images/{id}/file`, streamed from `path` and hashed on the way;
/// `progress(done, total)` while it runs. One new token on 401; other
/// failures are left to the caller (Glance does not take a second PUT on a
/// failed image: it is recreated).
pub async fn upload_file(
    api: &Api,
    id: &str,
    path: &Path,
    size: u64,
    progress: super::Progress<'_>,
) -> Result<Sent, OsError> {
    let per_sec = api.cfg.upload_min_bytes_per_sec.max(1);
    let limit = Duration::from_secs(api.cfg.upload_base_secs + size / per_sec);
    let url_path = format!("/v2/images/{id}/file");
    let mut reauthenticated = false;
    loop {
        let session = api.keystone.session().await?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| OsError::other(format!("{}: {e}", path.display())))?;
        let sent = Arc::new(AtomicU64::new(0));
        let hasher = Arc::new(Mutex::new(sha2::Sha512::new()));
        let (s, h) = (sent.clone(), hasher.clone());
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
                if let Ok(c) = &chunk {
                    h.lock().unwrap_or_else(|e| e.into_inner()).update(c);
                    s.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                chunk
            });
        let request = api
            .http
            .put(format!("{}{url_path}", session.image))
            .header("X-Auth-Token", session.token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .timeout(limit)
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        tokio::pin!(request);
        let answer = loop {
            tokio::select! {
                r = &mut request => break r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    progress(sent.load(Ordering::Relaxed).min(size), size);
                }
            }
        };
        let r = answer.map_err(|e| {
            if e.is_timeout() {
                OsError::Transport {
                    service: "Glance",
                    method: "PUT".into(),
                    path: url_path.clone(),
                    message: format!(
                        "upload of {size} bytes not done within {} s",
                        limit.as_secs()
                    ),
                }
            } else {
                OsError::unanswered("Glance", "PUT", &url_path, &e)
            }
        })?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.is_success() {
            let bytes = sent.load(Ordering::Relaxed);
            let digest = hasher.lock().unwrap_or_else(|e| e.into_inner()).clone();
            progress(bytes.min(size), size);
            return Ok(Sent {
                bytes,
                sha512: hex::encode(digest.finalize()),
            });
        }
        if status == reqwest::StatusCode::UNAUTHORIZED && !reauthenticated {
            reauthenticated = true;
            api.keystone.invalidate(session.generation).await;
            continue;
        }
        return Err(OsError::Http {
            service: "Glance",
            method: "PUT".into(),
            path: url_path,
            status: status.as_u16(),
            message: error_message(&text),
        });
    }
}

/// Polls the image until `active`; `killed` (or a vanished image) fails.
pub async fn wait_active(api: &Api, id: &str) -> Result<Image, OsError> {
    let limit = Duration::from_secs(api.cfg.task_timeout_secs.max(1));
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        let img = match get(api, id).await {
            Ok(i) => i,
            Err(e) if e.is_not_found() => {
                return Err(OsError::Other {
                    message: format!("Glance image {id} disappeared while it was being saved"),
                    retryable: true,
                })
            }
            Err(e) => return Err(e),
        };
        match img.status.as_str() {
            "active" => return Ok(img),
            "killed" | "deleted" | "pending_delete" | "deactivated" => {
                return Err(OsError::Other {
                    message: format!(
                        "Glance could not store image {id}: its status became {:?} after the upload",
                        img.status
                    ),
                    retryable: true,
                })
            }
            _ => {}
        }
        if start.elapsed() > limit {
            return Err(OsError::Other {
                message: format!(
                    "Glance image {id} is still {:?} {} s after the upload",
                    img.status,
                    limit.as_secs()
                ),
                retryable: true,
            });
        }
        attempt += 1;
        if attempt > 3 {
            tokio::time::sleep(Duration::from_millis(api.cfg.poll_ms)).await;
        } else {
            // The first polls come sooner: small images turn active at once.
            tokio::time::sleep(Duration::from_millis(api.cfg.poll_ms.min(250))).await;
        }
    }
}

/// Compares Glance's `os_hash_value` with the file's digest (the sha512
/// computed while streaming, or a second pass for another algorithm).
/// Ok(None): Glance reports no hash we can check.
pub async fn check_hash(img: &Image, path: &Path, sent: &Sent) -> Result<Option<String>, OsError> {
    let (Some(algo), Some(theirs)) = (&img.hash_algo, &img.hash_value) else {
        return Ok(None);
    };
    let ours = if algo.eq_ignore_ascii_case("sha512") {
        sent.sha512.clone()
    } else {
        match ChecksumAlgo::from_str(algo) {
            Ok(a) => digest_file(path, a)
                .await
                .map_err(|e| OsError::other(format!("{}: {e}", path.display())))?,
            Err(_) => {
                tracing::warn!(image = %img.id, "Glance hashes with {algo}, which vmscan cannot check");
                return Ok(None);
            }
        }
    };
    if !ours.eq_ignore_ascii_case(theirs) {
        return Err(OsError::Other {
            message: format!(
                "checksum mismatch after upload of image {}: Glance has {algo} {}…, the file has {}…",
                img.id,
                &theirs[..theirs.len().min(16)],
                &ours[..ours.len().min(16)]
            ),
            retryable: true,
        });
    }
    Ok(Some(format!("{algo}:{ours}")))
}

async fn digest_file(path: &Path, algo: ChecksumAlgo) -> std::io::Result<String> {
    fn run<D: Digest>(mut d: D, f: &mut std::fs::File) -> std::io::Result<String> {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(d.finalize()));
            }
            d.update(&buf[..n]);
        }
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        match algo {
            ChecksumAlgo::Md5 => run(md5::Md5::new(), &mut f),
            ChecksumAlgo::Sha1 => run(sha1::Sha1::new(), &mut f),
            ChecksumAlgo::Sha256 => run(sha2::Sha256::new(), &mut f),
            ChecksumAlgo::Sha512 => run(sha2::Sha512::new(), &mut f),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Retries a whole upload (create, PUT, active, hash) after a transient
/// failure, deleting the half-made image each time.
pub async fn upload_with_retries(
    api: &Api,
    name: &str,
    job: JobId,
    path: &Path,
    progress: super::Progress<'_>,
) -> Result<(Image, Option<String>), OsError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| OsError::other(format!("{}: {e}", path.display())))?
        .len();
    let format = disk_format(path)
        .await
        .map_err(|e| OsError::other(format!("{}: {e}", path.display())))?;
    let max = api.cfg.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let img = create(api, name, job, format).await?;
        tracing::info!(image = %img.id, %name, format, size, "Glance image created; uploading");
        let result = async {
            let sent = upload_file(api, &img.id, path, size, progress).await?;
            let active = wait_active(api, &img.id).await?;
            if sent.bytes != size || active.size.is_some_and(|s| s != size) {
                return Err(OsError::Other {
                    message: format!(
                        "size mismatch after upload of image {}: the file has {size} bytes, {} were sent and Glance stored {}",
                        img.id,
                        sent.bytes,
                        active.size.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
                    ),
                    retryable: true,
                });
            }
            let hash = check_hash(&active, path, &sent).await?;
            Ok((active, hash))
        }
        .await;
        match result {
            Ok(done) => return Ok(done),
            Err(e) => {
                // Never leave a broken image behind.
                if let Err(d) = delete(api, &img.id).await {
                    tracing::warn!(image = %img.id, "deleting the failed image: {d}");
                }
                let transient = matches!(e, OsError::Transport { .. })
                    || e.status().is_some_and(|s| s >= 500 || s == 429);
                if transient && attempt < max {
                    tracing::warn!(image = %img.id, "upload failed (try {attempt}/{max}): {e}");
                    backoff(&api.cfg, attempt).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
}
