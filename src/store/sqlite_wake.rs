//! Cross-process wake-ups for SQLite, which has no LISTEN/NOTIFY. Every
//! process whose workers wait for work binds a Unix datagram socket in a
//! directory next to the database file; whoever queues work (a `vmscan submit`
//! in another process, the dashboard of another `serve`) sends each socket
//! there one byte. A lost datagram only costs latency: workers also poll.

use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tokio::task::JoinHandle;

const SUFFIX: &str = ".sock";

/// The directory of one database's wake sockets.
#[derive(Clone, Debug)]
pub struct WakeDir {
    dir: PathBuf,
}

/// This process's bound socket; dropping it stops listening and removes it.
pub struct Listener {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl WakeDir {
    /// `<database file>.wake`, or None for an in-memory database.
    pub fn for_database(db: &Path) -> Option<Self> {
        let s = db.as_os_str().to_string_lossy();
        // sqlx names an in-memory database "file:sqlx-in-memory-N".
        if s.is_empty() || s == ":memory:" || s.starts_with("file:") {
            return None;
        }
        let mut dir = db.as_os_str().to_os_string();
        dir.push(".wake");
        Some(WakeDir { dir: dir.into() })
    }

    /// Binds this process's socket; each datagram received bumps `wake`.
    /// Needs a tokio runtime.
    pub fn listen(&self, wake: watch::Sender<u64>) -> std::io::Result<Listener> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other("no async runtime to listen on"));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let name = format!(
            "{}-{}{SUFFIX}",
            std::process::id(),
            &suffix[suffix.len() - 8..]
        );
        let path = self.dir.join(name);
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                match socket.recv(&mut buf).await {
                    Ok(_) => wake.send_modify(|n| *n = n.wrapping_add(1)),
                    Err(e) => {
                        tracing::warn!(error = %e, "SQLite wake socket failed; workers fall back to polling");
                        return;
                    }
                }
            }
        });
        Ok(Listener { path, task })
    }

    /// Tells every listening process that work may be waiting, except the
    /// socket `own` (this process is woken in memory). Never blocks: a full
    /// queue means that process has a wake-up pending anyway.
    pub fn notify(&self, own: Option<&Path>) {
        // A handful of directory entries: cheap enough to read inline.
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let Ok(sender) = UnixDatagram::unbound() else {
            return;
        };
        if sender.set_nonblocking(true).is_err() {
            return;
        }
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry.file_name().to_string_lossy().ends_with(SUFFIX);
            if !ours || Some(path.as_path()) == own {
                continue;
            }
            match sender.send_to(&[1], &path) {
                Ok(_) => {}
                // Nobody bound: a process that died without cleaning up.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(error = %e, socket = %path.display(), "SQLite wake-up not sent")
                }
            }
        }
    }
}

impl Listener {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_notify_from_another_handle_wakes_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let wake = WakeDir::for_database(&dir.path().join("vmscan.db")).unwrap();
        let (tx, mut rx) = watch::channel(0u64);
        let listener = wake.listen(tx).unwrap();
        rx.borrow_and_update();

        // Another process would open its own handle on the same database.
        WakeDir::for_database(&dir.path().join("vmscan.db"))
            .unwrap()
            .notify(None);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("woken")
            .unwrap();

        // Its own socket is skipped: the in-memory signal covers this process.
        rx.borrow_and_update();
        wake.notify(Some(listener.path()));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.changed())
                .await
                .is_err(),
            "a process must not wake itself through the socket"
        );

        let path = listener.path().to_path_buf();
        drop(listener);
        assert!(!path.exists(), "the socket is removed on drop");
    }

    #[tokio::test]
    async fn a_dead_process_socket_is_cleared_and_memory_databases_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let wake = WakeDir::for_database(&dir.path().join("vmscan.db")).unwrap();
        std::fs::create_dir_all(&wake.dir).unwrap();
        // Bound then closed without removing the file, as after a crash.
        let stale = wake.dir.join("1-deadbeef.sock");
        drop(UnixDatagram::bind(&stale).unwrap());
        let unrelated = wake.dir.join("notes.txt");
        std::fs::write(&unrelated, "x").unwrap();
        wake.notify(None);
        assert!(!stale.exists(), "a socket nobody listens on is removed");
        assert!(unrelated.exists(), "only sockets are touched");

        assert!(WakeDir::for_database(Path::new(":memory:")).is_none());
    }
}
