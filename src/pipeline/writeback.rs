//! Starts writing a file's dirty pages to disk while more are still being
//! produced, so the fsync that makes the file durable at the end finds little
//! left to do: the disk works while the CPU downloads or decompresses.

use std::os::fd::AsRawFd;

/// Writeback is started after every this many bytes written.
const EVERY: u64 = 32 << 20;

/// Tracks how much was written since writeback was last started.
#[derive(Debug)]
pub struct Writeback {
    next: u64,
}

impl Writeback {
    /// For a file that already holds `written` bytes.
    pub fn new(written: u64) -> Self {
        Writeback {
            next: written + EVERY,
        }
    }

    /// After the file reached `written` bytes: starts writeback of everything
    /// dirty in it once another [`EVERY`] bytes came in. Never waits for the
    /// disk; a failure only means the final fsync does the work.
    pub fn wrote(&mut self, file: &impl AsRawFd, written: u64) {
        if written < self.next {
            return;
        }
        self.next = written + EVERY;
        // Offset 0 and length 0: the whole file. Pages already being written
        // are skipped, so bytes a write still in flight adds are caught next time.
        // SAFETY: a plain syscall on a descriptor the caller keeps open; no
        // memory is passed.
        unsafe {
            nix::libc::sync_file_range(file.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn starts_writeback_only_every_so_many_bytes_and_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut wb = Writeback::new(0);
        let block = vec![7u8; 1 << 20];
        let mut written = 0u64;
        for _ in 0..40 {
            f.write_all(&block).unwrap();
            written += block.len() as u64;
            wb.wrote(&f, written);
        }
        assert_eq!(wb.next, 64 << 20, "started once, at 32 MiB");
        f.sync_all().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), written);
    }
}
