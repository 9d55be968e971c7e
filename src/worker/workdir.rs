//! Job work directories (`<data_dir>/jobs/<id>`: downloads, extracted and
//! converted copies, the job's SSH key and Windows password): the secrets go
//! as soon as teardown ran, the rest when the job ends, a failed job's files
//! after `storage.keep_failed_work_secs`. A sweep removes what a crash left.

use std::path::{Path, PathBuf};

use crate::domain::{fmt_millis, now_millis, JobId};
use crate::store::DynStore;

/// Subdirectories holding the job's credentials for its guest.
const SECRETS: [&str; 2] = ["ssh", "winrm"];

pub fn jobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jobs")
}

/// Removes the job's key and password once nothing will log in again.
pub async fn remove_secrets(work_dir: &Path) -> std::io::Result<()> {
    for s in SECRETS {
        match tokio::fs::remove_dir_all(work_dir.join(s)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What happens to a finished job's files, for its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposal {
    /// Moved out of the way; [`Disposal::finish`] frees the space.
    Deleted {
        bytes: u64,
        trash: Option<PathBuf>,
    },
    KeptUntil(i64),
}

impl Disposal {
    pub fn describe(&self) -> String {
        match self {
            Disposal::Deleted { bytes, .. } => {
                format!("work files deleted ({})", crate::domain::fmt_bytes(*bytes))
            }
            Disposal::KeptUntil(t) => format!(
                "work files kept for debugging until {} (storage.keep_failed_work_secs)",
                fmt_millis(*t)
            ),
        }
    }

    /// Frees what [`dispose`] moved aside (after the job is reported done:
    /// unlinking gigabytes takes a while). A crash before this leaves the
    /// trash to the sweep.
    pub async fn finish(self) {
        if let Disposal::Deleted {
            trash: Some(trash), ..
        } = self
        {
            if let Err(e) = remove_all(&trash).await {
                tracing::warn!(dir = %trash.display(), error = %e, "cannot delete an ended job's work files; the sweep retries");
            }
        }
    }
}

/// Where an ended job's directory waits for deletion: a sibling in the jobs
/// directory (same file system, so the rename is instant), unique per run.
const TRASH_PREFIX: &str = ".deleted-";

/// After the job's end: its files are kept `keep_secs` (0: deleted now; the
/// directory is renamed away at once and emptied by [`Disposal::finish`]).
pub async fn dispose(work_dir: &Path, keep_secs: u64) -> std::io::Result<Disposal> {
    if keep_secs > 0 {
        return Ok(Disposal::KeptUntil(now_millis() + keep_secs as i64 * 1000));
    }
    let bytes = du(work_dir).await;
    let name = work_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let trash = work_dir.with_file_name(format!(
        "{TRASH_PREFIX}{name}-{}",
        &suffix[suffix.len() - 8..]
    ));
    match tokio::fs::rename(work_dir, &trash).await {
        Ok(()) => Ok(Disposal::Deleted {
            bytes,
            trash: Some(trash),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Disposal::Deleted { bytes, trash: None })
        }
        // Not renamable for some reason: delete in place, as before.
        Err(_) => {
            remove_all(work_dir).await?;
            Ok(Disposal::Deleted { bytes, trash: None })
        }
    }
}

/// `remove_dir_all`, where a directory already gone is success.
async fn remove_all(dir: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bytes allocated under `dir` (sparse files count what they hold).
pub async fn du(dir: &Path) -> u64 {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::MetadataExt;
        let mut total = 0u64;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.blocks() * 512;
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

/// Removes work directories of ended jobs that are past keeping (after a
/// crash, or a failed job's debugging time). Directories of jobs this
/// database does not know are left alone. Returns how many were removed.
pub async fn sweep(store: &DynStore, storage: &crate::config::StorageConfig) -> usize {
    let dir = jobs_dir(&storage.data_dir);
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
        return 0;
    };
    let now = now_millis();
    let mut removed = 0;
    while let Ok(Some(e)) = entries.next_entry().await {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TRASH_PREFIX) {
            // Left by a crash between the rename and the deletion.
            match remove_all(&e.path()).await {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(dir = %name, error = %err, "cannot remove an ended job's work files")
                }
            }
            continue;
        }
        let Some(id) = name.parse::<JobId>().ok() else {
            continue;
        };
        let Ok(Some(job)) = store.get_job(id).await else {
            continue;
        };
        if !job.state.is_final() {
            continue;
        }
        let keep_until =
            job.finished_at.unwrap_or(job.updated_at) + storage.keep_secs(job.state) as i64 * 1000;
        if now < keep_until {
            // Still kept for debugging, but never with the guest's credentials.
            let _ = remove_secrets(&e.path()).await;
            continue;
        }
        match tokio::fs::remove_dir_all(e.path()).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(job = %id, "removed the work directory of an ended job");
            }
            Err(err) => tracing::warn!(job = %id, error = %err, "cannot remove a work directory"),
        }
    }
    removed
}

/// The data directory's file system: (total, free) bytes. Before the
/// directory exists, the file system it will be made on.
pub fn fs_usage(data_dir: &Path) -> Option<(u64, u64)> {
    let dir = data_dir.ancestors().find(|d| d.exists())?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = s.fragment_size() as u64;
    Some((
        s.blocks() as u64 * frsize,
        s.blocks_available() as u64 * frsize,
    ))
}
