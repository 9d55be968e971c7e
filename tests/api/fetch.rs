//! fetch and checksum against a real HTTP server that misbehaves on demand.

use std::time::Duration;

use serde_json::json;
use sha2::Digest;

use crate::support::fileserver::{Behaviour, FileServer};
use crate::support::{stage, Backend, TestApp};

struct Fixture {
    _dir: tempfile::TempDir,
    fs: FileServer,
    sha256: String,
}

async fn fixture(size: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(dir.path().join("disk.img"), &content).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&content));
    let sums = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSHA256 (other.img) = {}\nSHA256 (disk.img) = {sha256}\n-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n",
        "0".repeat(64)
    );
    std::fs::write(dir.path().join("CHECKSUM"), sums).unwrap();
    let fs = FileServer::start(dir.path()).await;
    Fixture {
        _dir: dir,
        fs,
        sha256,
    }
}

async fn app(tweak: impl FnOnce(&mut vmscan::config::Config)) -> TestApp {
    TestApp::spawn(Backend::Sqlite, |c| {
        c.pipeline.stages = vec![
            vmscan::domain::StageName::Fetch,
            vmscan::domain::StageName::Checksum,
        ];
        tweak(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_dropped_download_with_a_range_request() {
    let f = fixture(3_000_000).await;
    f.fs.set(Behaviour {
        drop_after: Some(1_000_000),
        ..Default::default()
    });
    let app = app(|_| {}).await;
    let job = app
        .submit(json!({"url": f.fs.url("disk.img"), "checksum": format!("sha256:{}", f.sha256)}))
        .await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(stage(&done, "checksum")["detail"]["verified"], true);
    let fetch = stage(&done, "fetch");
    assert_eq!(fetch["detail"]["size"], 3_000_000);
    assert!(fetch["detail"]["resumed_from"].as_u64().unwrap() > 0);
    let hits = f.fs.hits("disk.img");
    assert_eq!(hits[0], None);
    assert!(
        hits[1].as_deref().unwrap().starts_with("bytes="),
        "{hits:?}"
    );
    let log = app.log_text(job["id"].as_str().unwrap()).await;
    assert!(log.contains("download interrupted after"), "{log}");
    assert!(log.contains("retry 1 of 3"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_url_fails_at_once_with_the_status() {
    let f = fixture(1000).await;
    let app = app(|_| {}).await;
    let job = app.submit(json!({"url": f.fs.url("missing.img")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.starts_with("fetch failed: ") && err.contains("answered 404 Not Found"),
        "{err}"
    );
    assert_eq!(f.fs.hits("missing.img").len(), 1, "4xx is not retried");
    assert_eq!(stage(&done, "checksum")["state"], "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported() {
    let f = fixture(1000).await;
    f.fs.set(Behaviour {
        status: Some(503),
        ..Default::default()
    });
    let app = app(|c| c.pipeline.retry_limit = 2).await;
    let job = app.submit(json!({"url": f.fs.url("disk.img")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["state"], "failed");
    assert!(done["error"]
        .as_str()
        .unwrap()
        .contains("503 Service Unavailable"));
    assert_eq!(f.fs.hits("disk.img").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out() {
    let f = fixture(100_000).await;
    f.fs.set(Behaviour {
        rate: 100,
        ..Default::default()
    });
    let app = app(|c| {
        c.fetch.read_timeout_secs = 1;
        c.pipeline.retry_limit = 0;
    })
    .await;
    let job = app.submit(json!({"url": f.fs.url("disk.img")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("download stalled: no data for 1 s"),
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_names_both_digests() {
    let f = fixture(50_000).await;
    let app = app(|_| {}).await;
    let wrong = "ab".repeat(32);
    let job = app
        .submit(json!({"url": f.fs.url("disk.img"), "checksum": format!("sha256:{wrong}")}))
        .await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    assert_eq!(
        done["error"].as_str().unwrap(),
        format!(
            "checksum failed: checksum mismatch: expected sha256 {wrong}, got {}",
            f.sha256
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_against_a_clearsigned_sums_file() {
    let f = fixture(50_000).await;
    let app = app(|_| {}).await;
    let job = app.submit(json!({"url": f.fs.url("disk.img"), "checksum": format!("file:{}", f.fs.url("CHECKSUM"))})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let c = stage(&done, "checksum");
    assert_eq!(c["detail"]["verified"], true);
    assert_eq!(c["detail"]["expected"], f.sha256.as_str());

    let job = app.submit(json!({"url": f.fs.url("CHECKSUM"), "checksum": format!("file:{}", f.fs.url("CHECKSUM"))})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("has no line for \"CHECKSUM\" (it lists: other.img, disk.img)"),
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_denied_networks_and_paths_outside_the_allowed_roots() {
    let f = fixture(1000).await;
    let app = app(|c| c.fetch.deny_cidrs = vec!["127.0.0.0/8".into()]).await;
    let job = app.submit(json!({"url": f.fs.url("disk.img")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("is not allowed by the network policy (127.0.0.0/8 is denied)"),
        "{err}"
    );
    assert!(f.fs.hits("disk.img").is_empty(), "nothing was sent");
    // A name that resolves to a denied address is refused too.
    let by_name = f.fs.url("disk.img").replace("127.0.0.1", "localhost");
    let job = app.submit(json!({"url": by_name})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("not allowed by the network policy"),
        "{done:#}"
    );

    let job = app.submit(json!({"url": "file:///etc/passwd"})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("must be under one of the allowed roots"),
        "{done:#}"
    );
}
