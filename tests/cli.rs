//! The `vmscan` binary run as an admin would: `vmscan inspect FILE [--json]`
//! on images built here with qemu-img (no database, no config file), and
//! `vmscan watch …` on a fresh SQLite database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let mut all = vec!["create", "-q"];
    all.extend_from_slice(args);
    let (size, opts) = all.split_last().expect("a size");
    let mut opts = opts.to_vec();
    opts.push(p.to_str().expect("utf-8 path"));
    opts.push(size);
    qemu_img(&opts);
    p
}

fn vmscan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmscan"))
        .args(args)
        .env_remove("VMSCAN_CONFIG")
        .env("VMSCAN_LOG", "warn")
        .output()
        .expect("vmscan runs")
}

/// Runs `vmscan inspect FILE` and `vmscan inspect FILE --json`; returns the
/// text, the parsed JSON and both exit codes.
fn inspect(p: &Path) -> (String, serde_json::Value, i32, i32) {
    let p = p.to_str().expect("utf-8 path");
    let text = vmscan(&["inspect", p]);
    let json = vmscan(&["inspect", p, "--json"]);
    let stdout = String::from_utf8(text.stdout).expect("utf-8 output");
    let value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&json.stdout),
            String::from_utf8_lossy(&json.stderr)
        )
    });
    (
        stdout,
        value,
        text.status.code().expect("exit code"),
        json.status.code().expect("exit code"),
    )
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
        .trim()
}

#[test]
fn inspect_accepts_a_plain_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    // The name lies on purpose: the header decides.
    let p = image(dir.path(), "disk.raw", &["-f", "qcow2", "64M"]);
    let (text, json, code, json_code) = inspect(&p);
    assert_eq!(code, 0, "{text}");
    assert_eq!(json_code, 0, "{json}");
    assert_eq!(line(&text, "format"), "qcow2", "{text}");
    assert_eq!(
        line(&text, "virtual size"),
        "64.0 MiB (67108864 bytes)",
        "{text}"
    );
    assert!(line(&text, "actual size").ends_with(" bytes)"), "{text}");
    assert_eq!(line(&text, "verdict"), "accepted", "{text}");
    assert_eq!(json["format"], "qcow2", "{json}");
    assert_eq!(json["virtual_size"], 64u64 << 20, "{json}");
    assert!(
        json["actual_size"].as_u64().is_some_and(|n| n > 0),
        "{json}"
    );
    assert_eq!(json["verdict"], "accepted", "{json}");
    assert!(json["reason"].is_null(), "{json}");
}

#[test]
fn inspect_accepts_a_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), "disk.qcow2", &["-f", "raw", "32M"]);
    let (text, json, code, json_code) = inspect(&p);
    assert_eq!(code, 0, "{text}");
    assert_eq!(json_code, 0, "{json}");
    assert_eq!(line(&text, "format"), "raw", "{text}");
    assert_eq!(
        line(&text, "virtual size"),
        "32.0 MiB (33554432 bytes)",
        "{text}"
    );
    assert_eq!(line(&text, "bootable"), "no", "{text}");
    assert_eq!(line(&text, "verdict"), "accepted", "{text}");
    assert_eq!(json["format"], "raw", "{json}");
    assert_eq!(json["virtual_size"], 32u64 << 20, "{json}");
    assert_eq!(json["file_size"], 32u64 << 20, "{json}");
    assert_eq!(json["bootable"], false, "{json}");
    assert_eq!(json["verdict"], "accepted", "{json}");
    assert_eq!(
        line(&text, "guest OS"),
        "unknown (no partition table, and no filesystem vmscan knows on the whole disk)",
        "{text}"
    );
    assert_eq!(json["guest_os"], "unknown", "{json}");
}

#[test]
fn inspect_names_the_guest_os_its_partitions_show() {
    let dir = tempfile::tempdir().unwrap();
    // MBR, one Linux partition from sector 2048 holding an ext4 superblock.
    let mut d = vec![0u8; 8 << 20];
    d[446 + 4] = 0x83;
    d[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&8192u32.to_le_bytes());
    d[510..512].copy_from_slice(&[0x55, 0xaa]);
    d[2048 * 512 + 1080..2048 * 512 + 1082].copy_from_slice(&[0x53, 0xef]);
    let p = dir.path().join("linux.img");
    std::fs::write(&p, d).unwrap();
    let (text, json, code, _) = inspect(&p);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        line(&text, "guest OS"),
        "linux (partition 1 (mbr 0x83, 4.0 MiB) holds ext2/3/4)",
        "{text}"
    );
    assert_eq!(json["guest_os"], "linux", "{json}");
}

#[test]
fn inspect_refuses_a_qcow2_backed_by_etc_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(
        dir.path(),
        "evil.qcow2",
        &["-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", "1G"],
    );
    let (text, json, code, json_code) = inspect(&p);
    assert_eq!(code, 1, "{text}");
    assert_eq!(json_code, 1, "{json}");
    assert_eq!(line(&text, "format"), "qcow2", "{text}");
    assert_eq!(
        line(&text, "virtual size"),
        "1.0 GiB (1073741824 bytes)",
        "{text}"
    );
    assert_eq!(
        line(&text, "verdict"),
        "refused: qcow2 image has a backing file (\"/etc/passwd\"); only standalone images are accepted",
        "{text}"
    );
    assert_eq!(json["format"], "qcow2", "{json}");
    assert_eq!(json["virtual_size"], 1u64 << 30, "{json}");
    assert_eq!(json["verdict"], "refused", "{json}");
    let reason = json["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("backing file (\"/etc/passwd\")"),
        "{reason}"
    );
}

#[test]
fn inspect_exits_2_when_the_file_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.qcow2");
    let out = vmscan(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.qcow2"),
        "{err}"
    );
}

fn vmscan_on(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmscan"))
        .args(args)
        .env_remove("VMSCAN_CONFIG")
        .env("VMSCAN_STORAGE__DATA_DIR", data)
        .env("VMSCAN_LOG", "warn")
        .env("USER", "sam")
        .env_remove("SUDO_USER")
        .output()
        .expect("vmscan runs")
}

#[test]
fn watch_add_list_show_pause_and_rm_work_on_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = vmscan_on(
        &data,
        &[
            "watch",
            "add",
            "https://images.example.com/rocky/",
            "--kind",
            "listing",
            "--pattern",
            "Rocky-9-*.qcow2",
            "--checksum",
            "file:https://images.example.com/rocky/SHA256SUMS",
            "--every",
            "6h",
            "--name",
            "rocky-9",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 36, "prints the watch id: {id}");

    let list = vmscan_on(&data, &["watch", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&id) && text.contains("listing"), "{text}");

    let show = vmscan_on(&data, &["watch", "show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("every    21600 s") && text.contains("shell:sam"),
        "{text}"
    );

    assert!(vmscan_on(&data, &["watch", "pause", &id]).status.success());
    let text = String::from_utf8_lossy(&vmscan_on(&data, &["watch", "list"]).stdout).to_string();
    assert!(text.contains("paused"), "{text}");

    // Bad input says which field is wrong, and nothing is made.
    let bad = vmscan_on(
        &data,
        &["watch", "add", "https://h.example/a.raw", "--every", "10s"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("interval: 10 s is shorter"), "{err}");

    assert!(vmscan_on(&data, &["watch", "rm", &id]).status.success());
    let gone = vmscan_on(&data, &["watch", "show", &id]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
}
