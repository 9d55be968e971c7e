//! The rules that keep a hostile archive inside the job's directory and inside
//! its budget: safe entry paths, caps on size and expansion, free disk, and a
//! sparse writer that never writes a zero block.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ArchiveError;
use crate::domain::fmt_bytes;
use crate::pipeline::writeback::Writeback;

/// The expansion ratio is only enforced once this much came out, so small
/// metadata files that compress well are never mistaken for bombs.
pub const RATIO_FLOOR_BYTES: u64 = 64 << 20;

/// Free disk is re-checked after every this many bytes written.
const DISK_CHECK_EVERY: u64 = 256 << 20;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_total_bytes: u64,
    pub max_expansion_ratio: u64,
    /// Most entries an archive may hold.
    pub max_entries: u64,
    pub min_free_bytes: u64,
}

/// Counters the async side reads to report progress.
#[derive(Default, Debug)]
pub struct Counters {
    /// Bytes of the archive file consumed.
    pub read: AtomicU64,
    /// Bytes that came out of the decompressor.
    pub unpacked: AtomicU64,
}

/// Validates an archive entry's path and returns it relative to the
/// destination. `..`, absolute paths and prefixes are hostile.
pub fn safe_relative(name: &str) -> Result<PathBuf, ArchiveError> {
    let hostile = |why: &str| ArchiveError::UnsafePath {
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.contains('\0') {
        return Err(hostile("contains a NUL byte"));
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(hostile("is an absolute path"));
    }
    if name.split(['/', '\\']).any(|c| c == "..") {
        return Err(hostile("climbs out with '..'"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile("climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile("is an absolute path"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(hostile("is empty"));
    }
    Ok(out)
}

/// True if a link target, resolved from the entry's directory, leaves the archive root.
pub fn link_escapes(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: i64 = entry
        .parent()
        .map(|p| p.components().count() as i64)
        .unwrap_or(0);
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Bytes available to us on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, ArchiveError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| ArchiveError::Io {
        what: format!("cannot check free disk on {}", dir.display()),
        source: std::io::Error::from(e),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Keeps the total, the expansion ratio and free disk in check while bytes
/// come out of a decompressor. Limit errors are also remembered here, because
/// archive readers may wrap the I/O error that carried them.
pub struct Budget {
    limits: Limits,
    input_size: u64,
    dest: PathBuf,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    next_disk_check: Cell<u64>,
    tripped: RefCell<Option<ArchiveError>>,
}

impl Budget {
    pub fn new(
        limits: Limits,
        input_size: u64,
        dest: PathBuf,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> Self {
        Budget {
            limits,
            input_size,
            dest,
            counters,
            cancel,
            next_disk_check: Cell::new(DISK_CHECK_EVERY),
            tripped: RefCell::new(None),
        }
    }

    pub fn unpacked(&self) -> u64 {
        self.counters.unpacked.load(Ordering::Relaxed)
    }

    /// Before writing `declared` bytes: refuse what cannot fit, and an
    /// entry that would expand past the ratio (a GNU sparse entry declares
    /// its real size while storing almost nothing).
    pub fn reserve(&self, name: &str, declared: u64) -> Result<(), ArchiveError> {
        if declared > self.limits.max_total_bytes {
            return Err(ArchiveError::TooBig {
                name: name.to_string(),
                size: fmt_bytes(declared),
                limit: fmt_bytes(self.limits.max_total_bytes),
            });
        }
        self.check_disk(declared)?;
        let ratio_cap = self
            .input_size
            .max(1)
            .saturating_mul(self.limits.max_expansion_ratio);
        if declared > RATIO_FLOOR_BYTES && declared > ratio_cap {
            return Err(ArchiveError::Bomb {
                out: fmt_bytes(declared),
                input: fmt_bytes(self.input_size),
                why: format!(
                    "expanding more than {}x (extract.max_expansion_ratio) with entry {name:?}",
                    self.limits.max_expansion_ratio
                ),
            });
        }
        Ok(())
    }

    /// Remembers a limit a reader hit (archive readers wrap the I/O error).
    pub fn trip(&self, e: ArchiveError) {
        *self.tripped.borrow_mut() = Some(e);
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn check_disk(&self, needed: u64) -> Result<(), ArchiveError> {
        let free = free_bytes(&self.dest)?;
        if free < needed.saturating_add(self.limits.min_free_bytes) {
            return Err(ArchiveError::NoSpace {
                dir: self.dest.display().to_string(),
                needed: fmt_bytes(needed),
                free: fmt_bytes(free),
                reserve: fmt_bytes(self.limits.min_free_bytes),
            });
        }
        Ok(())
    }

    /// After `n` more bytes came out of the decompressor.
    pub fn add(&self, n: u64) -> Result<(), ArchiveError> {
        if self.cancel.is_cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        let total = self.counters.unpacked.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.limits.max_total_bytes {
            return Err(ArchiveError::Bomb {
                out: format!("more than {}", fmt_bytes(self.limits.max_total_bytes)),
                input: fmt_bytes(self.input_size),
                why: format!(
                    "over the cap of {} (extract.max_total_bytes)",
                    fmt_bytes(self.limits.max_total_bytes)
                ),
            });
        }
        let ratio_cap = self
            .input_size
            .max(1)
            .saturating_mul(self.limits.max_expansion_ratio);
        if total > RATIO_FLOOR_BYTES && total > ratio_cap {
            return Err(ArchiveError::Bomb {
                out: format!("more than {}", fmt_bytes(total - n)),
                input: fmt_bytes(self.input_size),
                why: format!(
                    "expanding more than {}x (extract.max_expansion_ratio)",
                    self.limits.max_expansion_ratio
                ),
            });
        }
        if total >= self.next_disk_check.get() {
            self.next_disk_check.set(total + DISK_CHECK_EVERY);
            self.check_disk(0)?;
        }
        Ok(())
    }

    /// The limit error a reader hit, if any (it wins over the wrapped I/O error).
    pub fn take_tripped(&self) -> Option<ArchiveError> {
        self.tripped.borrow_mut().take()
    }

    /// Turns an error out of an archive reader into ours.
    pub fn explain(&self, e: std::io::Error) -> ArchiveError {
        self.take_tripped()
            .unwrap_or_else(|| ArchiveError::from_read(e))
    }
}

/// Decompressed bytes pass through here, so every byte counts against the budget.
pub struct Metered<'b, R> {
    inner: R,
    budget: &'b Budget,
}

impl<'b, R> Metered<'b, R> {
    pub fn new(inner: R, budget: &'b Budget) -> Self {
        Metered { inner, budget }
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.budget.add(n as u64) {
            let msg = e.to_string();
            *self.budget.tripped.borrow_mut() = Some(e);
            return Err(std::io::Error::other(msg));
        }
        Ok(n)
    }
}

/// Counts how far into the archive file we are, for progress.
pub struct CountingReader<R> {
    inner: R,
    counters: Arc<Counters>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, counters: Arc<Counters>) -> Self {
        CountingReader { inner, counters }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let p = self.inner.seek(pos)?;
        self.counters.read.store(p, Ordering::Relaxed);
        Ok(p)
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub fn read_head(src: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Creates `rel` under `dest` (never following or replacing anything that
/// exists) and copies `src` into it, leaving holes for zero blocks.
pub fn write_entry(
    dest: &Path,
    rel: &Path,
    src: &mut dyn Read,
    budget: &Budget,
    declared: Option<u64>,
) -> Result<(PathBuf, u64), ArchiveError> {
    let path = dest.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ArchiveError::io(&parent.display().to_string(), e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, nix::libc::O_NOFOLLOW);
    let file = opts.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ArchiveError::Duplicate(rel.display().to_string())
        } else {
            ArchiveError::io(&path.display().to_string(), e)
        }
    })?;
    let n = copy_sparse(src, file, budget, declared, &path)?;
    Ok((path, n))
}

/// Copies a stream into a file, seeking over all-zero blocks (sparse output
/// is both faster and what qemu-img would produce anyway).
pub fn copy_sparse(
    src: &mut dyn Read,
    mut file: File,
    budget: &Budget,
    declared: Option<u64>,
    path: &Path,
) -> Result<u64, ArchiveError> {
    const BLOCK: usize = 64 << 10;
    let shown = path.display().to_string();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut writeback = Writeback::new(0);
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(budget.explain(e)),
        };
        total += n as u64;
        if declared.is_some_and(|d| total > d) {
            return Err(ArchiveError::Corrupt(format!(
                "{shown}: entry is longer than its header says"
            )));
        }
        for block in buf[..n].chunks(BLOCK) {
            if is_zero(block) {
                file.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(|e| ArchiveError::io(&shown, e))?;
            } else {
                file.write_all(block)
                    .map_err(|e| ArchiveError::io(&shown, e))?;
            }
        }
        writeback.wrote(&file, total);
    }
    // A trailing hole needs the length set explicitly.
    file.set_len(total)
        .map_err(|e| ArchiveError::io(&shown, e))?;
    file.sync_all().map_err(|e| ArchiveError::io(&shown, e))?;
    Ok(total)
}

fn is_zero(block: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; an early `any` does not.
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_directory() {
        assert_eq!(
            safe_relative("a/./b.qcow2").unwrap(),
            Path::new("a/b.qcow2")
        );
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a/..",
            "",
            ".",
            "a\0b",
            "..\\x",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(safe_relative("../evil")
            .unwrap_err()
            .to_string()
            .contains(".."));
    }

    #[test]
    fn sees_links_that_escape() {
        assert!(link_escapes(Path::new("a/link"), Path::new("/etc/passwd")));
        assert!(link_escapes(Path::new("a/link"), Path::new("../../x")));
        assert!(link_escapes(Path::new("link"), Path::new("../x")));
        assert!(!link_escapes(
            Path::new("a/link"),
            Path::new("../b/disk.vmdk")
        ));
        assert!(!link_escapes(Path::new("link"), Path::new("disk.vmdk")));
    }

    fn budget(dir: &Path, total: u64, ratio: u64, input: u64) -> Budget {
        Budget::new(
            Limits {
                max_total_bytes: total,
                max_expansion_ratio: ratio,
                max_entries: 10_000,
                min_free_bytes: 0,
            },
            input,
            dir.to_path_buf(),
            Arc::default(),
            CancellationToken::new(),
        )
    }

    #[test]
    fn writes_zero_blocks_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[3 << 20] = 7;
        let b = budget(dir.path(), u64::MAX, 1000, 1);
        let (path, n) = write_entry(
            dir.path(),
            Path::new("d/x.raw"),
            &mut &data[..],
            &b,
            Some(data.len() as u64),
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(
            blocks * 512 < 1 << 20,
            "expected a sparse file, {blocks} blocks"
        );
    }

    #[test]
    fn stops_at_the_total_cap_and_the_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let b = budget(dir.path(), 1000, 1000, 1);
        assert!(matches!(b.add(1001), Err(ArchiveError::Bomb { .. })));
        let b = budget(dir.path(), u64::MAX, 10, 1 << 20);
        b.add(10 << 20).unwrap();
        let e = b.add(RATIO_FLOOR_BYTES).unwrap_err();
        assert!(e.to_string().contains("expanding more than 10x"), "{e}");
    }

    #[test]
    fn refuses_more_than_the_free_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = budget(dir.path(), u64::MAX, 1000, 1);
        let e = b.reserve("huge.raw", u64::MAX / 2).unwrap_err();
        assert!(matches!(e, ArchiveError::NoSpace { .. }), "{e}");
        b.reserve("small.raw", 4096).unwrap();
    }

    #[test]
    fn never_overwrites_an_existing_file_or_link() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("x")).unwrap();
        let b = budget(dir.path(), u64::MAX, 1000, 1);
        let e = write_entry(dir.path(), Path::new("x"), &mut &b"evil"[..], &b, None).unwrap_err();
        assert!(matches!(e, ArchiveError::Duplicate(_)), "{e}");
    }
}
