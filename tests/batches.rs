//! Batches end to end: a manifest (YAML or JSON) posted to the real app is
//! queued whole or not at all, its jobs run, and one summary email (real
//! SMTP server) and one Jira ticket (the fake Jira) tell how the batch went.
//! Also: the batch limits, the race to close a batch, and disk sizes.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmscan::config::{Config, JiraDeployment, SmtpSecurity};
use vmscan::domain::{JobState, StageName};
use vmscan::store::batch::NewBatch;

use support::jira::{FakeJira, TOKEN, USER};
use support::smtp::SmtpSink;
use support::{backends, stage, Backend, TestApp};

const ADMIN: &str = "sam-admin@example.com";

/// Three small raw images and a manifest line for each.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir().unwrap();
        for (name, byte) in [
            ("rocky-9.raw", 1u8),
            ("alma-9.raw", 2),
            ("debian-12.raw", 3),
        ] {
            std::fs::write(dir.path().join(name), vec![byte; 256 * 1024]).unwrap();
        }
        Images { dir }
    }

    fn url(&self, name: &str) -> String {
        format!("file://{}", self.dir.path().join(name).display())
    }

    fn sha256(&self, name: &str) -> String {
        support::sha256_file(&self.dir.path().join(name))
    }

    /// The manifest the issue shows: gen-vm-image's shape plus vmscan's fields;
    /// debian-12's checksum is well formed but wrong, so it fails at checksum.
    fn manifest(&self) -> String {
        format!(
            "owner: sam-team\nimages:\n  rocky-9:\n    name: rocky-9\n    version: \"9.4\"\n    get_url: {}\n    checksum: {{type: sha256, value: {}}}\n    note: nightly\n  alma-9:\n    name: alma-9\n    version: 9.4\n    input:\n      url: {}\n      checksum:\n        type: sha256\n        value: {}\n  debian-12:\n    name: debian-12\n    version: '12.7'\n    get_url: {}\n    checksum: {{type: sha256, value: '{}'}}\n",
            self.url("rocky-9.raw"),
            self.sha256("rocky-9.raw"),
            self.url("alma-9.raw"),
            self.sha256("alma-9.raw"),
            self.url("debian-12.raw"),
            // Quoted (above): unquoted, YAML reads a digest of digits only as a number.
            "0".repeat(64),
        )
    }
}

/// Intake stages only (no VM): fetch and checksum.
fn intake(c: &mut Config, root: &Path) {
    c.fetch.allowed_roots = vec![root.to_path_buf()];
    c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
    c.pipeline.retry_limit = 0;
    c.server.external_url = Some("https://vmscan.example.com".into());
}

fn notify(c: &mut Config, smtp: &SmtpSink, jira: &FakeJira) {
    c.notify.poll_interval_ms = 100;
    c.notify.backoff_secs = 1;
    c.notify.email.enabled = true;
    c.notify.email.host = "127.0.0.1".into();
    c.notify.email.port = smtp.port;
    c.notify.email.security = SmtpSecurity::None;
    c.notify.email.from = "vmscan <vmscan@example.com>".into();
    c.notify.email.admins = vec![ADMIN.into()];
    c.notify.jira.enabled = true;
    c.notify.jira.base_url = jira.base.clone();
    c.notify.jira.deployment = JiraDeployment::Server;
    c.notify.jira.user = Some(USER.into());
    c.notify.jira.token = Some(TOKEN.into());
    c.notify.jira.project = "OPS".into();
    c.notify.jira.success_transition = "Done".into();
    c.notify.jira.failure_transition = "Scan failed".into();
}

async fn post_manifest(
    client: &reqwest::Client,
    app: &TestApp,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let r = client
        .post(app.url("/api/v1/batches"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /api/v1/batches");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_batch_ended(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, b) = app.get(&format!("/api/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{b}");
        if b["summary"]["ended"] == true {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "batch did not end: {b:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job_count(app: &TestApp) -> usize {
    let (_, jobs) = app.get("/api/v1/jobs?limit=500").await;
    jobs["jobs"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_runs_as_one_batch_and_ends_in_one_summary() {
    for backend in backends() {
        let images = Images::new();
        let smtp = SmtpSink::start().await;
        let jira = FakeJira::start(2).await;
        let app = TestApp::spawn(backend, |c| {
            intake(c, images.dir.path());
            notify(c, &smtp, &jira);
        })
        .await;
        let ann = app.person("ann", "Ann Smith", "requester").await;
        let (status, batch) =
            post_manifest(&ann, &app, "application/yaml", images.manifest()).await;
        assert_eq!(status, 201, "{backend:?}: {batch:#}");
        let id = batch["id"].as_str().unwrap().to_string();
        let keys: Vec<&str> = batch["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["rocky-9", "alma-9", "debian-12"], "manifest order");
        assert_eq!(batch["owner"], "sam-team");
        assert_eq!(batch["requested_by"], "ann");
        assert_eq!(batch["jobs"][1]["version"], "9.4", "a YAML number, as text");

        let done = wait_batch_ended(&app, &id).await;
        assert_eq!(
            done["summary"]["text"], "2 of 3 passed, 1 failed at checksum",
            "{done:#}"
        );
        assert_eq!(done["jobs"][2]["failed_stage"], "checksum");
        assert_eq!(done["jobs"][2]["state"], "failed");

        // One summary email, to the requester and the admins; no per-image mail.
        let m = smtp.wait_for("batch", Duration::from_secs(30)).await;
        assert_eq!(
            m.subject,
            "[vmscan] batch sam-team (3 images): 2 of 3 passed, 1 failed at checksum"
        );
        let mut to = m.rcpt_tos.clone();
        to.sort();
        assert_eq!(to, vec!["ann@example.com".to_string(), ADMIN.to_string()]);
        assert!(m.to.contains("Ann Smith"), "{}", m.to);
        let page = format!("https://vmscan.example.com/batches/{id}");
        assert!(m.text.contains(&page), "{}", m.text);
        assert!(m.text.contains("debian-12") && m.text.contains("failed at checksum: "));
        assert!(m.html.contains(&format!("href=\"{page}\"")), "{}", m.html);
        // One ticket for the batch, moved to the failure transition.
        let settle = Instant::now();
        while jira
            .issues()
            .first()
            .is_none_or(|i| i.transitions.is_empty())
            && settle.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let issues = jira.issues();
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(
            issues[0].fields["summary"],
            "VM image scan: batch sam-team (3 images): 2 of 3 passed, 1 failed at checksum"
        );
        assert!(issues[0].fields["description"]
            .as_str()
            .unwrap()
            .contains(&page));
        assert_eq!(issues[0].transitions, vec!["Scan failed"]);
        assert!(jira.problems().is_empty(), "{:?}", jira.problems());
        // Nothing else arrives later (no per-image mails, no second summary).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(smtp.messages().len(), 1, "{:?}", smtp.messages());
        assert_eq!(jira.issues().len(), 1);
        let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
        assert_eq!(b["jira"]["key"], "OPS-1");
        assert!(b["closed_at"].is_string());
        // Each job's page links its batch; only the first job carries the summary rows.
        let first = app.job(done["jobs"][0]["id"].as_str().unwrap()).await;
        assert_eq!(first["batch_id"], id.as_str());
        let kinds: Vec<&str> = first["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["batch_finished", "batch_finished"]);
        let last = app.job(done["jobs"][2]["id"].as_str().unwrap()).await;
        assert!(last["notifications"].as_array().unwrap().is_empty());

        // The batch page lists every job with its state and the summary.
        let (status, html) = app.get_text(&format!("/batches/{id}")).await;
        assert_eq!(status, 200);
        assert!(
            html.contains("2 of 3 passed, 1 failed at checksum"),
            "{html}"
        );
        for key in ["rocky-9", "alma-9", "debian-12"] {
            assert!(html.contains(&format!("data-key=\"{key}\"")), "{html}");
        }
        assert!(html.contains("failed at checksum"));
        // The batches page lists it with its summary.
        let (status, list) = app.get_text("/batches").await;
        assert_eq!(status, 200);
        assert!(
            list.contains(&format!("data-id=\"{id}\"")) && list.contains("2 of 3 passed"),
            "{list}"
        );
        let (_, job_page) = app
            .get_text(&format!(
                "/jobs/{}",
                done["jobs"][0]["id"].as_str().unwrap()
            ))
            .await;
        assert!(job_page.contains(&format!("/batches/{id}")), "{job_page}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_json_manifest_is_queued_the_same_way() {
    let images = Images::new();
    let app = TestApp::spawn(Backend::Sqlite, |c| intake(c, images.dir.path())).await;
    // Written out, not json!(): the manifest's key order is the batch's order.
    let body = format!(
        r#"{{"owner": "sam-team", "images": {{
            "rocky-9": {{"name": "rocky-9", "version": "9.4", "get_url": "{}",
                         "checksum": {{"type": "sha256", "value": "{}"}}, "size": "1M"}},
            "alma-9": {{"get_url": "{}", "description": "Alma 9"}}}}}}"#,
        images.url("rocky-9.raw"),
        images.sha256("rocky-9.raw"),
        images.url("alma-9.raw")
    );
    let (status, b) = post_manifest(&app.client, &app, "application/json", body).await;
    assert_eq!(status, 201, "{b:#}");
    assert_eq!(b["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(b["jobs"][0]["key"], "rocky-9");
    let job = app.job(b["jobs"][0]["id"].as_str().unwrap()).await;
    assert_eq!(job["options"]["size"], 1 << 20);
    assert_eq!(job["options"]["batch_key"], "rocky-9");
    let alma = app.job(b["jobs"][1]["id"].as_str().unwrap()).await;
    assert_eq!(alma["options"]["description"], "Alma 9");
    let done = wait_batch_ended(&app, b["id"].as_str().unwrap()).await;
    assert_eq!(done["summary"]["text"], "2 of 2 passed");
    // The listing shows it too.
    let (_, list) = app.get("/api/v1/batches?requested_by=admin").await;
    assert_eq!(list["batches"][0]["id"], b["id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_manifest_queues_nothing_and_names_every_error() {
    for backend in backends() {
        let images = Images::new();
        let app = TestApp::spawn(backend, |c| intake(c, images.dir.path())).await;
        let manifest = format!(
            "owner: sam-team\nimages:\n  good:\n    get_url: {}\n  bad-type:\n    get_url: {}\n    checksum: {{type: crc32, value: abcd}}\n  no-url:\n    name: x\n    size: 20G\n  bad-size:\n    get_url: {}\n    size: 20GB\n  bad-cluster:\n    get_url: {}\n    cluster: openstack:nope\n",
            images.url("rocky-9.raw"),
            images.url("alma-9.raw"),
            images.url("alma-9.raw"),
            images.url("alma-9.raw"),
        );
        let (status, body) = post_manifest(&app.client, &app, "application/yaml", manifest).await;
        assert_eq!(status, 422, "{body:#}");
        let errors: Vec<(String, String)> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    format!(
                        "{}.{}",
                        e["image"].as_str().unwrap_or(""),
                        e["field"].as_str().unwrap()
                    ),
                    e["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        // The shape's errors, then those of the single-submission checks of
        // the images whose shape is right: all in one answer.
        assert_eq!(
            fields,
            [
                "bad-type.checksum.type",
                "no-url.get_url",
                "bad-size.size",
                "bad-cluster.cluster"
            ],
            "{errors:#?}"
        );
        assert!(errors[0].1.contains("\"crc32\""), "{errors:?}");
        assert!(errors[2].1.contains("\"20GB\" is ambiguous"), "{errors:?}");
        assert!(
            errors[3].1.contains("not a configured cluster"),
            "{errors:?}"
        );
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("the manifest has 4 errors; nothing was queued"));
        // The single-submission checks, as the manifest names the fields.
        let manifest = format!(
            "images:\n  good:\n    get_url: {}\n  bad-size:\n    get_url: {}\n    size: 20GB\n  bad-cluster:\n    get_url: {}\n    cluster: openstack:nope\n  bad-url:\n    input: {{url: 'ftp://h.example/x.qcow2'}}\n",
            images.url("rocky-9.raw"),
            images.url("alma-9.raw"),
            images.url("alma-9.raw"),
        );
        let (status, body) = post_manifest(&app.client, &app, "application/yaml", manifest).await;
        assert_eq!(status, 422, "{body:#}");
        let got: Vec<String> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}.{}",
                    e["image"].as_str().unwrap(),
                    e["field"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            got,
            ["bad-size.size", "bad-cluster.cluster", "bad-url.input.url"]
        );
        assert_eq!(job_count(&app).await, 0, "{backend:?}: nothing was queued");
        let (_, list) = app.get("/api/v1/batches").await;
        assert!(list["batches"].as_array().unwrap().is_empty());
        // Not YAML at all, and a type the API does not take.
        let (status, body) =
            post_manifest(&app.client, &app, "application/yaml", "owner: [".into()).await;
        assert_eq!(status, 422);
        assert!(body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("not valid YAML"));
        let (status, _) = post_manifest(&app.client, &app, "text/plain", images.manifest()).await;
        assert_eq!(status, 415);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_does_not_fit_the_limits_is_refused_whole() {
    for backend in backends() {
        let images = Images::new();
        // No workers: what is queued stays queued.
        let app = TestApp::spawn(backend, |c| {
            intake(c, images.dir.path());
            c.worker.pool_size = 0;
            c.server.max_queued_jobs = 4;
            c.server.max_submissions_per_minute = 100;
        })
        .await;
        app.submit(json!({"url": images.url("rocky-9.raw")})).await;
        app.submit(json!({"url": images.url("rocky-9.raw")})).await;
        // 2 queued + 3 > 4: refused before anything is queued.
        let (status, body) =
            post_manifest(&app.client, &app, "application/yaml", images.manifest()).await;
        assert_eq!(status, 429, "{body:#}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("this batch of 3 scans does not fit"),
            "{body}"
        );
        assert_eq!(job_count(&app).await, 2);
        // The per-user rate counts the batch as its images too.
        let app2 = TestApp::spawn(backend, |c| {
            intake(c, images.dir.path());
            c.worker.pool_size = 0;
            c.server.max_submissions_per_minute = 2;
        })
        .await;
        let rita2 = app2.client_as("rita", "requester").await;
        let (status, body) =
            post_manifest(&rita2, &app2, "application/yaml", images.manifest()).await;
        assert_eq!(status, 429, "{body:#}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("max_submissions_per_minute = 2"));
        assert_eq!(job_count(&app2).await, 0);
        app.stop().await;
        app2.stop().await;
    }
}

/// Many closers at once (workers of several replicas ending the last jobs):
/// exactly one closes the batch and records its summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_of_many_concurrent_closers_records_the_summary() {
    for backend in backends() {
        let images = Images::new();
        let app = TestApp::spawn(backend, |c| {
            intake(c, images.dir.path());
            c.worker.pool_size = 0;
        })
        .await;
        let store = app.store.clone();
        let new = |url: String| vmscan::store::NewJob {
            url: url.parse().unwrap(),
            checksum: None,
            requested_by: Some("ann".into()),
            email: Some("ann@example.com".into()),
            note: None,
            options: json!({}),
        };
        let (batch, jobs) = store
            .create_batch(NewBatch {
                requested_by: Some("ann".into()),
                owner: Some("t".into()),
                requester_name: None,
                jobs: vec![
                    new(images.url("rocky-9.raw")),
                    new(images.url("alma-9.raw")),
                ],
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 2);
        // Open while a job has not ended: no closer wins.
        assert!(!store.close_batch(batch.id, &["email"]).await.unwrap());
        for outcome in [JobState::Succeeded, JobState::Failed] {
            let (job, lease) = store
                .claim("w", Duration::from_secs(30))
                .await
                .unwrap()
                .expect("a queued job");
            assert_eq!(job.batch_id, Some(batch.id));
            store.finish_job(&lease, outcome, None).await.unwrap();
        }
        let race = |n: usize| {
            let store = store.clone();
            async move {
                let mut racers = Vec::new();
                for _ in 0..n {
                    let s = store.clone();
                    racers.push(tokio::spawn(async move {
                        s.close_batch(batch.id, &["email", "jira"]).await.unwrap()
                    }));
                }
                let mut won = 0;
                for r in racers {
                    won += usize::from(r.await.unwrap());
                }
                won
            }
        };
        assert_eq!(race(16).await, 1, "{backend:?}");
        assert_eq!(store.job_notifications(jobs[0].id).await.unwrap().len(), 2);
        assert!(store.ended_open_batches(10).await.unwrap().is_empty());
        assert!(store
            .get_batch(batch.id)
            .await
            .unwrap()
            .unwrap()
            .closed_at
            .is_some());
        // A retry reopens it; the retried job's end closes it again, once.
        store.retry_job(jobs[1].id).await.unwrap();
        assert!(store
            .get_batch(batch.id)
            .await
            .unwrap()
            .unwrap()
            .closed_at
            .is_none());
        assert_eq!(race(4).await, 0, "a job is queued again");
        let (_, lease) = store
            .claim("w", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        store
            .finish_job(&lease, JobState::Succeeded, None)
            .await
            .unwrap();
        assert_eq!(race(16).await, 1, "{backend:?}");
        assert_eq!(store.job_notifications(jobs[0].id).await.unwrap().len(), 4);
        app.stop().await;
    }
}

/// Sizes at convert, without a VM: a smaller size is an error naming both,
/// the same size changes nothing, a larger one grows the converted copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_grows_the_disk_and_refuses_to_shrink_it() {
    let fixture = support::guest::fixture_dir();
    let dir = tempfile::tempdir().unwrap();
    support::share_with_qemu(dir.path());
    std::fs::copy(fixture.join("disk.raw"), dir.path().join("disk.raw")).unwrap();
    let url = format!("file://{}", dir.path().join("disk.raw").display());
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.fetch.allowed_roots = vec![dir.path().to_path_buf()];
        c.pipeline.stages = vec![
            StageName::Fetch,
            StageName::Checksum,
            StageName::Inspect,
            StageName::Convert,
        ];
        c.pipeline.retry_limit = 0;
    })
    .await;
    let virtual_size = std::fs::metadata(dir.path().join("disk.raw"))
        .unwrap()
        .len();
    assert_eq!(virtual_size, 32 << 20, "the fixture is 32 MiB");

    let small = app.submit(json!({"url": url, "size": "16M"})).await;
    let small = app
        .wait_final(small["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(small["state"], "failed");
    assert_eq!(
        stage(&small, "convert")["error"],
        "size: the requested disk size 16.0 MiB (16777216 bytes) is smaller than the image's virtual size 32.0 MiB (33554432 bytes); vmscan grows disks, it never shrinks one"
    );

    let same = app.submit(json!({"url": url, "size": 33554432})).await;
    let same = app
        .wait_final(same["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(same["state"], "succeeded", "{same:#}");
    let d = &stage(&same, "convert")["detail"];
    assert_eq!(d["virtual_size"], 32 << 20);
    assert_eq!(d["resized"], false);

    let big = app.submit(json!({"url": url, "size": "64M"})).await;
    let id = big["id"].as_str().unwrap();
    let big = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(big["state"], "succeeded", "{big:#}");
    let d = &stage(&big, "convert")["detail"];
    assert_eq!(d["source_virtual_size"], 32 << 20);
    assert_eq!(d["virtual_size"], 64 << 20);
    assert_eq!(d["resized"], true);
    // What qemu-img itself says of the converted file.
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", d["path"].as_str().unwrap()])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], 64 << 20);
    // The source file is untouched.
    assert_eq!(
        std::fs::metadata(dir.path().join("disk.raw"))
            .unwrap()
            .len(),
        32 << 20
    );
    assert_eq!(
        big["disk"],
        "grown from 32.0 MiB (33554432 bytes) to 64.0 MiB (67108864 bytes)"
    );
    let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
    assert!(
        page.contains("grown from 32.0 MiB (33554432 bytes) to 64.0 MiB (67108864 bytes)"),
        "{page}"
    );
    app.stop().await;
}

/// `vmscan submit -f manifest.yml [--wait]` on the store a running daemon
/// (here the test's app, on the same SQLite file) works from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_submits_a_manifest_and_waits_for_its_summary() {
    let images = Images::new();
    let app = TestApp::spawn(Backend::Sqlite, |c| intake(c, images.dir.path())).await;
    let cfg = images.dir.path().join("vmscan.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndata_dir = {:?}\n[fetch]\nallowed_roots = [{:?}]\n",
            app.data_dir.display().to_string(),
            images.dir.path().display().to_string()
        ),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_vmscan"))
                .arg("--config")
                .arg(&cfg)
                .args(&args)
                .env("VMSCAN_LOG", "warn")
                .output()
                .expect("vmscan runs")
        })
    };
    let file = |name: &str, text: &str| {
        let p = images.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };

    // An invalid manifest: every error on stderr, nothing queued, exit 2.
    let bad = file(
        "bad.yml",
        &format!(
            "images:\n  a:\n    get_url: {}\n    checksum: {{type: whirlpool, value: ab}}\n  b:\n    get_url: {}\n    os: beos\n",
            images.url("rocky-9.raw"),
            images.url("alma-9.raw")
        ),
    );
    let out = run(vec!["submit".into(), "-f".into(), bad]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nothing was queued"), "{err}");
    assert!(
        err.contains("images.a.checksum.type: unknown checksum algorithm \"whirlpool\""),
        "{err}"
    );
    assert!(
        err.contains("images.b.os: \"beos\" is not an OS family"),
        "{err}"
    );
    assert_eq!(job_count(&app).await, 0);

    // A good one with a failing image: each job's id, then the summary, exit 1.
    let good = file("good.yml", &images.manifest());
    let out = run(vec!["submit".into(), "-f".into(), good, "--wait".into()])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("batch "), "{stdout}");
    for (line, key) in lines[1..4].iter().zip(["rocky-9", "alma-9", "debian-12"]) {
        let (id, k) = line.split_once("  ").unwrap();
        assert_eq!(k, key);
        assert_eq!(app.job(id).await["batch_key"], key);
    }
    assert!(
        stdout
            .trim_end()
            .ends_with("2 of 3 passed, 1 failed at checksum"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed at checksum: ")
            && stdout.contains("checksum mismatch: expected sha256 0000"),
        "{stdout}"
    );
    app.stop().await;
}

/// A batch whose last job never reached a worker (cancelled while queued)
/// still gets its summary, from the delivery loop's sweep; with
/// `batch_summary = false` each image is told about on its own instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_closes_a_batch_cancelled_before_it_ran_and_summaries_can_be_off() {
    let images = Images::new();
    let smtp = SmtpSink::start().await;
    let jira = FakeJira::start(2).await;
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        intake(c, images.dir.path());
        notify(c, &smtp, &jira);
        c.notify.jira.enabled = false;
        c.notify.batch_sweep_secs = 1;
        c.worker.pool_size = 0;
    })
    .await;
    let (status, b) = post_manifest(&app.client, &app, "application/yaml", images.manifest()).await;
    assert_eq!(status, 201, "{b:#}");
    for j in b["jobs"].as_array().unwrap() {
        let (status, _) = app
            .post(
                &format!("/api/v1/jobs/{}/cancel", j["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let m = smtp.wait_for("batch", Duration::from_secs(20)).await;
    assert_eq!(
        m.subject,
        "[vmscan] batch sam-team (3 images): 0 of 3 passed, 3 cancelled"
    );
    app.stop().await;

    // Summaries off: per-image mails, as for single submissions, and no summary.
    let smtp = SmtpSink::start().await;
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        intake(c, images.dir.path());
        notify(c, &smtp, &jira);
        c.notify.jira.enabled = false;
        c.notify.batch_summary = false;
        c.notify.batch_sweep_secs = 1;
    })
    .await;
    let (status, b) = post_manifest(&app.client, &app, "application/yaml", images.manifest()).await;
    assert_eq!(status, 201, "{b:#}");
    let done = wait_batch_ended(&app, b["id"].as_str().unwrap()).await;
    assert_eq!(
        done["summary"]["text"],
        "2 of 3 passed, 1 failed at checksum"
    );
    smtp.wait_for("scan failed at checksum", Duration::from_secs(20))
        .await;
    let start = Instant::now();
    while smtp.messages().len() < 6 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subjects: Vec<String> = smtp.messages().into_iter().map(|m| m.subject).collect();
    assert_eq!(
        subjects.len(),
        6,
        "started and ended, per image: {subjects:?}"
    );
    assert!(
        subjects.iter().all(|s| !s.contains("batch")),
        "{subjects:?}"
    );
    app.stop().await;
}

/// A batch is its submitter's: another requester may not cancel it, its
/// owner and an operator may (every job not yet ended is cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_cancelled_by_its_owner_or_an_operator_only() {
    let images = Images::new();
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        intake(c, images.dir.path());
        c.worker.pool_size = 0;
    })
    .await;
    let ann = app.client_as("ann", "requester").await;
    let rita = app.client_as("rita", "requester").await;
    let otto = app.client_as("otto", "operator").await;
    let cancel = |client: &reqwest::Client, id: &str| {
        client
            .post(app.url(&format!("/api/v1/batches/{id}/cancel")))
            .send()
    };
    for (who, name) in [(&ann, "ann"), (&otto, "otto")] {
        let (status, b) = post_manifest(&ann, &app, "application/yaml", images.manifest()).await;
        assert_eq!(status, 201, "{b:#}");
        let id = b["id"].as_str().unwrap();
        let r = cancel(&rita, id).await.unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(
                "was requested by ann; to cancel someone else's batch you need the operator role"
            ),
            "{body}"
        );
        let r = cancel(who, id).await.unwrap();
        assert_eq!(r.status().as_u16(), 202, "{name}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["message"],
            "3 jobs cancelled before they started; 0 running jobs stop and tear down"
        );
        assert_eq!(
            body["batch"]["summary"]["text"],
            "0 of 3 passed, 3 cancelled"
        );
    }
    app.stop().await;
}
