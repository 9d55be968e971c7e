//! One sentence per stage in the words people use ("downloaded 2.1 GiB in
//! 38 s (56 MiB/s)", "qcow2, 20.0 GiB virtual, 1.9 GiB on disk"), from the
//! detail each stage records. Internal paths stay out of it: they are in
//! the stage's details toggle and the JSON.

use serde_json::Value;

use crate::domain::{fmt_bytes, fmt_duration_ms, StageName};

fn s<'a>(d: &'a Value, k: &str) -> Option<&'a str> {
    d.get(k).and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn n(d: &Value, k: &str) -> Option<u64> {
    d.get(k).and_then(Value::as_u64)
}

fn secs(d: &Value, k: &str) -> Option<String> {
    d.get(k)
        .and_then(Value::as_f64)
        .map(|v| fmt_duration_ms((v * 1000.0) as i64))
}

fn bytes(d: &Value, k: &str) -> Option<String> {
    n(d, k).map(fmt_bytes)
}

/// The sentence for a stage run, or None when its detail says too little
/// (a stage still starting, or one this function does not know).
pub fn sentence(
    stage: &str,
    d: &Value,
    duration_ms: Option<i64>,
    finished: bool,
) -> Option<String> {
    let stage: StageName = stage.parse().ok()?;
    let took = duration_ms.map(fmt_duration_ms);
    match stage {
        StageName::Fetch => {
            let size = n(d, "size").or_else(|| n(d, "bytes"))?;
            let mut out = if finished {
                let mut t = format!("downloaded {}", fmt_bytes(size));
                if let Some(ms) = duration_ms.filter(|ms| *ms > 0) {
                    let rate = (size as f64 / (ms as f64 / 1000.0)) as u64;
                    t.push_str(&format!(
                        " in {} ({}/s)",
                        fmt_duration_ms(ms),
                        fmt_bytes(rate)
                    ));
                }
                t
            } else {
                let total = bytes(d, "total_bytes")
                    .map(|t| format!(" of {t}"))
                    .unwrap_or_default();
                let rate = n(d, "rate_bps")
                    .filter(|r| *r > 0)
                    .map(|r| format!(" at {}/s", fmt_bytes(r)))
                    .unwrap_or_default();
                format!("downloading: {}{total}{rate}", fmt_bytes(size))
            };
            if let Some(f) = s(d, "file_name") {
                out.push_str(&format!(", {f}"));
            }
            if let Some(r) = n(d, "resumed_from").filter(|r| *r > 0) {
                out.push_str(&format!(" (resumed after {})", fmt_bytes(r)));
            }
            Some(out)
        }
        StageName::Extract => match d.get("extracted").and_then(Value::as_bool)? {
            true => Some(format!(
                "unpacked {} from the {} archive",
                s(d, "file_name").unwrap_or("the disk"),
                s(d, "container").unwrap_or("source")
            )),
            false => Some(format!(
                "not an archive: {} is used as it is",
                s(d, "file_name").unwrap_or("the download")
            )),
        },
        StageName::Checksum => match d.get("verified").and_then(Value::as_bool)? {
            true => Some(format!(
                "{} verified against {}{}",
                s(d, "algorithm").unwrap_or("checksum"),
                s(d, "source").unwrap_or("the given checksum"),
                s(d, "verified_target")
                    .map(|t| format!(" (the {t})"))
                    .unwrap_or_default()
            )),
            false => Some(format!(
                "NOT verified: no checksum was given{}",
                s(d, "sha256")
                    .map(|h| format!("; sha256 of the download is {h}"))
                    .unwrap_or_default()
            )),
        },
        StageName::Inspect => {
            if s(d, "verdict") == Some("refused") {
                return Some(format!(
                    "refused: {}",
                    s(d, "reason").unwrap_or("not a usable disk image")
                ));
            }
            let g = d.get("guest_os")?;
            if let Some(e) = s(g, "error") {
                return Some(format!("guest OS not recognised: {e}"));
            }
            Some(format!(
                "guest OS {}{}",
                s(g, "family").unwrap_or("unknown"),
                s(g, "evidence")
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ))
        }
        StageName::Convert => {
            if let Some(why) = s(d, "skipped") {
                return Some(format!("{}: {why}", s(d, "format").unwrap_or("image")));
            }
            let format = s(d, "format")?;
            let mut out = format.to_string();
            if let Some(v) = bytes(d, "virtual_size") {
                out.push_str(&format!(", {v} virtual"));
            }
            if let Some(f) = bytes(d, "file_size").or_else(|| bytes(d, "actual_size")) {
                out.push_str(&format!(", {f} on disk"));
            }
            if let Some(src) = s(d, "source_format").filter(|f| *f != format) {
                out.push_str(&format!(", converted from {src}"));
            }
            if d.get("resized").and_then(Value::as_bool) == Some(true) {
                if let Some(from) = bytes(d, "source_virtual_size") {
                    out.push_str(&format!(", grown from {from}"));
                }
            }
            if let Some(t) = secs(d, "secs").filter(|_| finished) {
                out.push_str(&format!(" in {t}"));
            }
            Some(out)
        }
        StageName::ClusterUpload => {
            let cluster = s(d, "cluster").unwrap_or("the cluster");
            let endpoint = s(d, "endpoint")
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            let image = d
                .get("image")
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str)
                .or_else(|| s(d, "name"));
            let size = bytes(d, "size").or_else(|| bytes(d, "bytes"));
            match (finished, image) {
                (true, Some(name)) => Some(format!(
                    "uploaded {}to {cluster}{endpoint} as image {name}{}",
                    size.map(|s| format!("{s} ")).unwrap_or_default(),
                    took.map(|t| format!(" in {t}")).unwrap_or_default()
                )),
                _ => Some(format!(
                    "uploading to {cluster}{endpoint}{}",
                    bytes(d, "bytes")
                        .map(|b| format!(": {b} sent"))
                        .unwrap_or_default()
                )),
            }
        }
        StageName::VmCreate => {
            let name = s(d, "vm_name").or_else(|| s(d, "name"))?;
            let host = s(d, "ssh_host").or_else(|| s(d, "winrm_host"));
            let mut out = format!("VM {name}");
            if let Some(h) = host {
                out.push_str(&format!(" at {h}"));
            }
            if let Some(b) = secs(d, "ready_secs") {
                out.push_str(&format!(", booted in {b}"));
            }
            if let Some(os) = s(d, "os") {
                out.push_str(&format!(", {os}"));
            }
            Some(out)
        }
        StageName::AgentInstall => {
            let package = s(d, "package").or_else(|| s(d, "installer"))?;
            let mut out = format!("installed {package}");
            if let Some(list) = d.get("services").and_then(Value::as_array) {
                let names: Vec<String> =
                    list.iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s.clone()),
                            Value::Object(o) => o.get("name").and_then(Value::as_str).map(|n| {
                                match o.get("state").and_then(Value::as_str) {
                                    Some(st) => format!("{n} {st}"),
                                    None => n.to_string(),
                                }
                            }),
                            _ => None,
                        })
                        .collect();
                if !names.is_empty() {
                    out.push_str(&format!("; services: {}", names.join(", ")));
                }
            }
            Some(out)
        }
        StageName::LogCheck => {
            let excerpts = d.get("excerpts").and_then(Value::as_array).map(Vec::len);
            let found = d.get("files_found").and_then(Value::as_array).map(Vec::len);
            match (found, excerpts) {
                (None, None) => None,
                (f, e) => Some(format!(
                    "{} log file(s) read, {} line(s) proving the agent ran",
                    f.unwrap_or(0),
                    e.unwrap_or(0)
                )),
            }
        }
        StageName::ReportCheck => {
            let system = s(d, "system").unwrap_or("the inventory");
            match d.get("found").and_then(Value::as_bool)? {
                true => Some(format!(
                    "found in {system}{}",
                    s(d, "hostname")
                        .map(|h| format!(" as {h}"))
                        .unwrap_or_default()
                )),
                false => Some(format!(
                    "not in {system} yet{}",
                    s(d, "next_check")
                        .map(|t| format!("; next check at {t}"))
                        .unwrap_or_default()
                )),
            }
        }
        StageName::Teardown => {
            let vms = n(d, "vms_deleted");
            let images = n(d, "images_deleted");
            if vms.is_none() && images.is_none() {
                return s(d, "kept_until").map(|t| format!("kept for debugging until {t}"));
            }
            Some(format!(
                "deleted {} VM(s) and {} image(s){}",
                vms.unwrap_or(0),
                images.unwrap_or(0),
                s(d, "cluster")
                    .map(|c| format!(" on {c}"))
                    .unwrap_or_default()
            ))
        }
        StageName::Publish => {
            let name = s(d, "name")?;
            let version = s(d, "version").unwrap_or("?");
            let mut out = format!(
                "{} {name} {version} to {}{}",
                if finished { "published" } else { "publishing" },
                s(d, "store").unwrap_or("the artifact store"),
                s(d, "repo").map(|r| format!(" {r}")).unwrap_or_default()
            );
            if d.get("reused").and_then(Value::as_bool) == Some(true) {
                out.push_str(" (the same bytes were there already)");
            }
            Some(out)
        }
        StageName::Notify => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fetch_says_size_time_and_rate() {
        let d = json!({"size": 2_254_857_830u64, "file_name": "debian-12.raw"});
        assert_eq!(
            sentence("fetch", &d, Some(38_000), true).unwrap(),
            "downloaded 2.1 GiB in 38.0 s (56.6 MiB/s), debian-12.raw"
        );
    }

    #[test]
    fn convert_and_checksum_read_like_a_person_wrote_them() {
        let d = json!({"format": "qcow2", "virtual_size": 21_474_836_480u64, "file_size": 2_040_109_465u64, "source_format": "raw", "secs": 4.2});
        assert_eq!(
            sentence("convert", &d, Some(4200), true).unwrap(),
            "qcow2, 20.0 GiB virtual, 1.9 GiB on disk, converted from raw in 4.2 s"
        );
        let c = json!({"verified": true, "algorithm": "sha256", "source": "https://x/SHA256SUMS"});
        assert_eq!(
            sentence("checksum", &c, None, true).unwrap(),
            "sha256 verified against https://x/SHA256SUMS"
        );
        assert!(
            sentence("checksum", &json!({"verified": false}), None, true)
                .unwrap()
                .starts_with("NOT verified")
        );
    }

    #[test]
    fn unknown_or_empty_details_say_nothing() {
        assert_eq!(sentence("fetch", &json!({}), None, false), None);
        assert_eq!(
            sentence("no-such-stage", &json!({"size": 1}), None, true),
            None
        );
    }
}
