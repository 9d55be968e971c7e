//! extract: opens zip/tar/OVA archives and gzip/xz/bzip2/zstd streams (told
//! apart by magic bytes) into the job's work directory and picks the disk
//! image inside; a plain image passes through untouched.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::archive::{self, ArchiveError, Counters, Limits};
use super::fetch::{fetched_file_name, fetched_path};
use super::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::config::ExtractConfig;
use crate::domain::{fmt_bytes, StageName};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("fetch recorded no image path; nothing to extract")]
    NoInput,
    #[error("{0}")]
    Io(String),
    #[error("extraction crashed: {0}")]
    Crashed(String),
}

impl StageFailure for ExtractError {
    fn is_retryable(&self) -> bool {
        match self {
            ExtractError::Archive(a) => a.is_retryable(),
            ExtractError::Io(_) => true,
            ExtractError::NoInput | ExtractError::Crashed(_) => false,
        }
    }
}

pub struct ExtractStage {
    cfg: ExtractConfig,
}

impl ExtractStage {
    pub fn new(cfg: ExtractConfig) -> Self {
        ExtractStage { cfg }
    }
}

#[async_trait]
impl Stage for ExtractStage {
    fn name(&self) -> StageName {
        StageName::Extract
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let input = fetched_path(ctx).ok_or(ExtractError::NoInput)?;
        let file_name = fetched_file_name(ctx, &input);
        let sniffed = {
            let p = input.clone();
            tokio::task::spawn_blocking(move || archive::sniff(&p))
                .await
                .map_err(|e| ExtractError::Crashed(e.to_string()))?
                .map_err(|e| ExtractError::Io(format!("cannot read {}: {e}", input.display())))?
        };
        let Some(container) = sniffed else {
            ctx.set_detail(
                json!({
                    "path": input.display().to_string(),
                    "extracted": false,
                    "container": null,
                    "file_name": file_name,
                }),
                true,
            )
            .await?;
            ctx.info("not an archive: the image passes through as it is (no copy)")
                .await?;
            return Ok(StageOutcome::Done);
        };

        let dest = ctx.work_dir.join("extract");
        // A retried attempt starts clean: nothing half-written survives.
        if tokio::fs::symlink_metadata(&dest).await.is_ok() {
            tokio::fs::remove_dir_all(&dest)
                .await
                .map_err(|e| ExtractError::Io(format!("cannot clear {}: {e}", dest.display())))?;
        }
        tokio::fs::create_dir_all(&dest)
            .await
            .map_err(|e| ExtractError::Io(format!("cannot create {}: {e}", dest.display())))?;
        let input_size = tokio::fs::metadata(&input)
            .await
            .map(|m| m.len())
            .map_err(|e| ExtractError::Io(format!("cannot read {}: {e}", input.display())))?;
        ctx.info(format!(
            "extracting {} ({}, {})",
            file_name,
            container.as_str(),
            fmt_bytes(input_size)
        ))
        .await?;

        let counters = Arc::new(Counters::default());
        // Stops the blocking thread when the user cancels or this future is dropped.
        let stop = ctx.cancel.child_token();
        let _stop_on_drop = stop.clone().drop_guard();
        let job = archive::Job {
            input: input.clone(),
            file_name: file_name.clone(),
            dest: dest.clone(),
            limits: Limits {
                max_total_bytes: self.cfg.max_total_bytes,
                max_expansion_ratio: self.cfg.max_expansion_ratio,
                max_entries: self.cfg.max_entries,
                min_free_bytes: self.cfg.min_free_bytes,
            },
            rule: self.cfg.candidate_rule,
            counters: counters.clone(),
            cancel: stop.clone(),
        };
        let started = Instant::now();
        let mut task = tokio::task::spawn_blocking(move || archive::unpack(&job, container));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let result = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = tick.tick() => {
                    ctx.set_detail(progress(&counters, input_size, started), false).await?;
                }
            }
        };
        let unpacked = match result {
            Ok(Ok(u)) => u,
            Ok(Err(ArchiveError::Cancelled)) => return Err(StageError::Cancelled),
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_dir_all(&dest).await;
                ctx.set_detail(progress(&counters, input_size, started), true)
                    .await?;
                return Err(ExtractError::from(e).into());
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dest).await;
                return Err(ExtractError::Crashed(e.to_string()).into());
            }
        };

        let image_name = PathBuf::from(&unpacked.image.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| unpacked.image.name.clone());
        let secs = started.elapsed().as_secs_f64();
        let mut detail = progress(&counters, input_size, started);
        detail.as_object_mut().expect("object").extend(
            json!({
                "path": unpacked.image.path.display().to_string(),
                "extracted": true,
                "container": unpacked.container,
                "archive": input.display().to_string(),
                "archive_entry": unpacked.image.name,
                "file_name": image_name,
                "size": unpacked.image.size,
                "size_human": fmt_bytes(unpacked.image.size),
                "format_hint": unpacked.image.format.map(|f| f.as_str()),
                "ovf_path": unpacked.ovf.as_ref().map(|p| p.display().to_string()),
                "manifest_path": unpacked.manifest.as_ref().map(|p| p.display().to_string()),
                "candidates": unpacked.candidates.iter().map(|c| json!({"name": c.name, "size": c.size})).collect::<Vec<_>>(),
                "skipped": unpacked.skipped.iter().take(50).collect::<Vec<_>>(),
                "entries": unpacked.entries,
                "unpacked_bytes": unpacked.unpacked_bytes,
                "expansion_ratio": if input_size > 0 { unpacked.unpacked_bytes as f64 / input_size as f64 } else { 0.0 },
                "progress": 1.0,
                "secs": (secs * 10.0).round() / 10.0,
            })
            .as_object()
            .expect("object")
            .clone(),
        );
        ctx.set_detail(detail, true).await?;
        if unpacked.candidates.len() > 1 {
            ctx.warn(format!(
                "the archive holds {} disk images; picked {} (extract.candidate_rule = {:?})",
                unpacked.candidates.len(),
                unpacked.image.name,
                self.cfg.candidate_rule
            ))
            .await?;
        }
        ctx.info(format!(
            "extracted {} ({}) from the {} in {:.1} s{}",
            unpacked.image.name,
            fmt_bytes(unpacked.image.size),
            unpacked.container,
            secs,
            unpacked
                .ovf
                .as_ref()
                .map(|p| format!("; OVF kept at {}", p.display()))
                .unwrap_or_default()
        ))
        .await?;
        Ok(StageOutcome::Done)
    }
}

fn progress(c: &Counters, input_size: u64, started: Instant) -> serde_json::Value {
    let read = c.read.load(Ordering::Relaxed).min(input_size);
    let out = c.unpacked.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    json!({
        "bytes": read,
        "total_bytes": input_size,
        "unpacked_bytes": out,
        "progress": if input_size == 0 { 1.0 } else { read as f64 / input_size as f64 },
        "rate_bps": (out as f64 / secs).round() as u64,
    })
}
