//! Watched sources end to end: a source whose image changes between
//! checks, each change scanned exactly once and published as the new
//! current version; conditional requests; a scheduler killed mid-check on
//! one of two replicas.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmscan::domain::StageName;

use crate::support::daemon::Daemon;
use crate::support::source::Source;
use crate::support::{backends, fresh_pg_database, Backend, TestApp};

const WAIT: Duration = Duration::from_secs(60);

async fn app(backend: Backend) -> TestApp {
    TestApp::spawn(backend, |c| {
        c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum, StageName::Publish];
        c.watch.min_interval_secs = 1;
        c.watch.default_interval_secs = 1;
        c.watch.poll_ms = 100;
        c.watch.lease_secs = 3;
    })
    .await
}

async fn watch_of(app: &TestApp, id: &str) -> Value {
    let (s, w) = app.get(&format!("/api/v1/watches/{id}")).await;
    assert_eq!(s, 200, "{w}");
    w
}

/// Waits until the watch has queued `scans` scans and the last of them ended.
async fn wait_scans(app: &TestApp, id: &str, scans: i64) -> Value {
    let start = Instant::now();
    loop {
        let w = watch_of(app, id).await;
        if w["watch"]["scans"].as_i64() == Some(scans) {
            let job = w["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|c| c["job_id"].as_str())
                .expect("a check names its scan")
                .to_string();
            let done = app.wait_final(&job, WAIT).await;
            return json!({"watch": w, "job": done});
        }
        assert!(start.elapsed() < WAIT, "never reached {scans} scans: {w:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outcomes(w: &Value) -> Vec<String> {
    w["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_watch_scans_each_new_image_once_and_publishes_it_as_current() {
    for backend in backends() {
        let src = Source::start().await;
        src.put("rocky-9-9.4.raw", b"rocky 9.4 image bytes");
        src.put("notes.txt", b"not an image");
        let app = app(backend).await;
        let rita = app.person("rita", "Rita", "requester").await;
        let r = rita
            .post(app.url("/api/v1/watches"))
            .json(&json!({
                "url": src.url("images/"),
                "kind": "listing",
                "pattern": "rocky-9-*.raw",
                "checksum": format!("file:{}", src.url("images/SHA256SUMS")),
                "interval": 1,
                "name": "rocky-9",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["owner"], "rita");

        // The first check scans the current image, in rita's name, verified
        // against the SUMS entry, and publishes it.
        let first = wait_scans(&app, &id, 1).await;
        let job = &first["job"];
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(job["requested_by"], "rita");
        assert_eq!(job["watch"], id.as_str());
        let (_, page) = app
            .get_text(&format!("/jobs/{}", job["id"].as_str().unwrap()))
            .await;
        assert!(
            page.contains(&format!("href=\"/watches/{id}\"")),
            "the job page links its watch"
        );
        assert!(
            job["url"]
                .as_str()
                .unwrap()
                .ends_with("/images/rocky-9-9.4.raw"),
            "{job}"
        );
        assert_eq!(
            crate::support::stage(job, "checksum")["detail"]["verified"],
            true
        );

        // Unchanged checks queue nothing.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let w = watch_of(&app, &id).await;
        assert_eq!(w["watch"]["scans"], 1, "{w:#}");
        assert!(
            outcomes(&w).iter().filter(|o| *o == "unchanged").count() >= 2,
            "{w:#}"
        );

        // A newer build appears: exactly one more scan, which becomes current.
        src.put("rocky-9-9.10.raw", b"rocky 9.10 image bytes, patched");
        let second = wait_scans(&app, &id, 2).await;
        assert_eq!(second["job"]["state"], "succeeded", "{:#}", second["job"]);
        assert!(second["job"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/images/rocky-9-9.10.raw"));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let w = watch_of(&app, &id).await;
        assert_eq!(w["watch"]["scans"], 2, "exactly one scan per change: {w:#}");
        assert_eq!(
            outcomes(&w).iter().filter(|o| *o == "changed").count(),
            2,
            "{w:#}"
        );
        let (_, hist) = app.get("/api/v1/images/rocky-9").await;
        let states: Vec<(String, String)> = hist["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(states.len(), 2, "{hist:#}");
        assert_eq!(states[0].1, "current", "{hist:#}");
        assert_eq!(states[1].1, "deprecated", "{hist:#}");
        assert!(
            states[0].0.contains("9.10"),
            "the new build is current: {states:?}"
        );

        // The source breaks: the check says why, and nothing is queued.
        src.remove("rocky-9-9.4.raw");
        src.remove("rocky-9-9.10.raw");
        let start = Instant::now();
        let w = loop {
            let w = watch_of(&app, &id).await;
            if w["watch"]["last_outcome"] == "error" {
                break w;
            }
            assert!(start.elapsed() < WAIT, "{w:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            w["watch"]["last_message"]
                .as_str()
                .unwrap()
                .contains("no file in the listing matches \"rocky-9-*.raw\""),
            "{w:#}"
        );
        assert_eq!(w["watch"]["scans"], 2);

        // The pages show it.
        let (s, page) = app.get_text(&format!("/watches/{id}")).await;
        assert_eq!(s, 200);
        assert!(
            page.contains("rocky-9-*.raw") && page.contains("changed"),
            "{page}"
        );
        let (s, list) = app.get_text("/watches").await;
        assert_eq!(s, 200);
        assert!(list.contains(&id) && list.contains("rita"), "{list}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_watch_asks_with_if_none_match_and_scans_when_the_etag_changes() {
    let src = Source::start().await;
    src.put("disk.raw", b"first build");
    let app = app(Backend::Sqlite).await;
    let (s, w) = app
        .post(
            "/api/v1/watches",
            json!({"url": src.url("images/disk.raw"), "interval": "1s"}),
        )
        .await;
    assert_eq!(s, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    let first = wait_scans(&app, &id, 1).await;
    assert_eq!(first["job"]["state"], "succeeded", "{:#}", first["job"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (asked, not_modified) = src.conditional();
    assert!(
        asked >= 2 && not_modified == asked,
        "{asked} conditional, {not_modified} answered 304"
    );
    assert_eq!(watch_of(&app, &id).await["watch"]["scans"], 1);
    src.put("disk.raw", b"second build");
    let second = wait_scans(&app, &id, 2).await;
    assert_eq!(second["job"]["state"], "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_request_is_checked_field_by_field() {
    let app = app(Backend::Sqlite).await;
    for (body, want) in [
        (json!({}), "url: missing"),
        (json!({"url": "file:///etc/passwd"}), "http:// or https://"),
        (
            json!({"url": "https://h.example/d/", "kind": "listing"}),
            "pattern:",
        ),
        (
            json!({"url": "https://h.example/a.raw", "interval": "soon"}),
            "interval:",
        ),
        (
            json!({"url": "https://h.example/a.raw", "version": "1"}),
            "version:",
        ),
        (
            json!({"url": "https://h.example/a.raw", "cluster": "nope"}),
            "cluster:",
        ),
        (
            json!({"url": "https://h.example/a.raw", "colour": "red"}),
            "unknown field",
        ),
    ] {
        let (s, v) = app.post("/api/v1/watches", body.clone()).await;
        assert!(s == 422 || s == 400, "{body}: {s} {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "{body}: {v}"
        );
    }
    let (_, list) = app.get("/api/v1/watches").await;
    assert_eq!(list["watches"].as_array().unwrap().len(), 0);
    // Someone else's watch: a requester may not delete it.
    let (s, w) = app
        .post("/api/v1/watches", json!({"url": "https://h.example/a.raw"}))
        .await;
    assert_eq!(s, 201, "{w}");
    let bob = app.person("bob", "Bob", "requester").await;
    let r = bob
        .delete(app.url(&format!("/api/v1/watches/{}", w["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    app.stop().await;
}

/// The reliability tests' replica set-up, plus watches checked every second.
fn env_for(db: &str, data: &std::path::Path) -> Vec<(&'static str, String)> {
    let mut env = crate::reliability::env_for(db, data, 3);
    env.extend([
        ("VMSCAN_WATCH__MIN_INTERVAL_SECS", "1".into()),
        ("VMSCAN_WATCH__DEFAULT_INTERVAL_SECS", "1".into()),
        ("VMSCAN_WATCH__POLL_MS", "100".into()),
        ("VMSCAN_WATCH__LEASE_SECS", "3".into()),
    ]);
    env
}

/// Makes a watch as whoever `client` is; its id.
async fn make_watch(client: &reqwest::Client, base: &str, body: Value) -> String {
    let r = client
        .post(format!("{base}/api/v1/watches"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let w: Value = r.json().await.unwrap();
    w["id"].as_str().expect("watch made").to_string()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn wait_watch(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let w = get_json(client, url).await;
        if ok(&w) {
            return w;
        }
        assert!(start.elapsed() < WAIT, "{what}: {w:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_mid_check_neither_loses_nor_duplicates_a_scan() {
    for backend in backends() {
        if backend != Backend::Postgres {
            continue; // Replicas share a PostgreSQL database.
        }
        let tmp = tempfile::tempdir().unwrap();
        let db = fresh_pg_database().await;
        let src = Source::start().await;
        src.put("app-1.raw", b"app build 1");
        let first = Daemon::start(&["serve"], &env_for(&db, &tmp.path().join("a")));
        let client = first.admin_client();
        let base = first.base.clone().unwrap();
        let id = make_watch(
            &client,
            &base,
            json!({"url": src.url("images/"), "kind": "listing", "pattern": "app-*.raw", "interval": 1}),
        )
        .await;
        let url = format!("{base}/api/v1/watches/{id}");
        wait_watch(&client, &url, "first scan", |w| w["watch"]["scans"] == 1).await;

        // A second replica stands by while the first holds the lease.
        let second = Daemon::start(&["serve"], &env_for(&db, &tmp.path().join("b")));
        let base2 = second.base.clone().unwrap();
        let url2 = format!("{base2}/api/v1/watches/{id}");

        // A new build, and the first replica's check of it held open...
        src.hold(true);
        src.put("app-2.raw", b"app build 2");
        let start = Instant::now();
        while src.in_flight() == 0 {
            assert!(start.elapsed() < WAIT, "no check started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...when it is killed.
        drop(first);
        src.hold(false);

        // The other replica takes over once the lease expires and queues
        // the scan of build 2, once.
        let w = wait_watch(&client, &url2, "take-over scan", |w| {
            w["watch"]["scans"] == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let w2 = get_json(&client, &url2).await;
        assert_eq!(
            w2["watch"]["scans"], 2,
            "exactly one scan per change: {w2:#}"
        );
        let jobs: Vec<String> = w2["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["job_id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(jobs.len(), 2, "{w:#}");
        let list = get_json(&client, &format!("{base2}/api/v1/jobs?limit=50")).await;
        let from_watch: Vec<&Value> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| jobs.iter().any(|id| j["id"] == id.as_str()))
            .collect();
        assert_eq!(from_watch.len(), 2);
        let all = list["jobs"].as_array().unwrap().len();
        assert_eq!(all, 2, "no other job was queued: {list:#}");
        assert!(
            from_watch
                .iter()
                .any(|j| j["url"].as_str().unwrap().ends_with("/images/app-2.raw")),
            "{list:#}"
        );
        drop(second);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_owner_s_watch_queues_nothing_until_they_are_enabled() {
    use vmscan::store::auth::UserChange;
    let src = Source::start().await;
    src.put("app-1.raw", b"build 1");
    let app = app(Backend::Sqlite).await;
    let rita = app.person("rita", "Rita", "requester").await;
    let id = make_watch(
        &rita,
        &app.base,
        json!({"url": src.url("images/"), "kind": "listing", "pattern": "app-*.raw", "interval": 1}),
    )
    .await;
    wait_scans(&app, &id, 1).await;
    let change = |disabled| UserChange {
        role: None,
        disabled: Some(disabled),
        password_hash: None,
        email: None,
        display_name: None,
    };
    app.store.update_user("rita", &change(true)).await.unwrap();
    src.put("app-2.raw", b"build 2");
    let start = Instant::now();
    loop {
        let w = watch_of(&app, &id).await;
        if w["watch"]["last_outcome"] == "error" {
            assert_eq!(
                w["watch"]["last_message"],
                "not scanned: the owner rita is disabled"
            );
            assert_eq!(w["watch"]["scans"], 1);
            break;
        }
        assert!(start.elapsed() < WAIT, "{w:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.store.update_user("rita", &change(false)).await.unwrap();
    let done = wait_scans(&app, &id, 2).await;
    assert!(done["job"]["url"].as_str().unwrap().ends_with("app-2.raw"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_watch_follows_the_file_its_latest_names() {
    let src = Source::start().await;
    src.put("app-1.0.raw", b"build 1.0");
    src.put("LATEST", b"# the newest build\napp-1.0.raw\n");
    let app = app(Backend::Sqlite).await;
    let (s, w) = app
        .post(
            "/api/v1/watches",
            json!({"url": src.url("images/LATEST"), "kind": "pointer", "interval": 1, "name": "app"}),
        )
        .await;
    assert_eq!(s, 201, "{w}");
    let id = w["id"].as_str().unwrap().to_string();
    let first = wait_scans(&app, &id, 1).await;
    assert!(first["job"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/images/app-1.0.raw"));
    assert_eq!(first["job"]["state"], "succeeded", "{:#}", first["job"]);
    src.put("app-1.1.raw", b"build 1.1");
    src.put("LATEST", b"app-1.1.raw\n");
    let second = wait_scans(&app, &id, 2).await;
    assert!(second["job"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/images/app-1.1.raw"));
    assert_eq!(second["job"]["state"], "succeeded", "{:#}", second["job"]);
    // Published as the version its file name carries, now current.
    let (_, hist) = app.get("/api/v1/images/app").await;
    assert_eq!(hist["versions"][0]["version"], "1.1", "{hist:#}");
    assert_eq!(hist["versions"][0]["state"], "current");
    app.stop().await;
}
