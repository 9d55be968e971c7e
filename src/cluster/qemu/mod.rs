//! The local QEMU "cluster" (the embedded default): images in a repository
//! directory, each VM a `qemu-system-x86_64` child on a qcow2 overlay, SSH
//! forwarded to a free loopback port, a QMP socket, the serial console in a
//! file, and a state file per VM so another vmscan process can find and
//! delete it.

mod accel;
mod harden;
mod image;
mod ports;
mod process;
mod qmp;
mod seed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::Child;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::egress::GuestNetwork;
use super::{
    image_name, ClusterError, ClusterImage, ClusterProvider, ClusterVm, Deadlines, ImageFile,
    Owned, Progress, VmSpec,
};
use crate::config::QemuConfig;
use crate::domain::JobId;

pub use accel::{probe as probe_accel, Accel};
pub use harden::{HardenError, RunAs};
pub use process::is_our_qemu;

/// The local cluster's name in the registry and on job pages.
pub const PROVIDER_NAME: &str = "qemu-local";
const STATE_FILE: &str = "state.json";
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// QEMU opens its QMP socket within this long of starting, or it failed.
const STARTUP_LIMIT: Duration = Duration::from_secs(15);
const CONSOLE_TAIL_BYTES: usize = 4096;

/// What `<vm_dir>/<name>/state.json` records: enough to find and kill the VM later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub name: String,
    pub job: Option<JobId>,
    pub pid: u32,
    pub ssh_port: u16,
    pub qmp: PathBuf,
    pub console: PathBuf,
    pub disk: PathBuf,
    pub image: PathBuf,
    pub accel: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub guest_network: GuestNetwork,
    /// "on", or why QEMU runs without its seccomp sandbox.
    #[serde(default)]
    pub sandbox: String,
    /// The user QEMU runs as, when vmscan dropped root for it.
    #[serde(default)]
    pub run_as: Option<String>,
}

/// A VM this process started: its child handle (killed if dropped) and its slot.
struct Running {
    child: Child,
    state: VmState,
    _slot: OwnedSemaphorePermit,
}

pub struct QemuProvider {
    cfg: QemuConfig,
    image_dir: PathBuf,
    vm_dir: PathBuf,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<String, Running>>,
    run_as: Option<RunAs>,
    /// Probed once: `Err` says why this QEMU has no `-sandbox`.
    sandbox: tokio::sync::OnceCell<Result<(), String>>,
}

/// What SeaBIOS and Linux print when a guest will never boot.
const BOOT_FAILURES: [&str; 4] = [
    "No bootable device",
    "Boot failed: ",
    "Kernel panic - not syncing",
    "No bootable medium",
];

fn local(msg: impl Into<String>) -> ClusterError {
    ClusterError::Local(msg.into())
}

/// VM and image names come from `vm_name`/`image_name`: never a path.
fn check_name(name: &str, prefix: &str) -> Result<(), ClusterError> {
    let ok = name.starts_with(prefix)
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(local(format!("{name:?} is not a vmscan {prefix}… name")))
    }
}

/// The job id in a name made by `vm_name`/`image_name` (`prefix` + 32 hex digits).
fn job_of(name: &str, prefix: &str) -> Option<JobId> {
    let hex = name.strip_prefix(prefix)?.get(..32)?;
    hex.parse().ok()
}

impl QemuProvider {
    /// `data_dir` holds `images/` and `vms/` unless the config names other places.
    pub fn new(cfg: QemuConfig, data_dir: &Path) -> Result<Self, ClusterError> {
        if cfg.max_vms == 0 {
            return Err(local("cluster.qemu.max_vms must be at least 1"));
        }
        if cfg.memory_mib < 128 {
            return Err(local(format!(
                "cluster.qemu.memory_mib = {} is too small: Linux guests need at least 128",
                cfg.memory_mib
            )));
        }
        let image_dir = cfg
            .image_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("images"));
        let vm_dir = cfg.vm_dir.clone().unwrap_or_else(|| data_dir.join("vms"));
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let run_as = RunAs::from_config(cfg.run_as.as_deref()).map_err(|e| local(e.to_string()))?;
        Ok(QemuProvider {
            run_as,
            sandbox: tokio::sync::OnceCell::new(),
            slots: Arc::new(Semaphore::new(cfg.max_vms)),
            image_dir: abs(image_dir),
            vm_dir: abs(vm_dir),
            cfg,
            running: Mutex::new(HashMap::new()),
        })
    }

    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    pub fn vm_dir(&self) -> &Path {
        &self.vm_dir
    }

    /// The accelerator new VMs get (probing KVM once per process).
    pub async fn accel(&self) -> Accel {
        accel::choose(&self.cfg, &self.vm_dir).await
    }

    /// Whether QEMU runs sandboxed; the first call probes the binary, and
    /// says so in the log when it lacks seccomp.
    async fn sandbox(&self) -> &Result<(), String> {
        self.sandbox
            .get_or_init(|| async {
                let r = harden::probe_sandbox(&self.cfg.qemu_system).await;
                if let Err(why) = &r {
                    tracing::warn!("QEMU has no seccomp sandbox, VMs run without -sandbox: {why}");
                }
                r
            })
            .await
    }

    /// The user QEMU runs as (None: vmscan's own).
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    fn dir_of(&self, name: &str) -> PathBuf {
        self.vm_dir.join(name)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's state: from memory if this process runs it, else its state file.
    async fn state_of(&self, name: &str) -> Option<VmState> {
        if let Some(r) = self.running().get(name) {
            return Some(r.state.clone());
        }
        let raw = tokio::fs::read(self.dir_of(name).join(STATE_FILE))
            .await
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }

    fn is_alive(&self, state: &VmState) -> bool {
        if let Some(r) = self.running().get_mut(&state.name) {
            return matches!(r.child.try_wait(), Ok(None));
        }
        process::is_our_qemu(state.pid, &state.name)
    }

    fn tail_of(&self, name: &str) -> Option<String> {
        process::read_tail(&self.dir_of(name).join("console.log"), CONSOLE_TAIL_BYTES)
            .filter(|t| !t.trim().is_empty())
    }

    /// A console line that means the guest will never come up.
    fn boot_failure(&self, name: &str) -> Option<ClusterError> {
        let tail = self.tail_of(name)?;
        let line = tail
            .lines()
            .find(|l| BOOT_FAILURES.iter().any(|m| l.contains(m)))?;
        Some(ClusterError::BootFailed {
            line: line.trim().to_string(),
            console_tail: tail.clone(),
        })
    }

    fn deadline(&self, name: &str, what: &str, limit: Duration) -> ClusterError {
        ClusterError::Deadline {
            what: what.into(),
            secs: limit.as_secs(),
            console_tail: self.tail_of(name),
        }
    }

    /// The VM's process ended: say why, with QEMU's own words and the console.
    fn exited(&self, name: &str, during: &str) -> ClusterError {
        let log = process::read_tail(&self.dir_of(name).join("qemu.log"), 2048).unwrap_or_default();
        let mut msg = format!("VM {name}: qemu exited {during}");
        if !log.trim().is_empty() {
            msg.push_str(&format!("; qemu said: {}", log.trim()));
        }
        if let Some(t) = self.tail_of(name) {
            msg.push_str(&format!("; serial console ends with:\n{t}"));
        }
        local(msg)
    }

    /// Creates the overlay and seed, then starts QEMU (retrying on a port clash).
    async fn start(
        &self,
        spec: &VmSpec,
        dir: &Path,
        slot: OwnedSemaphorePermit,
    ) -> Result<ClusterVm, ClusterError> {
        check_name(&spec.image.id, "vmscan-img-")?;
        let image = self.image_dir.join(&spec.image.id);
        if !image.is_file() {
            return Err(local(format!(
                "image {} is not in the repository {}",
                spec.image.id,
                self.image_dir.display()
            )));
        }
        let format = image::detect_format(&image)
            .await
            .map_err(|e| local(format!("{}: {e}", image.display())))?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| local(format!("{}: {e}", dir.display())))?;
        let disk = dir.join("disk.qcow2");
        self.create_overlay(&image, format, &disk).await?;

        let instance_id = format!("{}-{}", spec.name, chrono::Utc::now().timestamp_millis());
        let hostname = if spec.hostname.is_empty() {
            spec.name.as_str()
        } else {
            spec.hostname.as_str()
        };
        let seed_img =
            seed::nocloud_seed(&spec.user_data, &seed::meta_data(&instance_id, hostname))
                .map_err(|e| local(format!("building the NoCloud seed: {e}")))?;
        let seed_path = dir.join("seed.img");
        tokio::fs::write(&seed_path, seed_img)
            .await
            .map_err(|e| local(format!("{}: {e}", seed_path.display())))?;

        let bios_serial = if self.cfg.bios_serial_console {
            let f = dir.join("sercon-port");
            tokio::fs::write(&f, 0x3f8u16.to_le_bytes())
                .await
                .map_err(|e| local(format!("{}: {e}", f.display())))?;
            Some(f)
        } else {
            None
        };
        let network = GuestNetwork::restricted(&spec.egress).map_err(|e| local(e.to_string()))?;
        let sandbox = self.sandbox().await.clone();
        if let Some(user) = &self.run_as {
            user.check_readable(&image)
                .and_then(|()| user.own_dir(dir))
                .map_err(|e| local(e.to_string()))?;
        }
        let accel = self.accel().await;
        let console = dir.join("console.log");
        let qmp_path = dir.join("qmp.sock");
        let mut attempt = 0;
        let (child, port) = loop {
            attempt += 1;
            let port = ports::reserve().map_err(|e| local(format!("no free local port: {e}")))?;
            let launch = process::VmLaunch {
                name: spec.name.clone(),
                machine: self.cfg.machine.clone(),
                accel,
                cpus: if spec.cpus == 0 {
                    self.cfg.cpus
                } else {
                    spec.cpus
                },
                memory_mib: if spec.memory_mib == 0 {
                    self.cfg.memory_mib
                } else {
                    spec.memory_mib.max(128)
                },
                disk: disk.clone(),
                seed: seed_path.clone(),
                ssh_port: port,
                qmp: qmp_path.clone(),
                console: console.clone(),
                bios_serial: bios_serial.clone(),
                network: network.clone(),
                sandbox: sandbox.is_ok(),
                extra_args: self.cfg.extra_args.clone(),
            };
            let _ = tokio::fs::remove_file(&qmp_path).await;
            let mut child = process::spawn(
                &self.cfg.qemu_system,
                &launch.args(),
                &dir.join("qemu.log"),
                self.run_as.as_ref(),
            )
            .map_err(|e| {
                local(format!(
                    "cannot run {}: {e}",
                    self.cfg.qemu_system.display()
                ))
            })?;
            match wait_started(&mut child, &qmp_path).await {
                Ok(()) => break (child, port),
                Err(None) => {
                    ports::release(port);
                    let log = tokio::fs::read_to_string(dir.join("qemu.log"))
                        .await
                        .unwrap_or_default();
                    // Someone took the port between our probe and QEMU's bind: take another.
                    if attempt < 3 && log.contains("host forwarding") {
                        continue;
                    }
                    return Err(self.exited(&spec.name, "while starting"));
                }
                Err(Some(why)) => {
                    ports::release(port);
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(local(format!("VM {}: {why}", spec.name)));
                }
            }
        };
        let state = VmState {
            name: spec.name.clone(),
            job: Some(spec.job),
            pid: child.id().unwrap_or(0),
            ssh_port: port,
            qmp: qmp_path,
            console,
            disk,
            image,
            accel: accel.as_str().into(),
            started_at: chrono::Utc::now(),
            guest_network: network,
            sandbox: match &sandbox {
                Ok(()) => "on".into(),
                Err(why) => format!("unavailable: {why}"),
            },
            run_as: self.run_as.as_ref().map(|u| u.name.clone()),
        };
        let state_json = serde_json::to_vec_pretty(&state).unwrap_or_default();
        let tmp = dir.join(".state.json.tmp");
        tokio::fs::write(&tmp, state_json)
            .await
            .and(tokio::fs::rename(&tmp, dir.join(STATE_FILE)).await)
            .map_err(|e| local(format!("{}: {e}", dir.display())))?;
        let vm = vm_of(&state);
        tracing::info!(vm = %state.name, pid = state.pid, port, accel = %state.accel, "VM started");
        self.running().insert(
            spec.name.clone(),
            Running {
                child,
                state,
                _slot: slot,
            },
        );
        Ok(vm)
    }

    /// A qcow2 overlay whose backing file is the repository image, which stays pristine.
    async fn create_overlay(
        &self,
        image: &Path,
        format: &str,
        disk: &Path,
    ) -> Result<(), ClusterError> {
        let _ = tokio::fs::remove_file(disk).await;
        let out = tokio::process::Command::new(&self.cfg.qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
            .arg(image)
            .arg(disk)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .map_err(|_| local("qemu-img create (overlay) took longer than 60 s"))?
            .map_err(|e| local(format!("cannot run {}: {e}", self.cfg.qemu_img.display())))?;
        if !out.status.success() {
            return Err(local(format!(
                "qemu-img create (overlay on {}) failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Stops the VM's QEMU: QMP quit (after the ACPI power button with
    /// `clean_shutdown`), then SIGKILL.
    async fn stop(&self, state: &VmState, mut child: Option<Child>) -> Result<(), ClusterError> {
        let name = &state.name;
        let alive = match &mut child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => process::is_our_qemu(state.pid, name),
        };
        if !alive {
            return Ok(());
        }
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        if self.cfg.clean_shutdown {
            steps.push((
                "system_powerdown",
                Duration::from_secs(self.cfg.powerdown_secs),
            ));
        }
        steps.push(("quit", Duration::from_secs(self.cfg.quit_secs)));
        for (cmd, wait) in steps {
            match qmp::command(&state.qmp, cmd, QMP_TIMEOUT).await {
                Ok(_) => {
                    if process::wait_gone(&mut child, state.pid, name, wait).await {
                        tracing::info!(vm = %name, "VM stopped after QMP {cmd}");
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(vm = %name, "QMP {cmd}: {e}"),
            }
        }
        tracing::warn!(vm = %name, pid = state.pid, "VM still running: SIGKILL");
        match &mut child {
            Some(c) => {
                let _ = c.start_kill();
            }
            None => {
                if process::is_our_qemu(state.pid, name) {
                    process::sigkill(state.pid);
                }
            }
        }
        if process::wait_gone(&mut child, state.pid, name, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(local(format!(
                "VM {name}: qemu (pid {}) is still running after SIGKILL",
                state.pid
            )))
        }
    }
}

/// Waits until QEMU answers on its QMP socket. Err(None): the process exited.
async fn wait_started(child: &mut Child, qmp_path: &Path) -> Result<(), Option<String>> {
    let start = Instant::now();
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(None);
        }
        if qmp_path.exists() {
            if let Ok(mut q) = qmp::Qmp::connect(qmp_path, QMP_TIMEOUT).await {
                if q.status().await.is_ok() {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > STARTUP_LIMIT {
            return Err(Some(format!(
                "qemu did not open its QMP socket within {} s",
                STARTUP_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vm_of(state: &VmState) -> ClusterVm {
    ClusterVm {
        id: state.name.clone(),
        name: state.name.clone(),
        host: Some("127.0.0.1".into()),
        port: Some(state.ssh_port),
        detail: json!({
            "pid": state.pid,
            "accel": state.accel,
            "ssh_port": state.ssh_port,
            "qmp": state.qmp,
            "console": state.console,
            "disk": state.disk,
            "image": state.image,
            "started_at": state.started_at,
            "guest_network": state.guest_network,
            "sandbox": state.sandbox,
            "run_as": state.run_as,
        }),
    }
}

#[async_trait]
impl ClusterProvider for QemuProvider {
    fn name(&self) -> String {
        PROVIDER_NAME.into()
    }

    async fn upload_image(
        &self,
        job: JobId,
        image: &ImageFile,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        let path = image.path.as_path();
        let format = image::detect_format(path)
            .await
            .map_err(|e| local(format!("{}: {e}", path.display())))?;
        tokio::fs::create_dir_all(&self.image_dir)
            .await
            .map_err(|e| local(format!("{}: {e}", self.image_dir.display())))?;
        let name = image_name(job);
        let id = format!("{name}.{format}");
        let dest = self.image_dir.join(&id);
        let how = image::import(path, &dest, progress).await.map_err(|e| {
            local(format!(
                "copying {} to {}: {e}",
                path.display(),
                dest.display()
            ))
        })?;
        if let Some(user) = &self.run_as {
            user.share_image(&dest).map_err(|e| local(e.to_string()))?;
        }
        let size = tokio::fs::metadata(&dest)
            .await
            .map_err(|e| local(format!("{}: {e}", dest.display())))?
            .len();
        tracing::info!(image = %id, size, "image in repository ({how:?})");
        Ok(ClusterImage {
            id,
            name,
            size,
            virtual_size: image.virtual_size,
        })
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        check_name(&spec.name, "vmscan-")?;
        // A retry replaces the job's earlier VM: never two of the same name.
        self.delete_vm(&spec.name).await?;
        let wait = Duration::from_secs(self.cfg.slot_wait_secs);
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ClusterError::Capacity(format!(
                    "all {} local VM slots stayed busy for {} s (cluster.qemu.max_vms)",
                    self.cfg.max_vms,
                    wait.as_secs()
                )))
            }
        };
        let dir = self.dir_of(&spec.name);
        let started = self.start(spec, &dir, slot).await;
        if started.is_err() {
            // Leave nothing half-made behind; the slot was dropped with the error.
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        started
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        let name = &vm.id;
        let state = self
            .state_of(name)
            .await
            .ok_or_else(|| local(format!("VM {name} does not exist")))?;
        let t0 = Instant::now();

        // Power-on: the process lives and QMP says the guest CPU runs.
        let limit = deadlines.power_on;
        let start = Instant::now();
        loop {
            if !self.is_alive(&state) {
                return Err(self.exited(name, "before it was running"));
            }
            if let Ok(mut q) = qmp::Qmp::connect(&state.qmp, QMP_TIMEOUT).await {
                if q.status().await.ok().as_deref() == Some("running") {
                    break;
                }
            }
            if start.elapsed() > limit {
                return Err(self.deadline(name, "power-on", limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let powered_on = t0.elapsed();

        // Address: fixed (127.0.0.1:port) for user networking; the forward must accept.
        let limit = deadlines.address;
        let start = Instant::now();
        loop {
            let c = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(("127.0.0.1", state.ssh_port)),
            )
            .await;
            if matches!(c, Ok(Ok(_))) {
                break;
            }
            if !self.is_alive(&state) {
                return Err(self.exited(name, "during boot"));
            }
            if let Some(e) = self.boot_failure(name) {
                return Err(e);
            }
            if start.elapsed() > limit {
                return Err(self.deadline(name, "ssh port open", limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // SSH banner: the guest's sshd really answers.
        let limit = deadlines.port_open;
        let start = Instant::now();
        let banner = loop {
            if let Some(b) = super::probe::ssh_banner("127.0.0.1", state.ssh_port).await {
                break b;
            }
            if !self.is_alive(&state) {
                return Err(self.exited(name, "during boot"));
            }
            if let Some(e) = self.boot_failure(name) {
                return Err(e);
            }
            if start.elapsed() > limit {
                return Err(self.deadline(name, "ssh banner", limit));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut ready = vm_of(&state);
        ready.detail["ssh_banner"] = json!(banner);
        ready.detail["power_on_secs"] = json!(powered_on.as_secs_f64());
        ready.detail["ready_secs"] = json!(t0.elapsed().as_secs_f64());
        Ok(ready)
    }

    async fn console_tail(&self, vm: &ClusterVm, max_bytes: usize) -> Option<String> {
        check_name(&vm.id, "vmscan-").ok()?;
        process::read_tail(&self.dir_of(&vm.id).join("console.log"), max_bytes)
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        check_name(vm_id, "vmscan-")?;
        let dir = self.dir_of(vm_id);
        let held = self.running().remove(vm_id);
        let (state, child, slot) = match held {
            Some(r) => (Some(r.state), Some(r.child), Some(r._slot)),
            None => (self.state_of(vm_id).await, None, None),
        };
        if let Some(state) = &state {
            self.stop(state, child).await?;
            ports::release(state.ssh_port);
        }
        drop(slot);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(local(format!("removing {}: {e}", dir.display()))),
        }
        if dir.exists() {
            return Err(local(format!(
                "{} is still there after removal",
                dir.display()
            )));
        }
        Ok(())
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        check_name(image_id, "vmscan-img-")?;
        let path = self.image_dir.join(image_id);
        let _ = tokio::fs::remove_file(self.image_dir.join(format!(".{image_id}.partial"))).await;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local(format!("removing {}: {e}", path.display()))),
        }
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        let mut owned = Vec::new();
        // VMs: every VM directory, running or not (a stopped VM still holds its disk).
        for name in dir_names(&self.vm_dir).await? {
            if check_name(&name, "vmscan-").is_err() {
                continue;
            }
            let job = match self.state_of(&name).await {
                Some(s) => {
                    if self.is_alive(&s) {
                        ports::mark_taken(s.ssh_port);
                    }
                    s.job.or_else(|| job_of(&name, "vmscan-"))
                }
                None => job_of(&name, "vmscan-"),
            };
            owned.push(Owned::Vm {
                id: name.clone(),
                name,
                job,
            });
        }
        for file in dir_names(&self.image_dir).await? {
            if check_name(&file, "vmscan-img-").is_err() {
                continue;
            }
            let name = file.split('.').next().unwrap_or(&file).to_string();
            let job = job_of(&name, "vmscan-img-");
            owned.push(Owned::Image {
                id: file,
                name,
                job,
            });
        }
        Ok(owned)
    }
}

async fn dir_names(dir: &Path) -> Result<Vec<String>, ClusterError> {
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(local(format!("{}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    while let Some(e) = rd
        .next_entry()
        .await
        .map_err(|e| local(format!("{}: {e}", dir.display())))?
    {
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_carry_the_job() {
        let job = JobId::new();
        let vm = crate::cluster::vm_name(job);
        assert!(check_name(&vm, "vmscan-").is_ok());
        assert_eq!(job_of(&vm, "vmscan-"), Some(job));
        let img = format!("{}.qcow2", image_name(job));
        assert!(check_name(&img, "vmscan-img-").is_ok());
        assert_eq!(job_of(&img, "vmscan-img-"), Some(job));
        for bad in ["../etc", "vmscan-../../x", "vmscan-a/b", "other", ""] {
            assert!(check_name(bad, "vmscan-").is_err(), "{bad}");
        }
    }
}
