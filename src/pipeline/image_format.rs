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

/// `gdOffset` meaning "the grain directory is in the footer" (streamOptimized).
pub const VMDK_GD_AT_END: u64 = u64::MAX;

/// The fields of a VMDK hosted sparse extent header the safety rules read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmdkSparseHeader {
    pub version: u32,
    pub capacity_sectors: u64,
    pub desc_offset: u64,
    pub desc_size: u64,
    pub gd_offset: u64,
}

/// Parses the 64 bytes at `at` (`KDMV`, version, flags, capacity, grain,
/// descriptor sector and length, GTEs per GT, rgd, gd), all little-endian.
pub fn vmdk_sparse_header(b: &[u8], at: usize) -> Option<VmdkSparseHeader> {
    if b.get(at..at + 4)? != b"KDMV" {
        return None;
    }
    Some(VmdkSparseHeader {
        version: u32::from_le_bytes(b.get(at + 4..at + 8)?.try_into().ok()?),
        capacity_sectors: le_u64(b, at + 12)?,
        desc_offset: le_u64(b, at + 28)?.checked_mul(512)?,
        desc_size: le_u64(b, at + 36)?.checked_mul(512)?,
        gd_offset: le_u64(b, at + 56)?,
    })
}

/// The header rules of oslo.utils' format_inspector `VMDKInspector.post_process`
/// (openstack/oslo.utils, oslo_utils/imageutils/format_inspector.py): version
/// 1-3, the descriptor exactly at sector 1 (0x200) and at most 1 MiB - 1 long
/// (qemu's own limits). Returns (offset, length) of the embedded descriptor.
pub fn vmdk_descriptor_range(head: &[u8]) -> Result<(u64, u64), String> {
    let h = vmdk_sparse_header(head, 0).ok_or("truncated VMDK sparse header")?;
    if !(1..=3).contains(&h.version) {
        return Err(format!(
            "VMDK sparse header version {} (only 1 to 3 are accepted)",
            h.version
        ));
    }
    if h.desc_offset != 512 {
        return Err(format!(
            "VMDK embedded descriptor at byte {} (it must start at 512, right after the header)",
            h.desc_offset
        ));
    }
    if h.desc_size == 0 || h.desc_size >= 1 << 20 {
        return Err(format!(
            "VMDK embedded descriptor of {} bytes (1 to 1 MiB - 1 are accepted)",
            h.desc_size
        ));
    }
    Ok((h.desc_offset, h.desc_size))
}

/// A streamOptimized footer (header copy + end-of-stream marker, the last 1536
/// bytes) must agree with the header, as oslo's `check_footer` demands: else
/// readers that trust the footer see another descriptor or grain directory.
pub fn check_vmdk_footer(head: &[u8], tail: &[u8]) -> Result<(), String> {
    let h = vmdk_sparse_header(head, 0).ok_or("truncated VMDK sparse header")?;
    if h.gd_offset != VMDK_GD_AT_END {
        return Ok(());
    }
    if tail.len() != 1536 {
        return Err("VMDK footer is missing (file shorter than its footer)".into());
    }
    let f = vmdk_sparse_header(tail, 512).ok_or("VMDK footer has no KDMV header")?;
    if f.version != h.version {
        return Err("VMDK header and footer versions differ".into());
    }
    if (f.desc_offset, f.desc_size) != (h.desc_offset, h.desc_size) {
        return Err("VMDK footer names another descriptor than the header".into());
    }
    if f.gd_offset == VMDK_GD_AT_END {
        return Err("VMDK footer points at yet another footer".into());
    }
    // Markers: {u64 value, u32 size = 0, u32 type, 496 zero bytes}; footer type 3, EOS type 0.
    let marker = |m: &[u8], typ: u32, value_zero: bool| {
        let ok_value = !value_zero || m[..8].iter().all(|b| *b == 0);
        ok_value
            && m[8..12] == [0; 4]
            && u32::from_le_bytes(m[12..16].try_into().unwrap()) == typ
            && m[16..].iter().all(|b| *b == 0)
    };
    if !marker(&tail[..512], 3, false) {
        return Err("VMDK footer marker is invalid".into());
    }
    if !marker(&tail[1024..], 0, true) {
        return Err("VMDK end-of-stream marker is invalid".into());
    }
    Ok(())
}

/// Checks an embedded VMDK descriptor against the rules of oslo.utils'
/// `VMDKInspector.check_descriptor` (format_inspector.py), a little stricter:
/// ASCII only, nothing hidden after the NUL padding, every line on an
/// allow-list, a single-file createType, and exactly one extent, which must be
/// `RW|RDONLY|NOACCESS <sectors> SPARSE "<name>"` with no `/` (or `\`) in the
/// name. qemu ignores the extent name of a sparse file, but vSphere and
/// converters that import the published image follow it. Returns the createType.
pub fn check_vmdk_descriptor(text: &[u8]) -> Result<String, String> {
    const ALLOWED_TYPES: [&str; 2] = ["monolithicsparse", "streamoptimized"];
    const KEYS: [&str; 6] = [
        "version",
        "encoding",
        "cid",
        "parentcid",
        "createtype",
        "isnativesnapshot",
    ];
    // qemu and oslo stop at the first NUL; text after it would be read by others.
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
    if text[end..].iter().any(|b| *b != 0) {
        return Err("VMDK descriptor has text hidden after its NUL padding".into());
    }
    let text = std::str::from_utf8(&text[..end])
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or("VMDK descriptor is not ASCII text")?;
    let mut create_type = None;
    let mut extents = 0;
    for raw in text.split('\n') {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        let first = lower.split_whitespace().next().unwrap_or("");
        if matches!(first, "rw" | "rdonly" | "noaccess") {
            extents += 1;
            check_vmdk_extent(line)?;
            continue;
        }
        if lower.starts_with("ddb.") {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("VMDK descriptor line {line:?} is not allowed"));
        };
        let key = key.trim().to_ascii_lowercase();
        if !KEYS.contains(&key.as_str()) {
            return Err(format!("VMDK descriptor line {line:?} is not allowed"));
        }
        let value = value.trim().trim_matches('"');
        if key == "parentcid" && !value.eq_ignore_ascii_case("ffffffff") {
            return Err(format!(
                "VMDK has a parent (parentCID={value}): delta disks are refused"
            ));
        }
        if key == "createtype" {
            create_type = Some(value.to_string());
        }
    }
    let create_type = create_type.ok_or("VMDK descriptor has no createType")?;
    if !ALLOWED_TYPES.contains(&create_type.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "VMDK subformat {create_type} is refused (allowed: monolithicSparse, streamOptimized)"
        ));
    }
    match extents {
        0 => Err("VMDK descriptor lists no extent".into()),
        1 => Ok(create_type),
        n => Err(format!(
            "VMDK descriptor lists {n} extents; only one is allowed"
        )),
    }
}

/// One extent line of a single-file VMDK: `ACCESS SECTORS SPARSE "NAME"`.
fn check_vmdk_extent(line: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("VMDK extent {line:?} {why}"));
    let (fields, rest) = line.split_once('"').unwrap_or((line, ""));
    let f: Vec<&str> = fields.split_whitespace().collect();
    if f.get(2).is_some_and(|k| !k.eq_ignore_ascii_case("SPARSE")) {
        return bad("refers to another file (only one SPARSE extent is allowed)");
    }
    let [_, sectors, _] = f.as_slice() else {
        return bad("is not ACCESS SECTORS SPARSE \"NAME\"");
    };
    if !sectors.parse::<u64>().is_ok_and(|n| n > 0) {
        return bad("has no valid size");
    }
    let Some(name) = rest.strip_suffix('"').filter(|n| !n.contains('"')) else {
        return bad("has text after the file name, or none");
    };
    if name.is_empty() || name.contains(['/', '\\']) {
        return bad("refers to another file (a path in the extent name)");
    }
    Ok(())
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
        let body = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\nRW 2048 SPARSE \"disk.vmdk\"\nddb.adapterType = \"lsilogic\"\n";
        let check = |t: &str| check_vmdk_descriptor(t.as_bytes());
        let refused = |t: &str, why: &str| {
            let e = check(t).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        };
        assert_eq!(check(&format!("{body}\0\0\0")).unwrap(), "streamOptimized");
        let flat = body
            .replace("SPARSE", "FLAT")
            .replace("\"disk.vmdk\"", "\"/etc/passwd\" 0");
        refused(&flat, "refers to another file");
        // oslo's rule: no '/' in an extent line, even a SPARSE one.
        refused(
            &body.replace("disk.vmdk", "/etc/shadow"),
            "a path in the extent name",
        );
        refused(
            &body.replace("disk.vmdk", "..\\..\\boot.ini"),
            "a path in the extent name",
        );
        refused(
            &body.replace("\"disk.vmdk\"", "\"disk.vmdk\" 0"),
            "after the file name",
        );
        refused(&body.replace("RW 2048", "RW 0"), "no valid size");
        refused(
            &body.replace("RW 2048 SPARSE \"disk.vmdk\"\n", ""),
            "no extent",
        );
        refused(&format!("{body}RW 2048 SPARSE \"b.vmdk\"\n"), "2 extents");
        refused(
            &body.replace("streamOptimized", "twoGbMaxExtentSparse"),
            "twoGbMaxExtentSparse",
        );
        refused(
            &body.replace("streamOptimized", "monolithicFlat"),
            "monolithicFlat",
        );
        refused(&format!("{body}foo=bar"), "not allowed");
        refused(
            &format!("{body}\0\0RW 2048 FLAT \"/etc/passwd\" 0\n"),
            "hidden after",
        );
        refused(&body.replace("lsilogic", "lsilogic\u{e9}"), "not ASCII");
        refused(
            &body.replace("parentCID=ffffffff", "parentCID=1234abcd"),
            "parent",
        );
    }

    #[test]
    fn vmdk_descriptor_must_sit_right_after_the_header() {
        let head = |version: u32, desc_sector: u64, desc_sectors: u64| {
            let mut h = vec![0u8; 512];
            h[..4].copy_from_slice(b"KDMV");
            h[4..8].copy_from_slice(&version.to_le_bytes());
            h[28..36].copy_from_slice(&desc_sector.to_le_bytes());
            h[36..44].copy_from_slice(&desc_sectors.to_le_bytes());
            h
        };
        assert_eq!(vmdk_descriptor_range(&head(1, 1, 20)), Ok((512, 20 * 512)));
        assert!(vmdk_descriptor_range(&head(1, 2048, 20))
            .unwrap_err()
            .contains("must start at 512"));
        assert!(vmdk_descriptor_range(&head(4, 1, 20))
            .unwrap_err()
            .contains("version 4"));
        assert!(vmdk_descriptor_range(&head(1, 1, 0)).is_err());
        assert!(vmdk_descriptor_range(&head(1, 1, 4096)).is_err());
        // A footer that names another descriptor is refused.
        let mut h = head(3, 1, 20);
        h[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut tail = vec![0u8; 1536];
        tail[12..16].copy_from_slice(&3u32.to_le_bytes());
        tail[512..1024].copy_from_slice(&head(3, 1, 20));
        tail[512 + 56..512 + 64].copy_from_slice(&4096u64.to_le_bytes());
        assert_eq!(check_vmdk_footer(&h, &tail), Ok(()));
        let mut other = tail.clone();
        other[512 + 28..512 + 36].copy_from_slice(&9u64.to_le_bytes());
        assert!(check_vmdk_footer(&h, &other)
            .unwrap_err()
            .contains("another descriptor"));
        let mut eos = tail.clone();
        eos[1100] = 1;
        assert!(check_vmdk_footer(&h, &eos)
            .unwrap_err()
            .contains("end-of-stream"));
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
