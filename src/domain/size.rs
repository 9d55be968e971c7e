//! A disk size a person wrote ("20G", "512M", "21474836480"), in bytes.
//! Units are binary, as `qemu-img resize` reads them: K = KiB, G = GiB.

use std::fmt;
use std::str::FromStr;

/// The largest disk vmscan grows an image to (qcow2 allows more, but no
/// template needs it and a typo such as "20P" should not be taken).
pub const MAX_DISK_BYTES: u64 = 64 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiskSize(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSizeError {
    #[error("size is empty")]
    Empty,
    #[error("{0:?} is not a size: write a whole number of bytes, or one with a unit K, M, G or T (binary: 20G = 20 GiB, as qemu-img reads it)")]
    Malformed(String),
    #[error("{0:?} is ambiguous: qemu-img reads G as GiB; write 20G (or 20GiB) for 20 GiB")]
    Decimal(String),
    #[error("size must be larger than 0")]
    Zero,
    #[error("{given} is larger than the largest disk vmscan makes (64.0 TiB)")]
    TooLarge { given: String },
    #[error("a size is a number of bytes or a string such as \"20G\"")]
    WrongType,
    #[error("{0} bytes is not a whole number of 512-byte sectors")]
    Unaligned(u64),
}

impl DiskSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn from_bytes(n: u64) -> Result<DiskSize, DiskSizeError> {
        match n {
            0 => Err(DiskSizeError::Zero),
            n if n > MAX_DISK_BYTES => Err(DiskSizeError::TooLarge {
                given: format!("{n} bytes"),
            }),
            n if n % 512 != 0 => Err(DiskSizeError::Unaligned(n)),
            n => Ok(DiskSize(n)),
        }
    }

    /// A size from JSON: an integer (bytes) or a string with a unit.
    pub fn from_json(v: &serde_json::Value) -> Result<DiskSize, DiskSizeError> {
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .ok_or(DiskSizeError::WrongType)
                .and_then(DiskSize::from_bytes),
            serde_json::Value::String(s) => s.parse(),
            _ => Err(DiskSizeError::WrongType),
        }
    }
}

impl FromStr for DiskSize {
    type Err = DiskSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err(DiskSizeError::Empty);
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let malformed = || DiskSizeError::Malformed(s.to_string());
        if num.is_empty() {
            return Err(malformed());
        }
        let unit = unit.trim();
        let shift = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" | "KIB" => 10,
            "M" | "MIB" => 20,
            "G" | "GIB" => 30,
            "T" | "TIB" => 40,
            "KB" | "MB" | "GB" | "TB" => return Err(DiskSizeError::Decimal(s.to_string())),
            _ => return Err(malformed()),
        };
        let n: u64 = num.parse().map_err(|_| DiskSizeError::TooLarge {
            given: t.to_string(),
        })?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or(DiskSizeError::TooLarge {
                given: t.to_string(),
            })?;
        DiskSize::from_bytes(bytes).map_err(|e| match e {
            DiskSizeError::TooLarge { .. } => DiskSizeError::TooLarge {
                given: t.to_string(),
            },
            e => e,
        })
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::fmt_bytes(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_forms_image_builders_write() {
        // gen-vm-image's examples/architecture.yml writes `size: 120G`, and
        // passes it to `qemu-img resize`, which reads G as GiB.
        assert_eq!("120G".parse::<DiskSize>().unwrap().bytes(), 120 << 30);
        assert_eq!("20G".parse::<DiskSize>().unwrap().bytes(), 20 << 30);
        assert_eq!("20GiB".parse::<DiskSize>().unwrap().bytes(), 20 << 30);
        assert_eq!("512m".parse::<DiskSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("1T".parse::<DiskSize>().unwrap().bytes(), 1 << 40);
        assert_eq!("4096".parse::<DiskSize>().unwrap().bytes(), 4096);
        assert_eq!(
            DiskSize::from_json(&serde_json::json!(21474836480u64))
                .unwrap()
                .bytes(),
            20 << 30
        );
    }

    #[test]
    fn refuses_what_it_cannot_read_with_a_reason() {
        assert!(matches!(
            "20GB".parse::<DiskSize>(),
            Err(DiskSizeError::Decimal(_))
        ));
        assert!(matches!(
            "big".parse::<DiskSize>(),
            Err(DiskSizeError::Malformed(_))
        ));
        assert!(matches!(
            "1.5G".parse::<DiskSize>(),
            Err(DiskSizeError::Malformed(_))
        ));
        assert!(matches!(
            "20X".parse::<DiskSize>(),
            Err(DiskSizeError::Malformed(_))
        ));
        assert_eq!("0G".parse::<DiskSize>(), Err(DiskSizeError::Zero));
        assert!(matches!(
            "65T".parse::<DiskSize>(),
            Err(DiskSizeError::TooLarge { .. })
        ));
        assert!(matches!(
            "99999999999999999999999G".parse::<DiskSize>(),
            Err(DiskSizeError::TooLarge { .. })
        ));
        assert_eq!(
            DiskSize::from_json(&serde_json::json!(-5)),
            Err(DiskSizeError::WrongType)
        );
        assert_eq!(
            DiskSize::from_json(&serde_json::json!(true)),
            Err(DiskSizeError::WrongType)
        );
        assert_eq!(
            "1000".parse::<DiskSize>(),
            Err(DiskSizeError::Unaligned(1000))
        );
    }
}
