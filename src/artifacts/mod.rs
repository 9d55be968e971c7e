//! Artifact stores: where validated images are published, with their
//! properties. One small trait; Artifactory (REST) and a local directory.

pub mod artifactory;
pub mod local;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use digest::Digest;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::config::{ArtifactStoreKind, Config};

pub use artifactory::ArtifactoryStore;
pub use local::LocalStore;

/// Item properties: one value per key (`vmscan.state` → `current`).
pub type Properties = BTreeMap<String, String>;

/// The property marking a version current or deprecated.
pub const STATE_PROPERTY: &str = "vmscan.state";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store refused the request (4xx); shown verbatim.
    #[error("{store} answered {status} to {method} {what}: {message}")]
    Refused {
        store: &'static str,
        status: u16,
        method: &'static str,
        what: String,
        message: String,
    },
    /// 5xx, timeouts and dropped connections, after every attempt.
    #[error("{store} unavailable for {method} {what} after {attempts} attempts: {message}")]
    Unavailable {
        store: &'static str,
        method: &'static str,
        what: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "checksum mismatch after deploying {path}: sent {algo} {sent}, the store has {stored}"
    )]
    ChecksumMismatch {
        path: String,
        algo: &'static str,
        sent: String,
        stored: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from {store}: {0}", store = "the artifact store")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
}

impl ArtifactError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArtifactError::Unavailable { .. })
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ArtifactError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The digests Artifactory checks on deploy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
}

impl Checksums {
    /// md5, sha1 and sha256 of a file in one streaming pass; returns the size too.
    pub async fn of_file(path: &Path) -> std::io::Result<(Checksums, u64)> {
        let mut f = tokio::fs::File::open(path).await?;
        let mut md5 = md5::Md5::new();
        let mut sha1 = sha1::Sha1::new();
        let mut sha256 = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            sha1.update(&buf[..n]);
            sha256.update(&buf[..n]);
            size += n as u64;
        }
        Ok((
            Checksums {
                md5: hex::encode(md5.finalize()),
                sha1: hex::encode(sha1.finalize()),
                sha256: hex::encode(sha256.finalize()),
            },
            size,
        ))
    }
}

/// One file to publish.
#[derive(Clone, Debug)]
pub struct DeployRequest {
    /// Path inside the repository (`rocky/9.4/rocky-9.4.qcow2`).
    pub path: String,
    pub file: PathBuf,
    pub size: u64,
    pub checksums: Checksums,
    pub properties: Properties,
    /// The file is vmscan's own copy (work directory): a local store may hard-link it.
    pub may_link: bool,
}

/// Where a deployed file ended up.
#[derive(Clone, Debug, Serialize)]
pub struct Deployed {
    pub repo: String,
    pub path: String,
    pub url: String,
    /// The store already had these bytes (checksum deploy): nothing was uploaded.
    pub reused: bool,
}

/// An artifact store. Paths are relative to the configured repository.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// "local" or "artifactory", for logs and the catalog.
    fn kind(&self) -> &'static str;
    /// The repository new versions go to.
    fn repo(&self) -> &str;
    /// Streams a file in with its checksums and properties.
    async fn deploy(&self, req: &DeployRequest) -> Result<Deployed, ArtifactError>;
    /// Adds or replaces properties of an item.
    async fn set_properties(
        &self,
        repo: &str,
        path: &str,
        props: &Properties,
    ) -> Result<(), ArtifactError>;
    async fn properties(&self, repo: &str, path: &str) -> Result<Properties, ArtifactError>;
    /// Moves an item to another repository (same path); returns its new URL.
    async fn move_to(&self, repo: &str, path: &str, to_repo: &str)
        -> Result<String, ArtifactError>;
    async fn delete(&self, repo: &str, path: &str) -> Result<(), ArtifactError>;
}

pub type DynArtifactStore = Arc<dyn ArtifactStore>;

/// The store the configuration names.
pub fn from_config(cfg: &Config) -> Result<DynArtifactStore, ArtifactError> {
    Ok(match cfg.publish.store {
        ArtifactStoreKind::Local => Arc::new(LocalStore::new(
            cfg.publish.local.root_in(&cfg.storage.data_dir),
            cfg.publish.local.repo.clone(),
        )),
        ArtifactStoreKind::Artifactory => {
            Arc::new(ArtifactoryStore::new(cfg.publish.artifactory.clone())?)
        }
    })
}

/// Image names and versions: letters, digits, `.`, `_`, `-`; 1–128 characters,
/// not starting with `.` or `-` (they become path segments and property values).
pub fn check_label(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 128 {
        return Err(format!("{field}: must be 1 to 128 characters"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "{field}: {v:?} contains {c:?}; use letters, digits, '.', '_' and '-' only"
        ));
    }
    if v.starts_with('.') || v.starts_with('-') {
        return Err(format!("{field}: {v:?} must start with a letter or digit"));
    }
    Ok(())
}

/// Extensions stripped from a file name to make an image name.
const IMAGE_EXTENSIONS: &[&str] = &[
    "gz", "xz", "zst", "bz2", "zip", "tgz", "tar", "ova", "ovf", "qcow2", "qcow", "img", "raw",
    "vmdk", "vhd", "vhdx", "vdi", "iso",
];

/// `rocky-9.4-x86_64.qcow2.xz` → `rocky-9.4-x86_64`; unsafe characters become `-`.
pub fn name_from_file(file_name: &str) -> String {
    let mut stem = file_name
        .rsplit('/')
        .next()
        .unwrap_or(file_name)
        .to_string();
    while let Some((base, ext)) = stem.rsplit_once('.') {
        if base.is_empty() || !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            break;
        }
        stem = base.to_string();
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).to_string();
    let mut out: String = cleaned.chars().take(128).collect();
    if out.is_empty() {
        out = "image".into();
    }
    out
}

/// Splits a trailing version off a name: `ubuntu-24.04` → (`ubuntu`, `24.04`).
/// Only a last `-` part that starts with a digit and contains a `.` counts.
pub fn split_version(name: &str) -> Option<(String, String)> {
    let (base, last) = name.rsplit_once('-')?;
    let versionish = last.starts_with(|c: char| c.is_ascii_digit())
        && last.contains('.')
        && last.chars().all(|c| c.is_ascii_digit() || c == '.');
    (versionish && !base.is_empty()).then(|| (base.to_string(), last.to_string()))
}

/// Fills `{name}`, `{version}` and `{format}` into the path template.
pub fn render_path(template: &str, name: &str, version: &str, format: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{version}", version)
        .replace("{format}", format)
}

/// Joins a repository and a path into `base/repo/path`.
pub(crate) fn join_url(base: &str, repo: &str, path: &str) -> String {
    format!(
        "{}/{}/{}",
        base.trim_end_matches('/'),
        repo,
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_names_from_file_names() {
        assert_eq!(name_from_file("rocky-9.4-x86_64.qcow2"), "rocky-9.4-x86_64");
        assert_eq!(
            name_from_file("rocky-9.4-x86_64.qcow2.xz"),
            "rocky-9.4-x86_64"
        );
        assert_eq!(name_from_file("Win Server 2022.vhdx"), "Win-Server-2022");
        assert_eq!(name_from_file("disk.img.tar.gz"), "disk");
        assert_eq!(name_from_file(".qcow2"), "qcow2");
        assert_eq!(
            split_version("ubuntu-24.04"),
            Some(("ubuntu".into(), "24.04".into()))
        );
        assert_eq!(split_version("rocky-9.4-x86_64"), None);
    }

    #[test]
    fn labels_are_safe_path_segments() {
        check_label("name", "rocky-9.4_x86").unwrap();
        assert!(check_label("name", "../etc").is_err());
        assert!(check_label("name", "a/b").is_err());
        assert!(check_label("version", "").is_err());
        assert!(check_label("version", "-1").is_err());
    }

    #[test]
    fn renders_the_path_template() {
        assert_eq!(
            render_path(
                "{name}/{version}/{name}-{version}.{format}",
                "r",
                "1",
                "qcow2"
            ),
            "r/1/r-1.qcow2"
        );
    }
}
