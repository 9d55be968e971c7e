//! The local QEMU cluster provider against real qemu-system-x86_64 processes,
//! booting the fixture image from scripts/build-test-image.sh (built on first
//! use, cached in target/test-image).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmscan::cluster::qemu::{is_our_qemu, probe_accel, Accel, QemuProvider};
use vmscan::cluster::{
    image_name, vm_name, ClusterError, ClusterProvider, ClusterVm, Deadlines, Owned, VmSpec,
};
use vmscan::config::QemuConfig;
use vmscan::domain::JobId;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture image: the build script is a no-op when its cached output is current.
fn fixture() -> PathBuf {
    let script = repo().join("scripts/build-test-image.sh");
    let out = repo().join("target/test-image");
    let status = Command::new(&script)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} failed ({status}); run scripts/install-test-deps.sh as root first",
        script.display()
    );
    let disk = out.join("disk.qcow2");
    assert!(disk.is_file(), "{} was not built", disk.display());
    disk
}

fn require_qemu() {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-system-x86_64 is not installed: run scripts/install-test-deps.sh"
    );
}

/// Run as root, QEMU runs as `nobody`: it must be able to enter the test's
/// temporary directory (created 0700) to reach the images and VM dirs.
fn share_with_qemu(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn provider(data: &Path) -> QemuProvider {
    share_with_qemu(data);
    let cfg = QemuConfig {
        memory_mib: 256,
        max_vms: 4,
        powerdown_secs: 3,
        quit_secs: 2,
        ..QemuConfig::default()
    };
    QemuProvider::new(cfg, data).unwrap()
}

fn spec(job: JobId, image: vmscan::cluster::ClusterImage, user_data: String) -> VmSpec {
    VmSpec {
        job,
        name: vm_name(job),
        image,
        cpus: 1,
        memory_mib: 256,
        user_data,
        hostname: "scan-test".into(),
        os: vmscan::domain::OsFamily::Linux,
        egress: Vec::new(),
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Every live qemu process started for `name`.
fn qemu_pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_our_qemu(*pid, name))
        .collect()
}

fn pid_of(vm: &ClusterVm) -> u32 {
    vm.detail["pid"].as_u64().expect("pid in detail") as u32
}

/// A one-file HTTP server on 127.0.0.1 serving `body` for any path; the guest
/// reaches it as 10.0.2.2 through QEMU user networking.
async fn serve_once(body: Vec<u8>) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        s.shutdown().await.ok();
        String::from_utf8_lossy(&req)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    (port, task)
}

/// A .tar.gz with an installer script, as an agent package would be.
fn installer_tarball() -> Vec<u8> {
    let script = b"#!/bin/sh\necho \"AGENT-INSTALLER-RAN on $(hostname)\"\n";
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(script.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "install.sh", &script[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

fn ssh_keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vmscan-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) is needed");
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

async fn wait_for_console(
    p: &QemuProvider,
    vm: &ClusterVm,
    needle: &str,
    limit: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let tail = p.console_tail(vm, 64 * 1024).await.unwrap_or_default();
        if tail.contains(needle) || start.elapsed() > limit {
            return tail;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_the_fixture_answers_ssh_and_leaves_nothing_behind() {
    require_qemu();
    let disk = fixture();
    let before = sha256(&disk);
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let accel = p.accel().await;

    // Upload: the image lands in the repository, with progress.
    let job = JobId::new();
    let last = AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        assert!(done <= total);
        last.store(done, Ordering::SeqCst);
    };
    let image = p.upload_image(job, &disk, &progress).await.unwrap();
    assert_eq!(image.name, image_name(job));
    assert_eq!(image.size, std::fs::metadata(&disk).unwrap().len());
    assert_eq!(last.load(Ordering::SeqCst), image.size);
    assert!(p.image_dir().join(&image.id).is_file());

    // The seed carries a fresh key, a hostname, and an installer fetched from the host.
    let (key, public) = ssh_keygen(tmp.path());
    let (http_port, served) = serve_once(installer_tarball()).await;
    let user_data = format!(
        "#cloud-config\nssh_authorized_keys:\n  - {public}\nruncmd:\n  - \
         wget -q -O /tmp/agent.tgz http://10.0.2.2:{http_port}/agent.tgz && mkdir -p /tmp/agent && \
         tar -xzf /tmp/agent.tgz -C /tmp/agent && /bin/sh /tmp/agent/install.sh > /dev/ttyS0\n"
    );
    let t0 = Instant::now();
    let vm = p
        .create_vm(&spec(job, image.clone(), user_data))
        .await
        .unwrap();
    assert_eq!(vm.name, vm_name(job));
    let port = vm.port.unwrap();
    let deadlines = Deadlines {
        power_on: Duration::from_secs(30),
        address: Duration::from_secs(30),
        port_open: Duration::from_secs(180),
    };
    let ready = p.wait_ready(&vm, &deadlines).await.unwrap();
    let boot = t0.elapsed();
    eprintln!(
        "boot to SSH banner: {:.2} s (accel {}, power-on after {:.2} s)",
        boot.as_secs_f64(),
        accel.as_str(),
        ready.detail["power_on_secs"].as_f64().unwrap_or_default()
    );
    let banner = ready.detail["ssh_banner"].as_str().unwrap().to_string();
    assert!(banner.starts_with("SSH-2.0-"), "{banner}");

    // The banner, read by hand from the forwarded port.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"SSH-");
    drop(s);

    // The seed's key logs in and its hostname was applied.
    let out = tokio::process::Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ])
        .args([
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
            "hostname; tar --help 2>&1 | head -1",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("scan-test\n"), "{stdout}");

    // The installer came over 10.0.2.2, unpacked with tar+gzip and ran under /bin/sh.
    let tail = wait_for_console(&p, &vm, "AGENT-INSTALLER-RAN", Duration::from_secs(60)).await;
    assert!(
        tail.contains("AGENT-INSTALLER-RAN on scan-test"),
        "console:\n{tail}"
    );
    assert!(tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .unwrap()
        .unwrap()
        .starts_with("GET /agent.tgz"),);
    let whole = p.console_tail(&vm, 1 << 20).await.unwrap();
    // Kernel messages (timestamped) and the guest's own boot milestones.
    assert!(
        regex::Regex::new(r"\[\s*\d+\.\d{6}\] ")
            .unwrap()
            .is_match(&whole)
            && whole.contains("rcS start (kernel 6."),
        "no kernel output in console:\n{whole}"
    );
    assert!(whole.contains("READY: ssh on port 22"), "{whole}");

    // It is ours, and listed as such.
    let pid = pid_of(&ready);
    assert!(is_our_qemu(pid, &vm.name));
    let owned = p.list_owned().await.unwrap();
    assert!(
        owned.contains(&Owned::Vm {
            id: vm.id.clone(),
            name: vm.name.clone(),
            job: Some(job)
        }),
        "{owned:?}"
    );
    assert!(
        owned.contains(&Owned::Image {
            id: image.id.clone(),
            name: image.name.clone(),
            job: Some(job)
        }),
        "{owned:?}"
    );
    // A second provider (a restarted daemon) sees the same VM.
    let other = provider(tmp.path());
    assert_eq!(other.list_owned().await.unwrap(), owned);

    // Delete: the guest powers off on the ACPI button; nothing is left.
    let t1 = Instant::now();
    p.delete_vm(&vm.id).await.unwrap();
    eprintln!(
        "delete (ACPI power-off): {:.2} s",
        t1.elapsed().as_secs_f64()
    );
    assert!(!is_our_qemu(pid, &vm.name));
    assert!(qemu_pids_named(&vm.name).is_empty());
    assert!(!p.vm_dir().join(&vm.name).exists());
    p.delete_vm(&vm.id)
        .await
        .expect("deleting a missing VM is done");
    p.delete_image(&image.id).await.unwrap();
    assert_eq!(p.list_owned().await.unwrap(), vec![]);
    assert_eq!(sha256(&disk), before, "the fixture image was modified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_never_boots_fails_on_the_ssh_banner_and_is_still_deleted() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let zero = tmp.path().join("zero.raw");
    std::fs::write(&zero, vec![0u8; 1 << 20]).unwrap();
    let job = JobId::new();
    let image = p.upload_image(job, &zero, &|_, _| {}).await.unwrap();
    assert!(image.id.ends_with(".raw"), "{}", image.id);
    let vm = p
        .create_vm(&spec(job, image.clone(), "#cloud-config\n".into()))
        .await
        .unwrap();
    let deadlines = Deadlines {
        power_on: Duration::from_secs(20),
        address: Duration::from_secs(10),
        port_open: Duration::from_secs(4),
    };
    let err = p.wait_ready(&vm, &deadlines).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    match &err {
        ClusterError::Deadline {
            what,
            secs,
            console_tail,
        } => {
            assert_eq!(what, "ssh banner");
            assert_eq!(*secs, 4);
            let tail = console_tail.as_deref().expect("a console tail");
            assert!(
                tail.contains("No bootable device") || tail.contains("Boot failed"),
                "{tail}"
            );
        }
        other => panic!("expected a deadline, got {other:?}"),
    }
    assert!(
        msg.contains("ssh banner within 4 s") && msg.contains("serial console ends with"),
        "{msg}"
    );

    // A retry creates the VM again under the same name: the first one is replaced.
    let first = pid_of(&vm);
    let again = p
        .create_vm(&spec(job, image.clone(), "#cloud-config\n".into()))
        .await
        .unwrap();
    assert_eq!(again.name, vm.name);
    assert_ne!(pid_of(&again), first);
    assert_eq!(qemu_pids_named(&vm.name), vec![pid_of(&again)]);

    // A restarted daemon (another provider, no child handle) deletes it by pid.
    let other = provider(tmp.path());
    other.delete_vm(&vm.id).await.unwrap();
    assert!(qemu_pids_named(&vm.name).is_empty());
    assert!(!p.vm_dir().join(&vm.name).exists());
    p.delete_image(&image.id).await.unwrap();
    assert_eq!(p.list_owned().await.unwrap(), vec![]);
}

#[tokio::test]
async fn the_kvm_probe_guest_runs_under_tcg_and_decides_kvm() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let qemu = Path::new("qemu-system-x86_64");
    let tcg = probe_accel(qemu, Accel::Tcg, tmp.path(), Duration::from_secs(20)).await;
    let took = tcg.expect("the probe guest must print under TCG");
    eprintln!("probe guest under TCG: {took:?}");
    if Path::new("/dev/kvm").exists() {
        let kvm = probe_accel(qemu, Accel::Kvm, tmp.path(), Duration::from_secs(5)).await;
        eprintln!("probe guest under KVM: {kvm:?}");
    }
    // The probe cleans up after itself.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
