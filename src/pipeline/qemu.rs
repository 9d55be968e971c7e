//! Running qemu-img: always with an explicit format, a time limit, optional
//! CPU and memory limits, and killed when the stage is dropped (cancel).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("qemu-img {what} took longer than {secs} s and was killed")]
    Timeout { what: String, secs: u64 },
    #[error("qemu-img {what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("qemu-img {what} printed output vmscan cannot read: {reason}")]
    BadOutput { what: String, reason: String },
}

/// Limits for a qemu-img run on an untrusted file.
#[derive(Clone, Copy, Debug)]
pub struct RunLimits {
    pub cpu_secs: u64,
    pub memory_bytes: u64,
}

/// A prepared qemu-img command (the child dies with the future).
pub fn command(bin: &Path, args: &[OsString], limits: Option<RunLimits>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(l) = limits {
        use nix::sys::resource::{setrlimit, Resource};
        // SAFETY: the closure runs between fork and exec and only calls
        // setrlimit(2), which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_CPU, l.cpu_secs, l.cpu_secs)
                    .and_then(|_| setrlimit(Resource::RLIMIT_AS, l.memory_bytes, l.memory_bytes))
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd
}

/// Runs a short qemu-img command to completion and returns its stdout.
pub async fn run(
    bin: &Path,
    what: &str,
    args: &[OsString],
    timeout: Duration,
    limits: Option<RunLimits>,
) -> Result<(std::process::ExitStatus, String, String), QemuError> {
    let child = command(bin, args, limits)
        .spawn()
        .map_err(|source| QemuError::Spawn {
            bin: bin.display().to_string(),
            source,
        })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(QemuError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            })
        }
        Ok(r) => r.map_err(|source| QemuError::Spawn {
            bin: bin.display().to_string(),
            source,
        })?,
    };
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        last_lines(&String::from_utf8_lossy(&out.stderr)),
    ))
}

/// The end of a tool's stderr, enough to say what went wrong.
pub fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    tail.chars().take(1000).collect()
}

/// What `qemu-img info --output=json` says, as far as we use it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub format: String,
    pub virtual_size: u64,
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    #[serde(default)]
    pub format_specific: Option<FormatSpecific>,
}

#[derive(Debug, Deserialize)]
pub struct FormatSpecific {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Info {
    pub fn parse(json: &str) -> Result<Info, QemuError> {
        serde_json::from_str(json).map_err(|e| QemuError::BadOutput {
            what: "info".into(),
            reason: e.to_string(),
        })
    }

    /// An external data file (qcow2 `data-file`), if any.
    pub fn data_file(&self) -> Option<String> {
        let fs = self
            .format_specific
            .as_ref()
            .filter(|f| f.kind == "qcow2")?;
        fs.data
            .get("data-file")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    /// Files VMDK extents point at.
    pub fn extent_files(&self) -> Vec<String> {
        self.format_specific
            .as_ref()
            .filter(|f| f.kind == "vmdk")
            .and_then(|fs| fs.data.get("extents"))
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("filename").and_then(|f| f.as_str()))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `qemu-img info -f FORMAT --output=json PATH`: qemu never guesses the format.
pub async fn info(
    bin: &Path,
    path: &Path,
    driver: &str,
    timeout: Duration,
    limits: Option<RunLimits>,
) -> Result<Info, QemuError> {
    let args: Vec<OsString> = vec![
        "info".into(),
        "-f".into(),
        driver.into(),
        "--output=json".into(),
        path.into(),
    ];
    let (status, stdout, stderr) = run(bin, "info", &args, timeout, limits).await?;
    if !status.success() {
        return Err(QemuError::Failed {
            what: "info".into(),
            status: status.to_string(),
            stderr,
        });
    }
    Info::parse(&stdout)
}

/// Reads `(12.34/100%)` progress lines from `qemu-img convert -p` and calls
/// `on_progress` with 0..1 for each; returns the output once it closes.
pub async fn read_progress(
    mut out: impl tokio::io::AsyncRead + Unpin,
    mut on_progress: impl FnMut(f64),
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(i) = pending.find(['\r', '\n']) {
            if let Some(p) = parse_progress(&pending[..i]) {
                on_progress(p);
            }
            pending.drain(..=i);
        }
    }
}

/// "    (45.03/100%)" → 0.4503.
pub fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let pct: f64 = inner.trim().parse().ok()?;
    (0.0..=100.0).contains(&pct).then_some(pct / 100.0)
}

/// Where a converted file goes before it is complete.
pub fn part_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_convert_progress() {
        assert_eq!(parse_progress("    (0.00/100%)"), Some(0.0));
        assert_eq!(parse_progress("    (45.50/100%)"), Some(0.455));
        assert_eq!(parse_progress("(100.00/100%)"), Some(1.0));
        assert_eq!(parse_progress("qemu-img: error"), None);
        assert_eq!(parse_progress("(250.00/100%)"), None);
    }

    #[tokio::test]
    async fn reads_progress_split_across_reads() {
        let data: &[u8] = b"    (0.00/100%)\r    (12.5";
        let rest: &[u8] = b"0/100%)\r    (100.00/100%)\r\n";
        let mut seen = Vec::new();
        read_progress(data.chain(rest), |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!(seen, [0.0, 0.125, 1.0]);
    }

    #[test]
    fn reads_qemu_info_json() {
        let j = r#"{"virtual-size": 1073741824, "filename": "x", "format": "qcow2",
            "actual-size": 200704, "backing-filename": "/etc/passwd",
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "data-file": "/dev/sda"}}}"#;
        let i = Info::parse(j).unwrap();
        assert_eq!(i.virtual_size, 1 << 30);
        assert_eq!(i.backing_filename.as_deref(), Some("/etc/passwd"));
        assert_eq!(i.data_file().as_deref(), Some("/dev/sda"));
        let v = r#"{"virtual-size": 1, "format": "vmdk", "format-specific": {"type": "vmdk",
            "data": {"create-type": "monolithicSparse", "extents": [{"filename": "/a/b.vmdk"}]}}}"#;
        assert_eq!(Info::parse(v).unwrap().extent_files(), ["/a/b.vmdk"]);
    }
}
