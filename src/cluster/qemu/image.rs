//! The local image repository: one file per job, `vmscan-img-<job>.<format>`.
//! Importing reflinks (copy-on-write) when the filesystem can, else
//! hardlinks, else copies with progress, leaving holes where the source has zeros.

use std::os::fd::AsRawFd;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::cluster::Progress;

/// How an image got into the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Import {
    Reused,
    Reflink,
    Hardlink,
    Copy,
}

/// The disk format QEMU should read the file as: qcow2 by its magic, else raw.
pub async fn detect_format(path: &Path) -> std::io::Result<&'static str> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).await?;
    Ok(if n == 4 && head == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// Puts `src` at `dest` (via a temporary name, so `dest` is always whole).
pub async fn import(src: &Path, dest: &Path, progress: Progress<'_>) -> std::io::Result<Import> {
    let src_meta = tokio::fs::metadata(src).await?;
    let total = src_meta.len();
    if let Ok(d) = tokio::fs::metadata(dest).await {
        use std::os::unix::fs::MetadataExt;
        if (d.dev() == src_meta.dev() && d.ino() == src_meta.ino()) || d.len() == total {
            progress(total, total);
            return Ok(Import::Reused);
        }
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    let _ = tokio::fs::remove_file(&tmp).await;
    let how = match copy_into(src, &tmp, total, progress).await {
        Ok(how) => how,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, dest).await?;
    progress(total, total);
    Ok(how)
}

async fn copy_into(
    src: &Path,
    tmp: &Path,
    total: u64,
    progress: Progress<'_>,
) -> std::io::Result<Import> {
    progress(0, total);
    let mut input = tokio::fs::File::open(src).await?;
    let output = tokio::fs::File::create(tmp).await?;
    if reflink(&input, &output) {
        return Ok(Import::Reflink);
    }
    drop(output);
    let _ = tokio::fs::remove_file(tmp).await;
    if tokio::fs::hard_link(src, tmp).await.is_ok() {
        return Ok(Import::Hardlink);
    }
    copy_sparse(&mut input, tmp, total, progress).await?;
    Ok(Import::Copy)
}

/// Copies with progress; all-zero MiBs become holes.
async fn copy_sparse(
    input: &mut tokio::fs::File,
    tmp: &Path,
    total: u64,
    progress: Progress<'_>,
) -> std::io::Result<()> {
    let mut output = tokio::fs::File::create(tmp).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut last_report = 0u64;
    loop {
        let n = read_full(input, &mut buf).await?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            output.seek(std::io::SeekFrom::Current(n as i64)).await?;
        } else {
            output.write_all(&buf[..n]).await?;
        }
        done += n as u64;
        if done - last_report >= 64 << 20 {
            progress(done, total);
            last_report = done;
        }
    }
    output.set_len(done).await?;
    output.sync_all().await
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

/// FICLONE: the destination shares the source's blocks, copy-on-write (btrfs, XFS).
fn reflink(src: &tokio::fs::File, dst: &tokio::fs::File) -> bool {
    const FICLONE: nix::libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE
    // takes the source descriptor as its integer argument and touches no memory.
    unsafe { nix::libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn imports_then_reuses_and_keeps_content() {
        let dir = std::env::temp_dir().join(format!("vmscan-img-test-{}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let src = dir.join("src.raw");
        let mut data = vec![0u8; 3 << 20];
        data[5] = 7;
        data[(3 << 20) - 1] = 9;
        tokio::fs::write(&src, &data).await.unwrap();
        let seen = AtomicU64::new(0);
        let p = |d: u64, t: u64| {
            assert!(d <= t);
            seen.store(d, Ordering::SeqCst);
        };
        let dest = dir.join("vmscan-img-x.raw");
        let how = import(&src, &dest, &p).await.unwrap();
        assert_ne!(how, Import::Reused);
        assert_eq!(seen.load(Ordering::SeqCst), 3 << 20);
        assert_eq!(tokio::fs::read(&dest).await.unwrap(), data);
        assert_eq!(import(&src, &dest, &p).await.unwrap(), Import::Reused);
        assert_eq!(detect_format(&dest).await.unwrap(), "raw");
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }

    #[tokio::test]
    async fn copy_leaves_holes_for_zeros_and_reports_progress() {
        let dir = std::env::temp_dir().join(format!("vmscan-copy-test-{}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let src = dir.join("src.raw");
        let mut data = vec![0u8; 130 << 20];
        data[1] = 1;
        data[(130 << 20) - 2] = 2;
        tokio::fs::write(&src, &data).await.unwrap();
        let reports = AtomicU64::new(0);
        let p = |_: u64, t: u64| {
            assert_eq!(t, 130 << 20);
            reports.fetch_add(1, Ordering::SeqCst);
        };
        let out = dir.join("out.raw");
        let mut input = tokio::fs::File::open(&src).await.unwrap();
        copy_sparse(&mut input, &out, 130 << 20, &p).await.unwrap();
        assert_eq!(tokio::fs::read(&out).await.unwrap(), data);
        assert!(reports.load(Ordering::SeqCst) >= 2);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&out).unwrap().blocks();
        assert!(
            blocks * 512 < 8 << 20,
            "copy is not sparse: {blocks} blocks"
        );
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
