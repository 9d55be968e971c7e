//! The JSON API and pages, driven over HTTP like a user or a tool would.

use std::time::Duration;

use serde_json::json;

use vmscan::domain::StageName;

use crate::support::{backends, stage, TestApp};

fn image_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, vec![7u8; 300_000]).unwrap();
    let url = format!("file://{}", path.display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_a_url_and_sees_the_job_finish() {
    for backend in backends() {
        let (dir, url) = image_dir();
        let root = dir.path().to_path_buf();
        let app = TestApp::spawn(backend, |c| {
            c.fetch.allowed_roots = vec![root];
            c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
        })
        .await;
        let job = app
            .submit(json!({"url": url, "email": "ann@example.com", "note": "nightly"}))
            .await;
        let id = job["id"].as_str().unwrap();
        assert_eq!(job["state"], "queued");
        // The requester is the login (the suite's admin token); ann is told too.
        assert_eq!(job["requested_by"], "admin");
        assert_eq!(job["options"]["also_notify"][0], "ann@example.com");
        assert_eq!(job["stages"].as_array().unwrap().len(), 2);
        let done = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let fetch = stage(&done, "fetch");
        assert_eq!(fetch["state"], "succeeded");
        assert_eq!(fetch["detail"]["size"], 300_000);
        // A file:// image is copied once, so a later swap of the original cannot reach the scan.
        assert_eq!(fetch["detail"]["in_place"], false);
        let check = stage(&done, "checksum");
        assert_eq!(check["detail"]["verified"], false);
        assert!(app.log_text(id).await.contains("NOT verified"));

        // It shows in the list, the filters and the pages.
        let (_, list) = app.get("/api/v1/jobs?state=succeeded").await;
        assert_eq!(list["jobs"][0]["id"], id);
        let (_, mine) = app.get("/api/v1/jobs?requested_by=admin").await;
        assert_eq!(mine["jobs"].as_array().unwrap().len(), 1);
        let (_, none) = app.get("/api/v1/jobs?requested_by=bob@example.com").await;
        assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
        let (status, page) = app.get_text(&format!("/jobs/{id}")).await;
        assert_eq!(status, 200);
        assert!(
            page.contains("checksum") && page.contains("succeeded") && page.contains("nightly")
        );
        let (status, index) = app.get_text("/").await;
        assert_eq!(status, 200);
        assert!(index.contains(&id[..8]));
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_errors() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let cases = [
            (json!({}), 422, "url: missing"),
            (
                json!({"url": "ftp://h.example/x.img"}),
                422,
                "unsupported URL scheme \"ftp\"",
            ),
            (json!({"url": "not a url"}), 422, "not a valid URL"),
            (
                json!({"url": "https://h.example/dir/"}),
                422,
                "names no file",
            ),
            (
                json!({"url": "https://h.example/x.img", "checksum": "sha256:abc"}),
                422,
                "64 hex digits",
            ),
            (
                json!({"url": "https://h.example/x.img", "checksum": "crc32:abcd"}),
                422,
                "unknown checksum algorithm",
            ),
            (
                json!({"url": "https://h.example/x.img", "email": "nope"}),
                422,
                "not an email address",
            ),
            (json!({"url": 42}), 400, "malformed JSON"),
        ];
        for (body, status, needle) in cases {
            let (got, err) = app.post("/api/v1/jobs", body.clone()).await;
            assert_eq!(got, status, "{body} → {err}");
            let msg = err["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains(needle),
                "{body}: {msg:?} should mention {needle:?}"
            );
        }
        // Malformed JSON, empty and huge bodies.
        let r = app
            .client
            .post(app.url("/api/v1/jobs"))
            .header("content-type", "application/json")
            .body("{\"url\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("malformed JSON"));
        let r = app
            .client
            .post(app.url("/api/v1/jobs"))
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let huge = format!("{{\"url\": \"https://h.example/{}\"}}", "a".repeat(200_000));
        // Its own connection: the server answers 413 without reading the body and
        // closes it, which must not break the shared client's pooled connection.
        let r = crate::support::client_with_token(&app.token_for("admin", "admin").await)
            .post(app.url("/api/v1/jobs"))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert!(r.text().await.unwrap().contains("too large"));
        // Unknown and malformed ids.
        let (s, e) = app
            .get("/api/v1/jobs/0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60")
            .await;
        assert_eq!(s, 404);
        assert!(e["error"].as_str().unwrap().contains("not found"));
        let (s, e) = app.get("/api/v1/jobs/nonsense").await;
        assert_eq!(s, 404);
        assert!(e["error"].as_str().unwrap().contains("not a job id"));
        let (s, _) = app
            .post(
                "/api/v1/jobs/0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60/cancel",
                json!({}),
            )
            .await;
        assert_eq!(s, 404);
        let (s, e) = app.get("/api/v1/jobs?state=bogus").await;
        assert_eq!(s, 400);
        assert!(e["error"].as_str().unwrap().contains("unknown job state"));
        let (s, _) = app.get("/api/v1/jobs?limit=100000").await;
        assert_eq!(s, 400);
        let (s, _) = app.get("/api/v1/nope").await;
        assert_eq!(s, 404);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_by_page_newest_first() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let mut ids = Vec::new();
        for i in 0..12 {
            let j = app
                .submit(json!({"url": format!("https://h.example/{i}.qcow2")}))
                .await;
            ids.push(j["id"].as_str().unwrap().to_string());
        }
        let mut seen = Vec::new();
        let mut path = "/api/v1/jobs?limit=5".to_string();
        loop {
            let (s, page) = app.get(&path).await;
            assert_eq!(s, 200);
            for j in page["jobs"].as_array().unwrap() {
                seen.push(j["id"].as_str().unwrap().to_string());
            }
            match page["next_before"].as_str() {
                Some(b) => path = format!("/api/v1/jobs?limit=5&before={b}"),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        app.submit(json!({"url": "https://h.example/a.img"})).await;
        assert_eq!(app.get_text("/healthz").await.0, 200);
        let (s, ready) = app.get_text("/readyz").await;
        assert_eq!(s, 200, "{ready}");
        let (s, m) = app.get_text("/metrics").await;
        assert_eq!(s, 200);
        assert!(m.contains("vmscan_jobs{state=\"queued\"} 1"), "{m}");
        assert!(m.contains("vmscan_queue_depth 1"), "{m}");
        // Disk: the data directory's file system and what job files hold.
        let gauge = |name: &str| -> u64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {m}"))
        };
        let (total, free) = (
            gauge("vmscan_data_dir_bytes{kind=\"total\"}"),
            gauge("vmscan_data_dir_bytes{kind=\"free\"}"),
        );
        assert!(total > 0 && free <= total, "{total} {free}");
        std::fs::create_dir_all(app.data_dir.join("jobs/x")).unwrap();
        std::fs::write(app.data_dir.join("jobs/x/blob"), vec![1u8; 1 << 20]).unwrap();
        let (_, m2) = app.get_text("/metrics").await;
        let work: u64 = m2
            .lines()
            .find_map(|l| l.strip_prefix("vmscan_work_dir_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        assert!(work >= 1 << 20, "{work}");
        let (_, index) = app.get_text("/").await;
        assert!(
            index.contains("free of") && index.contains("job work files 1.0 MiB"),
            "{index}"
        );
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_log_lines_and_the_end() {
    let (dir, url) = image_dir();
    let root = dir.path().to_path_buf();
    let app = TestApp::spawn(crate::support::Backend::Sqlite, |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
    })
    .await;
    let job = app.submit(json!({"url": url})).await;
    let id = job["id"].as_str().unwrap();
    let resp = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("stream ends when the job does")
        .unwrap();
    assert!(body.contains("event: log"), "{body}");
    assert!(body.contains("event: job"));
    assert!(body.contains("event: end\ndata: succeeded"), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_filters_by_cluster_os_and_text() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let rocky = app
            .submit(json!({"url": "https://img.example/rocky-9.4.qcow2", "name": "rocky", "version": "9.4", "note": "Golden build"}))
            .await;
        let win = app
            .submit(json!({"url": "https://img.example/win2022.qcow2", "os": "windows"}))
            .await;
        let plain = app
            .submit(json!({"url": "https://img.example/debian_12.raw"}))
            .await;
        let ids = |v: &serde_json::Value| -> Vec<String> {
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect()
        };
        let id = |j: &serde_json::Value| j["id"].as_str().unwrap().to_string();
        let (_, all) = app.get("/api/v1/jobs?cluster=qemu-local").await;
        assert_eq!(ids(&all), vec![id(&plain), id(&win), id(&rocky)]);
        let (_, none) = app.get("/api/v1/jobs?cluster=nutanix%3Apc1").await;
        assert!(ids(&none).is_empty(), "{none}");
        let (_, w) = app.get("/api/v1/jobs?os=windows").await;
        assert_eq!(ids(&w), vec![id(&win)]);
        // Text: the note, case-insensitively; the name and version in the options.
        let (_, g) = app.get("/api/v1/jobs?q=GOLDEN").await;
        assert_eq!(ids(&g), vec![id(&rocky)]);
        let (_, v) = app.get("/api/v1/jobs?q=9.4").await;
        assert_eq!(ids(&v), vec![id(&rocky)]);
        // LIKE wildcards are literal: "_" matches only an underscore.
        let (_, u) = app.get("/api/v1/jobs?q=debian_").await;
        assert_eq!(ids(&u), vec![id(&plain)]);
        let (_, p) = app.get("/api/v1/jobs?q=%25").await;
        assert!(ids(&p).is_empty(), "{p}");
        // Combined with state and requester, and on the page.
        let (_, both) = app
            .get("/api/v1/jobs?state=queued&requested_by=admin&os=windows")
            .await;
        assert_eq!(ids(&both), vec![id(&win)]);
        let (status, table) = app.get_text("/jobs/table?q=golden").await;
        assert_eq!(status, 200);
        assert!(
            table.contains(&id(&rocky)) && !table.contains(&id(&win)),
            "{table}"
        );
        assert!(table.contains("Golden") || table.contains("rocky"));
        let (status, _) = app
            .get(&format!("/api/v1/jobs?q={}", "x".repeat(201)))
            .await;
        assert_eq!(status, 400);
        app.stop().await;
    }
}
