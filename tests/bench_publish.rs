//! Publish throughput benchmark (issue 5): deploys a big file through the real
//! Artifactory client to a local fake endpoint and prints time, MB/s, the ratio
//! to a plain `curl -T` and the peak RSS of this process.
//!
//! Driven by `scripts/bench-publish.sh`; by hand:
//! `BENCH_PUBLISH_URL=http://127.0.0.1:PORT/artifactory BENCH_PUBLISH_FILE=/tmp/x.img \
//!  cargo test --release --test bench_publish -- --ignored --nocapture`

use std::path::PathBuf;
use std::time::Instant;

use vmscan::artifacts::{self, Checksums, DeployRequest, Properties, STATE_PROPERTY};
use vmscan::config::{ArtifactStoreKind, Config};

/// A field of /proc/self/status in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run through scripts/bench-publish.sh"]
async fn publish_streams_a_big_image() {
    let url = std::env::var("BENCH_PUBLISH_URL").expect("BENCH_PUBLISH_URL");
    let file = PathBuf::from(std::env::var("BENCH_PUBLISH_FILE").expect("BENCH_PUBLISH_FILE"));
    let curl_secs: Option<f64> = std::env::var("BENCH_CURL_SECS")
        .ok()
        .and_then(|s| s.parse().ok());

    let mut cfg = Config::default();
    cfg.publish.store = ArtifactStoreKind::Artifactory;
    cfg.publish.artifactory.url = url;
    cfg.publish.artifactory.repo = "bench-local".into();
    cfg.publish.artifactory.token = Some("bench-token".to_string().into());
    let store = artifacts::from_config(&cfg).expect("artifact store");

    // The publish stage hashes the file before deploying; timed separately.
    let t = Instant::now();
    let (checksums, size): (Checksums, u64) = Checksums::of_file(&file).await.expect("hash");
    let hash_secs = t.elapsed().as_secs_f64();
    let rss_before = status_kib("VmHWM");

    let mut properties = Properties::new();
    properties.insert(STATE_PROPERTY.into(), "current".into());
    properties.insert("vmscan.name".into(), "bench".into());
    let req = DeployRequest {
        path: "bench/vmscan.img".into(),
        file: file.clone(),
        size,
        checksums,
        properties,
        may_link: false,
    };
    let t = Instant::now();
    let deployed = store.deploy(&req).await.expect("deploy");
    let secs = t.elapsed().as_secs_f64();
    assert!(!deployed.reused, "the fake must not know the bytes");

    let mb = size as f64 / 1e6;
    let hwm = status_kib("VmHWM");
    println!(
        "vmscan: hashed {size} bytes in {hash_secs:.2} s ({:.0} MB/s)",
        mb / hash_secs
    );
    println!(
        "vmscan: deployed {} in {secs:.2} s ({:.0} MB/s)",
        deployed.url,
        mb / secs
    );
    println!(
        "vmscan: peak RSS before deploy {}, after {}",
        mib(rss_before),
        mib(hwm)
    );
    println!("BENCH vmscan_secs={secs:.3}");
    println!("BENCH vmscan_mbps={:.1}", mb / secs);
    println!("BENCH vmscan_peak_rss_kib={}", hwm.unwrap_or(0));
    if let Some(c) = curl_secs {
        println!("BENCH ratio={:.3}", c / secs);
    }
}
