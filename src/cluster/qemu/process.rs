//! The QEMU process of one VM: its command line, spawning it, and recognising
//! it again by pid (the pid alone could belong to someone else by now).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::accel::Accel;
use super::harden::{RunAs, SANDBOX};
use crate::cluster::egress::GuestNetwork;

/// Reconnect delay of a guestfwd's host side. A guestfwd chardev carries one
/// connection at a time; when the destination closes it, QEMU connects again
/// for the guest's next connection (without this, only the first ever works).
const GUESTFWD_RECONNECT_MS: u32 = 200;

/// Everything that goes on one VM's qemu-system command line.
#[derive(Clone, Debug)]
pub struct VmLaunch {
    pub name: String,
    pub machine: String,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk: PathBuf,
    pub seed: PathBuf,
    pub ssh_port: u16,
    pub qmp: PathBuf,
    pub console: PathBuf,
    /// A 2-byte file holding 0x3f8: SeaBIOS then prints its own messages
    /// ("No bootable device") on the serial console too.
    pub bios_serial: Option<PathBuf>,
    /// `restricted`: `restrict=on` plus one guestfwd per route.
    pub network: GuestNetwork,
    /// `-sandbox` with every class denied (off only when QEMU lacks seccomp).
    pub sandbox: bool,
    pub extra_args: Vec<String>,
}

impl VmLaunch {
    /// The user-mode network: SSH forwarded from 127.0.0.1 only; with
    /// `restrict=on` the guest reaches nothing but the guestfwd addresses
    /// (slirp's DHCP and DNS answer, DNS lookups lead nowhere).
    fn netdev(&self) -> String {
        let mut n = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port);
        if self.network.restricted {
            n.push_str(",restrict=on");
        }
        for r in &self.network.routes {
            let host = if r.dest.host.contains(':') {
                format!("[{}]", r.dest.host)
            } else {
                r.dest.host.clone()
            };
            // `,,` is a literal comma inside the netdev option: the chardev's own option.
            n.push_str(&format!(
                ",guestfwd=tcp:{}:{}-tcp:{host}:{},,reconnect-ms={GUESTFWD_RECONNECT_MS}",
                r.guest_addr, r.dest.port, r.dest.port
            ));
        }
        n
    }
}

impl VmLaunch {
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: String| a.push(OsString::from(s));
        for s in [
            "-name".to_string(),
            format!("guest={}", self.name),
            "-machine".into(),
            self.machine.clone(),
            "-accel".into(),
            self.accel.as_str().into(),
            "-smp".into(),
            self.cpus.max(1).to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            // A guest reboot ends the process: the pipeline sees it instead of a boot loop.
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", self.console.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp.display()),
            "-drive".into(),
            format!(
                "file={},format=qcow2,if=virtio,cache=unsafe",
                self.disk.display()
            ),
            // The cloud kernels have no AHCI/IDE: the seed is a virtio disk too.
            "-drive".into(),
            format!(
                "file={},format=raw,if=virtio,readonly=on",
                self.seed.display()
            ),
            "-netdev".into(),
            self.netdev(),
            "-device".into(),
            "virtio-net-pci,netdev=n0,romfile=".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
        ] {
            push(s);
        }
        if self.sandbox {
            push("-sandbox".into());
            push(SANDBOX.into());
        }
        if let Some(f) = &self.bios_serial {
            push("-fw_cfg".into());
            push(format!("name=etc/sercon-port,file={}", f.display()));
        }
        for e in &self.extra_args {
            push(e.clone());
        }
        a
    }
}

/// Starts QEMU in its own process group (a Ctrl-C to vmscan's terminal is not
/// the VM's business), stdout/stderr to `log`; killed when the handle drops.
/// With `run_as`, the process is that user from its first instruction.
pub fn spawn(
    bin: &Path,
    args: &[OsString],
    log: &Path,
    run_as: Option<&RunAs>,
) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    if let Some(user) = run_as {
        user.apply(&mut cmd);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// True when `pid` is a live qemu-system process started with `-name guest=NAME`.
pub fn is_our_qemu(pid: u32, name: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty cmdline: it is gone for our purposes.
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let exe = String::from_utf8_lossy(argv0);
    if !exe.rsplit('/').next().unwrap_or("").contains("qemu-system") {
        return false;
    }
    let want = format!("guest={name}");
    args.windows(2)
        .any(|w| w[0] == b"-name" && w[1] == want.as_bytes())
}

pub fn sigkill(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Waits until the process is gone (reaping it when we hold its handle).
pub async fn wait_gone(child: &mut Option<Child>, pid: u32, name: &str, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let gone = match child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !is_our_qemu(pid, name),
        };
        if gone {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `max_bytes` of a file, as text for people: `\r` and control
/// characters other than newline and tab removed, a cut first line dropped.
pub fn read_tail(path: &Path, max_bytes: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(max_bytes as u64);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let mut text = strip_escapes(&String::from_utf8_lossy(&buf));
    if start > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    Some(text)
}

/// Drops terminal escape sequences (SeaBIOS and getty clear the screen) and
/// control characters other than newline and tab.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters, then one final byte in @..~
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> VmLaunch {
        VmLaunch {
            name: "vmscan-abc".into(),
            machine: "pc".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 256,
            disk: "/vms/vmscan-abc/disk.qcow2".into(),
            seed: "/vms/vmscan-abc/seed.img".into(),
            ssh_port: 40022,
            qmp: "/vms/vmscan-abc/qmp.sock".into(),
            console: "/vms/vmscan-abc/console.log".into(),
            bios_serial: Some("/vms/vmscan-abc/sercon".into()),
            network: GuestNetwork::restricted(&["beacon.example.com:8443".parse().unwrap()])
                .unwrap(),
            sandbox: true,
            extra_args: vec!["-device".into(), "virtio-balloon".into()],
        }
    }

    #[test]
    fn command_line_forwards_ssh_on_loopback_and_uses_virtio() {
        let args: Vec<String> = launch()
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let line = args.join(" ");
        assert!(line.starts_with("-name guest=vmscan-abc "), "{line}");
        assert!(line.contains("-accel tcg"));
        assert!(line.contains(
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22,restrict=on,\
             guestfwd=tcp:10.0.2.100:8443-tcp:beacon.example.com:8443,,reconnect-ms=200 "
        ));
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(line.contains("-device virtio-net-pci,netdev=n0"));
        assert!(line.contains("file=/vms/vmscan-abc/seed.img,format=raw,if=virtio,readonly=on"));
        assert!(line.contains("-qmp unix:/vms/vmscan-abc/qmp.sock,server=on,wait=off"));
        assert!(line.contains("-serial file:/vms/vmscan-abc/console.log"));
        assert!(line.contains("-fw_cfg name=etc/sercon-port,file=/vms/vmscan-abc/sercon"));
        assert!(line.ends_with("-device virtio-balloon"));
    }

    #[test]
    fn a_pid_that_is_not_qemu_is_not_ours() {
        assert!(!is_our_qemu(std::process::id(), "vmscan-abc"));
        assert!(!is_our_qemu(u32::MAX - 1, "vmscan-abc"));
    }

    #[test]
    fn tail_drops_the_cut_line_and_control_characters() {
        let dir = std::env::temp_dir().join(format!("vmscan-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("console.log");
        std::fs::write(&p, "first line\r\nsecond \x1b[0mline\r\nthird\n").unwrap();
        assert_eq!(read_tail(&p, 24).unwrap(), "second line\nthird\n");
        assert_eq!(
            read_tail(&p, 1000).unwrap(),
            "first line\nsecond line\nthird\n"
        );
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n"),
            "SeaBIOS\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
