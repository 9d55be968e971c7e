//! Guest OS detection: which family a disk image holds, judged from its
//! partition table and filesystem signatures (never from its name). A job
//! submitted with `os = "auto"` scans over WinRM or SSH by this verdict.
//!
//! The bytes are read as the guest would see them: straight from the file for
//! raw images, through `qemu-img` (a raw window over the format driver) for
//! qcow2, VMDK, VHD and VHDX, under the same limits as the inspect stage.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::qemu::{self, RunLimits};
use crate::domain::{fmt_bytes, OsFamily};

const SECTOR: u64 = 512;
/// Enough of a partition's start for every signature read here (btrfs keeps
/// its superblock at 64 KiB).
const PROBE_BYTES: u64 = 68 * 1024;
/// GPT allows any number of entries; real disks use 128.
const MAX_GPT_ENTRIES: u64 = 256;
const MAX_PARTITIONS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read the disk at byte {offset}: {reason}")]
    Read { offset: u64, reason: String },
}

/// Guest-visible bytes of a disk.
#[async_trait]
pub trait DiskBytes: Send + Sync {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Up to `len` bytes at `offset`; fewer at the end of the disk.
    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, DetectError>;
}

/// A raw image: the file is the disk.
pub struct RawFile {
    path: PathBuf,
    size: u64,
}

impl RawFile {
    pub fn new(path: &Path, size: u64) -> Self {
        RawFile {
            path: path.to_path_buf(),
            size,
        }
    }
}

#[async_trait]
impl DiskBytes for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, DetectError> {
        let err = |e: std::io::Error| DetectError::Read {
            offset,
            reason: e.to_string(),
        };
        let len = len.min(self.size.saturating_sub(offset));
        let mut f = tokio::fs::File::open(&self.path).await.map_err(err)?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(err)?;
        let mut buf = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut buf).await.map_err(err)?;
        Ok(buf)
    }
}

/// Any format qemu-img reads: each read converts a raw window of the disk
/// (`driver=raw,offset=…,size=…` over the format driver) into a scratch file.
pub struct QemuImgDisk {
    pub qemu_img: PathBuf,
    pub path: PathBuf,
    /// qemu's format driver name, as inspect verified it.
    pub driver: String,
    pub virtual_size: u64,
    pub scratch_dir: PathBuf,
    pub timeout: Duration,
    pub limits: RunLimits,
}

#[async_trait]
impl DiskBytes for QemuImgDisk {
    fn size(&self) -> u64 {
        self.virtual_size
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, DetectError> {
        let len = len.min(self.virtual_size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let err = |reason: String| DetectError::Read { offset, reason };
        let scratch = Scratch::new(&self.scratch_dir);
        // Commas separate qemu's options; a comma in a path is written twice.
        let file = self.path.display().to_string().replace(',', ",,");
        let opts = format!(
            "driver=raw,offset={offset},size={len},file.driver={},file.file.driver=file,file.file.filename={file}",
            self.driver
        );
        let args: Vec<OsString> = vec![
            "convert".into(),
            "--image-opts".into(),
            opts.into(),
            "-O".into(),
            "raw".into(),
            scratch.0.as_os_str().to_owned(),
        ];
        let (status, _, stderr) = qemu::run(
            &self.qemu_img,
            "convert (read for OS detection)",
            &args,
            self.timeout,
            Some(self.limits),
        )
        .await
        .map_err(|e| err(e.to_string()))?;
        if !status.success() {
            return Err(err(format!("qemu-img failed ({status}): {stderr}")));
        }
        tokio::fs::read(&scratch.0)
            .await
            .map_err(|e| err(e.to_string()))
    }
}

/// A scratch file name, removed when dropped (also on error or cancel).
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scratch(dir.join(format!(".guest-os-{}-{n}.raw", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One partition as the table describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based, as `fdisk` numbers them (logical MBR partitions from 5).
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// The table's type: a GPT type name or GUID, or `mbr 0x83`.
    pub kind: String,
    /// What the first bytes hold: `ntfs`, `ext2/3/4`, `xfs`, …
    pub filesystem: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// `None` when the disk shows neither family, or both.
    pub family: Option<OsFamily>,
    /// One line saying why, for the job log and page.
    pub evidence: String,
    /// `gpt`, `mbr` or `none` (a filesystem on the whole disk).
    pub table: &'static str,
    pub partitions: Vec<Partition>,
}

pub async fn detect(disk: &dyn DiskBytes) -> Result<Detection, DetectError> {
    let head = disk.read_at(0, 34 * SECTOR).await?;
    let (table, mut parts) = if head.get(512..520) == Some(b"EFI PART") {
        ("gpt", gpt_partitions(disk, &head).await?)
    } else if let Some(p) = mbr_partitions(disk, &head).await? {
        ("mbr", p)
    } else {
        let whole = Partition {
            number: 0,
            start: 0,
            size: disk.size(),
            kind: "whole disk".into(),
            filesystem: None,
        };
        ("none", vec![whole])
    };
    parts.truncate(MAX_PARTITIONS);
    for p in &mut parts {
        let bytes = disk.read_at(p.start, PROBE_BYTES.min(p.size)).await?;
        p.filesystem = filesystem_of(&bytes);
    }
    let (family, evidence) = judge(&parts);
    Ok(Detection {
        family,
        evidence,
        table,
        partitions: parts,
    })
}

async fn gpt_partitions(disk: &dyn DiskBytes, head: &[u8]) -> Result<Vec<Partition>, DetectError> {
    let h = &head[512..];
    let entries_lba = le_u64(h, 72);
    let count = u64::from(le_u32(h, 80)).min(MAX_GPT_ENTRIES);
    let esize = u64::from(le_u32(h, 84));
    // The spec says 128 × 2^n; anything else is not a GPT we can trust.
    if !(128..=4096).contains(&esize) || !esize.is_power_of_two() {
        return Ok(Vec::new());
    }
    // LBAs are the image's to choose: one past any byte offset is no table.
    let Some(entries_at) = entries_lba.checked_mul(SECTOR) else {
        return Ok(Vec::new());
    };
    let raw = disk.read_at(entries_at, count * esize).await?;
    let mut parts = Vec::new();
    for (i, e) in raw.chunks_exact(esize as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (le_u64(e, 32), le_u64(e, 40));
        if last < first {
            continue;
        }
        let (Some(start), Some(size)) = (
            first.checked_mul(SECTOR),
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(SECTOR)),
        ) else {
            continue;
        };
        let guid = guid(&e[..16]);
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            size,
            kind: gpt_type_name(&guid).map_or(guid, str::to_string),
            filesystem: None,
        });
    }
    Ok(parts)
}

/// `None` when sector 0 is not a partition table (a filesystem written to
/// the whole disk also ends its boot sector with 55 AA).
async fn mbr_partitions(
    disk: &dyn DiskBytes,
    head: &[u8],
) -> Result<Option<Vec<Partition>>, DetectError> {
    let boot_sector = &head[..head.len().min(SECTOR as usize)];
    if head.get(510..512) != Some(&[0x55, 0xaa]) || filesystem_of(boot_sector).is_some() {
        return Ok(None);
    }
    let sectors = disk.size() / SECTOR;
    let entries = mbr_entries(head);
    let sane = entries.iter().all(|e| {
        (e.boot == 0 || e.boot == 0x80) && u64::from(e.lba) + u64::from(e.count) <= sectors
    });
    if !sane || entries.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if is_extended(e.kind) {
            logical_partitions(disk, u64::from(e.lba), &mut parts).await?;
        } else {
            parts.push(Partition {
                number: i as u32 + 1,
                start: u64::from(e.lba) * SECTOR,
                size: u64::from(e.count) * SECTOR,
                kind: format!("mbr {:#04x}", e.kind),
                filesystem: None,
            });
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(Some(parts))
}

/// Walks the chain of extended boot records; logical partitions number from 5.
async fn logical_partitions(
    disk: &dyn DiskBytes,
    base: u64,
    parts: &mut Vec<Partition>,
) -> Result<(), DetectError> {
    let mut ebr = base;
    let mut number = 5;
    while parts.len() < MAX_PARTITIONS {
        let s = disk.read_at(ebr * SECTOR, SECTOR).await?;
        if s.get(510..512) != Some(&[0x55, 0xaa]) {
            break;
        }
        let e = mbr_entries(&s);
        let Some(first) = e.first() else { break };
        parts.push(Partition {
            number,
            start: (ebr + u64::from(first.lba)) * SECTOR,
            size: u64::from(first.count) * SECTOR,
            kind: format!("mbr {:#04x}", first.kind),
            filesystem: None,
        });
        number += 1;
        match e.get(1) {
            // The next record is relative to the extended partition's start;
            // a link that does not move forward would loop.
            Some(next) if is_extended(next.kind) && base + u64::from(next.lba) > ebr => {
                ebr = base + u64::from(next.lba);
            }
            _ => break,
        }
    }
    Ok(())
}

struct MbrEntry {
    boot: u8,
    kind: u8,
    lba: u32,
    count: u32,
}

/// The used entries of a partition table sector.
fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| &sector[446 + 16 * i..446 + 16 * (i + 1)])
        .map(|e| MbrEntry {
            boot: e[0],
            kind: e[4],
            lba: le_u32(e, 8),
            count: le_u32(e, 12),
        })
        .filter(|e| e.kind != 0 && e.count != 0)
        .collect()
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// The filesystem (or volume) signature at the start of a partition.
fn filesystem_of(b: &[u8]) -> Option<&'static str> {
    let at = |off: usize, sig: &[u8]| b.get(off..off + sig.len()) == Some(sig);
    if at(3, b"NTFS    ") {
        Some("ntfs")
    } else if at(3, b"ReFS\0\0\0\0") {
        Some("refs")
    } else if at(3, b"EXFAT   ") {
        Some("exfat")
    } else if at(0, b"XFSB") {
        Some("xfs")
    } else if at(0, b"LUKS\xba\xbe") {
        Some("luks")
    } else if at(512, b"LABELONE") && at(536, b"LVM2 001") {
        Some("lvm2")
    } else if at(1024 + 56, &[0x53, 0xef]) {
        Some("ext2/3/4")
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Some("linux swap")
    } else if at(65536 + 64, b"_BHRfS_M") {
        Some("btrfs")
    } else if at(54, b"FAT1") || at(82, b"FAT32   ") {
        Some("fat")
    } else {
        None
    }
}

fn family_of_filesystem(fs: &str) -> Option<OsFamily> {
    match fs {
        "ntfs" | "refs" => Some(OsFamily::Windows),
        "xfs" | "luks" | "lvm2" | "ext2/3/4" | "linux swap" | "btrfs" => Some(OsFamily::Linux),
        _ => None,
    }
}

fn family_of_kind(kind: &str) -> Option<OsFamily> {
    match kind {
        "Microsoft reserved"
        | "Windows recovery"
        | "Windows LDM metadata"
        | "mbr 0x27"
        | "mbr 0x42" => Some(OsFamily::Windows),
        k if k.starts_with("Linux") || k == "BIOS boot (GRUB)" => Some(OsFamily::Linux),
        "mbr 0x82" | "mbr 0x83" | "mbr 0x8e" | "mbr 0xfd" => Some(OsFamily::Linux),
        _ => None,
    }
}

/// Filesystems speak louder than partition types; a disk showing both
/// families is not guessed at.
fn judge(parts: &[Partition]) -> (Option<OsFamily>, String) {
    // (family, what shows it, shown by a filesystem rather than a type)
    let mut seen: Vec<(OsFamily, String, bool)> = Vec::new();
    for p in parts {
        let what = if p.number == 0 {
            "the whole disk".to_string()
        } else {
            format!("partition {} ({}, {})", p.number, p.kind, fmt_bytes(p.size))
        };
        if let Some(f) = p.filesystem.and_then(family_of_filesystem) {
            let fs = p.filesystem.unwrap_or("?");
            seen.push((f, format!("{what} holds {fs}"), true));
        } else if let Some(f) = family_of_kind(&p.kind) {
            seen.push((f, what, false));
        }
    }
    seen.sort_by_key(|(_, _, by_fs)| !by_fs);
    let first = |f: OsFamily| {
        seen.iter()
            .find(|(k, _, _)| *k == f)
            .map(|(_, w, _)| w.clone())
    };
    match (first(OsFamily::Windows), first(OsFamily::Linux)) {
        (Some(w), None) => (Some(OsFamily::Windows), w),
        (None, Some(l)) => (Some(OsFamily::Linux), l),
        (Some(w), Some(l)) => (
            None,
            format!("the disk shows both Windows ({w}) and Linux ({l})"),
        ),
        (None, None) if parts.is_empty() => {
            (None, "the partition table lists no partitions".into())
        }
        (None, None) if parts[0].number == 0 && parts[0].filesystem.is_none() => (
            None,
            "no partition table, and no filesystem vmscan knows on the whole disk".into(),
        ),
        (None, None) => (
            None,
            format!(
                "no Windows or Linux filesystem found ({})",
                parts
                    .iter()
                    .map(|p| match p.filesystem {
                        Some(fs) => format!("{}: {fs}", p.kind),
                        None => format!("{}: unknown", p.kind),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot (GRUB)",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3" => "Windows LDM metadata",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "44479540-F297-41B2-9AF7-D131D5F0458A" => "Linux root (x86)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (arm64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        _ => return None,
    })
}

/// The textual form of an on-disk GUID (its first three fields are little-endian).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le_u32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory disk.
    struct Mem(Vec<u8>);

    #[async_trait]
    impl DiskBytes for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, DetectError> {
            let s = (offset as usize).min(self.0.len());
            let e = (s + len as usize).min(self.0.len());
            Ok(self.0[s..e].to_vec())
        }
    }

    const MIB: usize = 1 << 20;

    fn put(d: &mut [u8], at: usize, b: &[u8]) {
        d[at..at + b.len()].copy_from_slice(b);
    }

    fn ntfs(d: &mut [u8], at: usize) {
        put(d, at + 3, b"NTFS    ");
        put(d, at + 510, &[0x55, 0xaa]);
    }

    fn ext4(d: &mut [u8], at: usize) {
        put(d, at + 1024 + 56, &[0x53, 0xef]);
    }

    fn guid_bytes(s: &str) -> [u8; 16] {
        let h: Vec<u8> = s
            .split('-')
            .flat_map(|p| {
                (0..p.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&p[i..i + 2], 16).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
        g[4..6].copy_from_slice(&[h[5], h[4]]);
        g[6..8].copy_from_slice(&[h[7], h[6]]);
        g[8..].copy_from_slice(&h[8..]);
        g
    }

    /// A GPT disk with these (type GUID, first MiB, MiBs) partitions.
    fn gpt(size_mib: usize, parts: &[(&str, usize, usize)]) -> Vec<u8> {
        let mut d = vec![0u8; size_mib * MIB];
        put(&mut d, 446 + 4, &[0xee]);
        put(&mut d, 446 + 8, &1u32.to_le_bytes());
        put(
            &mut d,
            446 + 12,
            &((size_mib * MIB / 512 - 1) as u32).to_le_bytes(),
        );
        put(&mut d, 510, &[0x55, 0xaa]);
        put(&mut d, 512, b"EFI PART");
        put(&mut d, 512 + 72, &2u64.to_le_bytes());
        put(&mut d, 512 + 80, &128u32.to_le_bytes());
        put(&mut d, 512 + 84, &128u32.to_le_bytes());
        for (i, (ty, first, len)) in parts.iter().enumerate() {
            let e = 1024 + 128 * i;
            put(&mut d, e, &guid_bytes(ty));
            let lba = (first * MIB / 512) as u64;
            put(&mut d, e + 32, &lba.to_le_bytes());
            put(
                &mut d,
                e + 40,
                &(lba + (len * MIB / 512) as u64 - 1).to_le_bytes(),
            );
        }
        d
    }

    fn mbr_entry(d: &mut [u8], sector: usize, i: usize, kind: u8, lba: u32, count: u32) {
        let e = sector * 512 + 446 + 16 * i;
        put(d, e + 4, &[kind]);
        put(d, e + 8, &lba.to_le_bytes());
        put(d, e + 12, &count.to_le_bytes());
        put(d, sector * 512 + 510, &[0x55, 0xaa]);
    }

    const EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    const MSR: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
    const BASIC: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

    #[tokio::test]
    async fn a_windows_gpt_disk_is_windows_by_its_ntfs_partition() {
        let mut d = gpt(16, &[(EFI, 1, 2), (MSR, 3, 1), (BASIC, 4, 12)]);
        ntfs(&mut d, 4 * MIB);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.family, Some(OsFamily::Windows), "{r:?}");
        assert_eq!(r.table, "gpt");
        assert_eq!(r.partitions.len(), 3);
        assert_eq!(r.partitions[2].filesystem, Some("ntfs"));
        assert_eq!(
            r.evidence,
            "partition 3 (Microsoft basic data, 12.0 MiB) holds ntfs"
        );
    }

    #[tokio::test]
    async fn a_linux_gpt_disk_is_linux_even_with_a_basic_data_partition() {
        // Older partitioners typed Linux partitions as "basic data".
        let mut d = gpt(16, &[(EFI, 1, 2), (BASIC, 3, 12)]);
        ext4(&mut d, 3 * MIB);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.family, Some(OsFamily::Linux), "{r:?}");
        assert!(r.evidence.contains("holds ext2/3/4"), "{}", r.evidence);
    }

    #[tokio::test]
    async fn partition_types_count_when_no_filesystem_is_recognised() {
        let r = detect(&Mem(gpt(8, &[(LINUX, 1, 6)]))).await.unwrap();
        assert_eq!(r.family, Some(OsFamily::Linux));
        assert_eq!(r.evidence, "partition 1 (Linux filesystem, 6.0 MiB)");
        let r = detect(&Mem(gpt(8, &[(MSR, 1, 6)]))).await.unwrap();
        assert_eq!(r.family, Some(OsFamily::Windows));
    }

    #[tokio::test]
    async fn mbr_with_logical_partitions_is_walked() {
        let mut d = vec![0u8; 16 * MIB];
        mbr_entry(&mut d, 0, 0, 0x0c, 2048, 2048);
        // Extended partition from sector 4096; two logical partitions.
        mbr_entry(&mut d, 0, 1, 0x05, 4096, 24000);
        mbr_entry(&mut d, 4096, 0, 0x82, 2048, 2048);
        mbr_entry(&mut d, 4096, 1, 0x05, 8192, 8192);
        mbr_entry(&mut d, 4096 + 8192, 0, 0x83, 2048, 4096);
        ext4(&mut d, (4096 + 8192 + 2048) * 512);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.table, "mbr");
        let numbers: Vec<u32> = r.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 5, 6]);
        assert_eq!(r.partitions[2].filesystem, Some("ext2/3/4"));
        assert_eq!(r.family, Some(OsFamily::Linux));
    }

    #[tokio::test]
    async fn an_ebr_chain_that_loops_stops() {
        let mut d = vec![0u8; 8 * MIB];
        mbr_entry(&mut d, 0, 0, 0x0f, 2048, 8000);
        mbr_entry(&mut d, 2048, 0, 0x07, 63, 100);
        mbr_entry(&mut d, 2048, 1, 0x05, 0, 100);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.partitions.len(), 1);
        assert_eq!(r.family, None);
    }

    #[tokio::test]
    async fn gpt_lbas_past_any_byte_offset_are_skipped() {
        // Found by tests/parsers_prop.rs: these multiplied out of u64 and panicked.
        let mut d = gpt(8, &[(LINUX, 1, 6), (LINUX, 1, 1)]);
        put(&mut d, 1024 + 128 + 32, &(u64::MAX / 2).to_le_bytes());
        put(&mut d, 1024 + 128 + 40, &u64::MAX.to_le_bytes());
        let r = detect(&Mem(d.clone())).await.unwrap();
        assert_eq!(r.partitions.len(), 1, "{r:?}");
        assert_eq!(r.family, Some(OsFamily::Linux));
        put(&mut d, 512 + 72, &(u64::MAX / 4).to_le_bytes());
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.evidence, "the partition table lists no partitions");
    }

    #[tokio::test]
    async fn a_filesystem_on_the_whole_disk_is_not_read_as_a_table() {
        let mut d = vec![0u8; 2 * MIB];
        ntfs(&mut d, 0);
        // Boot code where the table would be.
        put(&mut d, 446, &[0xfa; 64]);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.table, "none");
        assert_eq!(r.family, Some(OsFamily::Windows));
        assert_eq!(r.evidence, "the whole disk holds ntfs");
    }

    #[tokio::test]
    async fn unknown_and_mixed_disks_are_not_guessed() {
        // The test fixture: MBR with one FAT16 partition.
        let mut d = vec![0u8; 8 * MIB];
        mbr_entry(&mut d, 0, 0, 0x06, 2048, 8192);
        put(&mut d, 2048 * 512 + 54, b"FAT16   ");
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.family, None);
        assert_eq!(
            r.evidence,
            "no Windows or Linux filesystem found (mbr 0x06: fat)"
        );

        let mut d = gpt(16, &[(BASIC, 1, 6), (LINUX, 7, 6)]);
        ntfs(&mut d, MIB);
        ext4(&mut d, 7 * MIB);
        let r = detect(&Mem(d)).await.unwrap();
        assert_eq!(r.family, None);
        assert!(
            r.evidence.starts_with("the disk shows both"),
            "{}",
            r.evidence
        );

        let r = detect(&Mem(vec![0u8; MIB])).await.unwrap();
        assert_eq!((r.table, r.family), ("none", None));
    }

    #[tokio::test]
    async fn reads_through_qemu_img_for_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("win,dows.raw");
        let mut d = gpt(16, &[(MSR, 1, 1), (BASIC, 2, 13)]);
        ntfs(&mut d, 2 * MIB);
        std::fs::write(&raw, &d).unwrap();
        let qcow = dir.path().join("win,dows.qcow2");
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow)
            .output()
            .expect("qemu-img is installed");
        assert!(out.status.success(), "{out:?}");
        let disk = QemuImgDisk {
            qemu_img: "qemu-img".into(),
            path: qcow,
            driver: "qcow2".into(),
            virtual_size: d.len() as u64,
            scratch_dir: dir.path().to_path_buf(),
            timeout: Duration::from_secs(30),
            limits: RunLimits {
                cpu_secs: 30,
                memory_bytes: 1 << 30,
            },
        };
        let r = detect(&disk).await.unwrap();
        assert_eq!(r.family, Some(OsFamily::Windows), "{r:?}");
        assert_eq!(r.partitions.len(), 2);
        // The raw reader agrees, and no scratch file is left behind.
        let same = detect(&RawFile::new(&raw, d.len() as u64)).await.unwrap();
        assert_eq!(same.partitions, r.partitions);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2);
    }
}
