//! Hostile and friendly archives built in memory, unpacked for real.

use std::io::Write;

use super::*;

fn limits() -> Limits {
    Limits {
        max_total_bytes: 1 << 30,
        max_expansion_ratio: 1000,
        max_entries: 10_000,
        min_free_bytes: 0,
    }
}

/// One raw tar header block: `name`, `kind` and `size`, checksummed.
fn raw_header(name: &str, kind: u8, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar ");
    h[263..265].copy_from_slice(b" \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn refuses_a_huge_gnu_long_name_before_reading_it() {
    let f = Fixture::new();
    // 256 MiB of long name: the tar crate would hold all of it in memory.
    let size = 256u64 << 20;
    let mut t = raw_header("././@LongLink", b'L', size);
    // Only the start of the name is sent (gzip of zeros is small anyway): the
    // guard must refuse on the header alone.
    t.extend(vec![b'a'; 4096]);
    let e = f
        .unpack_with("t.tar.gz", &gzip(&t), limits(), CandidateRule::Fail)
        .unwrap_err();
    assert!(matches!(e, ArchiveError::NameTooLong { .. }), "{e}");
    assert!(e.to_string().contains("archive entry name too long"), "{e}");
    // A PAX header the same.
    let t = raw_header("PaxHeaders/x", b'x', 1 << 20);
    let e = f
        .unpack_with("p.tar", &t, limits(), CandidateRule::Fail)
        .unwrap_err();
    assert!(e.to_string().contains("PAX extended header"), "{e}");
}

#[test]
fn a_long_name_within_the_cap_still_works() {
    let f = Fixture::new();
    let long = format!("{}disk.raw", "dir/".repeat(75));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4096);
    h.set_mode(0o644);
    b.append_data(&mut h, &long, &vec![1u8; 4096][..]).unwrap();
    let t = b.into_inner().unwrap();
    let u = f
        .unpack_with("t.tar", &t, limits(), CandidateRule::Fail)
        .unwrap();
    assert!(u.image.name.ends_with("disk.raw"), "{}", u.image.name);
}

#[test]
fn refuses_an_archive_with_too_many_entries() {
    let f = Fixture::new();
    let mut t = Vec::new();
    for i in 0..50 {
        t.extend(raw_header(&format!("f{i}"), b'0', 0));
    }
    t.extend(vec![0u8; 1024]);
    let few = Limits {
        max_entries: 20,
        ..limits()
    };
    let e = f
        .unpack_with("many.tar", &t, few, CandidateRule::Fail)
        .unwrap_err();
    assert!(
        matches!(e, ArchiveError::TooManyEntries { limit: 20, .. }),
        "{e}"
    );
}

#[test]
fn counts_a_sparse_entrys_real_size_against_the_ratio() {
    let f = Fixture::new();
    // A GNU sparse entry declaring 4 GiB of real size with no data.
    let mut h = raw_header("disk.raw", b'S', 0);
    // realsize (GNU header offset 483, 12 bytes) and one sparse map entry.
    h[483..495].copy_from_slice(format!("{:011o}\0", 4u64 << 30).as_bytes());
    // One hole up to the real size: the whole file is a hole.
    h[386..398].copy_from_slice(format!("{:011o}\0", 4u64 << 30).as_bytes());
    h[398..410].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut t = h;
    t.extend(vec![0u8; 1024]);
    let big = Limits {
        max_total_bytes: 1 << 40,
        max_expansion_ratio: 100,
        ..limits()
    };
    let e = f
        .unpack_with("sparse.tar", &t, big, CandidateRule::Fail)
        .unwrap_err();
    assert!(
        matches!(e, ArchiveError::Bomb { .. } | ArchiveError::NoSpace { .. }),
        "{e}"
    );
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn dest(&self) -> PathBuf {
        let d = self.dir.path().join("work/extract");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn unpack_with(
        &self,
        name: &str,
        bytes: &[u8],
        limits: Limits,
        rule: CandidateRule,
    ) -> Result<Unpacked, ArchiveError> {
        let input = self.input(name, bytes);
        let container = sniff(&input).unwrap().expect("an archive");
        unpack(
            &Job {
                input,
                file_name: name.to_string(),
                dest: self.dest(),
                limits,
                rule,
                counters: Arc::default(),
                cancel: CancellationToken::new(),
            },
            container,
        )
    }

    fn unpack(&self, name: &str, bytes: &[u8]) -> Result<Unpacked, ArchiveError> {
        self.unpack_with(name, bytes, limits(), CandidateRule::Fail)
    }

    /// Every file under the fixture, relative to it: proves nothing escaped.
    fn files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut v);
        v.sort();
        v
    }
}

fn qcow2_bytes() -> Vec<u8> {
    let mut v = b"QFI\xfb\0\0\0\x03".to_vec();
    v.resize(4096, 0);
    v
}

fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        // Written raw: the tar crate refuses to *build* hostile names.
        let field = &mut h.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            let f = &mut h.as_old_mut().linkname;
            f[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])], symlink: Option<(&str, &str)>) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    if let Some((name, target)) = symlink {
        w.add_symlink(name, target, opts).unwrap();
    }
    w.finish().unwrap().into_inner()
}

const REG: tar::EntryType = tar::EntryType::Regular;

#[test]
fn unpacks_an_image_from_a_tar_gz_and_skips_the_rest() {
    let f = Fixture::new();
    let tar = tar_of(&[
        ("README", REG, b"hello", None),
        ("disk/rocky.qcow2", REG, &qcow2_bytes(), None),
    ]);
    let u = f.unpack("rocky.tar.gz", &gzip(&tar)).unwrap();
    assert_eq!(u.container, "tar.gz");
    assert_eq!(u.image.name, "disk/rocky.qcow2");
    assert_eq!(u.image.format, Some(ImageFormat::Qcow2));
    assert_eq!(std::fs::read(&u.image.path).unwrap(), qcow2_bytes());
    assert_eq!(u.skipped, ["README"]);
    assert!(f.files().iter().all(|p| !p.ends_with("README")));
}

#[test]
fn keeps_the_ovf_of_an_ova() {
    let f = Fixture::new();
    let tar = tar_of(&[
        ("vm.ovf", REG, b"<Envelope/>", None),
        ("vm.mf", REG, b"SHA256(vm-disk1.vmdk)= 00", None),
        ("vm-disk1.vmdk", REG, b"KDMV\x01\0\0\0", None),
    ]);
    let u = f.unpack("vm.ova", &tar).unwrap();
    assert_eq!(u.container, "ova");
    assert_eq!(u.image.name, "vm-disk1.vmdk");
    assert_eq!(std::fs::read(u.ovf.unwrap()).unwrap(), b"<Envelope/>");
    assert!(u.manifest.is_some());
}

#[test]
fn decompresses_single_files_of_every_kind() {
    let raw = {
        let mut v = vec![0u8; 3 << 20];
        v[510] = 0x55;
        v[511] = 0xaa;
        v[2 << 20] = 1;
        v
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    };
    let bz = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&raw[..], 1).unwrap();
    for (name, bytes, label, out) in [
        ("disk.img.gz", gzip(&raw), "gzip", "disk.img"),
        ("disk.raw.xz", xz, "xz", "disk.raw"),
        ("disk.img.bz2", bz, "bzip2", "disk.img"),
        ("blob", zst, "zstd", "blob.raw"),
    ] {
        let f = Fixture::new();
        let u = f.unpack(name, &bytes).unwrap();
        assert_eq!(u.container, label);
        assert_eq!(u.image.name, out);
        assert_eq!(std::fs::read(&u.image.path).unwrap(), raw, "{name}");
    }
}

#[test]
fn unpacks_a_zip() {
    let f = Fixture::new();
    let z = zip_of(
        &[("notes.txt", b"x"), ("img/win.vhdx", b"vhdxfile...")],
        None,
    );
    let u = f.unpack("win.zip", &z).unwrap();
    assert_eq!(u.container, "zip");
    assert_eq!(u.image.name, "img/win.vhdx");
    assert_eq!(u.image.format, Some(ImageFormat::Vhdx));
}

#[test]
fn refuses_tar_path_traversal_and_writes_nothing_outside() {
    for name in ["../evil.qcow2", "a/../../evil.qcow2", "/tmp/evil.qcow2"] {
        let f = Fixture::new();
        let e = f
            .unpack("x.tar", &tar_of(&[(name, REG, &qcow2_bytes(), None)]))
            .unwrap_err();
        assert!(matches!(e, ArchiveError::UnsafePath { .. }), "{name}: {e}");
        assert!(e.to_string().starts_with("hostile archive"), "{e}");
        assert_eq!(f.files(), ["x.tar"], "{name}");
    }
}

#[test]
fn refuses_zip_slip() {
    let f = Fixture::new();
    let z = zip_of(&[("../../evil.qcow2", &qcow2_bytes())], None);
    let e = f.unpack("x.zip", &z).unwrap_err();
    assert!(matches!(e, ArchiveError::UnsafePath { .. }), "{e}");
    assert!(e.to_string().contains("../../evil.qcow2"), "{e}");
    assert_eq!(f.files(), ["x.zip"]);
}

#[test]
fn refuses_links_that_escape() {
    let f = Fixture::new();
    let t = tar_of(&[(
        "disk.qcow2",
        tar::EntryType::Symlink,
        b"",
        Some("/etc/passwd"),
    )]);
    let e = f.unpack("x.tar", &t).unwrap_err();
    assert!(e.to_string().contains("symlink pointing outside"), "{e}");

    let t = tar_of(&[(
        "disk.qcow2",
        tar::EntryType::Link,
        b"",
        Some("../../etc/shadow"),
    )]);
    let e = f.unpack("y.tar", &t).unwrap_err();
    assert!(e.to_string().contains("hardlink pointing outside"), "{e}");

    let z = zip_of(&[], Some(("disk.qcow2", "../../../etc/passwd")));
    let e = f.unpack("z.zip", &z).unwrap_err();
    assert!(e.to_string().contains("symlink pointing outside"), "{e}");
    assert_eq!(f.files(), ["x.tar", "y.tar", "z.zip"]);
}

#[test]
fn skips_links_inside_the_archive_without_creating_them() {
    let f = Fixture::new();
    let t = tar_of(&[
        ("disk.qcow2", REG, &qcow2_bytes(), None),
        (
            "latest.qcow2",
            tar::EntryType::Symlink,
            b"",
            Some("disk.qcow2"),
        ),
    ]);
    let u = f.unpack("x.tar", &t).unwrap();
    assert_eq!(u.image.name, "disk.qcow2");
    assert_eq!(u.skipped, ["latest.qcow2 (symlink)"]);
}

#[test]
fn refuses_device_files() {
    let f = Fixture::new();
    for (kind, label) in [
        (tar::EntryType::Block, "block device"),
        (tar::EntryType::Char, "character device"),
        (tar::EntryType::Fifo, "named pipe"),
    ] {
        let e = f
            .unpack("x.tar", &tar_of(&[("sda", kind, b"", None)]))
            .unwrap_err();
        assert!(e.to_string().contains(label), "{e}");
    }
}

#[test]
fn stops_a_gzip_bomb_at_the_cap() {
    let f = Fixture::new();
    // 64 MiB of zeros: about 64 KiB of gzip.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let tight = Limits {
        max_total_bytes: 1 << 20,
        ..limits()
    };
    let e = f
        .unpack_with("disk.img.gz", &bomb, tight, CandidateRule::Fail)
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Bomb { .. }), "{e}");
    assert!(e.to_string().contains("extract.max_total_bytes"), "{e}");
}

#[test]
fn stops_a_bomb_by_expansion_ratio() {
    let f = Fixture::new();
    let bomb = gzip(&vec![0u8; 80 << 20]);
    let ratio = Limits {
        max_expansion_ratio: 100,
        ..limits()
    };
    let t = tar_of(&[("disk.raw", REG, &vec![0u8; 80 << 20], None)]);
    let e = f
        .unpack_with("t.tar.gz", &gzip(&t), ratio.clone(), CandidateRule::Fail)
        .unwrap_err();
    assert!(e.to_string().contains("expanding more than 100x"), "{e}");
    let e = f
        .unpack_with("disk.img.gz", &bomb, ratio, CandidateRule::Fail)
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Bomb { .. }), "{e}");
}

#[test]
fn refuses_a_truncated_archive() {
    let f = Fixture::new();
    let t = tar_of(&[("disk.qcow2", REG, &vec![7u8; 100_000], None)]);
    let e = f.unpack("x.tar", &t[..50_000]).unwrap_err();
    assert!(matches!(e, ArchiveError::Corrupt(_)), "{e}");
    let gz = gzip(&vec![7u8; 100_000]);
    let e = f.unpack("y.img.gz", &gz[..gz.len() / 2]).unwrap_err();
    assert!(matches!(e, ArchiveError::Corrupt(_)), "{e}");
}

#[test]
fn several_images_need_a_rule() {
    let f = Fixture::new();
    let t = tar_of(&[
        ("a.qcow2", REG, &qcow2_bytes(), None),
        ("b.raw", REG, &vec![1u8; 10_000], None),
    ]);
    let e = f.unpack("x.tar", &t).unwrap_err();
    assert!(matches!(e, ArchiveError::Ambiguous(_)), "{e}");
    assert!(
        e.to_string().contains("a.qcow2") && e.to_string().contains("b.raw"),
        "{e}"
    );
    let f = Fixture::new();
    let u = f
        .unpack_with("y.tar", &t, limits(), CandidateRule::Largest)
        .unwrap();
    assert_eq!(u.image.name, "b.raw");
    assert!(
        !u.candidates[0].path.exists(),
        "the unchosen one is removed"
    );
    let f = Fixture::new();
    let u = f
        .unpack_with("z.tar", &t, limits(), CandidateRule::First)
        .unwrap();
    assert_eq!(u.image.name, "a.qcow2");
}

#[test]
fn says_what_an_archive_without_an_image_holds() {
    let f = Fixture::new();
    let e = f
        .unpack("x.zip", &zip_of(&[("README.md", b"hi")], None))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the archive holds no disk image (qcow2, vmdk, vhd, vhdx, vdi, raw/img, iso); it holds: README.md"
    );
}

#[test]
fn names_single_file_outputs() {
    assert_eq!(
        decompressed_name("Rocky.raw.XZ", Container::Xz),
        "Rocky.raw"
    );
    assert_eq!(
        decompressed_name("disk.img.zstd", Container::Zstd),
        "disk.img"
    );
    assert_eq!(decompressed_name("disk", Container::Gzip), "disk.raw");
    assert_eq!(decompressed_name(".gz", Container::Gzip), ".gz.raw");
    assert_eq!(decompressed_name("", Container::Gzip), "image.raw");
}

#[test]
fn an_unsupported_zip_method_is_not_retried() {
    // Found by tests/parsers_prop.rs: it was an I/O error, retried as if the disk failed.
    let f = Fixture::new();
    let mut z = zip_of(&[("disk.qcow2", &qcow2_bytes())], None);
    // The method field of the local header (offset 8) and the central one (10).
    z[8..10].copy_from_slice(&44296u16.to_le_bytes());
    let cd = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    z[cd + 10..cd + 12].copy_from_slice(&44296u16.to_le_bytes());
    let e = f.unpack("x.zip", &z).unwrap_err();
    assert!(matches!(e, ArchiveError::Unsupported(_)), "{e:?}");
    assert!(!e.is_retryable());
}

#[test]
fn an_xz_declaring_a_huge_dictionary_is_refused_not_allocated() {
    let f = Fixture::new();
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(&[7u8; 4096]).unwrap();
    let mut xz = e.finish().unwrap();
    // The first block header (after the 12-byte stream header): size, flags,
    // filter 0x21 (LZMA2), props size 1, then the dictionary byte; its CRC32
    // follows the padded header. 40 declares a 1.5 GiB dictionary.
    let hsize = (xz[12] as usize + 1) * 4;
    assert_eq!((xz[14], xz[15]), (0x21, 0x01), "an LZMA2 block header");
    xz[16] = 40;
    let mut crc = flate2::Crc::new();
    crc.update(&xz[12..12 + hsize - 4]);
    xz[12 + hsize - 4..12 + hsize].copy_from_slice(&crc.sum().to_le_bytes());
    let e = f
        .unpack_with("disk.raw.xz", &xz, limits(), CandidateRule::Fail)
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("memory"), "{e}");
}
