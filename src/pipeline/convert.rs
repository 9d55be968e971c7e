//! convert: `qemu-img convert` into the format the target cluster wants, with
//! progress on the job page; an image already in that format is not copied.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use super::qemu::{self, QemuError};
use super::{current_image, Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::config::ConvertConfig;
use crate::domain::{fmt_bytes, StageName};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("inspect recorded no image and format; convert needs the inspect stage before it")]
    NotInspected,
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("the converted image fails qemu-img check: {0}")]
    Check(String),
    #[error("the converted image is {got} but the source is {want} (virtual size)")]
    Shrunk { got: String, want: String },
    #[error("size: the requested disk size {want} is smaller than the image's virtual size {have}; vmscan grows disks, it never shrinks one")]
    SmallerThanImage { want: String, have: String },
    #[error("size: an ISO image is attached as a CD-ROM and has no disk to grow; leave size out")]
    SizeOfIso,
}

/// "20.0 GiB (21474836480 bytes)": human units, and the exact count that
/// tells two close sizes apart.
fn both_units(n: u64) -> String {
    format!("{} ({n} bytes)", fmt_bytes(n))
}

impl StageFailure for ConvertError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConvertError::Io(_) | ConvertError::Qemu(QemuError::Spawn { .. })
        )
    }
}

pub struct ConvertStage {
    cfg: ConvertConfig,
    /// The converted output is inspected again with the intake's own rules.
    inspect: crate::config::InspectConfig,
}

impl ConvertStage {
    pub fn new(cfg: ConvertConfig, inspect: crate::config::InspectConfig) -> Self {
        ConvertStage { cfg, inspect }
    }
}

#[async_trait]
impl Stage for ConvertStage {
    fn name(&self) -> StageName {
        StageName::Convert
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let inspected = ctx
            .output_of(StageName::Inspect)
            .cloned()
            .unwrap_or_default();
        let (Some(src), Some(format), Some(driver)) = (
            current_image(ctx, &[StageName::Inspect]),
            inspected.get("format").and_then(|v| v.as_str()),
            inspected.get("qemu_format").and_then(|v| v.as_str()),
        ) else {
            return Err(ConvertError::NotInspected.into());
        };
        let virtual_size = inspected.get("virtual_size").and_then(|v| v.as_u64());
        let target = self.cfg.target_format.as_str();
        // The disk size asked for at submission (bytes; checked there).
        let grow_to = ctx.job.options.get("size").and_then(|v| v.as_u64());
        if let (Some(want), Some(have)) = (grow_to, virtual_size) {
            if want < have {
                return Err(ConvertError::SmallerThanImage {
                    want: both_units(want),
                    have: both_units(have),
                }
                .into());
            }
        }
        let grow_to = grow_to.filter(|w| Some(*w) != virtual_size);
        if format == "iso" && grow_to.is_some() {
            return Err(ConvertError::SizeOfIso.into());
        }
        if format == "iso" {
            ctx.set_detail(json!({"path": src.display().to_string(), "format": "iso", "converted": false, "progress": 1.0, "skipped": "ISO images are attached as CD-ROMs, not converted"}), true).await?;
            ctx.info("ISO image: attached as a CD-ROM, nothing to convert")
                .await?;
            return Ok(StageOutcome::Done);
        }
        // Growing needs a copy: the downloaded file stays as it was verified.
        if format == target && grow_to.is_none() {
            ctx.set_detail(json!({"path": src.display().to_string(), "format": target, "converted": false, "progress": 1.0, "skipped": format!("already {target}")}), true).await?;
            ctx.info(format!("already {target}: no conversion, no copy"))
                .await?;
            return Ok(StageOutcome::Done);
        }

        let dir = ctx.work_dir.join("convert");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ConvertError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let stem = src
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let out = dir.join(format!("{stem}.{target}"));
        let part = qemu::part_path(&out);
        let _ = tokio::fs::remove_file(&part).await;
        ctx.set_detail(
            json!({"source": src.display().to_string(), "source_format": format, "format": target, "progress": 0.0}),
            true,
        )
        .await?;
        ctx.info(format!("converting {format} → {target}")).await?;
        let started = Instant::now();
        self.convert(ctx, &src, driver, &part).await?;
        tokio::fs::rename(&part, &out)
            .await
            .map_err(|e| ConvertError::Io(format!("cannot rename {}: {e}", part.display())))?;

        let before = match grow_to {
            Some(want) => Some(self.grow(ctx, &out, target, want).await?),
            None => None,
        };
        // The output's sha256 (for publishing and the job record) is taken on
        // a thread of its own while qemu-img checks it and inspect reads it.
        let stop_hashing = ctx.cancel.child_token();
        let _stop_hashing_on_drop = stop_hashing.clone().drop_guard();
        let hashing = {
            let (out, stop) = (out.clone(), stop_hashing.clone());
            tokio::task::spawn_blocking(move || {
                let mut hasher = super::hashing::MultiHasher::new([]);
                hasher.update_from_file_blocking(&out, &stop)?;
                Ok::<_, std::io::Error>(hasher.finish())
            })
        };
        if self.cfg.target_format == crate::config::TargetFormat::Qcow2 {
            self.check(&out).await?;
        }
        let info = qemu::info(
            &self.cfg.qemu_img,
            &out,
            target,
            Duration::from_secs(120),
            Some(self.limits()),
        )
        .await
        .map_err(ConvertError::from)?;
        if let Some(want) = virtual_size.filter(|w| info.virtual_size < *w) {
            return Err(ConvertError::Shrunk {
                got: fmt_bytes(info.virtual_size),
                want: fmt_bytes(want),
            }
            .into());
        }
        let file_size = tokio::fs::metadata(&out).await.map(|m| m.len()).ok();
        let secs = started.elapsed().as_secs_f64();
        // What convert wrote goes through the same checks as what came in.
        let report = super::inspect_file(&out, &self.inspect)
            .await
            .map_err(|e| ConvertError::Io(format!("cannot inspect the converted image: {e}")))?;
        if report.verdict != "accepted" {
            return Err(ConvertError::Io(format!(
                "the converted image fails inspection: {}",
                report.reason.unwrap_or_default()
            ))
            .into());
        }
        let output_sha256 = hashing
            .await
            .map_err(|e| ConvertError::Io(format!("hashing crashed: {e}")))?
            .map_err(|e| ConvertError::Io(format!("cannot hash {}: {e}", out.display())))?
            .remove(&crate::domain::ChecksumAlgo::Sha256);
        ctx.set_detail(
            json!({
                "path": out.display().to_string(),
                "format": target,
                "converted": true,
                "virtual_size": info.virtual_size,
                "actual_size": info.actual_size,
                "file_size": file_size,
                "progress": 1.0,
                "secs": (secs * 10.0).round() / 10.0,
                "reinspected": report.verdict,
                "sha256": output_sha256,
                "source_virtual_size": virtual_size,
                "requested_size": grow_to,
                "resized": before.is_some(),
            }),
            true,
        )
        .await?;
        if let Some(before) = before {
            ctx.info(format!(
                "disk grown from {} to {} (requested size)",
                both_units(before),
                both_units(info.virtual_size)
            ))
            .await?;
        }
        ctx.info(format!(
            "converted to {target} in {secs:.1} s: {} on disk, virtual size {}",
            fmt_bytes(info.actual_size.or(file_size).unwrap_or(0)),
            fmt_bytes(info.virtual_size)
        ))
        .await?;
        Ok(StageOutcome::Done)
    }
}

impl ConvertStage {
    async fn convert(
        &self,
        ctx: &StageCtx,
        src: &Path,
        driver: &str,
        part: &Path,
    ) -> Result<(), StageError> {
        let args: Vec<OsString> = vec![
            "convert".into(),
            "-p".into(),
            "-f".into(),
            driver.into(),
            "-O".into(),
            self.cfg.target_format.as_str().into(),
            "-m".into(),
            self.cfg.coroutines.to_string().into(),
            "-W".into(),
            src.into(),
            part.into(),
        ];
        let mut child = qemu::command(&self.cfg.qemu_img, &args, Some(self.limits()))
            .spawn()
            .map_err(|source| {
                ConvertError::from(QemuError::Spawn {
                    bin: self.cfg.qemu_img.display().to_string(),
                    source,
                })
            })?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
        let reader = tokio::spawn(qemu::read_progress(stdout, move |p| {
            let _ = tx.send(p);
        }));
        let errors = tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s).await;
            s
        });
        let deadline = tokio::time::sleep(Duration::from_secs(self.cfg.timeout_secs));
        tokio::pin!(deadline);
        let status = loop {
            tokio::select! {
                st = child.wait() => break st.map_err(|e| ConvertError::Io(format!("qemu-img convert: {e}")))?,
                changed = rx.changed() => {
                    if changed.is_ok() {
                        let p = *rx.borrow_and_update();
                        ctx.set_detail(json!({"progress": p}), false).await?;
                    }
                }
                _ = ctx.cancel.cancelled() => {
                    // kill_on_drop would do it too; be explicit and leave no part file.
                    let _ = child.kill().await;
                    let _ = tokio::fs::remove_file(part).await;
                    return Err(StageError::Cancelled);
                }
                _ = &mut deadline => {
                    let _ = child.kill().await;
                    let _ = tokio::fs::remove_file(part).await;
                    return Err(ConvertError::from(QemuError::Timeout {
                        what: "convert".into(),
                        secs: self.cfg.timeout_secs,
                    }).into());
                }
            }
        };
        let _ = reader.await;
        let stderr = errors.await.unwrap_or_default();
        if !status.success() {
            let _ = tokio::fs::remove_file(part).await;
            return Err(ConvertError::from(QemuError::Failed {
                what: "convert".into(),
                status: status.to_string(),
                stderr: qemu::last_lines(&stderr),
            })
            .into());
        }
        ctx.set_detail(json!({"progress": 1.0}), true).await?;
        Ok(())
    }

    /// `qemu-img resize` of the converted copy to `want` bytes; returns the
    /// virtual size before. Never shrinks (no `--shrink`; checked before too).
    async fn grow(
        &self,
        ctx: &StageCtx,
        out: &Path,
        format: &str,
        want: u64,
    ) -> Result<u64, StageError> {
        let limits = Some(self.limits());
        let before = qemu::info(
            &self.cfg.qemu_img,
            out,
            format,
            Duration::from_secs(120),
            limits,
        )
        .await
        .map_err(ConvertError::from)?
        .virtual_size;
        if want < before {
            return Err(ConvertError::SmallerThanImage {
                want: both_units(want),
                have: both_units(before),
            }
            .into());
        }
        if want == before {
            return Ok(before);
        }
        ctx.info(format!(
            "growing the disk from {} to {}",
            both_units(before),
            both_units(want)
        ))
        .await?;
        let args: Vec<OsString> = vec![
            "resize".into(),
            "-f".into(),
            format.into(),
            out.into(),
            want.to_string().into(),
        ];
        let (status, stdout, stderr) = qemu::run(
            &self.cfg.qemu_img,
            "resize",
            &args,
            Duration::from_secs(600),
            limits,
        )
        .await
        .map_err(ConvertError::from)?;
        if !status.success() {
            return Err(ConvertError::from(QemuError::Failed {
                what: "resize".into(),
                status: status.to_string(),
                stderr: qemu::last_lines(if stderr.is_empty() { &stdout } else { &stderr }),
            })
            .into());
        }
        Ok(before)
    }

    /// `qemu-img check`: 0 clean, 3 leaked clusters only (harmless), else broken.
    /// What qemu-img may use on an image nobody vetted: convert can be made to
    /// spin or allocate by a crafted header as much as info can.
    fn limits(&self) -> qemu::RunLimits {
        qemu::RunLimits {
            cpu_secs: self.cfg.timeout_secs.max(60),
            memory_bytes: self.cfg.qemu_memory_bytes,
        }
    }

    async fn check(&self, out: &Path) -> Result<(), ConvertError> {
        let args: Vec<OsString> = vec![
            "check".into(),
            "-f".into(),
            "qcow2".into(),
            "--output=json".into(),
            out.into(),
        ];
        let (status, stdout, stderr) = qemu::run(
            &self.cfg.qemu_img,
            "check",
            &args,
            Duration::from_secs(600),
            Some(self.limits()),
        )
        .await?;
        match status.code() {
            Some(0) | Some(3) => Ok(()),
            _ => Err(ConvertError::Check(if stderr.is_empty() {
                qemu::last_lines(&stdout)
            } else {
                stderr
            })),
        }
    }
}
