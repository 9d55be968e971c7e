//! What confines a QEMU process beyond the guest network: its seccomp
//! sandbox (`-sandbox`) and, when vmscan runs as root, the unprivileged
//! user it runs as.
//!
//! QEMU's own `-run-with user=` cannot be used: QEMU installs the seccomp
//! filter before it drops privileges, so with `elevateprivileges=deny` its
//! `setuid` is killed with SIGSYS (QEMU 10.0, measured). vmscan therefore
//! starts QEMU as the user already; the VM's directory is handed to that
//! user and the repository image must be readable by it.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// Every sandbox class QEMU offers, denied.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    #[error("cluster.qemu.run_as: no user {0:?} on this host")]
    NoUser(String),
    #[error("cluster.qemu.run_as = {0:?} needs vmscan to run as root")]
    NotRoot(String),
    #[error("cannot look up user {user:?}: {reason}")]
    Lookup { user: String, reason: String },
    #[error(
        "QEMU runs as {user} but cannot {what} {}: make every directory on the path searchable by it (chmod o+x) or move cluster.qemu.image_dir/vm_dir",
        path.display()
    )]
    Unreachable {
        user: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("handing {} to {user}: {reason}", path.display())]
    Chown {
        user: String,
        path: PathBuf,
        reason: String,
    },
}

/// The unprivileged user QEMU runs as, with its groups (KVM needs the `kvm` group).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

impl RunAs {
    /// `cluster.qemu.run_as`: unset means `nobody` when vmscan is root and
    /// nothing otherwise; `""` turns it off.
    pub fn from_config(setting: Option<&str>) -> Result<Option<RunAs>, HardenError> {
        let root = Uid::effective().is_root();
        let name = match setting {
            Some("") => return Ok(None),
            Some(n) if !root => return Err(HardenError::NotRoot(n.into())),
            Some(n) => n,
            None if root => "nobody",
            None => return Ok(None),
        };
        let lookup = |reason: String| HardenError::Lookup {
            user: name.into(),
            reason,
        };
        let user = User::from_name(name)
            .map_err(|e| lookup(e.to_string()))?
            .ok_or_else(|| HardenError::NoUser(name.into()))?;
        let cname = CString::new(name).map_err(|e| lookup(e.to_string()))?;
        let groups =
            nix::unistd::getgrouplist(&cname, user.gid).map_err(|e| lookup(e.to_string()))?;
        Ok(Some(RunAs {
            name: name.into(),
            uid: user.uid,
            gid: user.gid,
            groups,
        }))
    }

    /// Gives the VM's directory and the files in it to the user.
    pub fn own_dir(&self, dir: &Path) -> Result<(), HardenError> {
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(self.uid.as_raw()), Some(self.gid.as_raw())).map_err(
                |e| HardenError::Chown {
                    user: self.name.clone(),
                    path: p.to_path_buf(),
                    reason: e.to_string(),
                },
            )
        };
        chown(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|e| HardenError::Chown {
            user: self.name.clone(),
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        for e in entries.flatten() {
            chown(&e.path())?;
        }
        Ok(())
    }

    /// Lets the user (and only it, besides vmscan) read a repository image:
    /// its group becomes the user's, mode 0640.
    pub fn share_image(&self, image: &Path) -> Result<(), HardenError> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |e: std::io::Error| HardenError::Chown {
            user: self.name.clone(),
            path: image.to_path_buf(),
            reason: e.to_string(),
        };
        std::os::unix::fs::chown(image, None, Some(self.gid.as_raw())).map_err(fail)?;
        std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o640)).map_err(fail)
    }

    /// Fails early (with what to fix) when the user could not open `image`,
    /// instead of QEMU's "Permission denied" on the backing file.
    pub fn check_readable(&self, image: &Path) -> Result<(), HardenError> {
        let unreachable = |what, path: &Path| HardenError::Unreachable {
            user: self.name.clone(),
            what,
            path: path.to_path_buf(),
        };
        for dir in image.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            if !self.may(&m, 0o1) {
                return Err(unreachable("enter", dir));
            }
        }
        let m = std::fs::metadata(image).map_err(|_| unreachable("read", image))?;
        if !self.may(&m, 0o4) {
            return Err(unreachable("read", image));
        }
        Ok(())
    }

    /// Whether the mode bits grant `bit` (4 read, 1 search) to this user.
    fn may(&self, m: &std::fs::Metadata, bit: u32) -> bool {
        let mode = m.mode();
        if m.uid() == self.uid.as_raw() {
            mode & (bit << 6) != 0
        } else if self.groups.iter().any(|g| g.as_raw() == m.gid()) || m.gid() == self.gid.as_raw()
        {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    }

    /// Makes `cmd` drop to the user between fork and exec.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: only async-signal-safe syscalls (setgroups, setgid, setuid)
        // run in the child; the group list was computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
}

/// Whether this qemu-system was built with seccomp: without it, `-sandbox`
/// is an unknown option group and QEMU exits 1 before `-version` runs.
/// `Err` carries QEMU's words for the job log.
pub async fn probe_sandbox(qemu_system: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new(qemu_system)
        .args(["-sandbox", SANDBOX, "-version"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(10), out).await {
        Ok(Ok(o)) if o.status.success() => Ok(()),
        Ok(Ok(o)) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", qemu_system.display())),
        Err(_) => Err("the probe took longer than 10 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_qemu_without_seccomp_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu-system-x86_64");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"qemu-system-x86_64: -sandbox on: There is no option group 'sandbox'\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = probe_sandbox(&fake).await.unwrap_err();
        assert!(err.contains("no option group 'sandbox'"), "{err}");
        assert!(probe_sandbox(Path::new("/nonexistent/qemu")).await.is_err());
    }

    #[test]
    fn run_as_is_off_when_set_empty_and_a_missing_user_is_an_error() {
        assert!(RunAs::from_config(Some("")).unwrap().is_none());
        if Uid::effective().is_root() {
            assert!(matches!(
                RunAs::from_config(Some("no-such-user-vmscan")),
                Err(HardenError::NoUser(_))
            ));
            let nobody = RunAs::from_config(None).unwrap().unwrap();
            assert_eq!(nobody.name, "nobody");
            assert!(!nobody.uid.is_root());
        } else {
            assert!(RunAs::from_config(None).unwrap().is_none());
        }
    }

    #[test]
    fn an_image_behind_a_private_directory_is_reported_unreadable() {
        let Some(nobody) = RunAs::from_config(None).ok().flatten() else {
            return; // not root: QEMU runs as vmscan's own user
        };
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("images");
        std::fs::create_dir(&inner).unwrap();
        let img = inner.join("a.qcow2");
        std::fs::write(&img, b"x").unwrap();
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = nobody.check_readable(&img).unwrap_err();
        assert!(
            matches!(&err, HardenError::Unreachable { path, .. } if path == dir.path()),
            "{err}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        nobody.check_readable(&img).unwrap();
    }
}
