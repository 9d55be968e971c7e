//! fetch: brings the image into the job's work directory (http/https, with
//! resume), or points at it in place (file:// under an allowed root), hashing
//! the bytes as they pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::hashing::{self, MultiHasher};
use super::http::{Fetcher, HttpError};
use super::netpolicy::{Denied, NetPolicy};
use super::writeback::Writeback;
use super::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::config::FetchConfig;
use crate::domain::{fmt_bytes, ChecksumAlgo, ChecksumSpec, SourceUrl, StageName};
use crate::remote::{RemoteError, RemoteShell, SshKey, SshOptions, SshShell};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: the server answered {status}")]
    Status {
        url: String,
        status: String,
        code: u16,
    },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("download stalled: no data for {secs} s after {got}; it resumes on the next try")]
    Stalled { secs: u64, got: String },
    #[error("download interrupted after {got}: {reason}; it resumes on the next try")]
    Interrupted { got: String, reason: String },
    #[error("not enough free disk for this image: it is {size}, so the download and its extracted and converted copies need about {needed} plus the reserve of {reserve} (extract.min_free_bytes), but {dir} has {free} free")]
    NoSpace {
        size: String,
        needed: String,
        reserve: String,
        free: String,
        dir: String,
    },
    #[error("download too slow: {rate}/s over the last {secs} s, below fetch.min_bytes_per_sec ({min}/s) after {got}; it resumes on the next try")]
    TooSlow {
        rate: String,
        secs: u64,
        min: String,
        got: String,
    },
    #[error("image is too large: {size} exceeds the limit of {limit} (fetch.max_bytes)")]
    TooLarge { size: String, limit: String },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{url}: {reason}")]
    Redirect { url: String, reason: String },
    #[error("{0}: local paths must be under one of the allowed roots (fetch.allowed_roots: {1})")]
    NotAllowed(String, String),
    #[error("{path}: {reason}")]
    Local { path: String, reason: String },
    #[error("{0}")]
    Io(String),
    #[error("unsupported source URL scheme {0:?}")]
    Unsupported(String),
    #[error("SFTP login to {addr} failed: {reason}")]
    SftpAuth { addr: String, reason: String },
    #[error("SFTP server {addr} has host key {seen}, which is not allowed (fetch.sftp_host_keys: {allowed})")]
    HostKeyNotAllowed {
        addr: String,
        seen: String,
        allowed: String,
    },
    #[error("remote file {path} on {addr}: {reason}")]
    RemoteFile {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("no credentials sent to SFTP server {addr}: {why}")]
    SftpNoCredentials { addr: String, why: String },
    #[error("SFTP key file {path}: {reason}")]
    SftpKey { path: String, reason: String },
    #[error("invalid source URL in job: {0}")]
    BadUrl(String),
}

impl StageFailure for FetchError {
    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            FetchError::Connect { .. }
            | FetchError::Stalled { .. }
            | FetchError::TooSlow { .. }
            | FetchError::Interrupted { .. } => true,
            FetchError::Io(_) => true,
            _ => false,
        }
    }
}

pub struct FetchStage {
    cfg: FetchConfig,
    policy: Arc<NetPolicy>,
    http: Fetcher,
}

impl FetchStage {
    pub fn new(cfg: FetchConfig) -> Self {
        let policy = Arc::new(NetPolicy::from_config(&cfg));
        let http = Fetcher::new(&cfg, policy.clone());
        FetchStage { cfg, policy, http }
    }
}

/// The algorithms to hash while fetching: sha256 plus the one the user's checksum names.
fn wanted_algos(ctx: &StageCtx) -> Vec<ChecksumAlgo> {
    match ctx.job.checksum.as_deref().map(str::parse::<ChecksumSpec>) {
        Some(Ok(ChecksumSpec::Digest(c))) => vec![c.algo],
        _ => vec![],
    }
}

#[async_trait]
impl Stage for FetchStage {
    fn name(&self) -> StageName {
        StageName::Fetch
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let src: SourceUrl = ctx
            .job
            .url
            .parse()
            .map_err(|e: crate::domain::SourceUrlError| FetchError::BadUrl(e.to_string()))?;
        ctx.set_detail(
            json!({"source": src.redacted(), "file_name": src.file_name()}),
            true,
        )
        .await?;
        match src.scheme() {
            "http" | "https" => self.fetch_http(ctx, &src).await,
            "file" => self.fetch_local(ctx, &src).await,
            "sftp" => self.fetch_sftp(ctx, &src).await,
            other => Err(FetchError::Unsupported(other.to_string()).into()),
        }?;
        Ok(StageOutcome::Done)
    }
}

/// Tracks bytes and rate, and writes progress to the stage detail now and then.
struct Progress {
    started: Instant,
    last: Instant,
    base: u64,
    bytes: u64,
    total: Option<u64>,
    /// The slow-source check's window: since when, and the bytes at its start.
    window: (Instant, u64),
    /// Keeps the disk writing the `.part` while it downloads.
    writeback: Writeback,
}

impl Progress {
    fn new(base: u64, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress {
            window: (now, base),
            started: now,
            last: now - Duration::from_secs(1),
            base,
            bytes: base,
            total,
            writeback: Writeback::new(base),
        }
    }

    fn json(&self) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.bytes - self.base) as f64 / secs;
        let eta = self
            .total
            .filter(|_| rate > 0.0)
            .map(|t| (t.saturating_sub(self.bytes) as f64 / rate).round() as u64);
        json!({
            "bytes": self.bytes,
            "total_bytes": self.total,
            "progress": self.total.map(|t| if t == 0 { 1.0 } else { self.bytes as f64 / t as f64 }),
            "rate_bps": rate.round() as u64,
            "eta_secs": eta,
        })
    }

    async fn report(&mut self, ctx: &StageCtx, force: bool) -> Result<(), StageError> {
        if force || self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            ctx.set_detail(self.json(), true).await?;
        }
        Ok(())
    }
}

/// A file name safe to create inside the work directory.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "image".to_string()
    } else {
        cleaned.chars().take(200).collect()
    }
}

/// `disk.img` → `disk.img.part`: where a download grows until it is complete.
fn part_path(dest: &Path) -> PathBuf {
    dest.with_extension(format!(
        "{}part",
        dest.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ))
}

/// `%20` → ` ` in URL parts (user, password, path).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes a finished `.part` download durable and gives it its final name, after
/// checking it has the size the server `verb` ("announced", "stated").
async fn commit_part(
    out: tokio::io::BufWriter<tokio::fs::File>,
    part: &Path,
    dest: &Path,
    total: Option<u64>,
    got: u64,
    verb: &str,
) -> Result<(), FetchError> {
    let mut out = out;
    out.flush()
        .await
        .map_err(|e| io_err("cannot write", part, e))?;
    out.into_inner()
        .sync_all()
        .await
        .map_err(|e| io_err("cannot sync", part, e))?;
    if let Some(t) = total.filter(|t| *t != got) {
        return Err(FetchError::Interrupted {
            got: fmt_bytes(got),
            reason: format!("the server {verb} {t} bytes"),
        });
    }
    tokio::fs::rename(part, dest)
        .await
        .map_err(|e| io_err("cannot rename", part, e))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> FetchError {
    FetchError::Io(format!("{what} {}: {e}", path.display()))
}

impl FetchStage {
    async fn fetch_http(&self, ctx: &StageCtx, src: &SourceUrl) -> Result<(), StageError> {
        let url = src.url().clone();
        let dir = ctx.work_dir.join("download");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("cannot create", &dir, e))?;
        let dest = dir.join(safe_name(&src.file_name()));
        let part = part_path(&dest);
        let validator_path = part.with_extension("part.validator");

        // Resume what an earlier attempt left behind, if the server still has the same file.
        let mut hasher = MultiHasher::new(wanted_algos(ctx));
        let mut have = match tokio::fs::metadata(&part).await {
            Ok(m) if m.len() > 0 => m.len(),
            _ => 0,
        };
        let validator = tokio::fs::read_to_string(&validator_path).await.ok();
        let mut headers = reqwest::header::HeaderMap::new();
        if have > 0 {
            let range = format!("bytes={have}-").parse().expect("a valid header");
            headers.insert(reqwest::header::RANGE, range);
            if let Some(v) = validator.as_deref().and_then(|v| v.trim().parse().ok()) {
                headers.insert(reqwest::header::IF_RANGE, v);
            }
        }
        let resp = self
            .http
            .get(&url, headers)
            .await
            .map_err(|e| classify(&src.redacted(), e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The part file is not a prefix of what the server has now: start over.
            let _ = tokio::fs::remove_file(&part).await;
            let _ = tokio::fs::remove_file(&validator_path).await;
            return Err(FetchError::Interrupted {
                got: fmt_bytes(have),
                reason: "the server refused to resume (416); restarting from the beginning".into(),
            }
            .into());
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: src.redacted(),
                status: status.to_string(),
                code: status.as_u16(),
            }
            .into());
        }
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT
            && have > 0
            && content_range_start(&resp) == Some(have);
        if !resumed {
            have = 0;
        }
        let total = if resumed {
            content_range_total(&resp)
        } else {
            resp.content_length()
        };
        if let Some(t) = total.filter(|t| *t > self.cfg.max_bytes) {
            return Err(FetchError::TooLarge {
                size: fmt_bytes(t),
                limit: fmt_bytes(self.cfg.max_bytes),
            }
            .into());
        }
        if let Some(t) = total {
            self.check_space(ctx, t, t.saturating_sub(have))?;
        }
        if let Some(v) = resp
            .headers()
            .get(reqwest::header::ETAG)
            .or_else(|| resp.headers().get(reqwest::header::LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
        {
            let _ = tokio::fs::write(&validator_path, v).await;
        } else {
            let _ = tokio::fs::remove_file(&validator_path).await;
        }
        if resumed {
            hasher
                .update_from_file(&part)
                .await
                .map_err(|e| io_err("cannot read", &part, e))?;
            ctx.info(format!(
                "resuming download at {} of {}",
                fmt_bytes(have),
                total
                    .map(fmt_bytes)
                    .unwrap_or_else(|| "unknown size".into())
            ))
            .await?;
        } else {
            ctx.info(format!(
                "downloading {} ({})",
                src.redacted(),
                total
                    .map(fmt_bytes)
                    .unwrap_or_else(|| "size unknown".into())
            ))
            .await?;
        }
        ctx.set_detail(json!({"resumed_from": if resumed { Some(have) } else { None }, "content_type": resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())}), true)
            .await?;

        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .await
            .map_err(|e| io_err("cannot open", &part, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut progress = Progress::new(have, total);
        progress.report(ctx, true).await?;
        let idle = Duration::from_secs(self.cfg.read_timeout_secs);
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, body.next()) => n,
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            };
            let chunk = match next {
                Err(_) => {
                    out.flush()
                        .await
                        .map_err(|e| io_err("cannot write", &part, e))?;
                    return Err(FetchError::Stalled {
                        secs: idle.as_secs(),
                        got: fmt_bytes(progress.bytes),
                    }
                    .into());
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e = e.without_url();
                    out.flush()
                        .await
                        .map_err(|e| io_err("cannot write", &part, e))?;
                    if e.is_timeout() {
                        return Err(FetchError::Stalled {
                            secs: idle.as_secs(),
                            got: fmt_bytes(progress.bytes),
                        }
                        .into());
                    }
                    return Err(FetchError::Interrupted {
                        got: fmt_bytes(progress.bytes),
                        reason: error_chain(&e),
                    }
                    .into());
                }
                Ok(Some(Ok(c))) => c,
            };
            self.take_chunk(ctx, &chunk, &mut out, &part, &mut hasher, &mut progress)
                .await?;
        }
        commit_part(out, &part, &dest, total, progress.bytes, "announced").await?;
        let _ = tokio::fs::remove_file(&validator_path).await;
        self.finish(ctx, &dest, false, progress, hasher).await
    }

    /// Downloads over SFTP into the same `.part` file as http, then renames it.
    /// No resume: each attempt starts from the beginning.
    async fn fetch_sftp(&self, ctx: &StageCtx, src: &SourceUrl) -> Result<(), StageError> {
        let url = src.url();
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| FetchError::BadUrl(src.redacted()))?;
        let port = url.port().unwrap_or(22);
        let remote = percent_decode(url.path());
        let user = Some(percent_decode(url.username()))
            .filter(|u| !u.is_empty())
            .or_else(|| self.cfg.sftp_user.clone())
            .unwrap_or_else(|| "root".to_string());
        let addr_shown = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };

        // Resolve once, check the policy, and connect to the address that was checked.
        let connect_timeout = Duration::from_secs(self.cfg.connect_timeout_secs.max(1));
        let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
            connect_timeout,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Err(_) => {
                return Err(FetchError::Connect {
                    url: src.redacted(),
                    reason: format!("resolving {host} took over {} s", connect_timeout.as_secs()),
                }
                .into())
            }
            Ok(Err(e)) => {
                return Err(FetchError::Connect {
                    url: src.redacted(),
                    reason: format!("cannot resolve {host}: {e}"),
                }
                .into())
            }
            Ok(Ok(a)) => a.collect(),
        };
        let mut denied = None;
        let mut ip = None;
        for a in &addrs {
            match self.policy.check(&host, a.ip()) {
                Ok(()) => {
                    ip = Some(a.ip());
                    break;
                }
                Err(d) => denied = Some(d),
            }
        }
        let ip = match (ip, denied) {
            (Some(ip), _) => ip,
            (None, Some(d)) => return Err(FetchError::Denied(d).into()),
            (None, None) => {
                return Err(FetchError::Connect {
                    url: src.redacted(),
                    reason: format!("{host} has no address"),
                }
                .into())
            }
        };

        // The configured key and password are ours: only for hosts we listed.
        let ours = self.may_receive_credentials(&host, ip);
        let key = if ours { self.sftp_key().await? } else { None };
        let password = url
            .password()
            .map(|p| secrecy::SecretString::from(percent_decode(p)))
            .or_else(|| self.cfg.sftp_password.clone().filter(|_| ours));
        // Trust on first use means anyone on the path could be the server: no password.
        let withheld = password.is_some() && self.cfg.sftp_host_keys.is_empty();
        let password = password.filter(|_| !withheld);
        if key.is_none() && password.is_none() {
            return Err(FetchError::SftpNoCredentials {
                addr: addr_shown,
                why: if withheld {
                    "a password is not sent to an unpinned host key (pin it in fetch.sftp_host_keys)"
                        .into()
                } else {
                    "the configured SFTP credentials are only for fetch.sftp_credential_hosts, and the URL names no password".into()
                },
            }
            .into());
        }

        let mut opts = SshOptions::new(ip.to_string(), port, user.clone());
        opts.key = key;
        opts.password = password;
        opts.connect_timeout = connect_timeout;
        opts.login_timeout = connect_timeout.max(Duration::from_secs(30));
        // Checked in the handshake, before any key or password is offered.
        opts.host_keys = self.cfg.sftp_host_keys.clone();
        let shell = SshShell::connect(&opts).await.map_err(|e| match e {
            RemoteError::Auth { user, reason } if withheld => FetchError::SftpAuth {
                addr: addr_shown.clone(),
                reason: format!(
                    "as {user}: {reason}; the password was not sent: the host key is not pinned (fetch.sftp_host_keys)"
                ),
            }
            .into(),
            e => self.remote_err(src, &addr_shown, &remote, e),
        })?;
        let r = self
            .sftp_download(ctx, src, &shell, &addr_shown, &remote)
            .await;
        shell.close().await;
        r
    }

    /// Whether `host` (as the URL names it) or `ip` is on fetch.sftp_credential_hosts.
    fn may_receive_credentials(&self, host: &str, ip: std::net::IpAddr) -> bool {
        self.cfg.sftp_credential_hosts.iter().any(|h| {
            let h = h.trim();
            if let Ok(net) = h.parse::<ipnet::IpNet>() {
                net.contains(&ip)
            } else if let Ok(a) = h.parse::<std::net::IpAddr>() {
                a == ip
            } else {
                h.trim_end_matches('.')
                    .eq_ignore_ascii_case(host.trim_end_matches('.'))
            }
        })
    }

    async fn sftp_key(&self) -> Result<Option<SshKey>, FetchError> {
        let Some(path) = &self.cfg.sftp_key_file else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        let pem = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| FetchError::SftpKey {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        SshKey::from_openssh(&pem)
            .map(Some)
            .map_err(|e| FetchError::SftpKey {
                path: shown,
                reason: e.to_string(),
            })
    }

    async fn sftp_download(
        &self,
        ctx: &StageCtx,
        src: &SourceUrl,
        shell: &SshShell,
        addr: &str,
        remote: &str,
    ) -> Result<(), StageError> {
        let seen = shell.host_key_fingerprint().to_string();
        if self.cfg.sftp_host_keys.is_empty() {
            ctx.info(format!(
                "SFTP server {addr} has host key {seen} (trusted on first use; pin it in fetch.sftp_host_keys)"
            ))
            .await?;
        }
        let idle = Duration::from_secs(self.cfg.read_timeout_secs.max(1));
        let mut download = shell
            .download(remote, idle)
            .await
            .map_err(|e| self.remote_err(src, addr, remote, e))?;
        let r = self.sftp_stream(ctx, src, &mut download, idle).await;
        download.close().await;
        r
    }

    async fn sftp_stream(
        &self,
        ctx: &StageCtx,
        src: &SourceUrl,
        download: &mut crate::remote::ssh::SftpDownload,
        idle: Duration,
    ) -> Result<(), StageError> {
        let total = download.size();
        if let Some(t) = total.filter(|t| *t > self.cfg.max_bytes) {
            return Err(FetchError::TooLarge {
                size: fmt_bytes(t),
                limit: fmt_bytes(self.cfg.max_bytes),
            }
            .into());
        }
        if let Some(t) = total {
            self.check_space(ctx, t, t)?;
        }
        let dir = ctx.work_dir.join("download");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("cannot create", &dir, e))?;
        let dest = dir.join(safe_name(&src.file_name()));
        let part = part_path(&dest);
        ctx.info(format!(
            "downloading {} over SFTP ({})",
            src.redacted(),
            total
                .map(fmt_bytes)
                .unwrap_or_else(|| "size unknown".into())
        ))
        .await?;
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io_err("cannot open", &part, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = MultiHasher::new(wanted_algos(ctx));
        let mut progress = Progress::new(0, total);
        progress.report(ctx, true).await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(idle, download.read(&mut buf)) => n,
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            };
            let n = match next {
                Err(_) => {
                    return Err(FetchError::Stalled {
                        secs: idle.as_secs(),
                        got: fmt_bytes(progress.bytes),
                    }
                    .into())
                }
                Ok(Err(e)) => {
                    return Err(FetchError::Interrupted {
                        got: fmt_bytes(progress.bytes),
                        reason: e.to_string(),
                    }
                    .into())
                }
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
            };
            self.take_chunk(ctx, &buf[..n], &mut out, &part, &mut hasher, &mut progress)
                .await?;
        }
        commit_part(out, &part, &dest, total, progress.bytes, "stated").await?;
        self.finish(ctx, &dest, false, progress, hasher).await
    }

    fn remote_err(&self, src: &SourceUrl, addr: &str, remote: &str, e: RemoteError) -> StageError {
        match e {
            RemoteError::Auth { user, reason } => FetchError::SftpAuth {
                addr: addr.to_string(),
                reason: format!("as {user}: {reason}"),
            },
            RemoteError::HostKeyMismatch { seen, .. } => FetchError::HostKeyNotAllowed {
                addr: addr.to_string(),
                seen,
                allowed: self.cfg.sftp_host_keys.join(", "),
            },
            RemoteError::File { reason, .. } => FetchError::RemoteFile {
                addr: addr.to_string(),
                path: remote.to_string(),
                reason,
            },
            other => FetchError::Connect {
                url: src.redacted(),
                reason: other.to_string(),
            },
        }
        .into()
    }

    /// One received chunk: counted against the size cap, hashed, written, reported.
    async fn take_chunk(
        &self,
        ctx: &StageCtx,
        chunk: &[u8],
        out: &mut tokio::io::BufWriter<tokio::fs::File>,
        part: &Path,
        hasher: &mut MultiHasher,
        progress: &mut Progress,
    ) -> Result<(), StageError> {
        progress.bytes += chunk.len() as u64;
        if progress.bytes > self.cfg.max_bytes {
            return Err(FetchError::TooLarge {
                size: format!("more than {}", fmt_bytes(progress.bytes)),
                limit: fmt_bytes(self.cfg.max_bytes),
            }
            .into());
        }
        hasher.update(chunk);
        out.write_all(chunk)
            .await
            .map_err(|e| io_err("cannot write", part, e))?;
        progress.writeback.wrote(out.get_ref(), progress.bytes);
        self.check_rate(progress)?;
        progress.report(ctx, false).await
    }

    /// A source that drip-feeds (below `fetch.min_bytes_per_sec` over
    /// `fetch.slow_window_secs`) is dropped, to be resumed on a later try,
    /// so it cannot hold a worker forever.
    fn check_rate(&self, p: &mut Progress) -> Result<(), FetchError> {
        let min = self.cfg.min_bytes_per_sec;
        let window = Duration::from_secs(self.cfg.slow_window_secs.max(1));
        let (since, at) = p.window;
        let elapsed = since.elapsed();
        if min == 0 || elapsed < window {
            return Ok(());
        }
        let rate = (p.bytes.saturating_sub(at) as f64 / elapsed.as_secs_f64()) as u64;
        p.window = (Instant::now(), p.bytes);
        if rate < min {
            return Err(FetchError::TooSlow {
                rate: fmt_bytes(rate),
                secs: elapsed.as_secs(),
                min: fmt_bytes(min),
                got: fmt_bytes(p.bytes),
            });
        }
        Ok(())
    }

    /// Before downloading `remaining` of an image of `size`: room for it and
    /// for extract's and convert's copies, refused up front with the numbers
    /// rather than failing half-way through.
    fn check_space(&self, ctx: &StageCtx, size: u64, remaining: u64) -> Result<(), FetchError> {
        let Some((_, free)) = crate::worker::workdir::fs_usage(&ctx.work_dir) else {
            return Ok(());
        };
        let reserve = ctx.config.extract.min_free_bytes;
        let needed = remaining.saturating_add(size.saturating_mul(self.cfg.copies_after_fetch));
        if free < needed.saturating_add(reserve) {
            return Err(FetchError::NoSpace {
                size: fmt_bytes(size),
                needed: fmt_bytes(needed),
                reserve: fmt_bytes(reserve),
                free: fmt_bytes(free),
                dir: ctx.work_dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// `file://`: open once, judge the file that was opened (not the path, which
    /// can be swapped under us), then copy it into the work dir while hashing.
    /// Every later stage reads that copy, so replacing or rewriting the original
    /// after inspect cannot change what is scanned or published. A copy rather
    /// than a held descriptor because stages may run in another worker process
    /// or on a retry; rather than a reflink because hashing reads every byte
    /// anyway, and all-zero blocks are skipped so sparse images stay sparse.
    async fn fetch_local(&self, ctx: &StageCtx, src: &SourceUrl) -> Result<(), StageError> {
        use std::os::fd::AsRawFd;
        let path = src
            .url()
            .to_file_path()
            .map_err(|_| FetchError::BadUrl(src.redacted()))?;
        let shown = path.display().to_string();
        let local = |reason: String| FetchError::Local {
            path: shown.clone(),
            reason,
        };
        // O_NONBLOCK: a FIFO must not hang the worker; it is refused below.
        let mut f = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
            .await
            .map_err(|e| local(e.to_string()))?;
        let real = tokio::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .await
            .map_err(|e| local(format!("cannot tell where the opened file is: {e}")))?;
        let mut allowed = false;
        for root in &self.cfg.allowed_roots {
            if let Ok(r) = tokio::fs::canonicalize(root).await {
                allowed |= real.starts_with(&r);
            }
        }
        if !allowed {
            let roots = if self.cfg.allowed_roots.is_empty() {
                "none configured".to_string()
            } else {
                self.cfg
                    .allowed_roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(FetchError::NotAllowed(shown, roots).into());
        }
        let meta = f.metadata().await.map_err(|e| local(e.to_string()))?;
        if !meta.is_file() {
            return Err(local("not a regular file".into()).into());
        }
        if meta.len() > self.cfg.max_bytes {
            return Err(FetchError::TooLarge {
                size: fmt_bytes(meta.len()),
                limit: fmt_bytes(self.cfg.max_bytes),
            }
            .into());
        }
        let dir = ctx.work_dir.join("download");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("cannot create", &dir, e))?;
        let dest = dir.join(safe_name(&src.file_name()));
        let part = part_path(&dest);
        ctx.info(format!(
            "copying {} ({}) into the work directory, so later changes to it cannot reach the scan",
            real.display(),
            fmt_bytes(meta.len())
        ))
        .await?;
        let out = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io_err("cannot open", &part, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, out);
        let mut hasher = MultiHasher::new(wanted_algos(ctx));
        let mut progress = Progress::new(0, Some(meta.len()));
        let mut hole = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let n = read_full(&mut f, &mut buf)
                .await
                .map_err(|e| io_err("cannot read", &real, e))?;
            if n == 0 {
                break;
            }
            progress.bytes += n as u64;
            if progress.bytes > meta.len() {
                return Err(local("the file grew while it was copied".into()).into());
            }
            hasher.update(&buf[..n]);
            if buf[..n].iter().all(|b| *b == 0) {
                hole += n as u64;
            } else {
                if hole > 0 {
                    out.flush()
                        .await
                        .map_err(|e| io_err("cannot write", &part, e))?;
                    tokio::io::AsyncSeekExt::seek(
                        out.get_mut(),
                        std::io::SeekFrom::Current(hole as i64),
                    )
                    .await
                    .map_err(|e| io_err("cannot seek", &part, e))?;
                    hole = 0;
                }
                out.write_all(&buf[..n])
                    .await
                    .map_err(|e| io_err("cannot write", &part, e))?;
            }
            progress.report(ctx, false).await?;
        }
        out.flush()
            .await
            .map_err(|e| io_err("cannot write", &part, e))?;
        out.get_mut()
            .set_len(progress.bytes)
            .await
            .map_err(|e| io_err("cannot write", &part, e))?;
        commit_part(
            out,
            &part,
            &dest,
            Some(meta.len()),
            progress.bytes,
            "stated",
        )
        .await?;
        ctx.set_detail(json!({"copied_from": real.display().to_string()}), true)
            .await?;
        self.finish(ctx, &dest, false, progress, hasher).await
    }

    async fn finish(
        &self,
        ctx: &StageCtx,
        path: &Path,
        in_place: bool,
        mut progress: Progress,
        hasher: MultiHasher,
    ) -> Result<(), StageError> {
        progress.total = Some(progress.bytes);
        progress.report(ctx, true).await?;
        let digests = hasher.finish();
        ctx.set_detail(
            json!({
                "path": path.display().to_string(),
                "in_place": in_place,
                "size": progress.bytes,
                "size_human": fmt_bytes(progress.bytes),
                "hashes": hashing::to_json(&digests),
                "sha256": digests.get(&ChecksumAlgo::Sha256),
            }),
            true,
        )
        .await?;
        ctx.info(format!(
            "fetched {} in {:.1} s, sha256 {}",
            fmt_bytes(progress.bytes),
            progress.started.elapsed().as_secs_f64(),
            digests
                .get(&ChecksumAlgo::Sha256)
                .map(String::as_str)
                .unwrap_or("?")
        ))
        .await?;
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends, so all-zero checks see whole blocks.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = tokio::io::AsyncReadExt::read(f, &mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// An error and its causes on one line ("error decoding response body: connection reset").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    reason
}

fn classify(url: &str, e: HttpError) -> StageError {
    match e {
        HttpError::Denied(d) => FetchError::Denied(d),
        HttpError::Request(e) => FetchError::Connect {
            url: url.to_string(),
            reason: error_chain(&e),
        },
        e @ HttpError::Resolve(_) => FetchError::Connect {
            url: url.to_string(),
            reason: e.to_string(),
        },
        e => FetchError::Redirect {
            url: url.to_string(),
            reason: e.to_string(),
        },
    }
    .into()
}

fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    // "bytes START-END/TOTAL" or "bytes START-END/*"
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    content_range(resp).map(|(s, _)| s)
}

fn content_range_total(resp: &reqwest::Response) -> Option<u64> {
    content_range(resp).and_then(|(_, t)| t)
}

/// The image's file name as the source URL named it (the fetched path's name otherwise).
pub fn fetched_file_name(ctx: &StageCtx, path: &Path) -> String {
    ctx.output_of(StageName::Fetch)
        .and_then(|d| d.get("file_name"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Where fetch put the image (or the original path, when read in place).
pub fn fetched_path(ctx: &StageCtx) -> Option<PathBuf> {
    ctx.output_of(StageName::Fetch)?
        .get("path")?
        .as_str()
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn download_names_cannot_escape_the_work_dir() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name(".."), "image");
        assert_eq!(safe_name("rocky-9.4.qcow2"), "rocky-9.4.qcow2");
    }
}
