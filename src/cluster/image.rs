//! The image file a cluster is given, with the facts clusters check it by:
//! the disk's virtual size (what Prism Central reports as `size_bytes`, not
//! the file's length) and the sha256 of the bytes sent.

use std::path::{Path, PathBuf};

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::pipeline::image_format::{image_signatures, qcow2_header, ImageFormat, SNIFF_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot tell the virtual size of a {format} file without qemu-img")]
    UnknownVirtualSize { path: String, format: String },
    #[error("{path}: sha256 {got:?} is not 64 hex digits")]
    BadSha256 { path: String, got: String },
}

/// A disk image ready for a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// Bytes in the file: what is uploaded.
    pub file_size: u64,
    /// Bytes of the disk the guest sees: the qcow2 header's size, a raw file's length.
    pub virtual_size: u64,
    /// Lowercase hex of the file's sha256.
    sha256: String,
}

impl ImageFile {
    /// From facts already known (inspect and convert recorded them).
    pub fn new(
        path: PathBuf,
        format: ImageFormat,
        file_size: u64,
        virtual_size: u64,
        sha256: &str,
    ) -> Result<ImageFile, ImageFileError> {
        let hex = sha256.trim().to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageFileError::BadSha256 {
                path: path.display().to_string(),
                got: sha256.to_string(),
            });
        }
        Ok(ImageFile {
            path,
            format,
            file_size,
            virtual_size,
            sha256: hex,
        })
    }

    /// Reads the header for the format and virtual size, and hashes the file.
    pub async fn read(path: &Path) -> Result<ImageFile, ImageFileError> {
        let io = |source| ImageFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = tokio::fs::File::open(path).await.map_err(io)?;
        let file_size = f.metadata().await.map_err(io)?.len();
        let mut head = vec![0u8; SNIFF_BYTES];
        let mut n = 0;
        while n < head.len() {
            let k = f.read(&mut head[n..]).await.map_err(io)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        head.truncate(n);
        let format = image_signatures(&head, &[])
            .first()
            .copied()
            .unwrap_or(ImageFormat::Raw);
        let virtual_size = match format {
            ImageFormat::Qcow2 => qcow2_header(&head).map(|h| h.virtual_size),
            ImageFormat::Raw | ImageFormat::Iso => Some(file_size),
            _ => None,
        }
        .ok_or_else(|| ImageFileError::UnknownVirtualSize {
            path: path.display().to_string(),
            format: format.to_string(),
        })?;
        f.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).await.map_err(io)?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
        }
        Ok(ImageFile {
            path: path.to_path_buf(),
            format,
            file_size,
            virtual_size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn is_iso(&self) -> bool {
        self.format == ImageFormat::Iso
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_qcow2s_virtual_size_comes_from_its_header_not_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("64M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let img = ImageFile::read(&path).await.unwrap();
        assert_eq!(img.format, ImageFormat::Qcow2);
        assert_eq!(img.virtual_size, 64 << 20);
        assert!(img.file_size < img.virtual_size, "{img:?}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(img.sha256(), hex::encode(sha2::Sha256::digest(&bytes)));

        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let img = ImageFile::read(&raw).await.unwrap();
        assert_eq!((img.format, img.virtual_size), (ImageFormat::Raw, 4096));
    }

    #[test]
    fn a_sha256_must_be_hex() {
        let p = PathBuf::from("/x");
        assert!(ImageFile::new(p.clone(), ImageFormat::Raw, 1, 1, "abc").is_err());
        let ok = ImageFile::new(p, ImageFormat::Raw, 1, 1, &"AB".repeat(32)).unwrap();
        assert_eq!(ok.sha256(), "ab".repeat(32));
    }
}
