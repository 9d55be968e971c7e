//! fetch from `sftp://` against a private OpenSSH server on 127.0.0.1 (its own
//! host key, authorized_keys and sftp-server, in a temp dir), started like
//! tests/ssh_remote.rs does. The server runs here, so remote paths are local.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest;
use vmscan::domain::StageName;
use vmscan::remote::SshKey;

use support::{stage, Backend, TestApp};

const SSHD: &str = "/usr/sbin/sshd";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// A private sshd with SFTP that accepts one key. Killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

impl Sshd {
    fn start(authorized: &str) -> Sshd {
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
        std::fs::write(d.join("authorized_keys"), format!("{authorized}\n")).unwrap();
        let user = whoami();
        if user == "root" {
            // sshd's privilege separation directory; Debian's init script makes it.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PidFile {pid}\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nLogLevel VERBOSE\n\
             Subsystem sftp {SFTP_SERVER}\n",
            hk = host_key.display(),
            ak = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        let config_path = d.join("sshd_config");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
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
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = sshd.child.try_wait().unwrap() {
                panic!("sshd exited with {st}: {}", sshd.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < until,
                "sshd did not listen: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn url(&self, path: &Path) -> String {
        format!(
            "sftp://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_over_sftp_with_a_key_and_reports_a_missing_file() {
    let key = SshKey::generate("vmscan-sftp-test").unwrap();
    let sshd = Sshd::start(&key.public_line());
    let files = sshd.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let content: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    let image = files.join("disk.img");
    std::fs::write(&image, &content).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&content));
    let key_file = sshd.dir.path().join("client_key");
    {
        use secrecy::ExposeSecret;
        std::fs::write(&key_file, key.to_openssh().unwrap().expose_secret()).unwrap();
    }

    let app = TestApp::spawn(Backend::Sqlite, |cfg| {
        cfg.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
        cfg.fetch.sftp_key_file = Some(key_file.clone());
    })
    .await;

    let job = app
        .submit(json!({"url": sshd.url(&image), "checksum": format!("sha256:{sha256}")}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\nlog: {}\nsshd: {}",
        app.log_text(id).await,
        sshd.log()
    );
    assert_eq!(stage(&done, "checksum")["detail"]["verified"], true);
    let fetch = &stage(&done, "fetch")["detail"];
    assert_eq!(fetch["size"], content.len() as u64);
    assert_eq!(fetch["sha256"], sha256.as_str());
    assert_eq!(fetch["file_name"], "disk.img");
    let path = fetch["path"].as_str().unwrap();
    assert_ne!(
        Path::new(path),
        image,
        "the image is copied, not read in place"
    );
    assert_eq!(std::fs::read(path).unwrap(), content);
    let log = app.log_text(id).await;
    assert!(log.contains("trusted on first use"), "{log}");

    // A missing file fails at once, with the path in the message.
    let missing = files.join("missing.img");
    let job = app.submit(json!({"url": sshd.url(&missing)})).await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.starts_with("fetch failed: ")
            && err.contains(&missing.display().to_string())
            && err.contains("no such file"),
        "{err}"
    );
    assert!(!app.log_text(id).await.contains("retry 1"), "not retried");
    app.stop().await;

    // A host key that is not pinned is refused.
    let app = TestApp::spawn(Backend::Sqlite, |cfg| {
        cfg.pipeline.stages = vec![StageName::Fetch];
        cfg.fetch.sftp_key_file = Some(key_file.clone());
        cfg.fetch.sftp_host_keys = vec![
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into(),
        ];
    })
    .await;
    let job = app.submit(json!({"url": sshd.url(&image)})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("which is not allowed"), "{err}");
    app.stop().await;
}
