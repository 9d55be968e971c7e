//! Disk image and archive formats told apart by their bytes, never by their
//! names, plus the header facts the safety rules need (qcow2, VMDK, boot sectors).

use serde::{Deserialize, Serialize};

/// Bytes read from the start of a file to recognise it: the ISO 9660 primary
/// volume descriptor sits at 0x8001 and the El Torito record at 0x8801.
pub const SNIFF_BYTES: usize = 0x8800 + 0x800;

/// A disk image format, as detected from content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Qed,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
    Iso,
    Luks,
}

impl ImageFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Qed => "qed",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vdi => "vdi",
            ImageFormat::Iso => "iso",
            ImageFormat::Luks => "luks",
        }
    }

    /// The driver name qemu-img is told with `-f`; `None` for formats qemu
    /// must never open here.
    pub fn qemu_driver(&self) -> Option<&'static str> {
        match self {
            ImageFormat::Raw | ImageFormat::Iso => Some("raw"),
            ImageFormat::Qcow2 => Some("qcow2"),
            ImageFormat::Vmdk => Some("vmdk"),
            ImageFormat::Vhd => Some("vpc"),
            ImageFormat::Vhdx => Some("vhdx"),
            ImageFormat::Vdi => Some("vdi"),
            ImageFormat::Qed | ImageFormat::Luks => None,
        }
    }

    /// What a file name suggests (only used to pick candidates inside archives).
    pub fn from_file_name(name: &str) -> Option<ImageFormat> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "qcow2" | "qcow" => ImageFormat::Qcow2,
            "vmdk" => ImageFormat::Vmdk,
            "vhd" => ImageFormat::Vhd,
            "vhdx" => ImageFormat::Vhdx,
            "vdi" => ImageFormat::Vdi,
            "iso" => ImageFormat::Iso,
            "img" | "raw" => ImageFormat::Raw,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Archive and compression containers the extract stage opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Zip,
    Tar,
    Gzip,
    Xz,
    Bzip2,
    Zstd,
}

impl Container {
    pub fn as_str(&self) -> &'static str {
        match self {
            Container::Zip => "zip",
            Container::Tar => "tar",
            Container::Gzip => "gzip",
            Container::Xz => "xz",
            Container::Bzip2 => "bzip2",
            Container::Zstd => "zstd",
        }
    }

    /// The suffix a single compressed file usually carries.
    pub fn suffix(&self) -> Option<&'static str> {
        match self {
            Container::Gzip => Some(".gz"),
            Container::Xz => Some(".xz"),
            Container::Bzip2 => Some(".bz2"),
            Container::Zstd => Some(".zst"),
            _ => None,
        }
    }
}

/// The container a file's first bytes announce, if any.
pub fn container_of(head: &[u8]) -> Option<Container> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Container::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Container::Gzip)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Container::Xz)
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Some(Container::Bzip2)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Container::Zstd)
    } else if is_tar(head) {
        Some(Container::Tar)
    } else {
        None
    }
}

/// POSIX and GNU tar headers carry "ustar" at offset 257.
pub fn is_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar")
}

/// Every image format whose signature appears in `head` (the first
/// [`SNIFF_BYTES`]) or `tail` (the last 512 bytes: fixed VHD footer). More than
/// one means a polyglot file.
pub fn image_signatures(head: &[u8], tail: &[u8]) -> Vec<ImageFormat> {
    let mut found = Vec::new();
    if head.starts_with(b"QFI\xfb") {
        found.push(ImageFormat::Qcow2);
    }
    if head.starts_with(b"QED\0") {
        found.push(ImageFormat::Qed);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        found.push(ImageFormat::Vmdk);
    }
    if head.starts_with(b"vhdxfile") {
        found.push(ImageFormat::Vhdx);
    }
    if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        found.push(ImageFormat::Vhd);
    }
    if head.get(0x40..0x44) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        found.push(ImageFormat::Vdi);
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        found.push(ImageFormat::Iso);
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        found.push(ImageFormat::Luks);
    }
    found
}

/// Boot markers in a raw image or ISO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BootInfo {
    pub mbr: bool,
    pub gpt: bool,
    pub el_torito: bool,
}

impl BootInfo {
    pub fn of(head: &[u8]) -> BootInfo {
        BootInfo {
            mbr: head.get(510..512) == Some(&[0x55, 0xaa]),
            gpt: head.get(512..520) == Some(b"EFI PART"),
            el_torito: head.get(0x8801..0x8806) == Some(b"CD001")
                && head.get(0x8800) == Some(&0)
                && head
                    .get(0x8807..0x8807 + 23)
                    .is_some_and(|s| s == b"EL TORITO SPECIFICATION"),
        }
    }

    pub fn bootable(&self) -> bool {
        self.mbr || self.gpt || self.el_torito
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The qcow2 header fields the safety rules look at.
#[derive(Debug, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub has_backing_file: bool,
    pub encrypted: bool,
    pub virtual_size: u64,
    pub incompatible: u64,
}

/// qcow2 incompatible feature bits: dirty, corrupt, external data file,
/// compression type, extended L2. Anything else is unknown to us.
pub const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1_1111;
pub const QCOW2_CORRUPT: u64 = 1 << 1;
pub const QCOW2_DATA_FILE: u64 = 1 << 2;

pub fn qcow2_header(head: &[u8]) -> Option<Qcow2Header> {
    if !head.starts_with(b"QFI\xfb") {
        return None;
    }
    let version = be_u32(head, 4)?;
    Some(Qcow2Header {
        version,
        has_backing_file: be_u64(head, 8)? != 0,
        virtual_size: be_u64(head, 24)?,
        encrypted: be_u32(head, 32)? != 0,
        incompatible: if version >= 3 { be_u64(head, 72)? } else { 0 },
    })
}

/// Where a VMDK sparse extent keeps its embedded descriptor: (offset, length) in bytes.
pub fn vmdk_descriptor_range(head: &[u8]) -> Option<(u64, u64)> {
    if !head.starts_with(b"KDMV") {
        return None;
    }
    let offset = le_u64(head, 28)?.checked_mul(512)?;
    let size = le_u64(head, 36)?.checked_mul(512)?;
    Some((offset, size))
}

/// Checks an embedded VMDK descriptor: a single-file subformat, every line on
/// an allow-list, one SPARSE extent (which is the file itself). Returns the createType.
pub fn check_vmdk_descriptor(text: &str) -> Result<String, String> {
    const ALLOWED_TYPES: [&str; 2] = ["monolithicSparse", "streamOptimized"];
    const KEYS: [&str; 6] = [
        "version",
        "encoding",
        "CID",
        "parentCID",
        "createType",
        "isNativeSnapshot",
    ];
    let mut create_type = None;
    let mut extents = 0;
    for raw in text.split('\n') {
        let line = raw.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = ["RW ", "RDONLY ", "NOACCESS "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        {
            extents += 1;
            let kind = rest.split_whitespace().nth(1).unwrap_or("");
            if kind != "SPARSE" {
                return Err(format!(
                    "VMDK extent {line:?} refers to another file (only one SPARSE extent is allowed)"
                ));
            }
            continue;
        }
        if line.starts_with("ddb.") {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("VMDK descriptor line {line:?} is not allowed"));
        };
        let key = key.trim();
        if !KEYS.contains(&key) {
            return Err(format!("VMDK descriptor line {line:?} is not allowed"));
        }
        let value = value.trim().trim_matches('"');
        if key == "parentCID" && !value.eq_ignore_ascii_case("ffffffff") {
            return Err(format!(
                "VMDK has a parent (parentCID={value}): delta disks are refused"
            ));
        }
        if key == "createType" {
            create_type = Some(value.to_string());
        }
    }
    let create_type = create_type.ok_or("VMDK descriptor has no createType")?;
    if !ALLOWED_TYPES.contains(&create_type.as_str()) {
        return Err(format!(
            "VMDK subformat {create_type} is refused (allowed: monolithicSparse, streamOptimized)"
        ));
    }
    if extents > 1 {
        return Err(format!(
            "VMDK descriptor lists {extents} extents; only one is allowed"
        ));
    }
    Ok(create_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mut buf: Vec<u8>, off: usize, bytes: &[u8]) -> Vec<u8> {
        if buf.len() < off + bytes.len() {
            buf.resize(off + bytes.len(), 0);
        }
        buf[off..off + bytes.len()].copy_from_slice(bytes);
        buf
    }

    #[test]
    fn recognises_containers_by_magic_not_name() {
        assert_eq!(container_of(b"PK\x03\x04rest"), Some(Container::Zip));
        assert_eq!(container_of(&[0x1f, 0x8b, 8, 0]), Some(Container::Gzip));
        assert_eq!(
            container_of(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Container::Xz)
        );
        assert_eq!(container_of(b"BZh91AY"), Some(Container::Bzip2));
        assert_eq!(
            container_of(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Container::Zstd)
        );
        assert_eq!(
            container_of(&at(vec![0; 512], 257, b"ustar\x0000")),
            Some(Container::Tar)
        );
        assert_eq!(container_of(b"QFI\xfb\0\0\0\x03"), None);
        assert_eq!(container_of(b"BZh0"), None);
    }

    #[test]
    fn finds_every_signature_so_polyglots_show() {
        let qcow = at(vec![0; 0x9000], 0, b"QFI\xfb");
        assert_eq!(image_signatures(&qcow, &[]), [ImageFormat::Qcow2]);
        let poly = at(qcow, 0x8001, b"CD001");
        assert_eq!(
            image_signatures(&poly, &[]),
            [ImageFormat::Qcow2, ImageFormat::Iso]
        );
        assert_eq!(image_signatures(&[0; 64], b"conectix"), [ImageFormat::Vhd]);
        assert!(image_signatures(&[0; 1024], &[0; 512]).is_empty());
    }

    #[test]
    fn reads_boot_markers() {
        let mbr = at(vec![0; 1024], 510, &[0x55, 0xaa]);
        let b = BootInfo::of(&mbr);
        assert!(b.mbr && !b.gpt && b.bootable());
        let gpt = at(mbr, 512, b"EFI PART");
        assert!(BootInfo::of(&gpt).gpt);
        let iso = at(
            at(vec![0; SNIFF_BYTES], 0x8801, b"CD001\x01"),
            0x8807,
            b"EL TORITO SPECIFICATION",
        );
        assert!(BootInfo::of(&iso).el_torito);
        assert!(!BootInfo::of(&[0; 100]).bootable());
    }

    #[test]
    fn parses_qcow2_headers() {
        let mut h = at(vec![0; 512], 0, b"QFI\xfb\0\0\0\x03");
        h = at(h, 24, &(1u64 << 30).to_be_bytes());
        h = at(h, 72, &QCOW2_DATA_FILE.to_be_bytes());
        let q = qcow2_header(&h).unwrap();
        assert_eq!(q.version, 3);
        assert_eq!(q.virtual_size, 1 << 30);
        assert!(!q.has_backing_file);
        assert_eq!(q.incompatible, QCOW2_DATA_FILE);
        let h = at(h, 8, &512u64.to_be_bytes());
        assert!(qcow2_header(&h).unwrap().has_backing_file);
    }

    #[test]
    fn allows_only_single_file_vmdk_descriptors() {
        let ok = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\nRW 2048 SPARSE \"disk.vmdk\"\nddb.adapterType = \"lsilogic\"\n\0\0\0";
        assert_eq!(check_vmdk_descriptor(ok).unwrap(), "streamOptimized");
        let flat = ok
            .replace("SPARSE", "FLAT")
            .replace("\"disk.vmdk\"", "\"/etc/passwd\" 0");
        assert!(check_vmdk_descriptor(&flat)
            .unwrap_err()
            .contains("refers to another file"));
        let split = ok.replace("streamOptimized", "twoGbMaxExtentSparse");
        assert!(check_vmdk_descriptor(&split)
            .unwrap_err()
            .contains("twoGbMaxExtentSparse"));
        let odd = format!("{ok}\nfoo=bar");
        assert!(check_vmdk_descriptor(&odd)
            .unwrap_err()
            .contains("not allowed"));
        let child = ok.replace("parentCID=ffffffff", "parentCID=1234abcd");
        assert!(check_vmdk_descriptor(&child)
            .unwrap_err()
            .contains("parent"));
    }

    #[test]
    fn names_suggest_candidates() {
        assert_eq!(
            ImageFormat::from_file_name("a/Rocky.QCOW2"),
            Some(ImageFormat::Qcow2)
        );
        assert_eq!(
            ImageFormat::from_file_name("disk.img"),
            Some(ImageFormat::Raw)
        );
        assert_eq!(ImageFormat::from_file_name("README"), None);
        assert_eq!(ImageFormat::from_file_name("x.ovf"), None);
    }
}
