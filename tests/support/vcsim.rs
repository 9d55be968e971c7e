//! VMware's own vSphere simulator (govmomi's vcsim, `simulator.VPX()`:
//! vCenter 6.5 behaviour), built by scripts/build-vcsim.sh and started per
//! test on a free port. It is not a fake of ours: every answer the tests
//! see is the simulator's.
//!
//! What it does (govmomi 0.24.2 simulator/*.go): Login/Logout sessions,
//! the property collector and container views, OvfManager.CreateImportSpec,
//! ImportVApp with an HttpNfcLease (http_nfc_lease.go: the uploaded bytes
//! are counted and discarded), CloneVM_Task (copies the source's hardware,
//! applies extraConfig only), ReconfigVM_Task (validates the guest id),
//! CustomizeVM_Task (checks the NIC count; the hostname/computer name shows
//! in guest.hostName at power-on), power operations, Destroy_Task. It boots
//! nothing: guest.ipAddress is set only by a `SET.guest.ipAddress`
//! extraConfig key (virtual_machine.go applyExtraConfig).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

pub const USER: &str = "svc-vmscan@vsphere.local";
pub const PASSWORD: &str = "vcsim-Secret-1";
/// The inventory of `simulator.VPX()`.
pub const DATACENTER: &str = "DC0";
pub const CLUSTER: &str = "DC0_C0";
pub const DATASTORE: &str = "LocalDS_0";
pub const NETWORK: &str = "VM Network";
pub const DV_PORTGROUP: &str = "DC0_DVPG0";

pub struct Vcsim {
    /// `http://127.0.0.1:PORT/sdk` (https with TLS).
    pub url: String,
    /// With TLS: the server's self-signed certificate (PEM), its own CA bundle.
    pub cert: Option<PathBuf>,
    /// The simulator's TMPDIR: its datastores live here.
    pub dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

/// The simulator binary, built (once, cached) by the project's script.
pub fn binary() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = repo.join("target/vcsim/vcsim");
    if !bin.exists() {
        let ok = std::process::Command::new(repo.join("scripts/build-vcsim.sh"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "scripts/build-vcsim.sh failed; run scripts/install-test-deps.sh (golang-go, golang-github-vmware-govmomi-dev)"
        );
    }
    bin
}

impl Vcsim {
    pub async fn start() -> Vcsim {
        Vcsim::launch(false).await
    }

    pub async fn start_tls() -> Vcsim {
        Vcsim::launch(true).await
    }

    async fn launch(tls: bool) -> Vcsim {
        let dir = tempfile::tempdir().unwrap();
        // A certificate of our own (the simulator's built-in one is a CA
        // certificate, which rustls refuses as a server's).
        let cert = tls.then(|| {
            let (cert, key) = super::tls::self_signed();
            std::fs::write(dir.path().join("vcsim.pem"), cert).unwrap();
            std::fs::write(dir.path().join("vcsim.key"), key).unwrap();
            dir.path().join("vcsim.pem")
        });
        let mut cmd = tokio::process::Command::new(binary());
        cmd.args(["-listen", "127.0.0.1:0", "-username", USER])
            .env("VCSIM_PASSWORD", PASSWORD)
            .env("TMPDIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(c) = &cert {
            cmd.arg("-tls")
                .arg("-tlscert")
                .arg(c)
                .arg("-tlskey")
                .arg(c.with_extension("key"));
        }
        let mut child = cmd.spawn().expect("start vcsim");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("vcsim prints its URL")
            .unwrap()
            .expect("vcsim exited before printing its URL");
        Vcsim {
            url,
            cert,
            dir,
            _child: child,
        }
    }
}
