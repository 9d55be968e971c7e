//! Settings of the publish stage: where validated images go (a local
//! directory or Artifactory), how they are laid out and named, and what
//! happens to the versions they replace.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Which artifact store receives images.
    pub store: ArtifactStoreKind,
    /// Repository path of an image; placeholders `{name}`, `{version}`, `{format}`.
    pub path_template: String,
    /// How an image name is made when the submitter gave none.
    pub name_rule: NameRule,
    /// Versions of one image name kept (current included); older ones are
    /// deleted from the store. 0 keeps every version.
    pub retention: u32,
    /// Repository deprecated versions are moved to. Empty: they stay in place.
    pub archive_repo: Option<String>,
    /// `vmscan.deployed_by` of images from jobs queued on the server's shell
    /// (`vmscan submit`); otherwise it is the requester.
    pub deployed_by: String,
    pub local: LocalStoreConfig,
    pub artifactory: ArtifactoryConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactStoreKind {
    /// A directory on this host (the embedded default).
    #[default]
    Local,
    Artifactory,
}

/// Derives an image name from the downloaded file name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NameRule {
    /// Strips archive and disk-image extensions, repeatedly:
    /// `rocky-9.4-x86_64.qcow2.xz` → `rocky-9.4-x86_64`.
    #[default]
    FileStem,
    /// Like `file-stem`, then drops a trailing version-like part:
    /// `rocky-9.4-x86_64` stays, `ubuntu-24.04` → `ubuntu` (version `24.04`).
    StemWithoutVersion,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalStoreConfig {
    /// Root of the store. Empty: `<data_dir>/artifacts`.
    pub root: Option<PathBuf>,
    /// The directory under the root that plays the repository.
    pub repo: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactoryConfig {
    /// The Artifactory root, including `/artifactory`: `https://art.example.com/artifactory`.
    pub url: String,
    /// The (generic, local) repository images are deployed to.
    pub repo: String,
    /// Access token, sent as `Authorization: Bearer` (secret: VMSCAN_PUBLISH__ARTIFACTORY__TOKEN).
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// API key: `X-JFrog-Art-Api`, or Basic with `user` (secret: VMSCAN_PUBLISH__ARTIFACTORY__API_KEY).
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// Basic auth user (with `password` or `api_key`).
    pub user: Option<String>,
    /// Secret: VMSCAN_PUBLISH__ARTIFACTORY__PASSWORD.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// Attempts of one request on 5xx or a dropped connection.
    pub attempts: u32,
    /// First back-off between attempts; doubles each time.
    pub backoff_ms: u64,
    pub connect_timeout_secs: u64,
    /// A request that receives nothing for this long is abandoned (and retried).
    pub read_timeout_secs: u64,
    /// Files at least this big try a checksum deploy first.
    pub min_checksum_deploy_bytes: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            store: ArtifactStoreKind::Local,
            path_template: "{name}/{version}/{name}-{version}.{format}".into(),
            name_rule: NameRule::FileStem,
            retention: 0,
            archive_repo: None,
            deployed_by: "vmscan".into(),
            local: LocalStoreConfig::default(),
            artifactory: ArtifactoryConfig::default(),
        }
    }
}

impl Default for LocalStoreConfig {
    fn default() -> Self {
        LocalStoreConfig {
            root: None,
            repo: "vm-images".into(),
        }
    }
}

impl Default for ArtifactoryConfig {
    fn default() -> Self {
        ArtifactoryConfig {
            url: String::new(),
            repo: "vm-images-local".into(),
            token: None,
            api_key: None,
            user: None,
            password: None,
            attempts: 4,
            backoff_ms: 1000,
            connect_timeout_secs: 15,
            read_timeout_secs: 120,
            min_checksum_deploy_bytes: 10 * 1024,
        }
    }
}

impl LocalStoreConfig {
    pub fn root_in(&self, data_dir: &Path) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| data_dir.join("artifacts"))
    }
}

impl PublishConfig {
    /// Problems a person must fix before publishing can work.
    pub fn check(&self) -> Result<(), String> {
        for key in ["{name}", "{version}"] {
            if !self.path_template.contains(key) {
                return Err(format!(
                    "publish.path_template {:?} must contain {key}, or versions would overwrite each other",
                    self.path_template
                ));
            }
        }
        if self.path_template.starts_with('/') || self.path_template.contains("..") {
            return Err(format!(
                "publish.path_template {:?} must be a relative path without ..",
                self.path_template
            ));
        }
        let repo_ok = |r: &str| {
            !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !r.starts_with('.')
        };
        if let Some(a) = &self.archive_repo {
            if !repo_ok(a) {
                return Err(format!(
                    "publish.archive_repo {a:?} is not a repository key"
                ));
            }
        }
        if !repo_ok(&self.local.repo) {
            return Err(format!(
                "publish.local.repo {:?} is not a directory name",
                self.local.repo
            ));
        }
        if self.store == ArtifactStoreKind::Artifactory {
            let a = &self.artifactory;
            if url::Url::parse(&a.url).is_err() {
                return Err(format!(
                    "publish.artifactory.url {:?} is not a URL such as https://art.example.com/artifactory",
                    a.url
                ));
            }
            if !repo_ok(&a.repo) {
                return Err(format!(
                    "publish.artifactory.repo {:?} is not a repository key",
                    a.repo
                ));
            }
            if a.attempts == 0 {
                return Err("publish.artifactory.attempts must be at least 1".into());
            }
        }
        Ok(())
    }
}
