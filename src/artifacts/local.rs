//! The local directory store (the embedded default): `<root>/<repo>/<path>`,
//! properties in a JSON sidecar `<file>.properties.json`. Every write goes to
//! a temporary file in the same directory and is renamed into place.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{ArtifactError, ArtifactStore, Checksums, DeployRequest, Deployed, Properties};

pub struct LocalStore {
    root: PathBuf,
    repo: String,
}

/// What the sidecar holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sidecar {
    properties: Properties,
    checksums: Checksums,
    size: u64,
}

impl LocalStore {
    pub fn new(root: PathBuf, repo: String) -> Self {
        LocalStore { root, repo }
    }

    /// `<root>/<repo>/<path>`, refusing anything that would leave the root.
    fn file(&self, repo: &str, path: &str) -> Result<PathBuf, ArtifactError> {
        let rel = Path::new(path.trim_start_matches('/'));
        let safe = !repo.is_empty()
            && !repo.contains(['/', '\\'])
            && repo != ".."
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe || rel.as_os_str().is_empty() {
            return Err(ArtifactError::Config(format!(
                "artifact path {repo}/{path} is not a plain relative path"
            )));
        }
        Ok(self.root.join(repo).join(rel))
    }

    fn url(p: &Path) -> String {
        format!("file://{}", p.display())
    }

    async fn read_sidecar(file: &Path) -> Result<Option<Sidecar>, ArtifactError> {
        let p = sidecar_of(file);
        match tokio::fs::read(&p).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ArtifactError::Protocol(format!("{} is not a properties file: {e}", p.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArtifactError::io(format!("cannot read {}", p.display()), e)),
        }
    }

    async fn write_sidecar(file: &Path, s: &Sidecar) -> Result<(), ArtifactError> {
        let bytes = serde_json::to_vec_pretty(s).expect("sidecar serialises");
        write_atomically(&sidecar_of(file), &bytes).await
    }

    async fn existing(&self, repo: &str, path: &str) -> Result<PathBuf, ArtifactError> {
        let file = self.file(repo, path)?;
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            Ok(file)
        } else {
            Err(ArtifactError::Refused {
                store: "local store",
                status: 404,
                method: "GET",
                what: format!("{repo}/{path}"),
                message: format!("{} does not exist", file.display()),
            })
        }
    }
}

fn sidecar_of(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".properties.json");
    file.with_file_name(name)
}

/// A hidden temporary name next to `dest`.
fn temp_next_to(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::now_v7().simple()))
}

async fn create_parent(p: &Path) -> Result<(), ArtifactError> {
    if let Some(dir) = p.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ArtifactError::io(format!("cannot create {}", dir.display()), e))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary file, syncs it and renames it over `dest`.
async fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    create_parent(dest).await?;
    let tmp = temp_next_to(dest);
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(bytes).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, dest).await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ArtifactError::io(
            format!("cannot write {}", dest.display()),
            e,
        ));
    }
    Ok(())
}

/// Puts `src` at `dest` atomically: a hard link when allowed and possible, else a copy.
async fn place_file(src: &Path, dest: &Path, may_link: bool) -> Result<bool, ArtifactError> {
    create_parent(dest).await?;
    let tmp = temp_next_to(dest);
    let linked = may_link && tokio::fs::hard_link(src, &tmp).await.is_ok();
    let result = async {
        if !linked {
            tokio::fs::copy(src, &tmp).await?;
            tokio::fs::File::open(&tmp).await?.sync_all().await?;
        }
        tokio::fs::rename(&tmp, dest).await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ArtifactError::io(
            format!("cannot copy {} to {}", src.display(), dest.display()),
            e,
        ));
    }
    Ok(linked)
}

#[async_trait]
impl ArtifactStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn repo(&self) -> &str {
        &self.repo
    }

    async fn deploy(&self, req: &DeployRequest) -> Result<Deployed, ArtifactError> {
        let dest = self.file(&self.repo, &req.path)?;
        // Like a checksum deploy: the same bytes already there are not copied again.
        let same = match Self::read_sidecar(&dest).await? {
            Some(s) => {
                s.checksums.sha256 == req.checksums.sha256
                    && tokio::fs::metadata(&dest)
                        .await
                        .is_ok_and(|m| m.len() == req.size)
            }
            None => false,
        };
        if !same {
            place_file(&req.file, &dest, req.may_link).await?;
        }
        Self::write_sidecar(
            &dest,
            &Sidecar {
                properties: req.properties.clone(),
                checksums: req.checksums.clone(),
                size: req.size,
            },
        )
        .await?;
        Ok(Deployed {
            repo: self.repo.clone(),
            path: req.path.clone(),
            url: Self::url(&dest),
            reused: same,
        })
    }

    async fn set_properties(
        &self,
        repo: &str,
        path: &str,
        props: &Properties,
    ) -> Result<(), ArtifactError> {
        let file = self.existing(repo, path).await?;
        let mut s = Self::read_sidecar(&file).await?.unwrap_or_default();
        s.properties
            .extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self::write_sidecar(&file, &s).await
    }

    async fn properties(&self, repo: &str, path: &str) -> Result<Properties, ArtifactError> {
        let file = self.existing(repo, path).await?;
        Ok(Self::read_sidecar(&file)
            .await?
            .map(|s| s.properties)
            .unwrap_or_default())
    }

    async fn move_to(
        &self,
        repo: &str,
        path: &str,
        to_repo: &str,
    ) -> Result<String, ArtifactError> {
        let from = self.existing(repo, path).await?;
        let to = self.file(to_repo, path)?;
        create_parent(&to).await?;
        let mv = |a: PathBuf, b: PathBuf| async move {
            tokio::fs::rename(&a, &b).await.map_err(|e| {
                ArtifactError::io(format!("cannot move {} to {}", a.display(), b.display()), e)
            })
        };
        mv(from.clone(), to.clone()).await?;
        if tokio::fs::try_exists(sidecar_of(&from))
            .await
            .unwrap_or(false)
        {
            mv(sidecar_of(&from), sidecar_of(&to)).await?;
        }
        Ok(Self::url(&to))
    }

    async fn delete(&self, repo: &str, path: &str) -> Result<(), ArtifactError> {
        let file = self.file(repo, path)?;
        for p in [sidecar_of(&file), file] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ArtifactError::io(
                        format!("cannot delete {}", p.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_root() {
        let s = LocalStore::new("/srv/a".into(), "r".into());
        assert!(s.file("r", "../x").is_err());
        assert!(s.file("..", "x").is_err());
        assert!(s.file("r", "a/./b").is_ok());
        assert_eq!(s.file("r", "/a/b").unwrap(), PathBuf::from("/srv/a/r/a/b"));
    }
}
