//! Property tests of every parser of untrusted bytes: archives, image headers,
//! partition tables, SUMS files, checksum specs, WinRM SOAP and NTLM.
//!
//! For arbitrary inputs and for valid samples mutated (bits flipped, bytes
//! set, runs inserted or removed, integers planted, truncated), each parser
//! must not panic, must not allocate more than [`MAX_PEAK`] on the way, and
//! must end with an accepted value or its typed error. Valid samples must
//! also be accepted as they are, so a parser that refused everything fails.
//!
//! This is its own test binary because it installs a counting global
//! allocator. Counts are per thread (the test harness runs properties side by
//! side), so each parser is driven on the test's own thread.
//!
//! Cases per property: 256 for archives and `examine` (files on disk), 1024
//! for the rest, the whole binary in a few seconds (CI); `PROPTEST_CASES` overrides
//! all of them (`scripts/fuzz.sh` runs thousands).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tokio_util::sync::CancellationToken;

use vmscan::config::CandidateRule;
use vmscan::domain::{ChecksumAlgo, ChecksumSpec};
use vmscan::pipeline::image_format::{
    check_vmdk_descriptor, check_vmdk_footer, container_of, image_signatures, is_tar, qcow2_header,
    vmdk_descriptor_range, vmdk_sparse_header, BootInfo, Container, ImageFormat,
};
use vmscan::pipeline::untrusted::{
    detect, examine, parse_sums, sniff, unpack, ArchiveError, DetectError, DiskBytes, Job, Limits,
};
use vmscan::remote::winrm::soap;
use vmscan::remote::winrm::untrusted::{av_pairs, Client, NtlmError};

// ---------------------------------------------------------------------------
// Counting allocator

/// No parser may need more than this for the small inputs generated here.
const MAX_PEAK: usize = 64 << 20;

struct Counting;

thread_local! {
    // `const` and without a destructor: usable from inside the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            note(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its value with the most bytes this thread had
/// allocated at once on top of what it held before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// `f`'s value, failing the case if it allocated beyond [`MAX_PEAK`].
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let (out, peak) = peak_of(f);
    prop_assert!(
        peak <= MAX_PEAK,
        "{what} allocated {peak} bytes at once (bound {MAX_PEAK})"
    );
    Ok(out)
}

#[test]
fn the_counter_sees_allocations() {
    // Guards every bound below: a counter that saw nothing would pass them all.
    let (v, peak) = peak_of(|| vec![1u8; 3 << 20]);
    assert!(peak >= 3 << 20, "{peak}");
    drop(v);
    let (_, peak) = peak_of(|| 1 + 1);
    assert_eq!(peak, 0);
}

// ---------------------------------------------------------------------------
// Cases and mutations

/// `default` cases, unless PROPTEST_CASES says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Shrinking an archive case re-runs whole unpacks; keep it short.
        max_shrink_iters: 512,
        // A failure prints its minimal input; it becomes a named regression
        // test, not a file written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Integers that tend to sit in length, offset and count fields.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1ff,
    0x200,
    0xfff,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(INTERESTING),
        1 => any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    /// An integer of 2, 4 or 8 bytes, little- or big-endian.
    Word(Index, u64, usize, bool),
    /// Octal digits (tar's numbers).
    Octal(Index, u64),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..).prop_map(|(i, m)| Edit::Flip(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        1 => (any::<Index>(), 1usize..512).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        3 => (
            any::<Index>(),
            interesting(),
            prop::sample::select(&[2usize, 4, 8][..]),
            any::<bool>()
        )
            .prop_map(|(i, v, w, be)| Edit::Word(i, v, w, be)),
        1 => (any::<Index>(), interesting()).prop_map(|(i, v)| Edit::Octal(i, v)),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..8)
}

fn mutate(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if v.is_empty() {
            if let Edit::Insert(_, b) = e {
                v.extend_from_slice(b);
            }
            continue;
        }
        let len = v.len();
        match e {
            Edit::Flip(i, m) => v[i.index(len)] ^= m,
            Edit::Set(i, b) => v[i.index(len)] = *b,
            Edit::Insert(i, b) => {
                let at = i.index(len + 1);
                v.splice(at..at, b.iter().copied());
            }
            Edit::Remove(i, n) => {
                let at = i.index(len);
                v.drain(at..(at + n).min(len));
            }
            Edit::Truncate(i) => v.truncate(i.index(len)),
            Edit::Word(i, x, w, be) => {
                let bytes = if *be {
                    x.to_be_bytes()[8 - w..].to_vec()
                } else {
                    x.to_le_bytes()[..*w].to_vec()
                };
                let at = i.index(len);
                let end = (at + w).min(len);
                v[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Edit::Octal(i, x) => {
                let s = format!("{x:o}\0");
                let at = i.index(len);
                let end = (at + s.len()).min(len);
                v[at..end].copy_from_slice(&s.as_bytes()[..end - at]);
            }
        }
    }
    v
}

/// Arbitrary bytes, mostly short, sometimes a few KiB.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..600),
        1 => prop::collection::vec(any::<u8>(), 0..8192),
    ]
}

/// Arbitrary text: random bytes read as UTF-8, or runs of XML-ish characters.
fn junk_text() -> impl Strategy<Value = String> {
    prop_oneof![
        junk().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        prop::collection::vec(
            prop::sample::select(
                &[
                    "<", ">", "/", "=", "\"", "'", "&", ";", "#", "!", "?", "[", "]", " ", "\n",
                    "a", "s:", "x", "_x", "000A_", "&amp;", "&#", "CDATA", "--", "xmlns", ":"
                ][..]
            ),
            0..200
        )
        .prop_map(|v| v.concat()),
    ]
}

fn mutate_text(s: &str, e: &[Edit]) -> String {
    String::from_utf8_lossy(&mutate(s.as_bytes().to_vec(), e)).into_owned()
}

// ---------------------------------------------------------------------------
// Archives

fn limits() -> Limits {
    Limits {
        // Small enough that a mutated stream bombs out quickly, large enough
        // for every valid sample.
        max_total_bytes: 8 << 20,
        max_expansion_ratio: 1000,
        max_entries: 10_000,
        min_free_bytes: 0,
    }
}

/// A scratch directory, in memory when the machine has /dev/shm.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Every path under `dir`, and whether any of them is a symlink.
fn tree(dir: &Path) -> (Vec<PathBuf>, bool) {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, links: &mut bool) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            *links |= t.is_symlink();
            out.push(e.path());
            if t.is_dir() {
                walk(&e.path(), out, links);
            }
        }
    }
    let (mut out, mut links) = (Vec::new(), false);
    walk(dir, &mut out, &mut links);
    (out, links)
}

/// `None` when not sniffed as an archive; else the container label and the
/// picked image's bytes, or the refusal.
type Unpacked = Option<Result<(String, Vec<u8>), ArchiveError>>;

/// Sniffs and unpacks `bytes` as a file named `name`, then checks what every
/// outcome must satisfy. Returns the outcome for more specific checks.
fn unpack_checked(name: &str, bytes: &[u8]) -> Result<Unpacked, TestCaseError> {
    let dir = scratch();
    let input = dir.path().join("input");
    std::fs::write(&input, bytes).unwrap();
    let dest = dir.path().join("extract");
    std::fs::create_dir(&dest).unwrap();
    let sniffed = sniff(&input).unwrap();
    prop_assert_eq!(sniffed, container_of(&bytes[..bytes.len().min(512)]));
    let Some(container) = sniffed else {
        return Ok(None);
    };
    let job = Job {
        input: input.clone(),
        file_name: name.to_string(),
        dest: dest.clone(),
        limits: limits(),
        rule: CandidateRule::First,
        counters: Arc::default(),
        cancel: CancellationToken::new(),
    };
    let result = bounded("unpack", || unpack(&job, container))?;
    let (paths, links) = tree(dir.path());
    prop_assert!(!links, "a symlink was created: {paths:?}");
    for p in &paths {
        prop_assert!(
            *p == input || p.starts_with(&dest),
            "{} was written outside the destination",
            p.display()
        );
    }
    Ok(Some(match result {
        Ok(u) => {
            prop_assert!(u.image.path.starts_with(&dest));
            prop_assert!(u.unpacked_bytes <= limits().max_total_bytes);
            let data = std::fs::read(&u.image.path).unwrap();
            prop_assert_eq!(data.len() as u64, u.image.size);
            Ok((u.container, data))
        }
        Err(e) => {
            // The input is at fault, never the (healthy) local disk: a retry
            // would only fail again.
            prop_assert!(!e.is_retryable(), "retryable error for bad input: {e:?}");
            Err(e)
        }
    }))
}

/// What a generated archive holds.
#[derive(Clone, Debug)]
struct Sample {
    /// The published file name, which names a single decompressed file.
    name: String,
    bytes: Vec<u8>,
    /// The label `unpack` must report and the image it must pick.
    label: &'static str,
    image: Vec<u8>,
}

fn image_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![&b"QFI\xfb\0\0\0\x03"[..], b"KDMV", b"vhdxfile", b""]),
        prop::collection::vec(any::<u8>(), 0..3000),
        0usize..40_000,
    )
        .prop_map(|(magic, body, zeros)| {
            // Zero runs compress well and become holes: both paths get used.
            let mut v = magic.to_vec();
            v.extend_from_slice(&body);
            v.resize(v.len() + zeros, 0);
            v
        })
}

fn entry_name() -> impl Strategy<Value = String> {
    prop_oneof![
        // No component can be "." or "..": those are refused, rightly.
        3 => "[a-z0-9]{1,12}(/[a-z0-9_-][a-z0-9_.-]{0,11}){0,2}",
        // Past tar's 100-byte name field: GNU long names or PAX paths.
        1 => "[a-z]{60}/[a-z]{60}",
    ]
}

fn tar_header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h
}

/// A header for `Builder::append`, which writes it as it is.
fn raw_header(kind: tar::EntryType, size: u64, path: &str) -> tar::Header {
    let mut h = tar_header(kind, size);
    h.set_path(path).unwrap();
    h.set_cksum();
    h
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut n = body.len() + 1;
    while format!("{n}{body}").len() != n {
        n += 1;
    }
    format!("{n}{body}").into_bytes()
}

/// A tar with the image, some files that are not images, a directory, a
/// link inside the archive and sometimes a PAX header.
fn tar_bytes(image_name: &str, image: &[u8], others: &[(String, Vec<u8>)], pax: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut tar_header(tar::EntryType::Directory, 0), "d", &[][..])
        .unwrap();
    for (n, data) in others {
        let n = format!("{n}.txt");
        b.append_data(
            &mut tar_header(tar::EntryType::Regular, data.len() as u64),
            &n,
            &data[..],
        )
        .unwrap();
    }
    if pax {
        let rec = pax_record("path", &format!("pax/{image_name}.qcow2"));
        let h = raw_header(tar::EntryType::XHeader, rec.len() as u64, "PaxHeader");
        b.append(&h, &rec[..]).unwrap();
        let h = raw_header(tar::EntryType::Regular, image.len() as u64, "short.qcow2");
        b.append(&h, image).unwrap();
    } else {
        b.append_data(
            &mut tar_header(tar::EntryType::Regular, image.len() as u64),
            format!("{image_name}.qcow2"),
            image,
        )
        .unwrap();
    }
    let mut h = tar_header(tar::EntryType::Symlink, 0);
    h.set_link_name("d/../x.txt").unwrap();
    b.append_data(&mut h, "d/link", &[][..]).unwrap();
    b.into_inner().unwrap()
}

fn zip_bytes(
    image_name: &str,
    image: &[u8],
    others: &[(String, Vec<u8>)],
    stored: bool,
) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if stored {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    w.add_directory("d", opts).unwrap();
    for (i, (n, data)) in others.iter().enumerate() {
        // zip refuses to write a name twice.
        w.start_file(format!("{n}{i}.txt"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.start_file(format!("{image_name}.qcow2"), opts).unwrap();
    w.write_all(image).unwrap();
    w.finish().unwrap().into_inner()
}

fn compress(c: Container, data: &[u8]) -> Vec<u8> {
    match c {
        Container::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Container::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Container::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Container::Zstd => zstd::encode_all(data, 1).unwrap(),
        Container::Zip | Container::Tar => unreachable!(),
    }
}

const COMPRESSED: [Container; 4] = [
    Container::Gzip,
    Container::Xz,
    Container::Bzip2,
    Container::Zstd,
];

fn tar_label(c: Container) -> &'static str {
    match c {
        Container::Gzip => "tar.gz",
        Container::Xz => "tar.xz",
        Container::Bzip2 => "tar.bz2",
        Container::Zstd => "tar.zst",
        _ => "tar",
    }
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        0usize..10,
        entry_name(),
        image_bytes(),
        prop::collection::vec(
            ("[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..500)),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(kind, name, image, others, flag)| {
            let (label, bytes, file) = match kind {
                0 => ("tar", tar_bytes(&name, &image, &others, flag), "x.tar"),
                1 => ("zip", zip_bytes(&name, &image, &others, flag), "x.zip"),
                2..=5 => {
                    let c = COMPRESSED[kind - 2];
                    let t = tar_bytes(&name, &image, &others, flag);
                    (tar_label(c), compress(c, &t), "x.tgz")
                }
                _ => {
                    let c = COMPRESSED[kind - 6];
                    (c.as_str(), compress(c, &image), "disk.img.z")
                }
            };
            Sample {
                name: file.to_string(),
                bytes,
                label,
                image,
            }
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Every generated archive unpacks to exactly its image: the harness
    /// below is not passing because everything is refused.
    #[test]
    fn valid_archives_unpack_to_their_image(s in sample()) {
        let out = unpack_checked(&s.name, &s.bytes)?.expect("sniffed as an archive");
        let (label, data) = out.map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        prop_assert_eq!(label, s.label);
        prop_assert!(data == s.image, "the unpacked image differs");
    }

    /// Mutated archives unpack or fail with an archive error; never a panic,
    /// a retryable error, a write outside the destination or a big allocation.
    #[test]
    fn mutated_archives_end_in_a_verdict(s in sample(), e in edits()) {
        unpack_checked(&s.name, &mutate(s.bytes, &e))?;
    }

    /// A container's magic followed by noise.
    #[test]
    fn noise_after_an_archive_magic_ends_in_a_verdict(
        magic in prop::sample::select(vec![
            &b"PK\x03\x04"[..], b"PK\x05\x06", b"\x1f\x8b\x08\x00", b"\xfd7zXZ\x00",
            b"BZh9", b"\x28\xb5\x2f\xfd",
        ]),
        tail in junk(),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&tail);
        let out = unpack_checked("noise.gz", &bytes)?;
        prop_assert!(out.is_some(), "the magic was not sniffed");
    }

    /// Noise with a tar header's "ustar" planted where tar looks for it.
    #[test]
    fn noise_shaped_like_tar_ends_in_a_verdict(mut bytes in prop::collection::vec(any::<u8>(), 512..4096)) {
        bytes[257..263].copy_from_slice(b"ustar\0");
        prop_assert!(unpack_checked("x.tar", &bytes)?.is_some());
    }
}

// ---------------------------------------------------------------------------
// Image format inspector

/// Valid headers of each format, as the inspector would read them.
fn image_samples() -> Vec<Vec<u8>> {
    let put = |v: &mut Vec<u8>, at: usize, b: &[u8]| {
        if v.len() < at + b.len() {
            v.resize(at + b.len(), 0);
        }
        v[at..at + b.len()].copy_from_slice(b);
    };
    let mut qcow = vec![0u8; 4096];
    put(&mut qcow, 0, b"QFI\xfb\0\0\0\x03");
    put(&mut qcow, 24, &(1u64 << 30).to_be_bytes());
    let mut backing = qcow.clone();
    put(&mut backing, 8, &512u64.to_be_bytes());
    put(&mut backing, 16, &7u32.to_be_bytes());
    put(&mut backing, 512, b"base.qcow2");

    let desc = b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\nRW 2048 SPARSE \"disk.vmdk\"\nddb.adapterType = \"lsilogic\"\n";
    let kdmv = |gd: u64| {
        let mut h = vec![0u8; 512];
        put(&mut h, 0, b"KDMV");
        put(&mut h, 4, &3u32.to_le_bytes());
        put(&mut h, 12, &2048u64.to_le_bytes());
        put(&mut h, 28, &1u64.to_le_bytes());
        put(&mut h, 36, &1u64.to_le_bytes());
        put(&mut h, 56, &gd.to_le_bytes());
        h
    };
    let mut vmdk = kdmv(u64::MAX);
    put(&mut vmdk, 512, desc);
    vmdk.resize(4096, 0);
    let mut footer = vec![0u8; 1536];
    put(&mut footer, 12, &3u32.to_le_bytes());
    put(&mut footer, 512, &kdmv(8));
    vmdk.extend_from_slice(&footer);

    let mut vhd = vec![0u8; 4096];
    put(&mut vhd, 4096 - 512, b"conectix");
    let mut iso = vec![0u8; 0x9000];
    put(&mut iso, 0x8001, b"CD001\x01");
    put(&mut iso, 0x8801, b"CD001\x01");
    put(&mut iso, 0x8807, b"EL TORITO SPECIFICATION");
    let mut mbr = vec![0u8; 2048];
    put(&mut mbr, 510, &[0x55, 0xaa]);
    put(&mut mbr, 512, b"EFI PART");
    let mut vdi = vec![0u8; 1024];
    put(&mut vdi, 0x40, &[0x7f, 0x10, 0xda, 0xbe]);
    vec![
        qcow,
        backing,
        vmdk,
        vhd,
        iso,
        mbr,
        vdi,
        b"vhdxfile".to_vec(),
    ]
}

/// The pure header functions on one input, with the facts each must keep.
fn header_functions_hold(b: &[u8]) -> Result<(), TestCaseError> {
    let tail = &b[b.len().saturating_sub(512)..];
    let (c, sigs, q, range, footer, desc, boot) = bounded("image header parsers", || {
        let footer_tail = &b[b.len().saturating_sub(1536)..];
        for at in [
            0,
            1,
            512,
            b.len().saturating_sub(64),
            b.len(),
            usize::MAX - 8,
        ] {
            if let Some(h) = vmdk_sparse_header(b, at) {
                assert_eq!(h.desc_offset % 512, 0);
            }
        }
        (
            container_of(b),
            image_signatures(b, tail),
            qcow2_header(b),
            vmdk_descriptor_range(b),
            check_vmdk_footer(b, footer_tail),
            check_vmdk_descriptor(b),
            BootInfo::of(b),
        )
    })?;
    if c == Some(Container::Zip) {
        prop_assert!(b.starts_with(b"PK"));
    }
    if c == Some(Container::Tar) {
        prop_assert!(is_tar(b));
    }
    for (i, f) in sigs.iter().enumerate() {
        prop_assert!(!sigs[..i].contains(f), "{f} listed twice");
    }
    let version = b
        .get(4..8)
        .map(|v| u32::from_be_bytes(v.try_into().unwrap()));
    let qcow_fits = b.len() >= 36 && version.is_some_and(|v| v < 3 || b.len() >= 80);
    prop_assert_eq!(q.is_some(), b.starts_with(b"QFI\xfb") && qcow_fits);
    if q.is_some() {
        prop_assert!(sigs.contains(&ImageFormat::Qcow2));
    }
    if let Ok((off, len)) = range {
        prop_assert_eq!(off, 512);
        prop_assert!(len > 0 && len < 1 << 20);
    }
    if footer.is_ok() {
        // Only a header whose grain directory is elsewhere skips the footer.
        let h = vmdk_sparse_header(b, 0).expect("footer accepted without a header");
        prop_assert!(h.gd_offset != u64::MAX || b.len() >= 1536);
    }
    if let Ok(t) = desc {
        let t = t.to_ascii_lowercase();
        prop_assert!(t == "monolithicsparse" || t == "streamoptimized", "{t}");
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        prop_assert!(b[..end].is_ascii() && b[end..].iter().all(|c| *c == 0));
    }
    prop_assert_eq!(boot.mbr, b.get(510..512) == Some(&[0x55, 0xaa][..]));
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn header_parsers_take_any_bytes(b in junk()) {
        header_functions_hold(&b)?;
    }

    #[test]
    fn header_parsers_take_mutated_headers(i in 0usize..8, e in edits()) {
        header_functions_hold(&mutate(image_samples()[i].clone(), &e))?;
    }

    /// Mutated VMDK descriptors: accepted ones still have one SPARSE extent
    /// without a path.
    #[test]
    fn vmdk_descriptor_check_takes_mutations(e in edits()) {
        let text = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\nRW 16777216 SPARSE \"disk.vmdk\"\nddb.virtualHWVersion = \"4\"\n\0\0\0";
        prop_assert!(check_vmdk_descriptor(text.as_bytes()).is_ok());
        let m = mutate(text.as_bytes().to_vec(), &e);
        if check_vmdk_descriptor(&m).is_ok() {
            let end = m.iter().position(|b| *b == 0).unwrap_or(m.len());
            let s = std::str::from_utf8(&m[..end]).unwrap();
            let extents: Vec<&str> = s
                .lines()
                .map(str::trim)
                .filter(|l| {
                    let w = l.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
                    matches!(w.as_str(), "rw" | "rdonly" | "noaccess")
                })
                .collect();
            prop_assert_eq!(extents.len(), 1, "{:?}", s);
            let kind = extents[0].split_whitespace().nth(2).unwrap_or("");
            prop_assert!(kind.eq_ignore_ascii_case("SPARSE"), "{:?}", extents[0]);
            prop_assert!(!extents[0].contains('/') && !extents[0].contains('\\'));
        }
    }
}

/// The inspect stage's header reading (`examine`) on a file: accepted, or
/// refused for a reason; never an I/O error for a file that reads fine.
fn examine_holds(rt: &tokio::runtime::Runtime, bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = scratch();
    let p = dir.path().join("image");
    std::fs::write(&p, bytes).unwrap();
    let r = bounded("examine", || rt.block_on(examine(&p)))?;
    match r {
        Ok(v) => {
            prop_assert!(container_of(bytes).is_none());
            prop_assert!(v.format.qemu_driver().is_some(), "accepted {}", v.format);
        }
        Err(vmscan::pipeline::InspectError::Refused(_)) => {}
        Err(e) => prop_assert!(false, "not a refusal: {e:?}"),
    }
    Ok(())
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn examine_takes_mutated_images(i in 0usize..8, e in edits()) {
        let rt = current_thread_runtime();
        let s = image_samples()[i].clone();
        if i != 1 {
            // The samples themselves pass (the one with a backing file must not).
            prop_assert!(rt.block_on(examine_sample(&s)).is_ok(), "sample {} refused", i);
        }
        examine_holds(&rt, &mutate(s, &e))?;
    }

    #[test]
    fn examine_takes_any_bytes(b in junk()) {
        examine_holds(&current_thread_runtime(), &b)?;
    }
}

async fn examine_sample(bytes: &[u8]) -> Result<(), String> {
    let dir = scratch();
    let p = dir.path().join("image");
    std::fs::write(&p, bytes).unwrap();
    examine(&p).await.map(|_| ()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Guest OS detector

/// A sparse in-memory disk: zeros except the chunks written. It counts the
/// reads, so a detector that loops or asks for huge windows shows.
struct Disk {
    size: u64,
    chunks: Vec<(u64, Vec<u8>)>,
    reads: AtomicU64,
    biggest_read: AtomicU64,
}

impl Disk {
    fn new(size: u64, chunks: Vec<(u64, Vec<u8>)>) -> Self {
        Disk {
            size,
            chunks,
            reads: AtomicU64::new(0),
            biggest_read: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl DiskBytes for Disk {
    fn size(&self) -> u64 {
        self.size
    }
    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, DetectError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.biggest_read.fetch_max(len, Ordering::Relaxed);
        let end = self.size.min(offset.saturating_add(len));
        if offset >= end || len > 64 << 20 {
            // Like RawFile, which would try to allocate `len`: refuse instead.
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        for (at, data) in &self.chunks {
            let lo = (*at).max(offset);
            let hi = at.saturating_add(data.len() as u64).min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(buf)
    }
}

const GUIDS: &[[u8; 16]] = &[
    // Microsoft basic data, Linux filesystem, EFI system, Microsoft reserved (on-disk order).
    [
        0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99,
        0xc7,
    ],
    [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ],
    [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ],
    [
        0x16, 0xe3, 0xc9, 0xe3, 0x5c, 0x0b, 0xb8, 0x4d, 0x81, 0x7d, 0xf9, 0x2d, 0xf0, 0x02, 0x15,
        0xae,
    ],
];

/// Filesystem signatures as (offset in the partition, bytes).
const FS_SIGS: &[(u64, &[u8])] = &[
    (3, b"NTFS    "),
    (1024 + 56, &[0x53, 0xef]),
    (0, b"XFSB"),
    (0, b"LUKS\xba\xbe"),
    (4086, b"SWAPSPACE2"),
    (65536 + 64, b"_BHRfS_M"),
    (54, b"FAT16   "),
    (3, b"ReFS\0\0\0\0"),
];

#[derive(Clone, Debug)]
struct DiskLayout {
    size: u64,
    chunks: Vec<(u64, Vec<u8>)>,
}

fn mbr_entry(kind: u8, lba: u32, count: u32, boot: u8) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = boot;
    e[4] = kind;
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
    e
}

fn boot_sector(entries: &[[u8; 16]]) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    for (i, e) in entries.iter().take(4).enumerate() {
        s[446 + 16 * i..462 + 16 * i].copy_from_slice(e);
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

fn small_or_wild_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 1u32..40_000,
        1 => interesting().prop_map(|v| v as u32),
    ]
}

/// MBR disks: primary entries, and an extended partition whose EBR chain
/// may link anywhere (forwards, backwards, onto itself).
fn mbr_layout() -> impl Strategy<Value = DiskLayout> {
    (
        prop::collection::vec(
            (
                prop::sample::select(
                    &[0x05u8, 0x0f, 0x85, 0x07, 0x83, 0x82, 0x8e, 0x27, 0x0c, 0xee][..],
                ),
                small_or_wild_u32(),
                small_or_wild_u32(),
                prop::sample::select(&[0u8, 0x80, 0x80, 0x00, 0x7f][..]),
            ),
            1..5,
        ),
        prop::collection::vec(
            (
                small_or_wild_u32(),
                small_or_wild_u32(),
                small_or_wild_u32(),
                any::<bool>(),
            ),
            0..6,
        ),
        prop::sample::select(&[16u64 << 20, 64 << 20, 1 << 40, u64::MAX][..]),
        prop::collection::vec((0usize..FS_SIGS.len(), 0u32..40_000), 0..4),
    )
        .prop_map(|(primaries, ebrs, size, sigs)| {
            let entries: Vec<[u8; 16]> = primaries
                .iter()
                .map(|(k, lba, n, boot)| mbr_entry(*k, *lba, *n, *boot))
                .collect();
            let mut chunks = vec![(0, boot_sector(&entries))];
            // EBRs at each extended entry and then wherever the chain points.
            let base = primaries
                .iter()
                .find(|(k, ..)| matches!(k, 0x05 | 0x0f | 0x85))
                .map(|(_, lba, ..)| u64::from(*lba));
            if let Some(base) = base {
                let mut at = base;
                for (first, count, next, link) in ebrs {
                    let mut e = vec![mbr_entry(0x83, first, count, 0)];
                    if link {
                        e.push(mbr_entry(0x05, next, 100, 0));
                    }
                    chunks.push((at * 512, boot_sector(&e)));
                    at = base + u64::from(next);
                }
            }
            for (i, lba) in sigs {
                let (off, sig) = FS_SIGS[i];
                chunks.push((u64::from(lba) * 512 + off, sig.to_vec()));
            }
            DiskLayout { size, chunks }
        })
}

/// GPT disks with wild header fields and entries.
fn gpt_layout() -> impl Strategy<Value = DiskLayout> {
    (
        prop_oneof![3 => Just(2u64), 1 => interesting()],
        prop_oneof![3 => 1u32..300, 1 => interesting().prop_map(|v| v as u32)],
        prop_oneof![3 => Just(128u32), 1 => prop::sample::select(&[0u32, 64, 129, 256, 4096, 8192, u32::MAX][..])],
        prop::collection::vec(
            (
                prop_oneof![3 => (0usize..GUIDS.len()).prop_map(|i| GUIDS[i]), 1 => any::<[u8; 16]>()],
                prop_oneof![3 => 34u64..100_000, 1 => interesting()],
                prop_oneof![3 => 34u64..200_000, 1 => interesting()],
                prop::option::of(0usize..FS_SIGS.len()),
            ),
            0..8,
        ),
        prop::sample::select(&[16u64 << 20, 1 << 40, u64::MAX][..]),
    )
        .prop_map(|(entries_lba, count, esize, entries, size)| {
            let mut head = boot_sector(&[mbr_entry(0xee, 1, u32::MAX, 0)]);
            let mut h = vec![0u8; 512];
            h[..8].copy_from_slice(b"EFI PART");
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&count.to_le_bytes());
            h[84..88].copy_from_slice(&esize.to_le_bytes());
            head.extend_from_slice(&h);
            let mut chunks = vec![(0, head)];
            let stride = if (128..=4096).contains(&esize) { esize as usize } else { 128 };
            let mut table = vec![0u8; stride * entries.len()];
            for (i, (guid, first, last, sig)) in entries.iter().enumerate() {
                let e = &mut table[i * stride..];
                e[..16].copy_from_slice(guid);
                e[32..40].copy_from_slice(&first.to_le_bytes());
                e[40..48].copy_from_slice(&last.to_le_bytes());
                if let (Some(s), Some(at)) = (sig, first.checked_mul(512)) {
                    let (off, sig) = FS_SIGS[*s];
                    chunks.push((at.saturating_add(off), sig.to_vec()));
                }
            }
            if let Some(at) = entries_lba.checked_mul(512) {
                chunks.push((at, table));
            }
            DiskLayout { size, chunks }
        })
}

fn detect_holds(layout: DiskLayout) -> Result<(), TestCaseError> {
    let disk = Disk::new(layout.size, layout.chunks);
    let head = futures::executor::block_on(disk.read_at(0, 1024)).unwrap();
    disk.reads.store(0, Ordering::Relaxed);
    let r = bounded("detect", || futures::executor::block_on(detect(&disk)))?;
    // The in-memory disk never fails a read, so neither may the detector.
    let d = r.map_err(|e| TestCaseError::fail(format!("detect failed: {e}")))?;
    prop_assert!(
        d.partitions.len() <= 128,
        "{} partitions",
        d.partitions.len()
    );
    // A table read, the GPT entries, the EBR chain and one probe per partition.
    let reads = disk.reads.load(Ordering::Relaxed);
    prop_assert!(reads <= 2 + 128 + 128, "{reads} reads");
    prop_assert!(disk.biggest_read.load(Ordering::Relaxed) <= 1 << 20);
    prop_assert_eq!(
        d.table == "gpt",
        head.get(512..520) == Some(&b"EFI PART"[..])
    );
    prop_assert!(!d.evidence.is_empty());
    for p in &d.partitions {
        prop_assert!(p.number <= 256, "partition number {}", p.number);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn detect_takes_wild_mbr_disks(l in mbr_layout()) {
        detect_holds(l)?;
    }

    #[test]
    fn detect_takes_wild_gpt_disks(l in gpt_layout()) {
        detect_holds(l)?;
    }

    /// Generated layouts with their table sectors mutated.
    #[test]
    fn detect_takes_mutated_tables(l in prop_oneof![mbr_layout(), gpt_layout()], which in any::<Index>(), e in edits()) {
        let mut l = l;
        let i = which.index(l.chunks.len());
        l.chunks[i].1 = mutate(std::mem::take(&mut l.chunks[i].1), &e);
        detect_holds(l)?;
    }

    #[test]
    fn detect_takes_any_first_sectors(b in prop::collection::vec(any::<u8>(), 0..20_000), size in interesting()) {
        detect_holds(DiskLayout { size, chunks: vec![(0, b)] })?;
    }

    /// A well-formed GPT disk with an NTFS data partition is Windows: the
    /// generators above reach the detector's verdicts.
    #[test]
    fn a_valid_windows_gpt_disk_is_windows(first in 34u64..10_000, len in 200u64..10_000) {
        let mut head = boot_sector(&[mbr_entry(0xee, 1, 100_000, 0)]);
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        head.extend_from_slice(&h);
        let mut e = vec![0u8; 128];
        e[..16].copy_from_slice(&GUIDS[0]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&(first + len - 1).to_le_bytes());
        let disk = Disk::new(64 << 20, vec![(0, head), (1024, e), (first * 512 + 3, b"NTFS    ".to_vec())]);
        let d = futures::executor::block_on(detect(&disk)).unwrap();
        prop_assert_eq!(d.family, Some(vmscan::domain::OsFamily::Windows), "{:?}", d);
    }
}

// ---------------------------------------------------------------------------
// SUMS files and checksum specs

fn hex_of(len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&b"0123456789abcdefABCDEF"[..]), len)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

/// One valid SUMS line and the (name, algo, lowercase hex) it stands for.
fn sums_line() -> impl Strategy<Value = (String, String, ChecksumAlgo, String)> {
    (
        prop::sample::select(&ChecksumAlgo::ALL[..]),
        "[A-Za-z0-9._-][A-Za-z0-9._ -]{0,30}[A-Za-z0-9._-]",
        any::<u8>(),
    )
        .prop_flat_map(|(algo, name, style)| {
            (hex_of(algo.hex_len()), Just(algo), Just(name), Just(style))
        })
        .prop_map(|(hex, algo, name, style)| {
            let line = match style % 3 {
                0 => format!("{hex}  {name}"),
                1 => format!("{hex} *{name}"),
                _ => format!("{} ({name}) = {hex}", algo.as_str().to_uppercase()),
            };
            (line, name, algo, hex.to_ascii_lowercase())
        })
}

fn entries_are_well_formed(text: &str) -> Result<usize, TestCaseError> {
    let entries = bounded("parse_sums", || parse_sums(text))?;
    for e in &entries {
        prop_assert!(!e.name.is_empty());
        prop_assert_eq!(e.checksum.hex.len(), e.checksum.algo.hex_len());
        prop_assert!(e
            .checksum
            .hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
    Ok(entries.len())
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Every valid line is found, in order, whatever junk surrounds it
    /// (outside a signature block).
    #[test]
    fn sums_files_list_their_lines(
        lines in prop::collection::vec(sums_line(), 1..20),
        junk_lines in prop::collection::vec("[ -~]{0,80}", 0..10),
        signed in any::<bool>(),
    ) {
        let mut text = String::new();
        if signed {
            text.push_str("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n");
        }
        for (i, (l, ..)) in lines.iter().enumerate() {
            if let Some(j) = junk_lines.get(i) {
                text.push_str(&format!("# {j}\n"));
            }
            text.push_str(l);
            text.push('\n');
        }
        if signed {
            text.push_str("-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n");
        }
        let got = parse_sums(&text);
        prop_assert_eq!(got.len(), lines.len());
        for (e, (_, name, algo, hex)) in got.iter().zip(&lines) {
            prop_assert_eq!(&e.name, name);
            prop_assert_eq!(e.checksum.algo, *algo);
            prop_assert_eq!(&e.checksum.hex, hex);
        }
    }

    #[test]
    fn sums_parser_takes_any_text(t in junk_text()) {
        entries_are_well_formed(&t)?;
    }

    #[test]
    fn sums_parser_takes_mutated_files(lines in prop::collection::vec(sums_line(), 1..10), e in edits()) {
        let text: String = lines.iter().map(|(l, ..)| format!("{l}\n")).collect();
        entries_are_well_formed(&mutate_text(&text, &e))?;
    }

    /// A parsed spec prints as text that parses back to itself.
    #[test]
    fn checksum_specs_round_trip(s in prop_oneof![
        junk_text(),
        "(md5|sha1|SHA-256|sha512|crc32)?:?[0-9a-fA-F]{0,130}",
        "file: ?(https?|file|ftp)://[ -~]{0,40}",
    ]) {
        if let Ok(spec) = bounded("ChecksumSpec::from_str", || s.parse::<ChecksumSpec>())? {
            if let ChecksumSpec::Digest(c) = &spec {
                prop_assert_eq!(c.hex.len(), c.algo.hex_len());
                prop_assert!(c.hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
            if let ChecksumSpec::File { url } = &spec {
                prop_assert!(["http://", "https://", "file://"].iter().any(|p| url.starts_with(p)));
            }
            let again: ChecksumSpec = spec.to_string().parse().map_err(|e| TestCaseError::fail(format!("{spec} does not parse back: {e}")))?;
            prop_assert_eq!(again, spec);
        }
    }
}

// ---------------------------------------------------------------------------
// WinRM SOAP

const NS: &str = r#"xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault""#;

fn soap_samples() -> Vec<String> {
    vec![
        format!(r#"<s:Envelope {NS}><s:Body><w:SelectorSet><w:Selector Name="ShellId">11111111-1111-1111-1111-111111111113</w:Selector></w:SelectorSet><rsp:Shell><rsp:ShellId>S</rsp:ShellId></rsp:Shell></s:Body></s:Envelope>"#),
        format!(r#"<s:Envelope {NS}><s:Body><rsp:CommandResponse><rsp:CommandId>C-1</rsp:CommandId></rsp:CommandResponse></s:Body></s:Envelope>"#),
        format!(r#"<s:Envelope {NS}><s:Body><rsp:ReceiveResponse><rsp:Stream Name="stdout" CommandId="1">aGVsbG8K</rsp:Stream><rsp:Stream Name="stderr" CommandId="1">b29wcw==</rsp:Stream><rsp:CommandState CommandId="1" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"><rsp:ExitCode>4294967295</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse></s:Body></s:Envelope>"#),
        format!(r#"<s:Envelope {NS}><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:TimedOut</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">timed out</s:Text></s:Reason><s:Detail><f:WSManFault Code="2150858793"><f:Message>timed out &amp; more</f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>"#),
        "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">Cannot find path_x000D__x000A_</S><S S=\"Error\">second_x000A_</S></Objs><Objs><S S=\"Error\">_x00e9__x</S></Objs>".to_string(),
        // Entities nested a few levels deep (a "billion laughs" seed).
        format!(r#"<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><s:Envelope {NS}><s:Body><rsp:CommandResponse><rsp:CommandId>&d;&d;&d;&d;&d;&d;&d;&d;</rsp:CommandId></rsp:CommandResponse></s:Body></s:Envelope>"#),
    ]
}

fn soap_holds(xml: &str) -> Result<(), TestCaseError> {
    let (f, sid, cid, rec, cli) = bounded("soap parsers", || {
        (
            soap::fault(xml),
            soap::shell_id(xml),
            soap::command_id(xml),
            soap::received(xml),
            soap::decode_clixml(xml),
        )
    })?;
    if let Some(f) = f {
        prop_assert!(!f.to_string().is_empty());
    }
    for id in [sid, cid].into_iter().flatten() {
        prop_assert!(!id.is_empty() && id.trim() == id);
    }
    if let Ok(r) = rec {
        // Base64 shrinks; entities cannot make streams out of nothing.
        prop_assert!(
            r.stdout.len() + r.stderr.len() <= xml.len(),
            "{} bytes out of {}",
            r.stdout.len() + r.stderr.len(),
            xml.len()
        );
    }
    // Unescaping only shrinks the text (no DTD can precede an inner <Objs>).
    prop_assert!(
        cli.len() <= xml.len(),
        "{} bytes out of {}",
        cli.len(),
        xml.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn soap_parsers_take_any_text(t in junk_text()) {
        soap_holds(&t)?;
    }

    #[test]
    fn soap_parsers_take_mutated_answers(i in 0usize..6, e in edits()) {
        soap_holds(&mutate_text(&soap_samples()[i], &e))?;
    }

    /// Streams come back byte for byte, however the base64 is chunked.
    #[test]
    fn received_streams_round_trip(
        chunks in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)), 0..6),
        exit in any::<u32>(),
    ) {
        use base64::Engine;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let mut body = String::new();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for (to_err, data) in &chunks {
            let name = if *to_err { "stderr" } else { "stdout" };
            body.push_str(&format!(r#"<rsp:Stream Name="{name}" CommandId="1">{}</rsp:Stream>"#, b64(data)));
            if *to_err { err.extend_from_slice(data) } else { out.extend_from_slice(data) }
        }
        let xml = format!(r#"<s:Envelope {NS}><s:Body><rsp:ReceiveResponse>{body}<rsp:CommandState CommandId="1" State="{}"><rsp:ExitCode>{exit}</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse></s:Body></s:Envelope>"#, soap::STATE_DONE);
        let r = soap::received(&xml).unwrap();
        prop_assert_eq!(r.stdout, out);
        prop_assert_eq!(r.stderr, err);
        prop_assert!(r.done);
        prop_assert_eq!(r.exit_code, Some(exit as i32));
    }
}

// ---------------------------------------------------------------------------
// NTLM

const SIGN: &[u8] = b"NTLMSSP\0";
/// KEY_EXCH | SEAL | EXTENDED_SESSIONSECURITY and the usual others.
const SERVER_FLAGS: u32 = 0xe28a_8235;

fn encode_pairs(pairs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, v) in pairs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0; 4]);
    out
}

fn challenge(flags: u32, info: &[u8]) -> Vec<u8> {
    let mut m = SIGN.to_vec();
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 56, 0, 0, 0]);
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&56u32.to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 15]);
    m.extend_from_slice(info);
    m
}

/// AV pairs as a server might send them: names, a timestamp, flags, and
/// sometimes one value big enough to push the target info near 64 KiB.
fn av_list() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    (
        prop::collection::vec((1u16..12, prop::collection::vec(any::<u8>(), 0..40)), 0..6),
        any::<bool>(),
        prop_oneof![3 => Just(0usize), 1 => 60_000usize..65_400],
    )
        .prop_map(|(mut pairs, stamp, big)| {
            if stamp {
                pairs.push((7, 5u64.to_le_bytes().to_vec()));
            }
            if big > 0 {
                let room = 65_535usize.saturating_sub(encode_pairs(&pairs).len() + 4);
                pairs.push((2, vec![b'x'; big.min(room)]));
            }
            pairs
        })
}

/// An AUTHENTICATE message whose six (length, offset) fields all point
/// inside it, one after the other, as MS-NLMP lays them out.
fn authenticate_is_well_formed(m: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(m.len() >= 88 && &m[..8] == SIGN);
    let mut expect = 88usize;
    for i in 0..6 {
        let at = 12 + 8 * i;
        let len = u16::from_le_bytes([m[at], m[at + 1]]) as usize;
        let max = u16::from_le_bytes([m[at + 2], m[at + 3]]) as usize;
        let off = u32::from_le_bytes(m[at + 4..at + 8].try_into().unwrap()) as usize;
        prop_assert_eq!(len, max);
        prop_assert_eq!(
            off,
            expect,
            "field {} starts at {} instead of {}",
            i,
            off,
            expect
        );
        expect = off + len;
    }
    prop_assert_eq!(
        expect,
        m.len(),
        "payload lengths do not add up to the message"
    );
    Ok(())
}

fn authenticate_holds(ch: &[u8]) -> Result<(), TestCaseError> {
    let mut c = Client::new(r"DOM\user", "pw");
    let _ = c.negotiate();
    let r = bounded("Client::authenticate", || c.authenticate(ch, None))?;
    match r {
        Ok(a) => authenticate_is_well_formed(&a.message)?,
        Err(NtlmError::Malformed(_) | NtlmError::Unsupported(_) | NtlmError::TooLong) => {}
        Err(e) => prop_assert!(false, "unexpected error {e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn av_pairs_round_trip(pairs in av_list()) {
        prop_assert_eq!(av_pairs(&encode_pairs(&pairs)).unwrap(), pairs);
    }

    #[test]
    fn av_pairs_take_any_bytes(b in junk()) {
        if let Ok(pairs) = bounded("av_pairs", || av_pairs(&b))? {
            let used: usize = pairs.iter().map(|(_, v)| 4 + v.len()).sum();
            prop_assert!(used + 4 <= b.len());
            prop_assert!(pairs.iter().all(|(id, _)| *id != 0));
        }
    }

    /// A valid CHALLENGE gets a well-formed AUTHENTICATE.
    #[test]
    fn valid_challenges_are_answered(pairs in av_list(), spn in any::<bool>(), cb in any::<bool>()) {
        let mut c = Client::new(r"DOM\user", "pw");
        if spn {
            c = c.with_target_name("HTTP/win1.example.com");
        }
        let _ = c.negotiate();
        let ch = challenge(SERVER_FLAGS, &encode_pairs(&pairs));
        match c.authenticate(&ch, cb.then_some([0xcb; 16])) {
            Ok(a) => authenticate_is_well_formed(&a.message)?,
            // The only refusal allowed: what we would send does not fit.
            Err(NtlmError::TooLong) => {}
            Err(e) => prop_assert!(false, "refused a valid challenge: {e}"),
        }
    }

    #[test]
    fn challenges_take_mutations(pairs in av_list(), flags in any::<u32>(), e in edits()) {
        authenticate_holds(&mutate(challenge(flags | SERVER_FLAGS, &encode_pairs(&pairs)), &e))?;
    }

    #[test]
    fn challenges_take_any_bytes(b in junk(), prefix in any::<bool>()) {
        let mut ch = if prefix { challenge(SERVER_FLAGS, &[])[..12].to_vec() } else { Vec::new() };
        ch.extend_from_slice(&b);
        authenticate_holds(&ch)?;
    }
}
