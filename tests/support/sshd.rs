//! A private OpenSSH server on 127.0.0.1 for tests: its own host key,
//! authorized_keys, pid file and (optionally) sftp-server in a temp dir, so
//! the machine's own SSH setup is untouched. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmscan::remote::{SshKey, SshOptions};

const SSHD: &str = "/usr/sbin/sshd";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// A private sshd. Killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub user: String,
}

#[derive(Default)]
pub struct SshdSetup {
    pub sftp: bool,
    pub authorized: Vec<String>,
    /// Put first on the sessions' PATH (`SetEnv`): commands to stand in for
    /// the system's.
    pub path_prefix: Option<PathBuf>,
    /// Offer password login (a honeypot: no password works, each try is logged).
    pub passwords: bool,
}

impl Sshd {
    pub fn start(setup: SshdSetup) -> Sshd {
        assert!(
            Path::new(SSHD).exists() && Path::new(SFTP_SERVER).exists(),
            "{SSHD} or {SFTP_SERVER} is missing: run scripts/install-test-deps.sh (installs openssh-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen failed");
        std::fs::write(
            d.join("authorized_keys"),
            setup.authorized.join("\n") + "\n",
        )
        .unwrap();

        let root = nix_is_root();
        if root {
            // sshd's privilege separation directory; Debian's init script makes it.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let user = whoami();
        let port = free_port();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PidFile {pid}\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n",
            hk = host_key.display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        if setup.sftp {
            config.push_str(&format!("Subsystem sftp {SFTP_SERVER}\n"));
        }
        if let Some(dir) = &setup.path_prefix {
            config.push_str(&format!(
                "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n",
                dir.display()
            ));
        }
        if setup.passwords {
            // Later lines lose to earlier ones in sshd_config: replace, not append.
            config = config.replace("PasswordAuthentication no", "PasswordAuthentication yes");
        }
        let config_path = d.join("sshd_config");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sshd = Sshd {
            child,
            port,
            dir,
            user,
        };
        sshd.wait_listening();
        sshd
    }

    pub fn wait_listening(&mut self) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("sshd exited with {st}: {}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < until,
                "sshd did not listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Password logins tried so far (sshd logs each, right or wrong).
    pub fn password_attempts(&self) -> usize {
        let log = self.log();
        log.matches("Failed password for").count() + log.matches("Accepted password for").count()
    }

    /// Key logins tried so far (offered or signed).
    pub fn key_attempts(&self) -> usize {
        let log = self.log();
        log.matches("Failed publickey for").count()
            + log.matches("Accepted publickey for").count()
            + log.matches("Postponed publickey for").count()
    }

    /// What `ssh-keygen -l` says about the host key, e.g. `SHA256:…`.
    pub fn host_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace().nth(1).unwrap().to_string()
    }

    pub fn options(&self, key: &SshKey) -> SshOptions {
        let mut o = SshOptions::new("127.0.0.1", self.port, self.user.clone());
        o.key = Some(key.clone());
        o.connect_timeout = Duration::from_secs(5);
        o.login_timeout = Duration::from_secs(20);
        o
    }

    /// A scratch directory for files the "remote" side writes.
    /// An `sftp://` URL of a local path on this server.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("files");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nix_is_root() -> bool {
    whoami() == "root"
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
