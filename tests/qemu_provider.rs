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
        admin_password: None,
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
/// reaches it through its guestfwd address (10.0.2.100) when allowed as a destination.
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
    let file = vmscan::cluster::ImageFile::read(&disk).await.unwrap();
    let image = p.upload_image(job, &file, &progress).await.unwrap();
    assert_eq!(image.name, image_name(job));
    assert_eq!(image.size, std::fs::metadata(&disk).unwrap().len());
    assert_eq!(last.load(Ordering::SeqCst), image.size);
    assert!(p.image_dir().join(&image.id).is_file());

    // The seed carries a fresh key, a hostname, and an installer fetched from the host.
    let (key, public) = ssh_keygen(tmp.path());
    let (http_port, served) = serve_once(installer_tarball()).await;
    // The guest's network is restricted: the server is its one allowed destination, at 10.0.2.100.
    let user_data = format!(
        "#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {public}\nruncmd:\n  - \
         wget -q -O /tmp/agent.tgz http://10.0.2.100:{http_port}/agent.tgz && mkdir -p /tmp/agent && \
         tar -xzf /tmp/agent.tgz -C /tmp/agent && /bin/sh /tmp/agent/install.sh > /dev/ttyS0\n"
    );
    let t0 = Instant::now();
    let mut with_server = spec(job, image.clone(), user_data);
    with_server.egress = vec![format!("127.0.0.1:{http_port}").parse().unwrap()];
    let vm = p.create_vm(&with_server).await.unwrap();
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

    // The installer came over the guestfwd, unpacked with tar+gzip and ran under /bin/sh.
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
async fn a_disk_that_never_boots_fails_at_once_from_its_console_and_is_still_deleted() {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let zero = tmp.path().join("zero.raw");
    std::fs::write(&zero, vec![0u8; 1 << 20]).unwrap();
    let job = JobId::new();
    let file = vmscan::cluster::ImageFile::read(&zero).await.unwrap();
    let image = p.upload_image(job, &file, &|_, _| {}).await.unwrap();
    assert!(image.id.ends_with(".raw"), "{}", image.id);
    let vm = p
        .create_vm(&spec(job, image.clone(), "#cloud-config\n".into()))
        .await
        .unwrap();
    // Long deadlines: the console's "no bootable device" ends the wait at once.
    let deadlines = Deadlines {
        power_on: Duration::from_secs(20),
        address: Duration::from_secs(120),
        port_open: Duration::from_secs(120),
    };
    let started = std::time::Instant::now();
    let err = p.wait_ready(&vm, &deadlines).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    match &err {
        ClusterError::BootFailed { line, console_tail } => {
            assert!(
                line.contains("No bootable device") || line.contains("Boot failed"),
                "{line}"
            );
            assert!(console_tail.contains(line.as_str()));
        }
        other => panic!("expected a boot failure, got {other:?}"),
    }
    assert!(
        msg.contains("VM cannot boot: its serial console says")
            && msg.contains("serial console ends with"),
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

/// A loopback (or other host address) listener that counts the connections
/// it accepts: what the guest must not reach.
async fn trap(ip: std::net::IpAddr) -> (u16, std::sync::Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

/// The host's own non-loopback IPv4 address (a "LAN" address), if it has a route.
fn host_lan_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn seccomp_mode(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_reaches_only_its_allowed_beacon_from_a_sandboxed_unprivileged_qemu() {
    require_qemu();
    let disk = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(tmp.path());
    let job = JobId::new();
    let file = vmscan::cluster::ImageFile::read(&disk).await.unwrap();
    let image = p.upload_image(job, &file, &|_, _| {}).await.unwrap();

    // What the guest must not reach: a service on the host's loopback (the
    // vmscan API, the database), another scan VM's forwarded SSH port, and a
    // service on the host's LAN address.
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let (api_port, api_hits) = trap(loopback).await;
    let (other_vm_port, other_vm_hits) = trap(loopback).await;
    let lan = match host_lan_ip() {
        Some(ip) => Some((ip, trap(ip).await)),
        None => None,
    };
    // What it may reach: a beacon standing in for the agent's upload server.
    let (beacon_port, beacon_seen) = serve_once(b"beacon-ok".to_vec()).await;

    let (key, public) = ssh_keygen(tmp.path());
    let mut s = spec(
        job,
        image.clone(),
        format!("#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - {public}\n"),
    );
    s.egress = vec![format!("127.0.0.1:{beacon_port}").parse().unwrap()];
    let vm = p.create_vm(&s).await.unwrap();
    assert_eq!(
        vm.detail["guest_network"]["routes"][0]["guest_addr"],
        "10.0.2.100"
    );
    let deadlines = Deadlines {
        power_on: Duration::from_secs(30),
        address: Duration::from_secs(30),
        port_open: Duration::from_secs(180),
    };
    let ready = p.wait_ready(&vm, &deadlines).await.unwrap();
    let pid = pid_of(&ready);

    // The QEMU process: seccomp filter on (mode 2), and not root when we are.
    assert_eq!(vm.detail["sandbox"], "on", "{:#}", vm.detail);
    assert_eq!(seccomp_mode(pid), "2");
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(uid_of(pid), 0, "QEMU runs as root");
        assert_eq!(vm.detail["run_as"], "nobody");
    }

    let mut probes = vec![
        format!("10.0.2.2 {api_port}"),
        format!("10.0.2.2 {other_vm_port}"),
        "169.254.169.254 80".to_string(),
        "192.168.1.1 80".to_string(),
        "10.0.2.3 53".to_string(),
        // The guestfwd address on another port is no way out either.
        format!("10.0.2.100 {api_port}"),
    ];
    if let Some((ip, (port, _))) = &lan {
        probes.push(format!("{ip} {port}"));
    }
    let script = format!(
        "probe() {{ if timeout 3 nc $1 $2 </dev/null >/dev/null 2>&1; then echo \"$1:$2 OPEN\"; \
         else echo \"$1:$2 closed\"; fi; }}\n{}\nwait\n\
         printf 'GET /beacon HTTP/1.0\\r\\n\\r\\n' | timeout 4 nc 10.0.2.100 {beacon_port}\ntrue\n",
        probes
            .iter()
            .map(|p| format!("probe {p} &"))
            .collect::<Vec<_>>()
            .join("\n")
    );
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
            &vm.port.unwrap().to_string(),
            "root@127.0.0.1",
            &script,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("guest probes:\n{stdout}");
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for probe in &probes {
        let want = format!("{} closed", probe.replace(' ', ":"));
        assert!(stdout.contains(&want), "{want} missing:\n{stdout}");
    }
    assert!(!stdout.contains("OPEN"), "{stdout}");
    assert_eq!(
        api_hits.load(Ordering::SeqCst),
        0,
        "the loopback service was reached"
    );
    assert_eq!(
        other_vm_hits.load(Ordering::SeqCst),
        0,
        "another VM's port was reached"
    );
    if let Some((ip, (_, hits))) = &lan {
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the host's LAN address {ip} was reached"
        );
    }

    // The allowed beacon answered the guest, and saw its request.
    assert!(
        stdout.contains("HTTP/1.0 200 OK") && stdout.contains("beacon-ok"),
        "{stdout}"
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), beacon_seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, "GET /beacon HTTP/1.0");

    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    assert_eq!(p.list_owned().await.unwrap(), vec![]);
}
