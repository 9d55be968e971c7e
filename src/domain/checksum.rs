use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hash algorithm vmscan can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumAlgo {
    pub const ALL: [ChecksumAlgo; 4] = [
        ChecksumAlgo::Md5,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha256,
        ChecksumAlgo::Sha512,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ChecksumAlgo::Md5 => "md5",
            ChecksumAlgo::Sha1 => "sha1",
            ChecksumAlgo::Sha256 => "sha256",
            ChecksumAlgo::Sha512 => "sha512",
        }
    }

    pub fn hex_len(&self) -> usize {
        match self {
            ChecksumAlgo::Md5 => 32,
            ChecksumAlgo::Sha1 => 40,
            ChecksumAlgo::Sha256 => 64,
            ChecksumAlgo::Sha512 => 128,
        }
    }

    fn from_hex_len(len: usize) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.hex_len() == len)
    }
}

impl fmt::Display for ChecksumAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChecksumAlgo {
    type Err = ChecksumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "");
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == norm)
            .ok_or_else(|| ChecksumError::UnknownAlgo(s.to_string()))
    }
}

/// An expected digest: algorithm plus lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    pub algo: ChecksumAlgo,
    pub hex: String,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.hex)
    }
}

/// What the user gave as the expected checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChecksumSpec {
    /// `ALGO:HEX` or bare hex (algorithm from its length).
    Digest(Checksum),
    /// `file:URL` of a SUMS file; the image's file name picks the line.
    File { url: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumError {
    #[error("unknown checksum algorithm {0:?} (use md5, sha1, sha256 or sha512)")]
    UnknownAlgo(String),
    #[error("checksum {0:?} is not hexadecimal")]
    NotHex(String),
    #[error("a {algo} checksum has {expected} hex digits, {got:?} has {actual}")]
    WrongLength {
        algo: ChecksumAlgo,
        expected: usize,
        actual: usize,
        got: String,
    },
    #[error(
        "cannot tell the algorithm of a {0}-digit checksum; write it as ALGO:HEX (e.g. sha256:…)"
    )]
    UnknownLength(usize),
    #[error("checksum file URL {0:?} must start with http://, https:// or file://")]
    BadFileUrl(String),
    #[error("checksum is empty")]
    Empty,
}

impl FromStr for ChecksumSpec {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ChecksumError::Empty);
        }
        if let Some(url) = s.strip_prefix("file:").filter(|u| !u.starts_with("//")) {
            let url = url.trim();
            let ok = ["http://", "https://", "file://"]
                .iter()
                .any(|p| url.starts_with(p));
            if !ok {
                return Err(ChecksumError::BadFileUrl(url.to_string()));
            }
            return Ok(ChecksumSpec::File {
                url: url.to_string(),
            });
        }
        let (algo, hex) = match s.split_once(':') {
            Some((a, h)) => (Some(a.parse::<ChecksumAlgo>()?), h.trim()),
            None => (None, s),
        };
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChecksumError::NotHex(hex.to_string()));
        }
        let algo = match algo {
            Some(a) => a,
            None => ChecksumAlgo::from_hex_len(hex.len())
                .ok_or(ChecksumError::UnknownLength(hex.len()))?,
        };
        if hex.len() != algo.hex_len() {
            return Err(ChecksumError::WrongLength {
                algo,
                expected: algo.hex_len(),
                actual: hex.len(),
                got: hex.to_string(),
            });
        }
        Ok(ChecksumSpec::Digest(Checksum {
            algo,
            hex: hex.to_ascii_lowercase(),
        }))
    }
}

impl fmt::Display for ChecksumSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChecksumSpec::Digest(c) => c.fmt(f),
            ChecksumSpec::File { url } => write!(f, "file:{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_algo_prefixed_and_bare_hex() {
        let spec: ChecksumSpec = format!("SHA256:{}", SHA256.to_uppercase()).parse().unwrap();
        assert_eq!(
            spec,
            ChecksumSpec::Digest(Checksum {
                algo: ChecksumAlgo::Sha256,
                hex: SHA256.into()
            })
        );
        let bare: ChecksumSpec = "d41d8cd98f00b204e9800998ecf8427e".parse().unwrap();
        assert!(matches!(
            bare,
            ChecksumSpec::Digest(Checksum {
                algo: ChecksumAlgo::Md5,
                ..
            })
        ));
    }

    #[test]
    fn parses_checksum_file_urls() {
        let spec: ChecksumSpec = "file:https://mirror.example/SHA256SUMS".parse().unwrap();
        assert_eq!(
            spec,
            ChecksumSpec::File {
                url: "https://mirror.example/SHA256SUMS".into()
            }
        );
        assert!(matches!(
            "file:ftp://x/SUMS".parse::<ChecksumSpec>(),
            Err(ChecksumError::BadFileUrl(_))
        ));
    }

    #[test]
    fn rejects_bad_checksums_with_specific_reasons() {
        assert!(matches!(
            "sha256:abc".parse::<ChecksumSpec>(),
            Err(ChecksumError::WrongLength {
                expected: 64,
                actual: 3,
                ..
            })
        ));
        assert!(matches!(
            "crc32:abcd".parse::<ChecksumSpec>(),
            Err(ChecksumError::UnknownAlgo(_))
        ));
        assert!(matches!(
            "xyz".parse::<ChecksumSpec>(),
            Err(ChecksumError::NotHex(_))
        ));
        assert!(matches!(
            "abcd".parse::<ChecksumSpec>(),
            Err(ChecksumError::UnknownLength(4))
        ));
    }
}
