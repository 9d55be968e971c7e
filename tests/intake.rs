//! Image intake end to end: real images made with qemu-img, packed the way
//! vendors publish them (or the way attackers would), run through the real app.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmscan::domain::StageName;

use serde_json::{json, Value};
use support::fileserver::FileServer;
use support::{stage, Backend, TestApp};

const WAIT: Duration = Duration::from_secs(90);

/// Source images live here; file:// URLs may read it.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Self {
        Images {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self, name: &str) -> String {
        format!("file://{}", self.path(name).display())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    async fn app(&self, tweak: impl FnOnce(&mut vmscan::config::Config)) -> TestApp {
        let root = self.dir.path().to_path_buf();
        TestApp::spawn(Backend::Sqlite, move |cfg| {
            cfg.fetch.allowed_roots = vec![root];
            // Intake only: booting images is tests/e2e_local_vm.rs's job.
            cfg.pipeline.stages = INTAKE.to_vec();
            tweak(cfg);
        })
        .await
    }
}

const INTAKE: [StageName; 5] = [
    StageName::Fetch,
    StageName::Extract,
    StageName::Checksum,
    StageName::Inspect,
    StageName::Convert,
];

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small qcow2 with some data in it (so conversion has something to copy).
fn make_qcow2(path: &Path, size: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size]);
}

/// A raw disk with an MBR boot signature and a little data, mostly holes.
fn make_raw(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all(&mbr).unwrap();
    f.write_all(&[0xab; 1 << 20]).unwrap();
    f.set_len(size).unwrap();
}

fn tar_gz(entries: &[(&str, &Path)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, path) in entries {
        b.append_path_with_name(path, name).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn run(app: &TestApp, body: Value) -> Value {
    let job = app.submit(body).await;
    app.wait_final(job["id"].as_str().unwrap(), WAIT).await
}

fn assert_failed_at(job: &Value, stage_name: &str, needle: &str) -> String {
    assert_eq!(job["state"], "failed", "{job:#}");
    let s = stage(job, stage_name);
    assert_eq!(s["state"], "failed", "{job:#}");
    let err = s["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert!(
        job["error"].as_str().unwrap_or_default().contains(needle),
        "job error should say why: {job:#}"
    );
    err
}

/// Every file under `dir` whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_named(&p, needle));
        } else if p.file_name().unwrap().to_string_lossy().contains(needle) {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_qcow2_in_a_tar_gz_over_http_is_extracted_verified_and_kept_as_is() {
    let images = Images::new();
    let inner = images.path("rocky-9.qcow2");
    make_qcow2(&inner, "256M");
    let sha = sha256_of(&inner);
    images.write(
        "rocky-9.tar.gz",
        &tar_gz(&[
            ("README", &images.write("README", b"hi")),
            ("rocky-9.qcow2", &inner),
        ]),
    );
    // The vendor's SUMS file lists the image inside the archive, not the archive.
    images.write(
        "SHA256SUMS",
        format!("SHA256 (rocky-9.qcow2) = {sha}\n").as_bytes(),
    );
    let server = FileServer::start(images.dir.path()).await;
    let app = images.app(|_| {}).await;

    let job = run(
        &app,
        json!({"url": server.url("rocky-9.tar.gz"), "checksum": format!("file:{}", server.url("SHA256SUMS"))}),
    )
    .await;

    assert_eq!(job["state"], "succeeded", "{job:#}");
    let ex = &stage(&job, "extract")["detail"];
    assert_eq!(ex["container"], "tar.gz");
    assert_eq!(ex["file_name"], "rocky-9.qcow2");
    assert_eq!(ex["skipped"], json!(["README"]));
    let ck = &stage(&job, "checksum")["detail"];
    assert_eq!(ck["verified"], true);
    assert_eq!(ck["verified_target"], "extracted image");
    assert_eq!(ck["actual"], sha);
    let ins = &stage(&job, "inspect")["detail"];
    assert_eq!(ins["format"], "qcow2");
    assert_eq!(ins["virtual_size"], 256u64 << 20);
    let cv = &stage(&job, "convert")["detail"];
    assert_eq!(cv["converted"], false);
    assert_eq!(cv["path"], ex["path"], "no copy when already qcow2");
}

#[tokio::test]
async fn a_raw_xz_image_is_converted_to_qcow2_with_progress() {
    let images = Images::new();
    let raw = images.path("disk.raw");
    make_raw(&raw, 64 << 20);
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&std::fs::read(&raw).unwrap()).unwrap();
        e.finish().unwrap()
    };
    images.write("disk.raw.xz", &xz);
    let app = images.app(|_| {}).await;

    let job = run(&app, json!({"url": images.url("disk.raw.xz")})).await;

    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(stage(&job, "extract")["detail"]["container"], "xz");
    let ins = &stage(&job, "inspect")["detail"];
    assert_eq!(ins["format"], "raw");
    assert_eq!(ins["bootable"], true);
    let cv = &stage(&job, "convert")["detail"];
    assert_eq!(cv["converted"], true);
    // The output is inspected again and its checksum recorded.
    assert_eq!(cv["reinspected"], "accepted");
    assert_eq!(cv["sha256"].as_str().map(str::len), Some(64), "{cv}");
    assert_eq!(cv["format"], "qcow2");
    assert_eq!(cv["progress"], 1.0);
    assert_eq!(cv["virtual_size"], 64u64 << 20);
    let out = PathBuf::from(cv["path"].as_str().unwrap());
    assert!(out.starts_with(&app.data_dir), "{out:?} is in the work dir");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-f", "qcow2", "--output=json"])
        .arg(&out)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
}

#[tokio::test]
async fn a_filer_image_is_copied_once_and_swapping_it_after_inspect_changes_nothing() {
    let images = Images::new();
    let p = images.path("template.qcow2");
    make_qcow2(&p, "1G");
    let original = sha256_of(&p);
    let app = images.app(|_| {}).await;

    let job = run(&app, json!({"url": images.url("template.qcow2")})).await;

    assert_eq!(job["state"], "succeeded", "{job:#}");
    let fetch = &stage(&job, "fetch")["detail"];
    let real = std::fs::canonicalize(&p).unwrap().display().to_string();
    assert_eq!(fetch["copied_from"], real);
    assert_eq!(fetch["sha256"], original.as_str());
    // What inspect saw and what scan/publish will read is the copy in the work dir.
    let used = PathBuf::from(stage(&job, "convert")["detail"]["path"].as_str().unwrap());
    assert!(used.starts_with(&app.data_dir), "{used:?}");
    assert_eq!(
        stage(&job, "extract")["detail"]["path"],
        used.display().to_string()
    );

    // The attacker swaps the file for one with a backing file, then rewrites the
    // swapped-in inode too: the copy the later stages use does not change.
    let evil = images.path("evil.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/shadow",
        "-F",
        "raw",
        evil.to_str().unwrap(),
        "1G",
    ]);
    std::fs::rename(&evil, &p).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert_ne!(sha256_of(&p), original, "the original did change");
    assert_eq!(sha256_of(&used), original, "the copy did not");
}

#[tokio::test]
async fn converts_to_raw_when_the_cluster_wants_raw() {
    let images = Images::new();
    make_qcow2(&images.path("small.qcow2"), "32M");
    let app = images
        .app(|c| c.convert.target_format = vmscan::config::TargetFormat::Raw)
        .await;
    let job = run(&app, json!({"url": images.url("small.qcow2")})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let cv = &stage(&job, "convert")["detail"];
    assert_eq!(cv["format"], "raw");
    assert_eq!(cv["converted"], true);
    let out = PathBuf::from(cv["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(out).unwrap().len(), 32 << 20);
}

#[tokio::test]
async fn rejects_qcow2_with_backing_file() {
    let images = Images::new();
    let p = images.path("evil.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        p.to_str().unwrap(),
        "1G",
    ]);
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("evil.qcow2")})).await;
    assert_failed_at(&job, "inspect", "backing file (\"/etc/passwd\")");
    assert_eq!(stage(&job, "inspect")["detail"]["verdict"], "refused");
}

#[tokio::test]
async fn rejects_qcow2_with_an_external_data_file() {
    let images = Images::new();
    let p = images.path("evil.qcow2");
    let data = images.path("data.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        p.to_str().unwrap(),
        "16M",
    ]);
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("evil.qcow2")})).await;
    assert_failed_at(&job, "inspect", "external data file");
}

#[tokio::test]
async fn rejects_a_vmdk_descriptor_pointing_at_another_file() {
    let images = Images::new();
    images.write(
        "evil.vmdk",
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/shadow\" 0\n",
    );
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("evil.vmdk")})).await;
    assert_failed_at(&job, "inspect", "refers to other files");
}

/// qemu-img's monolithicSparse VMDK with the embedded descriptor's extent line
/// rewritten by `edit` (the descriptor sits at byte 512, NUL-padded).
fn vmdk_with_descriptor(path: &Path, edit: impl Fn(&str) -> String) {
    qemu_img(&["create", "-q", "-f", "vmdk", path.to_str().unwrap(), "16M"]);
    let mut bytes = std::fs::read(path).unwrap();
    let region = &bytes[512..512 + 20 * 512];
    let end = region.iter().position(|b| *b == 0).unwrap();
    let text = String::from_utf8(region[..end].to_vec()).unwrap();
    assert!(text.contains("monolithicSparse"), "{text}");
    let new = edit(&text);
    assert!(new.len() < 20 * 512 && new != text);
    bytes[512..512 + 20 * 512].fill(0);
    bytes[512..512 + new.len()].copy_from_slice(new.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn rejects_a_monolithic_sparse_vmdk_whose_extent_names_another_file() {
    let images = Images::new();
    let good = images.path("good.vmdk");
    vmdk_with_descriptor(&good, |t| t.replace("ddb.", "ddb.comment = \"ok\"\nddb."));
    let evil = images.path("evil.vmdk");
    vmdk_with_descriptor(&evil, |t| {
        let line = t.lines().find(|l| l.starts_with("RW ")).unwrap();
        let (head, _) = line.split_once('"').unwrap();
        t.replace(line, &format!("{head}\"/etc/shadow\""))
    });
    let app = images.app(|_| {}).await;
    // The untouched layout passes, so the refusal below is about the name alone.
    let job = run(&app, json!({"url": images.url("good.vmdk")})).await;
    assert_eq!(stage(&job, "inspect")["state"], "succeeded", "{job:#}");
    let job = run(&app, json!({"url": images.url("evil.vmdk")})).await;
    assert_failed_at(&job, "inspect", "a path in the extent name");
    assert_eq!(stage(&job, "inspect")["detail"]["verdict"], "refused");
}

#[tokio::test]
async fn rejects_zip_slip_and_writes_nothing_outside_the_work_dir() {
    let images = Images::new();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "../../../evil-slip.qcow2",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    w.write_all(b"QFI\xfb\0\0\0\x03").unwrap();
    images.write("slip.zip", &w.finish().unwrap().into_inner());
    let app = images.app(|_| {}).await;

    let job = run(&app, json!({"url": images.url("slip.zip")})).await;

    assert_failed_at(
        &job,
        "extract",
        "hostile archive: entry \"../../../evil-slip.qcow2\" climbs out",
    );
    assert!(files_named(app.data_dir.parent().unwrap(), "evil-slip").is_empty());
}

#[tokio::test]
async fn rejects_a_tar_symlink_escape() {
    let images = Images::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "disk.qcow2", "/etc/passwd").unwrap();
    images.write("link.tar", &b.into_inner().unwrap());
    let app = images.app(|_| {}).await;

    let job = run(&app, json!({"url": images.url("link.tar")})).await;

    assert_failed_at(
        &job,
        "extract",
        "symlink pointing outside the archive (/etc/passwd)",
    );
}

#[tokio::test]
async fn stops_a_gzip_bomb() {
    let images = Images::new();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    images.write("bomb.img.gz", &e.finish().unwrap());
    let app = images.app(|c| c.extract.max_total_bytes = 8 << 20).await;

    let job = run(&app, json!({"url": images.url("bomb.img.gz")})).await;

    assert_failed_at(&job, "extract", "decompression bomb");
    // (fetch's copy of the archive itself stays under download/.)
    let left: Vec<_> = files_named(&app.data_dir, "bomb.img")
        .into_iter()
        .filter(|p| !p.parent().is_some_and(|d| d.ends_with("download")))
        .collect();
    assert!(left.is_empty(), "the partial output is removed: {left:?}");
}

#[tokio::test]
async fn rejects_a_truncated_archive() {
    let images = Images::new();
    let inner = images.path("t.qcow2");
    make_qcow2(&inner, "64M");
    let full = tar_gz(&[("t.qcow2", &inner)]);
    images.write("t.tar.gz", &full[..full.len() / 2]);
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("t.tar.gz")})).await;
    assert_failed_at(&job, "extract", "damaged or truncated");
}

#[tokio::test]
async fn reports_a_checksum_mismatch_with_both_values() {
    let images = Images::new();
    let inner = images.path("c.qcow2");
    make_qcow2(&inner, "16M");
    images.write("c.tar.gz", &tar_gz(&[("c.qcow2", &inner)]));
    let wrong = "0".repeat(64);
    images.write("SUMS", format!("{wrong}  c.qcow2\n").as_bytes());
    let app = images.app(|_| {}).await;
    let job = run(
        &app,
        json!({"url": images.url("c.tar.gz"), "checksum": format!("file:{}", images.url("SUMS"))}),
    )
    .await;
    let err = assert_failed_at(&job, "checksum", "checksum mismatch: expected sha256 0000");
    assert!(err.contains(&sha256_of(&inner)), "{err}");
}

#[tokio::test]
async fn refuses_an_archive_with_several_images_listing_them() {
    let images = Images::new();
    let a = images.path("a.qcow2");
    let b = images.path("b.qcow2");
    make_qcow2(&a, "16M");
    make_qcow2(&b, "16M");
    images.write("two.tar.gz", &tar_gz(&[("a.qcow2", &a), ("b.qcow2", &b)]));
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("two.tar.gz")})).await;
    let err = assert_failed_at(&job, "extract", "several disk images");
    assert!(err.contains("a.qcow2") && err.contains("b.qcow2"), "{err}");
}

/// Throughput numbers for the closing note:
/// `cargo test --release --test intake measures -- --ignored --nocapture`.
/// 1 GiB raw: 256 MiB of incompressible data, the rest zeros, as a dense tar.gz.
#[tokio::test]
#[ignore = "benchmark: builds a 1 GiB image"]
async fn measures_a_1gib_raw_image_in_a_tar_gz() {
    let images = Images::new();
    let started = std::time::Instant::now();
    let gz = std::fs::File::create(images.path("big.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(1 << 30);
    h.set_mode(0o644);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise = std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()
    })
    .flatten()
    .take(256 << 20)
    .collect::<Vec<u8>>();
    let data = std::io::Read::chain(
        &noise[..],
        std::io::Read::take(std::io::repeat(0), 768 << 20),
    );
    b.append_data(&mut h, "big.raw", data).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let size = std::fs::metadata(images.path("big.tar.gz")).unwrap().len();
    eprintln!(
        "packed: {size} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let app = images.app(|_| {}).await;
    let started = std::time::Instant::now();
    let job = run(&app, json!({"url": images.url("big.tar.gz")})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    for s in job["stages"].as_array().unwrap() {
        eprintln!(
            "{}: {} ms, detail {}",
            s["name"], s["duration_ms"], s["detail"]
        );
    }
    eprintln!("whole job: {:.1} s", started.elapsed().as_secs_f64());
}

/// qemu-img convert runs under an address-space limit, like info: with too
/// little, the conversion fails at convert (and says qemu-img failed)
/// instead of running unbounded.
#[tokio::test]
async fn qemu_img_convert_runs_under_its_memory_limit() {
    let images = Images::new();
    make_raw(&images.path("disk.raw"), 8 << 20);
    let app = images
        .app(|c| c.convert.qemu_memory_bytes = 8 * 1024 * 1024)
        .await;
    let job = run(&app, json!({"url": images.url("disk.raw")})).await;
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(stage(&job, "inspect")["state"], "succeeded");
    let cv = stage(&job, "convert");
    assert_eq!(cv["state"], "failed", "{cv:#}");
    // With the default limit the same image converts.
    let app = images.app(|_| {}).await;
    let job = run(&app, json!({"url": images.url("disk.raw")})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
}
