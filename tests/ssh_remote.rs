//! The SSH remote shell against a real OpenSSH server: each test starts its
//! own `sshd` on 127.0.0.1 with a throwaway config (host key, authorized_keys
//! and pid file in a temp dir), so the machine's own SSH setup is untouched.
//! The server runs on this machine, so "remote" paths are local paths here.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmscan::remote::{quote, RemoteError, RemoteShell, SshKey, SshOptions, SshShell, Stream};

mod support;
use support::sshd::{free_port, nix_is_root, Sshd, SshdSetup};

const T: Duration = Duration::from_secs(30);

/// A server with SFTP that accepts `key`, and a shell logged in to it.
async fn server_and_shell(sftp: bool) -> (Sshd, SshKey, SshShell) {
    let key = SshKey::generate("vmscan-test-job").unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp,
        authorized: vec![key.public_line()],
        ..SshdSetup::default()
    });
    let shell = SshShell::connect(&sshd.options(&key)).await.unwrap();
    (sshd, key, shell)
}

/// Collects streamed lines with the time each arrived.
#[derive(Default)]
struct Lines(Mutex<Vec<(Stream, String, Instant)>>);

impl Lines {
    fn push(&self, s: Stream, l: &str) {
        self.0
            .lock()
            .unwrap()
            .push((s, l.to_string(), Instant::now()));
    }
    fn of(&self, stream: Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, ..)| *s == stream)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

fn ignore(_: Stream, _: &str) {}

/// `len` bytes that do not compress and are not all the same.
fn write_noise(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let n = left.min(8);
        f.write_all(&b[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

#[tokio::test]
async fn logs_in_with_the_job_key_and_reports_the_host_key() {
    let (sshd, key, shell) = server_and_shell(true).await;
    let seen = shell.host_key_fingerprint().to_string();
    assert_eq!(
        seen,
        sshd.host_fingerprint(),
        "fingerprint as OpenSSH prints it"
    );
    shell.close().await;

    // Same job, later stage: the recorded fingerprint is accepted.
    let mut again = sshd.options(&key);
    again.host_key = Some(seen.clone());
    let shell = SshShell::connect(&again).await.unwrap();
    let out = shell.run("echo hi", T, &ignore).await.unwrap();
    assert_eq!(out.stdout, "hi\n");
    shell.close().await;

    let err = shell.run("echo hi", T, &ignore).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
}

#[tokio::test]
async fn refuses_a_host_key_that_changed_within_the_job() {
    let key = SshKey::generate("vmscan-test-job").unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: true,
        authorized: vec![key.public_line()],
        ..SshdSetup::default()
    });
    let recorded = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".to_string();
    let mut opts = sshd.options(&key);
    opts.host_key = Some(recorded.clone());
    match SshShell::connect(&opts).await {
        Err(RemoteError::HostKeyMismatch {
            recorded: r,
            seen,
            addr,
        }) => {
            assert_eq!(r, recorded);
            assert_eq!(seen, sshd.host_fingerprint());
            assert_eq!(addr, format!("127.0.0.1:{}", sshd.port));
        }
        other => panic!("expected a host key mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_lines_in_order_and_returns_exit_status_and_stderr() {
    let (_sshd, _key, shell) = server_and_shell(true).await;
    let lines = Lines::default();
    let started = Instant::now();
    let out = shell
        .run(
            "for i in 1 2 3; do echo line$i; done; echo oops >&2; sleep 2; printf 'no newline'; exit 3",
            T,
            &|s, l| lines.push(s, l),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 3);
    assert_eq!(out.stdout, "line1\nline2\nline3\nno newline");
    assert_eq!(out.stderr, "oops\n");
    assert_eq!(
        lines.of(Stream::Stdout),
        ["line1", "line2", "line3", "no newline"]
    );
    assert_eq!(lines.of(Stream::Stderr), ["oops"]);

    // Lines arrive while the command runs, not when it ends.
    let first = lines.0.lock().unwrap()[0].2;
    assert!(
        first - started < Duration::from_millis(1500),
        "first line after {:?}",
        first - started
    );
    assert!(started.elapsed() >= Duration::from_secs(2));

    let ok = shell.run("true", T, &ignore).await.unwrap();
    assert_eq!(ok.exit_status, 0);
    shell.close().await;
}

#[tokio::test]
async fn a_killed_command_reports_the_signal() {
    let (_sshd, _key, shell) = server_and_shell(true).await;
    let lines = Lines::default();
    let out = shell
        .run("kill -9 $$", T, &|s, l| lines.push(s, l))
        .await
        .unwrap();
    // OpenSSH reports the signal of the session's process: 128 + 9.
    assert_eq!(out.exit_status, 137, "{out:?}");
    assert!(out.stderr.contains("signal KILL"), "{out:?}");
    assert!(lines
        .of(Stream::Stderr)
        .iter()
        .any(|l| l.contains("signal KILL")));
    shell.close().await;
}

#[tokio::test]
async fn quotes_file_names_with_spaces_and_command_substitution() {
    let (sshd, _key, shell) = server_and_shell(true).await;
    let scratch = sshd.scratch();
    let dir = scratch.to_str().unwrap();
    let name = "a b $(touch pwned) `touch pwned2` it's; rm -rf x.txt";
    let path = scratch.join(name);

    let cmd = format!("cd {} && printf %s hello > {}", quote(dir), quote(name));
    let out = shell.run(&cmd, T, &ignore).await.unwrap();
    assert_eq!(out.exit_status, 0, "{out:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");

    let remote = path.to_str().unwrap();
    assert_eq!(shell.read_file(remote, 100, T).await.unwrap(), b"hello");
    let local = sshd.dir.path().join("local.txt");
    std::fs::write(&local, "replaced").unwrap();
    shell.upload(&local, remote, T).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"replaced");

    let listing = shell
        .run(&format!("ls -A {}", quote(dir)), T, &ignore)
        .await
        .unwrap();
    assert_eq!(
        listing.stdout,
        format!("{name}\n"),
        "only the quoted file was made"
    );
    shell.close().await;
}

#[tokio::test]
async fn a_hanging_command_times_out_and_is_stopped() {
    let (_sshd, _key, shell) = server_and_shell(true).await;
    let started = Instant::now();
    let err = shell
        .run("sleep 37", Duration::from_secs(1), &ignore)
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        RemoteError::Timeout { what, secs } => {
            assert!(what.contains("sleep 37"), "{err}");
            assert_eq!(*secs, 1);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // The session survives, and the remote `sleep` was killed, not left behind.
    let out = shell.run("echo still here", T, &ignore).await.unwrap();
    assert_eq!(out.stdout, "still here\n");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = Command::new("pgrep")
            .args(["-f", "^sleep 37$"])
            .status()
            .unwrap()
            .success();
        if !alive {
            break;
        }
        assert!(
            Instant::now() < until,
            "the remote sleep is still running: {}",
            _sshd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shell.close().await;
}

#[tokio::test]
async fn uploads_20_mib_over_sftp() {
    let (sshd, _key, shell) = server_and_shell(true).await;
    let scratch = sshd.scratch();
    let local = sshd.dir.path().join("image.bin");
    write_noise(&local, 20 * 1024 * 1024);
    let remote = scratch.join("up loaded.bin");

    let started = Instant::now();
    shell
        .upload(&local, remote.to_str().unwrap(), Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!("sftp upload of 20 MiB took {:?}", started.elapsed());
    assert_eq!(support::sha256_file(&remote), support::sha256_file(&local));
    assert!(
        sshd.log().contains("Starting session: subsystem 'sftp'"),
        "SFTP was not used: {}",
        sshd.log()
    );

    // Uploading again replaces the file rather than appending.
    let small = sshd.dir.path().join("small.txt");
    std::fs::write(&small, "short").unwrap();
    shell
        .upload(&small, remote.to_str().unwrap(), T)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&remote).unwrap(), b"short");

    let head = shell
        .read_file(remote.to_str().unwrap(), 3, T)
        .await
        .unwrap();
    assert_eq!(head, b"sho");
    shell.close().await;
}

/// A `wc` that answers nothing on its first `n` calls (status 0, no
/// output), as a busy guest's dropbear once did, then the real one.
fn flaky_wc(dir: &Path, n: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let count = dir.join("wc-calls");
    let script = format!(
        "#!/bin/sh\necho x >> '{c}'\nif [ $(/usr/bin/wc -l < '{c}') -le {n} ]; then exit 0; fi\nexec /usr/bin/wc \"$@\"\n",
        c = count.display()
    );
    let wc = bin.join("wc");
    std::fs::write(&wc, script).unwrap();
    std::fs::set_permissions(&wc, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test]
async fn an_upload_whose_answer_is_lost_is_sent_again() {
    let key = SshKey::generate("vmscan-test-job").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: false,
        authorized: vec![key.public_line()],
        path_prefix: Some(flaky_wc(tmp.path(), 1)),
        ..SshdSetup::default()
    });
    let shell = SshShell::connect(&sshd.options(&key)).await.unwrap();
    let local = sshd.dir.path().join("response.ini");
    std::fs::write(
        &local,
        "[Bootstrap]\nMGSFT_BOOTSTRAP_UPLOAD=http://beacon/\n",
    )
    .unwrap();
    let remote = sshd.scratch().join("mgsft_rollout_response");
    shell
        .upload(&local, remote.to_str().unwrap(), T)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&remote).unwrap(),
        std::fs::read(&local).unwrap()
    );
    let calls = std::fs::read_to_string(tmp.path().join("wc-calls")).unwrap();
    assert_eq!(calls.lines().count(), 2, "one lost answer, one good one");

    // Lost every time: give up after three tries and say so.
    let tmp = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: false,
        authorized: vec![key.public_line()],
        path_prefix: Some(flaky_wc(tmp.path(), 100)),
        ..SshdSetup::default()
    });
    let shell = SshShell::connect(&sshd.options(&key)).await.unwrap();
    let err = shell
        .upload(&local, sshd.scratch().join("x").to_str().unwrap(), T)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("upload incomplete: sent 50 bytes, the file has an unknown size (3 tries)"),
        "{err}"
    );
    let calls = std::fs::read_to_string(tmp.path().join("wc-calls")).unwrap();
    assert_eq!(calls.lines().count(), 3);
    shell.close().await;
}

#[tokio::test]
async fn uploads_through_cat_when_the_server_has_no_sftp() {
    let (sshd, _key, shell) = server_and_shell(false).await;
    let scratch = sshd.scratch();
    let local = sshd.dir.path().join("image.bin");
    write_noise(&local, 20 * 1024 * 1024);
    let remote = scratch.join("up loaded $(x).bin");

    let started = Instant::now();
    shell
        .upload(&local, remote.to_str().unwrap(), Duration::from_secs(120))
        .await
        .unwrap();
    eprintln!("exec upload of 20 MiB took {:?}", started.elapsed());
    assert_eq!(support::sha256_file(&remote), support::sha256_file(&local));
    let log = sshd.log();
    assert!(
        log.contains("subsystem request for sftp") && !log.contains("Starting session: subsystem"),
        "{log}"
    );

    // Reading falls back to `head -c`, bytes unchanged.
    let head = shell
        .read_file(remote.to_str().unwrap(), 1000, T)
        .await
        .unwrap();
    let mut expected = vec![0u8; 1000];
    std::fs::File::open(&local)
        .unwrap()
        .read_exact(&mut expected)
        .unwrap();
    assert_eq!(head, expected);

    // A directory that does not exist: `cat` fails and says why.
    let err = shell
        .upload(&local, "/nonexistent-dir/x.bin", T)
        .await
        .unwrap_err();
    match &err {
        RemoteError::File { path, reason } => {
            assert_eq!(path, "/nonexistent-dir/x.bin");
            assert!(reason.contains("No such file"), "{err}");
        }
        other => panic!("expected a file error, got {other:?}"),
    }
    shell.close().await;
}

#[tokio::test]
async fn reading_a_missing_file_says_it_does_not_exist() {
    for sftp in [true, false] {
        let (sshd, _key, shell) = server_and_shell(sftp).await;
        let missing = sshd.scratch().join("no such.log");
        let err = shell
            .read_file(missing.to_str().unwrap(), 1000, T)
            .await
            .unwrap_err();
        match &err {
            RemoteError::File { path, reason } => {
                assert_eq!(path, missing.to_str().unwrap());
                assert_eq!(reason, "no such file or directory", "sftp={sftp}");
            }
            other => panic!("sftp={sftp}: expected a file error, got {other:?}"),
        }
        shell.close().await;
    }
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_an_auth_error() {
    let known = SshKey::generate("vmscan-known").unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: true,
        authorized: vec![known.public_line()],
        ..SshdSetup::default()
    });
    let stranger = SshKey::generate("vmscan-stranger").unwrap();
    let mut opts = sshd.options(&stranger);
    opts.password = Some("hunter2-secret".to_string().into());
    let err = SshShell::connect(&opts).await.unwrap_err();
    let text = err.to_string();
    match &err {
        RemoteError::Auth { user, reason } => {
            assert_eq!(user, &sshd.user);
            assert!(reason.contains(&stranger.fingerprint()), "{text}");
            assert!(reason.contains("publickey"), "{text}");
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    assert!(
        !text.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = free_port();
    let key = SshKey::generate("vmscan-test").unwrap();
    let mut opts = SshOptions::new("127.0.0.1", port, "root");
    opts.key = Some(key);
    let err = SshShell::connect(&opts).await.unwrap_err();
    match &err {
        RemoteError::Connect { addr, .. } => assert_eq!(addr, &format!("127.0.0.1:{port}")),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_key_stored_as_pem_logs_in_again() {
    use secrecy::ExposeSecret;
    let key = SshKey::generate("vmscan-job-7").unwrap();
    let pem = key.to_openssh().unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: true,
        authorized: vec![key.public_line()],
        ..SshdSetup::default()
    });
    let loaded = SshKey::from_openssh(pem.expose_secret()).unwrap();
    let shell = SshShell::connect(&sshd.options(&loaded)).await.unwrap();
    let out = shell.run("id -un", T, &ignore).await.unwrap();
    assert_eq!(out.stdout.trim(), sshd.user);
    shell.close().await;
}

/// Dropbear as on the fixture VM: no SFTP subsystem it can start (it looks
/// for /usr/lib/sftp-server), so uploads and reads take the exec path. Dropbear
/// reads `~user/.ssh/authorized_keys`, so it runs in a private mount namespace
/// where a temp dir is bind-mounted over the home directory; the real one is
/// never touched.
struct Dropbear {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Dropbear {
    /// `None` when this machine cannot make a mount namespace (not root).
    fn start(authorized: &str) -> Option<Dropbear> {
        assert!(
            Path::new("/usr/sbin/dropbear").exists(),
            "dropbear is missing: run scripts/install-test-deps.sh (installs dropbear-bin)"
        );
        if !nix_is_root() {
            eprintln!("skipping the dropbear test: needs root for a private mount namespace");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("home/.ssh")).unwrap();
        std::fs::write(
            d.join("home/.ssh/authorized_keys"),
            format!("{authorized}\n"),
        )
        .unwrap();
        let st = Command::new("dropbearkey")
            .args(["-t", "ed25519", "-f"])
            .arg(d.join("host_key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "dropbearkey failed");
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
        let port = free_port();
        let script = format!(
            "mount --bind {home_tmp} {home} && exec /usr/sbin/dropbear -F -E -s -p 127.0.0.1:{port} -r {key} -P {pid}",
            home_tmp = quote(d.join("home").to_str().unwrap()),
            home = quote(&home),
            key = quote(d.join("host_key").to_str().unwrap()),
            pid = quote(d.join("pid").to_str().unwrap()),
        );
        let log = std::fs::File::create(d.join("dropbear.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut db = Dropbear { child, port, dir };
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = db.child.try_wait().unwrap() {
                eprintln!(
                    "skipping the dropbear test: it exited with {st}: {}",
                    db.log()
                );
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(db);
            }
            assert!(
                Instant::now() < until,
                "dropbear did not listen: {}",
                db.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dropbear.log")).unwrap_or_default()
    }
}

impl Drop for Dropbear {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn works_against_dropbear_like_the_fixture_vm() {
    let key = SshKey::generate("vmscan-test-job").unwrap();
    let Some(db) = Dropbear::start(&key.public_line()) else {
        return;
    };
    let mut opts = SshOptions::new("127.0.0.1", db.port, "root");
    opts.key = Some(key.clone());
    let shell = SshShell::connect(&opts).await.unwrap();
    let fp = shell.host_key_fingerprint().to_string();

    let lines = Lines::default();
    let out = shell
        .run("echo one; echo two >&2; exit 4", T, &|s, l| {
            lines.push(s, l)
        })
        .await
        .unwrap();
    assert_eq!(
        (out.exit_status, out.stdout.as_str(), out.stderr.as_str()),
        (4, "one\n", "two\n")
    );
    assert_eq!(lines.of(Stream::Stdout), ["one"]);
    assert_eq!(lines.of(Stream::Stderr), ["two"]);

    let err = shell
        .run("sleep 43", Duration::from_secs(1), &ignore)
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");

    let local = db.dir.path().join("agent.bin");
    write_noise(&local, 5 * 1024 * 1024);
    let remote = db.dir.path().join("uploaded agent.bin");
    shell
        .upload(&local, remote.to_str().unwrap(), T)
        .await
        .unwrap();
    assert_eq!(support::sha256_file(&remote), support::sha256_file(&local));
    let head = shell
        .read_file(remote.to_str().unwrap(), 4, T)
        .await
        .unwrap();
    assert_eq!(head.len(), 4);
    let missing = db.dir.path().join("missing.log");
    let err = shell
        .read_file(missing.to_str().unwrap(), 4, T)
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with("no such file or directory"),
        "{err}"
    );
    shell.close().await;

    // The recorded host key is accepted on the next connect.
    opts.host_key = Some(fp);
    SshShell::connect(&opts).await.unwrap().close().await;
    let alive = Command::new("pgrep")
        .args(["-f", "^sleep 43$"])
        .status()
        .unwrap()
        .success();
    assert!(!alive, "the timed-out sleep was left running");
}
