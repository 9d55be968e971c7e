//! Digests computed while bytes stream past, so verifying needs no second pass.

use std::collections::BTreeMap;
use std::path::Path;

use digest::Digest;
use tokio::io::AsyncReadExt;

use crate::domain::ChecksumAlgo;

enum One {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl One {
    fn new(algo: ChecksumAlgo) -> Self {
        match algo {
            ChecksumAlgo::Md5 => One::Md5(md5::Md5::new()),
            ChecksumAlgo::Sha1 => One::Sha1(sha1::Sha1::new()),
            ChecksumAlgo::Sha256 => One::Sha256(sha2::Sha256::new()),
            ChecksumAlgo::Sha512 => One::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            One::Md5(h) => h.update(bytes),
            One::Sha1(h) => h.update(bytes),
            One::Sha256(h) => h.update(bytes),
            One::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            One::Md5(h) => hex::encode(h.finalize()),
            One::Sha1(h) => hex::encode(h.finalize()),
            One::Sha256(h) => hex::encode(h.finalize()),
            One::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Several digests over one stream of bytes.
pub struct MultiHasher {
    hashers: Vec<(ChecksumAlgo, One)>,
}

impl MultiHasher {
    /// sha256 is always computed: it is recorded on every job.
    pub fn new(extra: impl IntoIterator<Item = ChecksumAlgo>) -> Self {
        let mut algos = vec![ChecksumAlgo::Sha256];
        for a in extra {
            if !algos.contains(&a) {
                algos.push(a);
            }
        }
        MultiHasher {
            hashers: algos.into_iter().map(|a| (a, One::new(a))).collect(),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for (_, h) in &mut self.hashers {
            h.update(bytes);
        }
    }

    pub fn finish(self) -> BTreeMap<ChecksumAlgo, String> {
        self.hashers
            .into_iter()
            .map(|(a, h)| (a, h.finish()))
            .collect()
    }

    /// Feeds a whole file through the hashers on this (blocking) thread;
    /// gives up with `Interrupted` once `stop` fires.
    pub fn update_from_file_blocking(
        &mut self,
        path: &Path,
        stop: &tokio_util::sync::CancellationToken,
    ) -> std::io::Result<u64> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            if stop.is_cancelled() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "hashing stopped",
                ));
            }
            let n = match f.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.update(&buf[..n]);
            total += n as u64;
        }
    }

    /// Feeds a whole file through the hashers (resumed downloads, local files).
    pub async fn update_from_file(&mut self, path: &Path) -> std::io::Result<u64> {
        let mut f = tokio::fs::File::open(path).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(total);
            }
            self.update(&buf[..n]);
            total += n as u64;
        }
    }
}

/// Digests as a JSON object `{"sha256": "…", …}` for stage details.
pub fn to_json(d: &BTreeMap<ChecksumAlgo, String>) -> serde_json::Value {
    serde_json::Value::Object(
        d.iter()
            .map(|(a, h)| (a.as_str().to_string(), serde_json::Value::String(h.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_known_digests_in_one_pass() {
        let mut h = MultiHasher::new([ChecksumAlgo::Md5, ChecksumAlgo::Sha1, ChecksumAlgo::Sha512]);
        h.update(b"ab");
        h.update(b"c");
        let d = h.finish();
        assert_eq!(d[&ChecksumAlgo::Md5], "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d[&ChecksumAlgo::Sha1],
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            d[&ChecksumAlgo::Sha256],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d[&ChecksumAlgo::Sha512].starts_with("ddaf35a193617aba"));
    }
}
