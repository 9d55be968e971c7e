//! inspect: reads the image's headers to learn its real format (never the
//! name), applies the safety rules (no backing or data files, single-file
//! VMDK only, no polyglots, size limit), then cross-checks with qemu-img told
//! that format explicitly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::guest_os::{detect, DetectError, Detection, QemuImgDisk, RawFile};
use super::image_format::{
    check_vmdk_descriptor, check_vmdk_footer, container_of, image_signatures, qcow2_header,
    vmdk_descriptor_range, BootInfo, ImageFormat, QCOW2_CORRUPT, QCOW2_DATA_FILE,
    QCOW2_KNOWN_INCOMPATIBLE, SNIFF_BYTES,
};
use super::qemu::{self, QemuError, RunLimits};
use super::{current_image, Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::config::InspectConfig;
use crate::domain::{fmt_bytes, OsChoice, StageName};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no image to inspect: neither fetch nor extract recorded a path")]
    NoImage,
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("image refused: {0}")]
    Refused(String),
    #[error("image refused: the header says {ours} but qemu-img says {theirs}")]
    Disagree { ours: String, theirs: String },
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

impl StageFailure for InspectError {
    fn is_retryable(&self) -> bool {
        matches!(self, InspectError::Io { .. })
    }
}

pub struct InspectStage {
    cfg: InspectConfig,
}

impl InspectStage {
    pub fn new(cfg: InspectConfig) -> Self {
        InspectStage { cfg }
    }
}

/// What the header reading found and judged acceptable.
#[derive(Debug)]
pub struct Verdict {
    pub format: ImageFormat,
    pub boot: Option<BootInfo>,
    /// qcow2 header virtual size, to compare with qemu's.
    pub header_virtual_size: Option<u64>,
    pub notes: serde_json::Map<String, serde_json::Value>,
}

/// Reads the header bytes and applies the safety rules; `Err` carries the reason.
pub async fn examine(path: &Path) -> Result<Verdict, InspectError> {
    let io = |e: std::io::Error| InspectError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let len = f.metadata().await.map_err(io)?.len();
    let mut head = vec![0u8; SNIFF_BYTES];
    let n = read_full(&mut f, &mut head).await.map_err(io)?;
    head.truncate(n);
    let mut tail = vec![0u8; 512];
    if len >= 1024 {
        f.seek(std::io::SeekFrom::Start(len - 512))
            .await
            .map_err(io)?;
        let n = read_full(&mut f, &mut tail).await.map_err(io)?;
        tail.truncate(n);
    } else {
        tail.clear();
    }
    let refuse = |m: String| Err(InspectError::Refused(m));
    if let Some(c) = container_of(&head) {
        return refuse(format!(
            "it is a {} archive, not a disk image (is the extract stage in pipeline.stages?)",
            c.as_str()
        ));
    }
    let sigs = image_signatures(&head, &tail);
    let format = match sigs.as_slice() {
        [] => ImageFormat::Raw,
        [one] => *one,
        many => {
            let names: Vec<_> = many.iter().map(|f| f.as_str()).collect();
            return refuse(format!(
                "it matches several formats at once ({}): a polyglot file",
                names.join(" and ")
            ));
        }
    };
    let mut notes = serde_json::Map::new();
    let mut header_virtual_size = None;
    match format {
        ImageFormat::Qed => {
            return refuse("QED images are not accepted (convert it to qcow2 first)".into())
        }
        ImageFormat::Luks => {
            return refuse("it is LUKS-encrypted; vmscan cannot look inside".into())
        }
        ImageFormat::Qcow2 => {
            let h = qcow2_header(&head)
                .ok_or_else(|| InspectError::Refused("truncated qcow2 header".into()))?;
            if h.version != 2 && h.version != 3 {
                return refuse(format!(
                    "qcow2 version {} (only 2 and 3 are accepted)",
                    h.version
                ));
            }
            if h.has_backing_file {
                let name = qcow2_backing_name(&mut f, &head, len).await.map_err(io)?;
                return refuse(format!(
                    "qcow2 image has a backing file ({name}); only standalone images are accepted"
                ));
            }
            if h.incompatible & QCOW2_DATA_FILE != 0 {
                return refuse("qcow2 image uses an external data file".into());
            }
            if h.incompatible & QCOW2_CORRUPT != 0 {
                return refuse("qcow2 image is marked corrupt".into());
            }
            if h.incompatible & !QCOW2_KNOWN_INCOMPATIBLE != 0 {
                return refuse(format!(
                    "qcow2 image sets unknown incompatible features ({:#x})",
                    h.incompatible & !QCOW2_KNOWN_INCOMPATIBLE
                ));
            }
            if h.encrypted {
                return refuse("qcow2 image is encrypted".into());
            }
            header_virtual_size = Some(h.virtual_size);
            notes.insert("qcow2_version".into(), json!(h.version));
        }
        ImageFormat::Vmdk => {
            // Rules side by side with oslo.utils' format_inspector VMDKInspector.
            if !head.starts_with(b"KDMV") {
                return refuse(
                    "it is a VMDK descriptor that refers to other files; upload a monolithicSparse or streamOptimized VMDK".into(),
                );
            }
            let (offset, size) = vmdk_descriptor_range(&head).map_err(InspectError::Refused)?;
            if offset.saturating_add(size) > len {
                return refuse("VMDK embedded descriptor lies outside the file".into());
            }
            let mut text = vec![0u8; size as usize];
            f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
            f.read_exact(&mut text).await.map_err(io)?;
            let create_type = check_vmdk_descriptor(&text).map_err(InspectError::Refused)?;
            let mut tail = Vec::new();
            if len >= 1536 + 512 {
                tail = vec![0u8; 1536];
                f.seek(std::io::SeekFrom::Start(len - 1536))
                    .await
                    .map_err(io)?;
                f.read_exact(&mut tail).await.map_err(io)?;
            }
            check_vmdk_footer(&head, &tail).map_err(InspectError::Refused)?;
            notes.insert("create_type".into(), json!(create_type));
        }
        _ => {}
    }
    let boot = matches!(format, ImageFormat::Raw | ImageFormat::Iso).then(|| BootInfo::of(&head));
    Ok(Verdict {
        format,
        boot,
        header_virtual_size,
        notes,
    })
}

async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

async fn qcow2_backing_name(
    f: &mut tokio::fs::File,
    head: &[u8],
    len: u64,
) -> std::io::Result<String> {
    let off = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
    // The offset is the image's to choose: seeking past i64::MAX fails, and
    // that I/O error would be retried as if the disk were at fault.
    if off >= len {
        return Ok(format!("named at byte {off}, outside the file"));
    }
    let size = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes")).min(1023);
    let mut name = vec![0u8; size as usize];
    f.seek(std::io::SeekFrom::Start(off)).await?;
    let n = read_full(f, &mut name).await?;
    name.truncate(n);
    Ok(format!("{:?}", String::from_utf8_lossy(&name)))
}

#[async_trait]
impl Stage for InspectStage {
    fn name(&self) -> StageName {
        StageName::Inspect
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let path = current_image(ctx, &[StageName::Extract, StageName::Fetch])
            .ok_or(InspectError::NoImage)?;
        match self.inspect(ctx, &path).await {
            Err(StageError::Failed(e)) => {
                ctx.set_detail(json!({"verdict": "refused", "reason": e.to_string()}), true)
                    .await?;
                Err(StageError::Failed(e))
            }
            other => other.map(|_| StageOutcome::Done),
        }
    }
}

impl InspectStage {
    async fn inspect(&self, ctx: &StageCtx, path: &Path) -> Result<(), StageError> {
        ctx.set_detail(json!({"path": path.display().to_string()}), true)
            .await?;
        let v = examine(path).await?;
        let driver = v.format.qemu_driver().ok_or_else(|| {
            InspectError::Refused(format!("{} images are not accepted", v.format))
        })?;
        let info = qemu::info(
            &self.cfg.qemu_img,
            path,
            driver,
            Duration::from_secs(self.cfg.timeout_secs),
            Some(RunLimits {
                cpu_secs: self.cfg.qemu_cpu_secs,
                memory_bytes: self.cfg.qemu_memory_bytes,
            }),
        )
        .await
        .map_err(InspectError::from)?;
        check_info(&v, driver, path, &info, self.cfg.max_virtual_bytes)?;
        let file_size = tokio::fs::metadata(path).await.map(|m| m.len()).ok();
        let mut detail = json!({
            "path": path.display().to_string(),
            "format": v.format.as_str(),
            "qemu_format": driver,
            "virtual_size": info.virtual_size,
            "virtual_size_human": fmt_bytes(info.virtual_size),
            "actual_size": info.actual_size,
            "file_size": file_size,
            "bootable": v.boot.map(|b| b.bootable()),
            "boot": v.boot,
            "verdict": "accepted",
        });
        detail
            .as_object_mut()
            .expect("object")
            .extend(v.notes.clone());
        ctx.set_detail(detail, true).await?;
        ctx.info(format!(
            "{} image, virtual size {}, {} on disk{}",
            v.format,
            fmt_bytes(info.virtual_size),
            fmt_bytes(info.actual_size.or(file_size).unwrap_or(0)),
            match v.boot {
                Some(b) if b.bootable() => ", bootable",
                Some(_) => ", no boot sector or partition table",
                None => "",
            }
        ))
        .await?;
        let scratch = path.parent().unwrap_or(&ctx.work_dir);
        let found = detect_os(
            &self.cfg,
            path,
            v.format,
            driver,
            info.virtual_size,
            scratch,
        )
        .await;
        self.record_os(ctx, found).await?;
        Ok(())
    }

    /// Detection never fails the stage: an unreadable or unrecognised disk
    /// is scanned as chosen, or as Linux, and the log says so.
    async fn record_os(
        &self,
        ctx: &StageCtx,
        found: Result<Detection, DetectError>,
    ) -> Result<(), StageError> {
        let chosen = OsChoice::of_options(&ctx.job.options);
        let d = match found {
            Ok(d) => d,
            Err(e) => {
                ctx.set_detail(json!({"guest_os": {"error": e.to_string()}}), true)
                    .await?;
                ctx.warn(format!(
                    "guest OS detection failed: {e}; scanning as {}",
                    chosen.resolve(None)
                ))
                .await?;
                return Ok(());
            }
        };
        ctx.set_detail(json!({ "guest_os": d }), true).await?;
        let line = match (chosen, d.family) {
            (OsChoice::Auto, Some(f)) => format!("guest OS: {f}, detected ({})", d.evidence),
            (OsChoice::Auto, None) => {
                return Ok(ctx
                    .warn(format!(
                        "guest OS not recognised: {}; scanning as linux (choose the OS on submit to override)",
                        d.evidence
                    ))
                    .await?)
            }
            (OsChoice::Family(c), Some(f)) if c != f => {
                return Ok(ctx
                    .warn(format!(
                        "the image looks like {f} ({}), but the job was submitted as {c}; scanning as {c}",
                        d.evidence
                    ))
                    .await?)
            }
            (OsChoice::Family(c), _) => format!("guest OS: {c}, as chosen ({})", d.evidence),
        };
        ctx.info(line).await?;
        Ok(())
    }
}

/// Which OS family the disk holds, read through the verified format.
pub async fn detect_os(
    cfg: &InspectConfig,
    path: &Path,
    format: ImageFormat,
    driver: &str,
    virtual_size: u64,
    scratch_dir: &Path,
) -> Result<Detection, DetectError> {
    if matches!(format, ImageFormat::Raw | ImageFormat::Iso) {
        return detect(&RawFile::new(path, virtual_size)).await;
    }
    detect(&QemuImgDisk {
        qemu_img: cfg.qemu_img.clone(),
        path: path.to_path_buf(),
        driver: driver.to_string(),
        virtual_size,
        scratch_dir: scratch_dir.to_path_buf(),
        timeout: Duration::from_secs(cfg.timeout_secs),
        limits: RunLimits {
            cpu_secs: cfg.qemu_cpu_secs,
            memory_bytes: cfg.qemu_memory_bytes,
        },
    })
    .await
}

/// qemu-img's view must agree with ours and obey the same rules.
pub fn check_info(
    v: &Verdict,
    driver: &str,
    path: &Path,
    info: &qemu::Info,
    max_virtual: u64,
) -> Result<(), InspectError> {
    if info.format != driver {
        return Err(InspectError::Disagree {
            ours: driver.to_string(),
            theirs: format!("format {}", info.format),
        });
    }
    if let Some(b) = info
        .full_backing_filename
        .as_ref()
        .or(info.backing_filename.as_ref())
    {
        return Err(InspectError::Refused(format!(
            "{} image has a backing file ({b}); only standalone images are accepted",
            v.format
        )));
    }
    if let Some(d) = info.data_file() {
        return Err(InspectError::Refused(format!(
            "qcow2 image uses an external data file ({d})"
        )));
    }
    let me = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    for e in info.extent_files() {
        let theirs = std::fs::canonicalize(&e).unwrap_or_else(|_| PathBuf::from(&e));
        if theirs != me {
            return Err(InspectError::Refused(format!(
                "VMDK extent refers to another file ({e})"
            )));
        }
    }
    if let Some(h) = v.header_virtual_size {
        if h != info.virtual_size {
            return Err(InspectError::Disagree {
                ours: format!("virtual size {h}"),
                theirs: format!("virtual size {}", info.virtual_size),
            });
        }
    }
    if info.virtual_size > max_virtual {
        return Err(InspectError::Refused(format!(
            "virtual size {} exceeds the limit of {} (inspect.max_virtual_bytes)",
            fmt_bytes(info.virtual_size),
            fmt_bytes(max_virtual)
        )));
    }
    Ok(())
}

/// One file inspected outside any job (`vmscan inspect`): the facts that
/// could be read and the verdict. A refused file still reports what its
/// header shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InspectReport {
    pub path: String,
    /// The format the content shows (`qcow2`, `raw`, …). For a refused file,
    /// the best reading of its header: `gzip` for an archive, `qcow2+iso`
    /// for a polyglot; `None` when even that could not be read.
    pub format: Option<String>,
    /// Virtual disk size in bytes: qemu-img's, or the header's when the file
    /// was refused before qemu-img ran.
    pub virtual_size: Option<u64>,
    /// Bytes allocated on disk.
    pub actual_size: Option<u64>,
    /// The file's length in bytes.
    pub file_size: u64,
    /// Raw and ISO images only: a partition table, boot sector or El Torito record.
    pub bootable: Option<bool>,
    /// `accepted` or `refused`, the words the inspect stage records.
    pub verdict: &'static str,
    /// Why the file was refused.
    pub reason: Option<String>,
    /// Accepted images: the OS family its partitions show (`linux`,
    /// `windows`, or `unknown`), and why.
    pub guest_os: Option<String>,
    pub guest_os_evidence: Option<String>,
}

impl InspectReport {
    pub fn accepted(&self) -> bool {
        self.reason.is_none()
    }
}

/// Runs the inspect stage's checks on one file: the header rules, then
/// `qemu-img info` told the detected format, under the same limits. A refusal
/// is a verdict in the report; `Err` means the file could not be read or
/// qemu-img could not be started.
pub async fn inspect_file(path: &Path, cfg: &InspectConfig) -> Result<InspectReport, InspectError> {
    let io = |e: std::io::Error| InspectError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let meta = tokio::fs::metadata(path).await.map_err(io)?;
    if !meta.is_file() {
        return Err(InspectError::Io {
            path: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        meta.blocks().saturating_mul(512)
    };
    let mut found = Found::default();
    let outcome = check_file(path, cfg, &mut found).await;
    let reason = match outcome {
        Ok(()) => None,
        Err(
            e @ (InspectError::Io { .. }
            | InspectError::NoImage
            | InspectError::Qemu(QemuError::Spawn { .. })),
        ) => return Err(e),
        Err(InspectError::Refused(m)) => Some(m),
        Err(InspectError::Disagree { ours, theirs }) => {
            Some(format!("the header says {ours} but qemu-img says {theirs}"))
        }
        Err(e) => Some(e.to_string()),
    };
    let (mut guest_os, mut guest_os_evidence) = (None, None);
    if let (None, Some((format, driver, size))) = (&reason, found.disk) {
        let d = detect_os(cfg, path, format, driver, size, &std::env::temp_dir()).await;
        (guest_os, guest_os_evidence) = match d {
            Ok(d) => (
                Some(d.family.map_or("unknown", |f| f.as_str()).to_string()),
                Some(d.evidence),
            ),
            Err(e) => (Some("unknown".to_string()), Some(e.to_string())),
        };
    }
    if found.format.is_none() {
        // Refused while reading the header: say what the header looks like.
        if let Ok((format, virtual_size)) = header_reading(path, meta.len()).await {
            found.format = Some(format);
            found.virtual_size = found.virtual_size.or(virtual_size);
        }
    }
    Ok(InspectReport {
        path: path.display().to_string(),
        format: found.format,
        virtual_size: found.virtual_size,
        actual_size: found.actual_size.or(Some(allocated)),
        file_size: meta.len(),
        bootable: found.bootable,
        verdict: if reason.is_none() {
            "accepted"
        } else {
            "refused"
        },
        reason,
        guest_os,
        guest_os_evidence,
    })
}

/// What [`check_file`] learnt before it finished or refused.
#[derive(Default)]
struct Found {
    format: Option<String>,
    virtual_size: Option<u64>,
    actual_size: Option<u64>,
    bootable: Option<bool>,
    /// Set once every check passed: what OS detection reads through.
    disk: Option<(ImageFormat, &'static str, u64)>,
}

/// The stage's checks (`examine`, `qemu::info`, `check_info`), noting the facts on the way.
async fn check_file(
    path: &Path,
    cfg: &InspectConfig,
    found: &mut Found,
) -> Result<(), InspectError> {
    let v = examine(path).await?;
    found.format = Some(v.format.as_str().to_string());
    found.bootable = v.boot.map(|b| b.bootable());
    found.virtual_size = v.header_virtual_size;
    let driver = v
        .format
        .qemu_driver()
        .ok_or_else(|| InspectError::Refused(format!("{} images are not accepted", v.format)))?;
    let info = qemu::info(
        &cfg.qemu_img,
        path,
        driver,
        Duration::from_secs(cfg.timeout_secs),
        Some(RunLimits {
            cpu_secs: cfg.qemu_cpu_secs,
            memory_bytes: cfg.qemu_memory_bytes,
        }),
    )
    .await?;
    found.virtual_size = Some(info.virtual_size);
    found.actual_size = info.actual_size;
    check_info(&v, driver, path, &info, cfg.max_virtual_bytes)?;
    found.disk = Some((v.format, driver, info.virtual_size));
    Ok(())
}

/// The format a refused file's header shows, and the virtual size a qcow2
/// header states (a raw file's is its length).
async fn header_reading(path: &Path, len: u64) -> std::io::Result<(String, Option<u64>)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut head = vec![0u8; SNIFF_BYTES];
    let n = read_full(&mut f, &mut head).await?;
    head.truncate(n);
    let mut tail = vec![0u8; 512];
    if len >= 1024 {
        f.seek(std::io::SeekFrom::Start(len - 512)).await?;
        let n = read_full(&mut f, &mut tail).await?;
        tail.truncate(n);
    } else {
        tail.clear();
    }
    if let Some(c) = container_of(&head) {
        return Ok((c.as_str().to_string(), None));
    }
    let sigs = image_signatures(&head, &tail);
    Ok(match sigs.as_slice() {
        [] => ("raw".to_string(), Some(len)),
        [ImageFormat::Qcow2] => (
            "qcow2".to_string(),
            qcow2_header(&head).map(|h| h.virtual_size),
        ),
        many => (
            many.iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            None,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn qemu_img(args: &[&str]) {
        let out = tokio::process::Command::new("qemu-img")
            .args(args)
            .output()
            .await
            .expect("qemu-img is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn verdict_of(path: &Path) -> Result<(Verdict, qemu::Info), InspectError> {
        let v = examine(path).await?;
        let driver = v.format.qemu_driver().unwrap();
        let info = qemu::info(
            Path::new("qemu-img"),
            path,
            driver,
            Duration::from_secs(30),
            Some(RunLimits {
                cpu_secs: 30,
                memory_bytes: 1 << 30,
            }),
        )
        .await?;
        check_info(&v, driver, path, &info, 1 << 40)?;
        Ok((v, info))
    }

    #[tokio::test]
    async fn accepts_plain_images_of_each_format() {
        let dir = tempfile::tempdir().unwrap();
        for (fmt, expect) in [
            ("qcow2", ImageFormat::Qcow2),
            ("vmdk", ImageFormat::Vmdk),
            ("vpc", ImageFormat::Vhd),
            ("vhdx", ImageFormat::Vhdx),
            ("vdi", ImageFormat::Vdi),
            ("raw", ImageFormat::Raw),
        ] {
            // The name lies on purpose: content decides.
            let p = dir.path().join(format!("disk-{fmt}.iso"));
            qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), "64M"]).await;
            let (v, info) = verdict_of(&p)
                .await
                .unwrap_or_else(|e| panic!("{fmt}: {e}"));
            assert_eq!(v.format, expect, "{fmt}");
            assert!(info.virtual_size >= 64 << 20, "{fmt}");
        }
    }

    #[tokio::test]
    async fn refuses_qcow2_with_a_backing_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("evil.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            p.to_str().unwrap(),
            "1G",
        ])
        .await;
        let e = verdict_of(&p).await.unwrap_err().to_string();
        assert!(e.contains("backing file (\"/etc/passwd\")"), "{e}");
    }

    #[tokio::test]
    async fn refuses_qcow2_with_a_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("evil.qcow2");
        let data = dir.path().join("data.raw");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", data.display()),
            p.to_str().unwrap(),
            "16M",
        ])
        .await;
        let e = verdict_of(&p).await.unwrap_err().to_string();
        assert!(e.contains("external data file"), "{e}");
    }

    #[tokio::test]
    async fn refuses_vmdk_descriptors_and_polyglots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("desc.vmdk");
        std::fs::write(
            &p,
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/passwd\" 0\n",
        )
        .unwrap();
        let e = examine(&p).await.unwrap_err().to_string();
        assert!(e.contains("refers to other files"), "{e}");

        let p = dir.path().join("poly.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]).await;
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.resize(bytes.len().max(0x9000), 0);
        bytes[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&p, bytes).unwrap();
        let e = examine(&p).await.unwrap_err().to_string();
        assert!(e.contains("polyglot"), "{e}");
    }

    #[tokio::test]
    async fn a_backing_file_named_outside_the_image_is_refused_not_retried() {
        // Found by tests/parsers_prop.rs: the seek to u64::MAX was an I/O error.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.qcow2");
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..20].copy_from_slice(&4u32.to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        let e = examine(&p).await.unwrap_err();
        assert!(matches!(e, InspectError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("backing file"), "{e}");
    }

    #[tokio::test]
    async fn refuses_archives_and_qed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.qcow2");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let e = examine(&p).await.unwrap_err().to_string();
        assert!(e.contains("gzip archive"), "{e}");
        let p = dir.path().join("b.qed");
        qemu_img(&["create", "-q", "-f", "qed", p.to_str().unwrap(), "1M"]).await;
        let e = examine(&p).await.unwrap_err().to_string();
        assert!(e.contains("QED"), "{e}");
    }
}
