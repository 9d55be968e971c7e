//! Watches a tar stream's headers as the tar crate reads them. The crate
//! reads GNU long-name/long-link and PAX extension records wholly into
//! memory, so a small `.tar.gz` whose long name inflates to gigabytes would
//! make the daemon allocate them; here such a record is refused once it
//! declares more than [`MAX_EXTENSION_BYTES`], before its data is read.
//! Entries are counted too (a million empty entries is a denial of service).

use std::io::Read;

use super::guard::Budget;
use super::ArchiveError;

/// Longest GNU long name or PAX record set accepted (Linux PATH_MAX is 4 KiB).
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

const BLOCK: usize = 512;

pub struct TarGuard<'b, R> {
    inner: R,
    budget: &'b Budget,
    max_entries: u64,
    entries: u64,
    /// Bytes of the current header block seen so far.
    header: Vec<u8>,
    /// Bytes of data (padded to a block) still to pass before the next header.
    data_left: u64,
    /// After the end-of-archive zero block: stop interpreting.
    done: bool,
}

impl<'b, R> TarGuard<'b, R> {
    pub fn new(inner: R, budget: &'b Budget, max_entries: u64) -> Self {
        TarGuard {
            inner,
            budget,
            max_entries,
            entries: 0,
            header: Vec::with_capacity(BLOCK),
            data_left: 0,
            done: false,
        }
    }

    fn refuse(&self, e: ArchiveError) -> std::io::Error {
        let msg = e.to_string();
        self.budget.trip(e);
        std::io::Error::other(msg)
    }

    /// Looks at one whole header block.
    fn header_done(&mut self) -> Result<(), ArchiveError> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|b| *b == 0) {
            // End of archive (or padding before it): nothing more to judge.
            self.done = true;
            return Ok(());
        }
        let size = octal_or_binary(&h[124..136]).ok_or_else(|| {
            ArchiveError::Corrupt("a tar header has an unreadable size field".into())
        })?;
        let kind = h[156];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION_BYTES {
            return Err(ArchiveError::NameTooLong {
                what: match kind {
                    b'L' => "GNU long name",
                    b'K' => "GNU long link name",
                    _ => "PAX extended header",
                },
                size,
                limit: MAX_EXTENSION_BYTES,
            });
        }
        // Extension records belong to the entry after them.
        if !matches!(kind, b'L' | b'K' | b'x' | b'g') {
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    limit: self.max_entries,
                    last: name,
                });
            }
        }
        if self.budget.cancelled() {
            return Err(ArchiveError::Cancelled);
        }
        // GNU sparse ('S') stores only the data it has; its expansion is
        // counted when the entry is written (Budget::reserve on the real size).
        self.data_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        Ok(())
    }

    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), ArchiveError> {
        while !bytes.is_empty() && !self.done {
            if self.data_left > 0 {
                let n = (self.data_left.min(bytes.len() as u64)) as usize;
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let want = BLOCK - self.header.len();
            let n = want.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == BLOCK {
                self.header_done()?;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.observe(&buf[..n]) {
            return Err(self.refuse(e));
        }
        Ok(n)
    }
}

/// A tar numeric field: octal text, or base-256 when the high bit is set.
fn octal_or_binary(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = (f[0] & 0x7f) as u64;
        for b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(*b as u64)?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_octal_and_base256_sizes() {
        assert_eq!(octal_or_binary(b"00000001750\0"), Some(1000));
        assert_eq!(octal_or_binary(b"        \0   "), Some(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 1;
        big[10] = 2;
        assert_eq!(octal_or_binary(&big), Some(513));
        assert_eq!(octal_or_binary(b"zzz"), None);
    }
}
