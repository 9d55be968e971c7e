//! Publishing: scanned images go to the artifact store (a local directory or
//! a faithful fake Artifactory) with their properties; older versions are
//! demoted; the catalog lists them. Intake stages only, so no VM boots.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::{backends, stage, Backend, TestApp};
use vmscan::config::Config;
use vmscan::domain::StageName;

const WAIT: Duration = Duration::from_secs(60);

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

    /// A small image (64 KiB of patterned bytes, distinct per `seed`).
    fn write(&self, name: &str, seed: u8) -> (String, Vec<u8>) {
        let bytes: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let p = self.dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        (format!("file://{}", p.display()), bytes)
    }

    async fn app(&self, backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let root = self.dir.path().to_path_buf();
        TestApp::spawn(backend, move |cfg| {
            cfg.fetch.allowed_roots = vec![root];
            cfg.pipeline.stages = vec![StageName::Fetch, StageName::Checksum, StageName::Publish];
            tweak(cfg);
        })
        .await
    }
}

/// Submits and waits for the job to end; returns the job JSON.
async fn scan(app: &TestApp, body: Value) -> Value {
    let job = app.submit(body).await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_final(&id, WAIT).await
}

fn sidecar(file: &Path) -> Value {
    let p = PathBuf::from(format!("{}.properties.json", file.display()));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(leftovers(&p));
        } else if p.file_name().unwrap().to_string_lossy().contains(".tmp-") {
            out.push(p.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn publishes_to_the_local_store_with_a_json_sidecar_and_demotes_the_previous_version() {
    let images = Images::new();
    let app = images.app(Backend::Sqlite, |_| {}).await;
    let (url, bytes) = images.write("rocky-9.4-x86_64.qcow2", 1);
    let job = scan(
        &app,
        json!({"url": url, "name": "rocky", "version": "9.4", "description": "Rocky 9, hardened; a|b=c"}),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let publish = stage(&job, "publish");
    assert_eq!(publish["detail"]["path"], "rocky/9.4/rocky-9.4.qcow2");
    let root = app.data_dir.join("artifacts/vm-images");
    let first = root.join("rocky/9.4/rocky-9.4.qcow2");
    assert_eq!(std::fs::read(&first).unwrap(), bytes);
    let props = &sidecar(&first)["properties"];
    assert_eq!(props["vmscan.state"], "current");
    assert_eq!(props["vmscan.name"], "rocky");
    assert_eq!(props["vmscan.version"], "9.4");
    assert_eq!(props["vmscan.description"], "Rocky 9, hardened; a|b=c");
    assert_eq!(props["vmscan.job_id"], job["id"]);
    assert_eq!(props["vmscan.inventory"], "not checked");
    assert!(props["vmscan.scan_result"]
        .as_str()
        .unwrap()
        .starts_with("passed"));
    assert_eq!(
        props["vmscan.sha256"],
        sidecar(&first)["checksums"]["sha256"]
    );
    // fetch copied the filer's image into the work directory (so a swap on the
    // filer changes nothing); publish links that copy, never the original.
    use std::os::unix::fs::MetadataExt;
    let original = std::fs::metadata(url.strip_prefix("file://").unwrap()).unwrap();
    let published = std::fs::metadata(&first).unwrap();
    assert_ne!(published.ino(), original.ino());
    assert_eq!(original.nlink(), 1, "the filer's file is untouched");

    let (url2, _) = images.write("rocky-9.5-x86_64.qcow2", 2);
    let job2 = scan(
        &app,
        json!({"url": url2, "name": "rocky", "version": "9.5"}),
    )
    .await;
    assert_eq!(job2["state"], "succeeded", "{job2:#}");
    let second = root.join("rocky/9.5/rocky-9.5.qcow2");
    assert_eq!(sidecar(&second)["properties"]["vmscan.state"], "current");
    assert_eq!(sidecar(&first)["properties"]["vmscan.state"], "deprecated");
    assert_eq!(
        stage(&job2, "publish")["detail"]["demoted"]["deprecated"],
        json!(["9.4"])
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    app.stop().await;
}

#[tokio::test]
async fn derives_the_name_from_the_file_and_the_version_from_the_time() {
    let images = Images::new();
    let app = images.app(Backend::Sqlite, |_| {}).await;
    let (url, _) = images.write("alma-9.4-x86_64.qcow2", 3);
    let job = scan(&app, json!({"url": url})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let d = &stage(&job, "publish")["detail"];
    assert_eq!(d["name"], "alma-9.4-x86_64");
    let version = d["version"].as_str().unwrap();
    assert!(
        version.len() == 16 && version.ends_with('Z') && version.contains('T'),
        "{version}"
    );
    app.stop().await;
}

#[tokio::test]
async fn rejects_unsafe_image_names_at_submit() {
    let images = Images::new();
    let app = images.app(Backend::Sqlite, |_| {}).await;
    let (url, _) = images.write("x.qcow2", 4);
    let (status, body) = app
        .post("/api/v1/jobs", json!({"url": url, "name": "../../etc"}))
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().starts_with("name:"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_scan_publishes_nothing_and_demotes_nothing() {
    let images = Images::new();
    let app = images.app(Backend::Sqlite, |_| {}).await;
    let (url, _) = images.write("deb-12.qcow2", 5);
    let ok = scan(&app, json!({"url": url, "name": "deb", "version": "1"})).await;
    assert_eq!(ok["state"], "succeeded", "{ok:#}");
    let dead = format!("file://{}/missing.qcow2", images.dir.path().display());
    let failed = scan(&app, json!({"url": dead, "name": "deb", "version": "2"})).await;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(failed["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] != "publish" || s["state"] != "succeeded"));
    let root = app.data_dir.join("artifacts/vm-images/deb");
    assert!(!root.join("2").exists());
    assert_eq!(
        sidecar(&root.join("1/deb-1.qcow2"))["properties"]["vmscan.state"],
        "current"
    );
    let (_, hist) = app.get("/api/v1/images/deb").await;
    assert_eq!(hist["current"], "1");
    assert_eq!(hist["versions"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_catalog_lists_searches_shows_history_and_soft_deletes() {
    for backend in backends() {
        let images = Images::new();
        let app = images.app(backend, |_| {}).await;
        for (file, name, version, seed) in [
            ("a.qcow2", "rocky", "9.3", 10),
            ("b.qcow2", "rocky", "9.4", 11),
            ("c.qcow2", "ubuntu", "24.04", 12),
        ] {
            let (url, _) = images.write(file, seed);
            let body = json!({"url": url, "name": name, "version": version, "description": format!("{name} golden image")});
            let job = scan(&app, body).await;
            assert_eq!(job["state"], "succeeded", "{backend:?}: {job:#}");
        }
        let (status, all) = app.get("/api/v1/images").await;
        assert_eq!(status, 200);
        let names: Vec<_> = all["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{} {} {}",
                    i["name"].as_str().unwrap(),
                    i["version"].as_str().unwrap(),
                    i["state"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "ubuntu 24.04 current",
                "rocky 9.4 current",
                "rocky 9.3 deprecated"
            ],
            "{backend:?}"
        );
        let (_, found) = app.get("/api/v1/images?q=UBUNTU").await;
        assert_eq!(found["images"].as_array().unwrap().len(), 1, "{backend:?}");
        let (_, current) = app.get("/api/v1/images?name=rocky&state=current").await;
        assert_eq!(current["images"][0]["version"], "9.4");
        assert!(current["images"][0]["sha256"].as_str().unwrap().len() == 64);
        assert!(current["images"][0]["links"]["job"]
            .as_str()
            .unwrap()
            .starts_with("/jobs/"));
        let (status, _) = app.get("/api/v1/images?state=bogus").await;
        assert_eq!(status, 400);

        let (status, hist) = app.get("/api/v1/images/rocky").await;
        assert_eq!(status, 200);
        assert_eq!(hist["current"], "9.4");
        assert_eq!(hist["versions"].as_array().unwrap().len(), 2);
        let (status, _) = app.get("/api/v1/images/nothing-here").await;
        assert_eq!(status, 404);

        // Soft delete hides the record; the artifact stays; restore brings it back.
        let id = hist["versions"][1]["id"].as_i64().unwrap();
        let r = app
            .client
            .delete(app.url(&format!("/api/v1/images/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (_, rocky) = app.get("/api/v1/images?name=rocky").await;
        assert_eq!(rocky["images"].as_array().unwrap().len(), 1, "{backend:?}");
        let (_, with_deleted) = app.get("/api/v1/images?name=rocky&deleted=true").await;
        assert_eq!(with_deleted["images"].as_array().unwrap().len(), 2);
        let (_, hist) = app.get("/api/v1/images/rocky").await;
        assert_eq!(hist["versions"][1]["deleted"], true);
        assert!(app
            .data_dir
            .join("artifacts/vm-images/rocky/9.3/rocky-9.3.qcow2")
            .exists());
        let (status, restored) = app
            .post(&format!("/api/v1/images/{id}/restore"), json!({}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(restored["deleted"], false);
        let (_, rocky) = app.get("/api/v1/images?name=rocky").await;
        assert_eq!(rocky["images"].as_array().unwrap().len(), 2);
        let (status, _) = app.post("/api/v1/images/99999/restore", json!({})).await;
        assert_eq!(status, 404);

        // The dashboard pages.
        let (status, page) = app.get_text("/images?q=rocky").await;
        assert_eq!(status, 200);
        assert!(page.contains("href=\"/images/rocky\""), "{page}");
        assert!(page.contains("9.4") && !page.contains("ubuntu"));
        let (status, page) = app.get_text("/images/rocky").await;
        assert_eq!(status, 200);
        assert!(page.contains("deprecated") && page.contains("9.3"));
        let (_, home) = app.get_text("/").await;
        assert!(home.contains("href=\"/images\""));
        app.stop().await;
    }
}

// ---- Artifactory (the fake in tests/support/artifactory.rs)

use support::artifactory::{Auth, FakeArtifactory, ARCHIVE, REPO, TOKEN};
use vmscan::config::ArtifactStoreKind;

fn artifactory(cfg: &mut Config, fake: &FakeArtifactory, token: &str) {
    cfg.publish.store = ArtifactStoreKind::Artifactory;
    cfg.publish.artifactory.url = fake.url();
    cfg.publish.artifactory.repo = REPO.into();
    cfg.publish.artifactory.token = Some(token.to_string().into());
    cfg.publish.artifactory.backoff_ms = 20;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn job_error(job: &Value) -> String {
    job["error"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn publishes_to_artifactory_with_properties_and_archives_the_previous_version() {
    let images = Images::new();
    let fake = FakeArtifactory::start(Some(Auth::Bearer(TOKEN.into()))).await;
    let app = images
        .app(Backend::Sqlite, |c| {
            artifactory(c, &fake, TOKEN);
            c.publish.archive_repo = Some(ARCHIVE.into());
        })
        .await;
    let (url, bytes) = images.write("rocky-9.4-x86_64.qcow2", 20);
    // Every separator of the properties grammar, literally: one value back.
    let desc = "Rocky 9; CIS level 1, a|b=c \\ done";
    let job = scan(
        &app,
        json!({"url": url, "name": "rocky", "version": "9.4", "description": desc}),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let path = "rocky/9.4/rocky-9.4.qcow2";
    let item = fake.item(REPO, path).expect("deployed");
    assert_eq!(item.bytes, bytes);
    let prop = |p: &str, k: &str| fake.property(REPO, p, k);
    assert_eq!(prop(path, "vmscan.state").as_deref(), Some("current"));
    assert_eq!(prop(path, "vmscan.name").as_deref(), Some("rocky"));
    assert_eq!(prop(path, "vmscan.version").as_deref(), Some("9.4"));
    assert_eq!(prop(path, "vmscan.description").as_deref(), Some(desc));
    assert_eq!(
        prop(path, "vmscan.sha256").as_deref(),
        Some(item.sha256.as_str())
    );
    assert_eq!(prop(path, "vmscan.job_id").as_deref(), job["id"].as_str());
    assert!(prop(path, "vmscan.source_url")
        .unwrap()
        .starts_with("file://"));
    // The real user whose scan published it (the suite's admin token).
    assert_eq!(prop(path, "vmscan.deployed_by").as_deref(), Some("admin"));
    let d = &stage(&job, "publish")["detail"];
    assert_eq!(d["url"], format!("{}/{REPO}/{path}", fake.url()));
    assert_eq!(d["reused"], false);
    // The scan report lies next to the image, and the image names it.
    let report = "rocky/9.4/rocky-9.4.scan-report.json";
    let published: Value =
        serde_json::from_slice(&fake.item(REPO, report).expect("report deployed").bytes).unwrap();
    assert_eq!(published["publication"]["url"], d["url"]);
    assert_eq!(published["verdict"]["outcome"], "passed");
    assert_eq!(
        published["image"]["sha256"].as_str(),
        Some(sha256_hex(&bytes).as_str())
    );
    let html = fake
        .item(REPO, "rocky/9.4/rocky-9.4.scan-report.html")
        .expect("report deployed");
    assert!(String::from_utf8_lossy(&html.bytes).contains("rocky 9.4"));
    assert_eq!(prop(report, "vmscan.kind").as_deref(), Some("scan-report"));
    assert_eq!(
        prop(path, "vmscan.scan_report_json").as_deref(),
        Some(report)
    );
    assert_eq!(
        d["report_json_url"],
        format!("{}/{REPO}/{report}", fake.url())
    );
    // Unknown bytes: the checksum deploy got 404, then the full upload went through.
    let puts: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| {
            s.method == "PUT"
                && s.uri.contains(&format!("/artifactory/{REPO}/"))
                && !s.uri.contains("scan-report")
        })
        .collect();
    assert_eq!(puts.len(), 2, "{puts:#?}");
    assert!(puts[0].checksum_deploy && puts[0].status == 404 && puts[0].body_bytes == 0);
    assert!(!puts[1].checksum_deploy && puts[1].status == 201 && puts[1].body_bytes == bytes.len());

    let (url2, _) = images.write("rocky-9.5-x86_64.qcow2", 21);
    let job2 = scan(
        &app,
        json!({"url": url2, "name": "rocky", "version": "9.5"}),
    )
    .await;
    assert_eq!(job2["state"], "succeeded", "{job2:#}");
    assert_eq!(
        fake.property(REPO, "rocky/9.5/rocky-9.5.qcow2", "vmscan.state")
            .as_deref(),
        Some("current")
    );
    assert!(fake.item(REPO, path).is_none(), "moved away");
    assert!(fake.item(REPO, report).is_none(), "its report moved along");
    assert!(
        fake.item(ARCHIVE, report).is_some(),
        "next to it in the archive"
    );
    assert_eq!(
        fake.property(ARCHIVE, path, "vmscan.state").as_deref(),
        Some("deprecated")
    );
    let (_, hist) = app.get("/api/v1/images/rocky").await;
    assert_eq!(hist["versions"][1]["repo"], ARCHIVE);
    assert_eq!(
        hist["versions"][1]["url"],
        format!("{}/{ARCHIVE}/{path}", fake.url())
    );
    assert_eq!(hist["versions"][1]["state"], "deprecated");
    assert_eq!(hist["versions"][0]["state"], "current");
    assert_eq!(
        hist["versions"][1]["links"]["published_report"],
        format!(
            "{}/{ARCHIVE}/rocky/9.4/rocky-9.4.scan-report.html",
            fake.url()
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn promotes_across_three_versions_and_deletes_beyond_retention() {
    let images = Images::new();
    let fake = FakeArtifactory::start(Some(Auth::Bearer(TOKEN.into()))).await;
    let app = images
        .app(Backend::Sqlite, |c| {
            artifactory(c, &fake, TOKEN);
            c.publish.retention = 2;
        })
        .await;
    for (i, v) in ["1.0", "1.1", "1.2"].iter().enumerate() {
        let (url, _) = images.write(&format!("app-{v}.qcow2"), 30 + i as u8);
        let job = scan(&app, json!({"url": url, "name": "app", "version": v})).await;
        assert_eq!(job["state"], "succeeded", "{job:#}");
    }
    // The version beyond retention went with its scan report.
    assert_eq!(
        fake.paths(REPO),
        [
            "app/1.1/app-1.1.qcow2",
            "app/1.1/app-1.1.scan-report.html",
            "app/1.1/app-1.1.scan-report.json",
            "app/1.2/app-1.2.qcow2",
            "app/1.2/app-1.2.scan-report.html",
            "app/1.2/app-1.2.scan-report.json"
        ]
    );
    assert_eq!(
        fake.property(REPO, "app/1.1/app-1.1.qcow2", "vmscan.state")
            .as_deref(),
        Some("deprecated")
    );
    assert_eq!(
        fake.property(REPO, "app/1.2/app-1.2.qcow2", "vmscan.state")
            .as_deref(),
        Some("current")
    );
    let (_, hist) = app.get("/api/v1/images/app").await;
    let states: Vec<_> = hist["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
                v["purged_at"].is_i64(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("1.2".to_string(), "current".to_string(), false),
            ("1.1".to_string(), "deprecated".to_string(), false),
            ("1.0".to_string(), "deprecated".to_string(), true),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_checksum_deploy_skips_uploading_bytes_artifactory_already_has() {
    let images = Images::new();
    let fake = FakeArtifactory::start(Some(Auth::Bearer(TOKEN.into()))).await;
    let app = images
        .app(Backend::Sqlite, |c| artifactory(c, &fake, TOKEN))
        .await;
    let (url, bytes) = images.write("same.qcow2", 40);
    let first = scan(&app, json!({"url": url, "name": "same", "version": "1"})).await;
    assert_eq!(first["state"], "succeeded", "{first:#}");
    let before = fake.seen().len();
    let second = scan(&app, json!({"url": url, "name": "same", "version": "2"})).await;
    assert_eq!(second["state"], "succeeded", "{second:#}");
    assert_eq!(stage(&second, "publish")["detail"]["reused"], true);
    let puts: Vec<_> = fake.seen()[before..]
        .iter()
        .filter(|s| {
            s.method == "PUT"
                && s.uri.contains(&format!("/artifactory/{REPO}/"))
                && !s.uri.contains("scan-report")
        })
        .cloned()
        .collect();
    assert_eq!(puts.len(), 1, "only the checksum deploy: {puts:#?}");
    assert!(puts[0].checksum_deploy && puts[0].status == 201 && puts[0].body_bytes == 0);
    assert_eq!(fake.item(REPO, "same/2/same-2.qcow2").unwrap().bytes, bytes);
    assert!(app
        .log_text(second["id"].as_str().unwrap())
        .await
        .contains("nothing uploaded"));
    app.stop().await;
}

#[tokio::test]
async fn retries_5xx_and_a_connection_dropped_mid_upload() {
    let images = Images::new();
    let fake = FakeArtifactory::start(Some(Auth::Bearer(TOKEN.into()))).await;
    let app = images
        .app(Backend::Sqlite, |c| artifactory(c, &fake, TOKEN))
        .await;
    fake.fail_next(2);
    fake.drop_next_uploads(1);
    let (url, bytes) = images.write("flaky.qcow2", 50);
    let job = scan(&app, json!({"url": url, "name": "flaky", "version": "1"})).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(
        fake.item(REPO, "flaky/1/flaky-1.qcow2").unwrap().bytes,
        bytes
    );
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(fake.dropped(), 1, "the first upload was cut off");
    app.stop().await;
}

#[tokio::test]
async fn shows_401_403_and_a_missing_repository_verbatim_as_the_job_error() {
    let images = Images::new();
    let fake = FakeArtifactory::start(Some(Auth::Bearer(TOKEN.into()))).await;
    let (url, _) = images.write("denied.qcow2", 60);

    let app = images
        .app(Backend::Sqlite, |c| artifactory(c, &fake, "wrong-token"))
        .await;
    let job = scan(&app, json!({"url": url, "name": "denied", "version": "1"})).await;
    assert_eq!(job["state"], "failed");
    let e = job_error(&job);
    assert!(
        e.contains("Artifactory answered 401") && e.contains("Bad credentials"),
        "{e}"
    );
    assert!(!e.contains("wrong-token"), "the token is never shown: {e}");
    app.stop().await;

    let app = images
        .app(Backend::Sqlite, |c| {
            artifactory(c, &fake, TOKEN);
            c.publish.artifactory.repo = "no-such-repo".into();
        })
        .await;
    let job = scan(&app, json!({"url": url, "name": "denied", "version": "1"})).await;
    assert_eq!(job["state"], "failed");
    let e = job_error(&job);
    assert!(
        e.contains("404") && e.contains("Repository no-such-repo does not exist"),
        "{e}"
    );
    app.stop().await;

    fake.always(Some(403));
    let app = images
        .app(Backend::Sqlite, |c| artifactory(c, &fake, TOKEN))
        .await;
    let job = scan(&app, json!({"url": url, "name": "denied", "version": "1"})).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job_error(&job).contains("answered 403"),
        "{}",
        job_error(&job)
    );
    assert!(fake.paths(REPO).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_fake_rejects_wrong_checksum_headers_like_artifactory() {
    let fake = FakeArtifactory::start(None).await;
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{}/{REPO}/x/y.bin", fake.url()))
        .header(
            "X-Checksum-Sha1",
            "0000000000000000000000000000000000000000",
        )
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["status"], 409);
    assert!(fake.item(REPO, "x/y.bin").is_none());
}

/// GETs a report: status, content type, CSP and body.
async fn fetch_report(app: &TestApp, id: &str, ext: &str) -> (u16, String, String, String) {
    let r = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/report.{ext}")))
        .send()
        .await
        .unwrap();
    let header = |h: reqwest::header::HeaderName| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ctype = header(reqwest::header::CONTENT_TYPE);
    let csp = header(reqwest::header::CONTENT_SECURITY_POLICY);
    let status = r.status().as_u16();
    (status, ctype, csp, r.text().await.unwrap())
}

#[tokio::test]
async fn publishes_the_scan_report_next_to_the_image_and_serves_it_as_html_json_and_junit() {
    let checkers = support::report::checkers();
    for backend in backends() {
        let images = Images::new();
        let app = images.app(backend, |_| {}).await;
        let (url, bytes) = images.write("rocky-9.4-x86_64.qcow2", 7);
        let sha = sha256_hex(&bytes);
        let job = scan(
            &app,
            json!({"url": url, "name": "rocky", "version": "9.4", "checksum": format!("sha256:{sha}"), "note": "release candidate"}),
        )
        .await;
        assert_eq!(job["state"], "succeeded", "{backend:?}: {job:#}");
        let id = job["id"].as_str().unwrap();

        // Published next to the image.
        let dir = app.data_dir.join("artifacts/vm-images/rocky/9.4");
        assert!(dir.join("rocky-9.4.qcow2").exists());
        let published_json =
            std::fs::read_to_string(dir.join("rocky-9.4.scan-report.json")).unwrap();
        let published_html =
            std::fs::read_to_string(dir.join("rocky-9.4.scan-report.html")).unwrap();
        let p: Value = serde_json::from_str(&published_json).unwrap();
        assert_eq!(p["verdict"]["outcome"], "passed");
        assert_eq!(p["job"]["id"], id);
        assert_eq!(p["publication"]["path"], "rocky/9.4/rocky-9.4.qcow2");
        assert_eq!(p["image"]["sha256"], sha);
        assert_eq!(p["image"]["checksum"]["verified"], true);
        assert_eq!(p["image"]["checksum"]["method"], "given_digest");
        assert!(published_html.contains(&sha) && published_html.contains("rocky 9.4"));

        // Served: JSON.
        let (status, ctype, _, body) = fetch_report(&app, id, "json").await;
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("application/json"), "{ctype}");
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["job"]["state"], "succeeded");
        assert_eq!(r["job"]["requested_by"], "admin");
        assert_eq!(r["job"]["note"], "release candidate");
        let names: Vec<&str> = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["fetch", "checksum", "publish"]);
        assert!(r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] == "passed"));
        assert_eq!(
            r["generator"]["config_sha256"],
            p["generator"]["config_sha256"]
        );
        assert_eq!(r["generator"]["vmscan_version"], env!("CARGO_PKG_VERSION"));
        assert!(
            r["agent"].is_null() && r["inventory"].is_null(),
            "not configured here"
        );
        if checkers {
            support::report::validate(&[&body, &published_json]);
        }

        // HTML: the facts a reader checks, under a policy that allows its style sheet only.
        let (status, ctype, csp, html) = fetch_report(&app, id, "html").await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert!(
            csp.contains("style-src 'sha256-") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        for fact in [
            "rocky-9.4-x86_64.qcow2",
            sha.as_str(),
            "verified",
            "digest given with the submission",
            "admin",
            "release candidate",
            "passed all 3 stages",
            id,
        ] {
            assert!(html.contains(fact), "the report shows {fact:?}:\n{html}");
        }

        // JUnit, as a CI tool reads it.
        let (status, ctype, _, xml) = fetch_report(&app, id, "xml").await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/xml"), "{ctype}");
        if checkers {
            let j = support::report::junit(&xml);
            let suites = j["suites"].as_array().unwrap();
            assert_eq!(suites.len(), 1, "{j}");
            assert_eq!(suites[0]["tests"], 3);
            assert_eq!(suites[0]["failures"], 0);
            let cases: Vec<&str> = suites[0]["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(cases, ["fetch", "checksum", "publish"]);
            assert!(suites[0]["cases"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["result"] == json!([])));
        }

        // The catalog links the report, live and published.
        let (_, list) = app.get("/api/v1/images?name=rocky").await;
        let links = &list["images"][0]["links"];
        assert_eq!(links["report"], format!("/api/v1/jobs/{id}/report.html"));
        assert!(links["published_report"]
            .as_str()
            .unwrap()
            .ends_with("/vm-images/rocky/9.4/rocky-9.4.scan-report.html"));
        let (_, page) = app.get_text("/images").await;
        assert!(
            page.contains(&format!("href=\"/api/v1/jobs/{id}/report.html\"")),
            "{page}"
        );
        assert!(
            page.contains("published copy") && page.contains("current: 9.4"),
            "{page}"
        );
        let (_, page) = app.get_text("/images/rocky").await;
        assert!(
            page.contains(&format!("/api/v1/jobs/{id}/report.xml")),
            "{page}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_failed_scan_reports_the_failed_stage_and_its_error_in_every_format() {
    let checkers = support::report::checkers();
    let images = Images::new();
    let app = images.app(Backend::Sqlite, |_| {}).await;
    let (url, _) = images.write("bad-1.qcow2", 8);
    let wrong = "0".repeat(64);
    let job = scan(
        &app,
        json!({"url": url, "name": "bad", "version": "1", "checksum": format!("sha256:{wrong}")}),
    )
    .await;
    assert_eq!(job["state"], "failed", "{job:#}");
    let id = job["id"].as_str().unwrap();

    let (status, _, _, body) = fetch_report(&app, id, "json").await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["verdict"]["outcome"], "failed");
    assert_eq!(r["verdict"]["failed_stage"], "checksum");
    let error = r["verdict"]["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("checksum mismatch") && error.contains(&wrong),
        "{error}"
    );
    let outcome = |n: &str| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()["outcome"]
            .clone()
    };
    assert_eq!(outcome("fetch"), "passed");
    assert_eq!(outcome("checksum"), "failed");
    assert_eq!(outcome("publish"), "skipped");
    assert_eq!(r["image"]["checksum"]["verified"], false);
    assert!(r["publication"].is_null());
    if checkers {
        support::report::validate(&[&body]);
    }

    let (_, _, _, html) = fetch_report(&app, id, "html").await;
    assert!(html.contains("failed at checksum"), "{html}");
    assert!(html.contains("checksum mismatch"), "{html}");
    assert!(
        html.contains("not run: the scan failed at checksum"),
        "{html}"
    );

    let (_, _, _, xml) = fetch_report(&app, id, "xml").await;
    if checkers {
        let j = support::report::junit(&xml);
        let suite = &j["suites"][0];
        assert_eq!(suite["failures"], 1, "{j}");
        assert_eq!(suite["skipped"], 1, "{j}");
        let case = |n: &str| {
            suite["cases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == n)
                .unwrap()["result"]
                .clone()
        };
        assert_eq!(case("fetch"), json!([]));
        assert_eq!(case("checksum")[0]["kind"], "failure");
        let message = case("checksum")[0]["message"].as_str().unwrap().to_string();
        assert!(message.contains("checksum mismatch"), "{message}");
        assert_eq!(case("publish")[0]["kind"], "skipped");
    }
    // Nothing was published, report included.
    assert!(!app.data_dir.join("artifacts/vm-images/bad").exists());
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_has_not_ended_has_no_report_yet() {
    let images = Images::new();
    // No worker: the job stays queued.
    let app = images
        .app(Backend::Sqlite, |c| c.worker.pool_size = 0)
        .await;
    let (url, _) = images.write("later.qcow2", 9);
    let job = app.submit(json!({"url": url})).await;
    let id = job["id"].as_str().unwrap();
    for ext in ["html", "json", "xml"] {
        let (status, ctype, _, body) = fetch_report(&app, id, ext).await;
        assert_eq!(status, 409, "{ext}: {body}");
        assert!(ctype.starts_with("application/json"));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["error"],
            format!("job {id} is queued: its report is written once it has ended")
        );
    }
    let (status, _, _, _) =
        fetch_report(&app, "0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60", "json").await;
    assert_eq!(status, 404);
    app.stop().await;
}
