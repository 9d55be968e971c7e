//! Choosing QEMU's accelerator. `/dev/kvm` can exist and open fine while
//! guests hang at their first instruction (nested "kvm-pvm"), and `kvm:tcg`
//! does not fall back then; so KVM is used only after a probe guest proved it
//! runs: a 512-byte boot sector that must print on its serial port in time.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::{QemuAccel, QemuConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

const PROBE_MESSAGE: &str = "VMSCAN-PROBE-OK";

static KVM_WORKS: OnceCell<bool> = OnceCell::const_new();

/// The accelerator to use: forced by config, or KVM when the (cached) probe passed.
pub async fn choose(cfg: &QemuConfig, scratch: &Path) -> Accel {
    match cfg.accel {
        QemuAccel::Kvm => Accel::Kvm,
        QemuAccel::Tcg => Accel::Tcg,
        QemuAccel::Auto => {
            let works = *KVM_WORKS
                .get_or_init(|| async {
                    if !Path::new("/dev/kvm").exists() {
                        tracing::info!("no /dev/kvm: VMs run under TCG (software emulation)");
                        return false;
                    }
                    // Nested "kvm-pvm" runs the BIOS and a real-mode probe but hangs
                    // guest kernels once they leave real mode: never use it.
                    if Path::new("/sys/module/kvm_pvm").exists() {
                        tracing::warn!("/dev/kvm is nested kvm-pvm, which hangs guest kernels: VMs run under TCG");
                        return false;
                    }
                    let limit = Duration::from_secs(cfg.kvm_probe_secs.max(1));
                    match probe(&cfg.qemu_system, Accel::Kvm, scratch, limit).await {
                        Ok(t) => {
                            tracing::info!("KVM probe guest ran in {t:?}: VMs use KVM");
                            true
                        }
                        Err(why) => {
                            tracing::warn!("KVM does not work here ({why}): VMs run under TCG");
                            false
                        }
                    }
                })
                .await;
            if works {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    }
}

/// Boots the probe guest under `accel`; Ok(time to its serial message).
pub async fn probe(
    qemu: &Path,
    accel: Accel,
    scratch: &Path,
    limit: Duration,
) -> Result<Duration, String> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = scratch.join(format!(".accel-probe-{}-{n}", std::process::id()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_probe(qemu, accel, &dir, limit).await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

async fn run_probe(
    qemu: &Path,
    accel: Accel,
    dir: &Path,
    limit: Duration,
) -> Result<Duration, String> {
    let disk = dir.join("probe.img");
    let serial = dir.join("serial.log");
    tokio::fs::write(&disk, boot_sector())
        .await
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    let start = Instant::now();
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "pc", "-accel", accel.as_str(), "-m", "32"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let result = loop {
        if let Ok(s) = tokio::fs::read_to_string(&serial).await {
            if s.contains(PROBE_MESSAGE) {
                break Ok(start.elapsed());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            break Err(format!("probe guest exited ({status}): {}", err.trim()));
        }
        if start.elapsed() > limit {
            break Err(format!(
                "probe guest printed nothing within {} s",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// A BIOS boot sector writing `VMSCAN-PROBE-OK\n` to COM1 (0x3f8), then halting.
fn boot_sector() -> Vec<u8> {
    #[rustfmt::skip]
    let code: [u8; 22] = [
        0xFA,             // cli
        0x31, 0xC0,       // xor ax, ax
        0x8E, 0xD8,       // mov ds, ax
        0xBE, 0x16, 0x7C, // mov si, 0x7c16 (the message, right after the code)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xAC,             // next: lodsb
        0x84, 0xC0,       // test al, al
        0x74, 0x03,       // jz done
        0xEE,             // out dx, al
        0xEB, 0xF8,       // jmp next
        0xF4,             // done: hlt
        0xEB, 0xFD,       // jmp done
    ];
    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(&code);
    let msg = format!("{PROBE_MESSAGE}\n\0");
    sector[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    sector[510] = 0x55;
    sector[511] = 0xAA;
    // SeaBIOS cannot read a disk smaller than its geometry (64 KiB fails); 1 MiB boots.
    sector.resize(1024 * 1024, 0);
    sector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable_and_carries_the_message() {
        let s = boot_sector();
        assert_eq!(&s[510..512], &[0x55, 0xAA]);
        // `mov si` points at the message: 0x7c00 + offset.
        let off = u16::from_le_bytes([s[6], s[7]]) as usize - 0x7c00;
        assert!(s[off..].starts_with(PROBE_MESSAGE.as_bytes()));
    }
}
