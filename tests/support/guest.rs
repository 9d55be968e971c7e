//! A real guest for fake clouds: when a fake Nutanix or OpenStack powers a
//! VM on, the test boots the fixture image it received with the local QEMU
//! provider, passing the cloud-init user-data the cloud was given. The
//! guest's SSH port is reached through one fixed loopback port (the cloud
//! provider's `ssh_port`) forwarded to whichever guest runs now.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use vmscan::cluster::qemu::QemuProvider;
use vmscan::cluster::{ClusterProvider, ClusterVm, Deadlines, VmSpec};
use vmscan::config::QemuConfig;
use vmscan::domain::{JobId, OsFamily};

pub struct GuestBackend {
    qemu: Arc<QemuProvider>,
    target: Arc<Mutex<Option<u16>>>,
    vms: Mutex<Vec<(String, ClusterVm, String)>>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl GuestBackend {
    pub async fn start() -> Arc<GuestBackend> {
        let dir = tempfile::tempdir().unwrap();
        super::share_with_qemu(dir.path());
        let cfg = QemuConfig {
            accel: vmscan::config::QemuAccel::Tcg,
            max_vms: 1,
            memory_mib: 256,
            ..QemuConfig::default()
        };
        let qemu = Arc::new(QemuProvider::new(cfg, dir.path()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target: Arc<Mutex<Option<u16>>> = Arc::default();
        let t = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(to) = *t.lock().unwrap() else {
                    continue; // no guest: the connection is refused by dropping it
                };
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Arc::new(GuestBackend {
            qemu,
            target,
            vms: Mutex::default(),
            port,
            _dir: dir,
        })
    }

    /// The loopback port the guest's SSH answers on (the provider's `ssh_port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Boots `disk` (a copy of what the cloud received) as the cloud's VM
    /// `cloud_id`, with the user-data the cloud was given.
    pub async fn boot(&self, cloud_id: &str, disk: &Path, user_data: String, hostname: String) {
        let job = JobId::new();
        let progress = |_: u64, _: u64| {};
        let file = vmscan::cluster::ImageFile::read(disk).await.unwrap();
        let image = self.qemu.upload_image(job, &file, &progress).await.unwrap();
        let spec = VmSpec {
            job,
            name: vmscan::cluster::vm_name(job),
            image,
            cpus: 1,
            memory_mib: 256,
            user_data,
            hostname,
            os: OsFamily::Linux,
            admin_password: None,
            egress: Vec::new(),
        };
        let vm = self.qemu.create_vm(&spec).await.unwrap();
        let deadlines = Deadlines {
            power_on: Duration::from_secs(30),
            address: Duration::from_secs(30),
            port_open: Duration::from_secs(120),
        };
        let vm = self.qemu.wait_ready(&vm, &deadlines).await.unwrap();
        *self.target.lock().unwrap() = vm.port;
        let image_id = spec.image.id.clone();
        self.vms
            .lock()
            .unwrap()
            .push((cloud_id.to_string(), vm, image_id));
    }

    /// Powers off and removes the guest standing in for `cloud_id`.
    pub async fn destroy(&self, cloud_id: &str) {
        let found = {
            let mut vms = self.vms.lock().unwrap();
            let i = vms.iter().position(|(c, _, _)| c == cloud_id);
            i.map(|i| vms.remove(i))
        };
        if let Some((_, vm, image)) = found {
            if *self.target.lock().unwrap() == vm.port {
                *self.target.lock().unwrap() = None;
            }
            let _ = self.qemu.delete_vm(&vm.id).await;
            let _ = self.qemu.delete_image(&image).await;
        }
    }

    /// Guests still running (a test asserts none are left).
    pub fn running(&self) -> usize {
        self.vms.lock().unwrap().len()
    }
}

/// A stand-in for a guest's SSH port when no real guest is needed: accepts
/// and sends an SSH banner (the providers' port check only connects).
pub async fn banner_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"SSH-2.0-fake_guest\r\n").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    });
    port
}

/// The fixture image (busybox + dropbear), built and cached by the project's script.
pub fn fixture_dir() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = repo.join("target/test-image");
    if !dir.join("disk.raw.tar.gz").exists() {
        let ok = std::process::Command::new(repo.join("scripts/build-test-image.sh"))
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "scripts/build-test-image.sh failed; run scripts/install-test-deps.sh"
        );
    }
    dir
}
