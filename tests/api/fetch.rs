//! fetch and checksum against a real HTTP server that misbehaves on demand.

use std::time::Duration;

use serde_json::json;
use sha2::Digest;

use crate::support::fileserver::{Behaviour, FileServer};
use crate::support::trap::Trap;
use crate::support::{stage, Backend, TestApp};
use vmscan::config::FetchConfig;

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

/// Submits each URL (optionally with a checksum) and expects the stage to fail
/// on the network policy; returns nothing, panics with the job otherwise.
async fn expect_denied(app: &TestApp, url: &str, checksum: Option<&str>, stage_name: &str) {
    let mut body = json!({ "url": url });
    if let Some(c) = checksum {
        body["checksum"] = json!(c);
    }
    let job = app.submit(body).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(done["state"], "failed", "{url}: {done:#}");
    assert_eq!(
        stage(&done, stage_name)["state"],
        "failed",
        "{url}: {done:#}"
    );
    let err = done["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("is not allowed by the network policy"),
        "{url}: expected a policy refusal, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_every_disguise_of_loopback_and_never_connects() {
    let v4 = Trap::bind("127.0.0.1", 0).await.expect("bind 127.0.0.1");
    let p = v4.port();
    let v6 = Trap::bind("::1", 0).await;
    // The default deny list (loopback), not the suite's re-allowed one.
    let app = app(|c| c.fetch.deny_cidrs = FetchConfig::default().deny_cidrs).await;
    let mut urls = vec![
        format!("http://127.0.0.1:{p}/disk.img"),
        format!("http://2130706433:{p}/disk.img"),
        format!("http://0x7f.1:{p}/disk.img"),
        format!("http://017700000001:{p}/disk.img"),
        format!("http://0x7f000001:{p}/disk.img"),
        format!("http://127.1:{p}/disk.img"),
        format!("http://[::ffff:127.0.0.1]:{p}/disk.img"),
        format!("http://[::ffff:7f00:1]:{p}/disk.img"),
        format!("http://[::127.0.0.1]:{p}/disk.img"),
        format!("http://[64:ff9b::7f00:1]:{p}/disk.img"),
        format!("http://[2002:7f00:1::]:{p}/disk.img"),
        // A name that resolves to loopback.
        format!("http://localhost:{p}/disk.img"),
    ];
    if let Some(t) = &v6 {
        urls.push(format!("http://[::1]:{}/disk.img", t.port()));
        urls.push(format!("http://localhost:{}/disk.img", t.port()));
    }
    for url in &urls {
        expect_denied(&app, url, None, "fetch").await;
    }
    assert_eq!(v4.connections(), 0, "a denied URL reached 127.0.0.1");
    if let Some(t) = &v6 {
        assert_eq!(t.connections(), 0, "a denied URL reached [::1]");
    }
    // The trap does count: one connection of our own shows up.
    drop(tokio::net::TcpStream::connect(v4.addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(v4.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_unspecified_addresses_stay_denied_whatever_allow_cidrs_says() {
    let f = fixture(1000).await;
    let trap = Trap::bind("127.0.0.1", 0).await.expect("bind 127.0.0.1");
    let p = trap.port();
    let trap6 = Trap::bind("::1", 0).await;
    // Loopback re-allowed (as the suite does) and everything allowed on top.
    let app = app(|c| c.fetch.allow_cidrs = vec!["0.0.0.0/0".into(), "::/0".into()]).await;
    // 0.0.0.0 and :: connect to this machine: the traps would see it.
    let mut urls = vec![
        format!("http://0.0.0.0:{p}/disk.img"),
        format!("http://0:{p}/disk.img"),
        format!("http://[::ffff:0.0.0.0]:{p}/disk.img"),
        "http://169.254.169.254/latest/meta-data/x".to_string(),
        "http://2852039166/latest/meta-data/x".to_string(),
        "http://[::ffff:169.254.169.254]/latest/meta-data/x".to_string(),
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/x".to_string(),
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/x".to_string(),
        "http://[2002:a9fe:a9fe::]/latest/meta-data/x".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/x".to_string(),
        "http://168.63.129.16/machine/disk.img".to_string(),
        "http://100.100.100.200/latest/meta-data/disk.img".to_string(),
        "http://224.0.0.1/disk.img".to_string(),
        "http://255.255.255.255/disk.img".to_string(),
    ];
    if let Some(t) = &trap6 {
        urls.push(format!("http://[::]:{}/disk.img", t.port()));
    }
    for url in &urls {
        expect_denied(&app, url, None, "fetch").await;
    }
    // A redirect hop is checked before anything is sent to it.
    f.fs.redirect("meta.img", "http://169.254.169.254/latest/meta-data/iam/");
    f.fs.redirect("zero.img", &format!("http://0.0.0.0:{p}/disk.img"));
    f.fs.redirect("mapped.img", &format!("http://[::ffff:0:0]:{p}/disk.img"));
    for path in ["meta.img", "zero.img", "mapped.img"] {
        expect_denied(&app, &f.fs.url(path), None, "fetch").await;
        assert_eq!(f.fs.hits(path).len(), 1, "the first hop is allowed");
    }
    assert_eq!(trap.connections(), 0, "a denied URL reached this machine");
    if let Some(t) = &trap6 {
        assert_eq!(t.connections(), 0, "a denied URL reached [::]");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sums_url_and_its_redirects_meet_the_same_policy() {
    let f = fixture(1000).await;
    // 127.0.0.2 is loopback too, so it is reachable here without setup.
    let trap = Trap::bind("127.0.0.2", 0).await.expect("bind 127.0.0.2");
    let sums = format!("http://127.0.0.2:{}/SHA256SUMS", trap.port());
    let app = app(|c| c.fetch.deny_cidrs = vec!["127.0.0.2/32".into()]).await;
    expect_denied(
        &app,
        &f.fs.url("disk.img"),
        Some(&format!("file:{sums}")),
        "checksum",
    )
    .await;
    f.fs.redirect("SUMS-moved", &sums);
    let moved = format!("file:{}", f.fs.url("SUMS-moved"));
    expect_denied(&app, &f.fs.url("disk.img"), Some(&moved), "checksum").await;
    // The image itself was fetched each time: only the SUMS hop was refused.
    assert_eq!(f.fs.hits("disk.img").len(), 2);
    assert_eq!(f.fs.hits("SUMS-moved").len(), 1);
    assert_eq!(
        trap.connections(),
        0,
        "the SUMS URL reached a denied address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_never_shows_its_secrets() {
    let f = fixture(1000).await;
    let app = app(|_| {}).await;
    let url =
        f.fs.url("missing.img?X-Amz-Signature=SIGSECRET&token=TOKSECRET&v=1")
            .replace("http://", "http://bob:PWSECRET@");
    let sums = f.fs.url("CHECKSUM?sig=SASSECRET");
    let job = app
        .submit(json!({"url": url, "checksum": format!("file:{sums}")}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(f.fs.hits("missing.img").len(), 1, "the real URL was used");
    let shown = [
        job.to_string(),
        done.to_string(),
        app.log_text(id).await,
        app.get_text(&format!("/jobs/{id}")).await.1,
        app.get_text("/").await.1,
        app.get("/api/v1/jobs").await.1.to_string(),
    ];
    for (i, text) in shown.iter().enumerate() {
        for secret in ["SIGSECRET", "TOKSECRET", "PWSECRET", "SASSECRET"] {
            assert!(!text.contains(secret), "view {i} shows {secret}: {text}");
        }
    }
    assert!(
        done["url"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Signature=***"),
        "{done:#}"
    );
}

/// An image that cannot fit is refused from its announced size, before the
/// download, with the numbers, instead of filling the disk half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_larger_than_the_free_disk_is_refused_before_downloading() {
    let dir = tempfile::tempdir().unwrap();
    // 4 TiB apparent, nothing allocated: more than this machine's disk.
    let f = std::fs::File::create(dir.path().join("huge.raw")).unwrap();
    f.set_len(4 << 40).unwrap();
    let fs = FileServer::start(dir.path()).await;
    let app = app(|c| c.fetch.max_bytes = 8 << 40).await;
    let job = app.submit(json!({"url": fs.url("huge.raw")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("not enough free disk for this image: it is 4.0 TiB"),
        "{err}"
    );
    let part = app.data_dir.join("jobs").join(done["id"].as_str().unwrap());
    assert!(crate_size(&part) < 1 << 20, "nothing was downloaded");
}

fn crate_size(dir: &std::path::Path) -> u64 {
    walk(dir)
}

fn walk(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// A source that drip-feeds below `fetch.min_bytes_per_sec` is dropped (and
/// resumed later) instead of holding the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drip_feeding_source_is_dropped_below_the_minimum_rate() {
    let f = fixture(2_000_000).await;
    f.fs.set(Behaviour {
        rate: 40_000,
        ..Default::default()
    });
    let app = app(|c| {
        c.fetch.min_bytes_per_sec = 200_000;
        c.fetch.slow_window_secs = 1;
        c.pipeline.retry_limit = 0;
    })
    .await;
    let job = app.submit(json!({"url": f.fs.url("disk.img")})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("download too slow") && err.contains("fetch.min_bytes_per_sec"),
        "{err}"
    );
}
