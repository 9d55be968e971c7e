//! Catalog integrity: published versions never change, a name belongs to its
//! owner, only admins promote. The publish set-up of tests/publish.rs:
//! intake stages and the local artifact store, so no VM boots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use vmscan::config::Config;
use vmscan::domain::StageName;

use crate::support::{backends, stage, Backend, TestApp};
use crate::{audit, error_of, get_with, post_with};

const WAIT: Duration = Duration::from_secs(60);

/// Source images live here; file:// URLs may read it.
pub struct Images {
    pub dir: tempfile::TempDir,
}

impl Images {
    pub fn new() -> Self {
        Images {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("file://{}", self.path(name).display())
    }

    /// A small image (64 KiB of patterned bytes, distinct per `seed`).
    pub fn write(&self, name: &str, seed: u8) -> (String, Vec<u8>) {
        let bytes: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(self.path(name), &bytes).unwrap();
        (self.url(name), bytes)
    }

    pub async fn app(&self, backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let root = self.dir.path().to_path_buf();
        TestApp::spawn(backend, move |cfg| {
            cfg.fetch.allowed_roots = vec![root];
            cfg.pipeline.stages = vec![StageName::Fetch, StageName::Checksum, StageName::Publish];
            tweak(cfg);
        })
        .await
    }

    /// Submits as the suite's admin and waits for the job to end.
    pub async fn scan(&self, app: &TestApp, body: Value) -> Value {
        let job = app.submit(body).await;
        app.wait_final(job["id"].as_str().unwrap(), WAIT).await
    }
}

fn sidecar(file: &Path) -> Value {
    let p = PathBuf::from(format!("{}.properties.json", file.display()));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Submits as `token` (expects 201) and waits for the job to end.
async fn scan_as(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, job) = post_with(&app.base, token, "/api/v1/jobs", body.clone()).await;
    assert_eq!(status, 201, "submit {body}: {job}");
    app.wait_final(job["id"].as_str().unwrap(), WAIT).await
}

async fn retry_as(app: &TestApp, token: &str, id: &str) -> Value {
    let runs = |j: &Value| j["runs"].as_array().map_or(0, |r| r.len());
    let before = runs(&app.job(id).await);
    let (status, body) = post_with(
        &app.base,
        token,
        &format!("/api/v1/jobs/{id}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "retry {id}: {body}");
    // Queued again; wait for the new run to end.
    app.wait_for(id, WAIT, |j| {
        matches!(j["state"].as_str(), Some("succeeded" | "failed")) && runs(j) > before
    })
    .await
}

/// `(version, state, job_id, sha256)` of each record of `name`, newest first.
async fn versions(app: &TestApp, name: &str) -> Vec<(String, String, String, String)> {
    let (status, hist) = app.get(&format!("/api/v1/images/{name}")).await;
    assert_eq!(status, 200, "{hist}");
    hist["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
                v["job_id"].as_str().unwrap_or("").to_string(),
                v["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_versions_are_immutable_names_are_owned_and_only_admins_promote() {
    for backend in backends() {
        let images = Images::new();
        let app = images.app(backend, |_| {}).await;
        let bob = app.token_for("bob", "requester").await;
        let carol = app.token_for("carol", "requester").await;
        let root = app.data_dir.join("artifacts/vm-images/app");

        // Two jobs pass the submit checks while "app" is unpublished; their
        // files are not there yet, so both fail at fetch.
        let bob_dup = scan_as(
            &app,
            &bob,
            json!({"url": images.url("dup.qcow2"), "name": "app", "version": "1"}),
        )
        .await;
        assert_eq!(bob_dup["state"], "failed", "{bob_dup:#}");
        let carols = scan_as(
            &app,
            &carol,
            json!({"url": images.url("carol.qcow2"), "name": "app", "version": "2"}),
        )
        .await;
        assert_eq!(carols["state"], "failed", "{carols:#}");

        // bob publishes app 1: the name is now his.
        let (url, bytes) = images.write("app-1.qcow2", 1);
        let first = scan_as(
            &app,
            &bob,
            json!({"url": url, "name": "app", "version": "1"}),
        )
        .await;
        assert_eq!(first["state"], "succeeded", "{backend:?}: {first:#}");
        let first_id = first["id"].as_str().unwrap().to_string();
        let recorded = versions(&app, "app").await;
        assert_eq!(recorded.len(), 1);
        let (ref v1, ref s1, ref j1, ref sha1) = recorded[0];
        assert_eq!(
            (v1.as_str(), s1.as_str(), j1.as_str()),
            ("1", "current", first_id.as_str())
        );
        let (_, hist) = app.get("/api/v1/images/app").await;
        assert_eq!(hist["owner"]["owner_user"], "bob", "{hist}");
        assert_eq!(hist["versions"][0]["published_by"], "bob");
        let artifact = root.join("1/app-1.qcow2");
        assert_eq!(
            sidecar(&artifact)["properties"]["vmscan.deployed_by"],
            "bob"
        );

        // Submitting app 1 again is refused up front...
        let (status, body) = post_with(
            &app.base,
            &bob,
            "/api/v1/jobs",
            json!({"url": url, "name": "app", "version": "1"}),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(error_of(&body).contains("already published"), "{body}");
        // ...and the job that got past that check fails at publish.
        images.write("dup.qcow2", 9);
        let dup = retry_as(&app, &bob, bob_dup["id"].as_str().unwrap()).await;
        assert_eq!(dup["state"], "failed", "{backend:?}: {dup:#}");
        let publish = stage(&dup, "publish");
        assert_eq!(publish["state"], "failed", "{dup:#}");
        let err = dup["error"].as_str().unwrap_or("");
        assert!(
            err.contains("app 1 is already published")
                && err.contains(&format!("job {first_id}"))
                && err.contains("published versions never change"),
            "{err}"
        );
        // The first record is untouched and nothing was demoted.
        assert_eq!(versions(&app, "app").await, recorded, "{backend:?}");
        assert_eq!(std::fs::read(&artifact).unwrap(), bytes);
        assert_eq!(sidecar(&artifact)["properties"]["vmscan.state"], "current");
        assert_eq!(
            sidecar(&artifact)["properties"]["vmscan.sha256"],
            sha1.as_str()
        );

        // carol does not own "app": refused at submit, and at publish for
        // the job that was submitted before bob owned it.
        let (url2, _) = images.write("carol.qcow2", 2);
        let (status, body) = post_with(
            &app.base,
            &carol,
            "/api/v1/jobs",
            json!({"url": url2, "name": "app", "version": "3"}),
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(error_of(&body).contains("belongs to bob"), "{body}");
        let refused = retry_as(&app, &carol, carols["id"].as_str().unwrap()).await;
        assert_eq!(refused["state"], "failed", "{backend:?}: {refused:#}");
        let err = refused["error"].as_str().unwrap_or("");
        assert!(
            err.contains("not publishing")
                && err.contains("belongs to bob")
                && err.contains("carol may not"),
            "{err}"
        );
        assert_eq!(
            versions(&app, "app").await,
            recorded,
            "{backend:?}: nothing new, bob's 1 still current"
        );
        assert!(!root.join("2").exists());

        // The owner publishes the next version; the old one is demoted.
        let (url3, _) = images.write("app-3.qcow2", 3);
        let third = scan_as(
            &app,
            &bob,
            json!({"url": url3, "name": "app", "version": "3"}),
        )
        .await;
        assert_eq!(third["state"], "succeeded", "{backend:?}: {third:#}");
        let now: Vec<_> = versions(&app, "app")
            .await
            .into_iter()
            .map(|v| (v.0, v.1))
            .collect();
        assert_eq!(
            now,
            [
                ("3".into(), "current".into()),
                ("1".into(), "deprecated".into())
            ]
        );
        assert_eq!(
            sidecar(&root.join("3/app-3.qcow2"))["properties"]["vmscan.deployed_by"],
            "bob"
        );

        // Promoting the older version: not for a requester (not even the owner)...
        let (_, hist) = app.get("/api/v1/images/app").await;
        let old_id = hist["versions"][1]["id"].as_i64().unwrap();
        for t in [&bob, &carol] {
            let (status, body) = post_with(
                &app.base,
                t,
                &format!("/api/v1/images/{old_id}/promote"),
                json!({}),
            )
            .await;
            assert_eq!(status, 403, "{body}");
            assert_eq!(body["required_role"], "admin");
        }
        let now: Vec<_> = versions(&app, "app")
            .await
            .into_iter()
            .map(|v| (v.0, v.1))
            .collect();
        assert_eq!(
            now[0],
            ("3".to_string(), "current".to_string()),
            "a refused promote changes nothing"
        );
        // ...an admin may, and the audit trail says so.
        let (status, body) = app
            .post(&format!("/api/v1/images/{old_id}/promote"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["deprecated"], json!(["3"]));
        assert_eq!(body["image"]["state"], "current");
        let now: Vec<_> = versions(&app, "app")
            .await
            .into_iter()
            .map(|v| (v.0, v.1))
            .collect();
        assert_eq!(
            now,
            [
                ("3".into(), "deprecated".into()),
                ("1".into(), "current".into())
            ]
        );
        let (_, current) =
            get_with(&app.base, &carol, "/api/v1/images?name=app&state=current").await;
        assert_eq!(current["images"][0]["version"], "1");
        let promoted = audit(&app, "action=image_promoted").await;
        assert_eq!(promoted.len(), 1, "{promoted:?}");
        assert_eq!(promoted[0]["actor"], "admin");
        assert_eq!(promoted[0]["outcome"], "ok");
        assert_eq!(promoted[0]["object"], format!("image:{old_id}"));
        assert!(
            promoted[0]["detail"]
                .as_str()
                .unwrap()
                .contains("app 1 is current; deprecated 3"),
            "{promoted:?}"
        );
        // The refusals are in the trail as well.
        let denied = audit(&app, "action=denied&actor=bob").await;
        assert!(
            denied
                .iter()
                .any(|e| e["object"] == format!("POST /api/v1/images/{old_id}/promote")),
            "{denied:?}"
        );
        app.stop().await;
    }
}

/// A name an admin gave to a directory group is published by the group's
/// members, not by other requesters; with `auth.new_image_names = "admins"`
/// only admins start new names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_owned_names_and_admin_only_new_names() {
    use vmscan::domain::Role;
    use vmscan::store::auth::NewUser;
    const TEAM: &str = "cn=Template-Builders,ou=groups,dc=example,dc=com";
    let images = Images::new();
    let app = images
        .app(Backend::Sqlite, |c| {
            c.auth.new_image_names = vmscan::config::NewNames::Admins;
        })
        .await;
    // Two directory users as a login would have copied them in.
    for (name, groups) in [("gina", vec![TEAM.to_string()]), ("hank", vec![])] {
        app.store
            .upsert_directory_user(&NewUser {
                name: name.into(),
                display_name: None,
                email: Some(format!("{name}@example.com")),
                role: Role::Requester,
                source: "ldap".into(),
                password_hash: None,
                groups,
            })
            .await
            .unwrap();
    }
    let gina = app.token_for("gina", "requester").await;
    let hank = app.token_for("hank", "requester").await;
    let (url, _) = images.write("centos.qcow2", 3);
    // A new name: requesters may not start it.
    let (s, e) = post_with(
        &app.base,
        &gina,
        "/api/v1/jobs",
        json!({"url": url, "name": "centos", "version": "1"}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert!(
        error_of(&e).contains("only admins may publish new names"),
        "{e}"
    );
    // The admin hands the name to the group (the DN compared as directories do).
    let client = app.client.clone();
    let r = client
        .put(app.url("/api/v1/images/centos/owner"))
        .json(&json!({"group": "CN=template-builders, OU=groups, DC=example, DC=com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let done = scan_as(
        &app,
        &gina,
        json!({"url": url, "name": "centos", "version": "1"}),
    )
    .await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let (_, h) = app.get("/api/v1/images/centos").await;
    assert_eq!(h["current"], "1", "{h}");
    // Someone outside the group may not add a version.
    let (s, e) = post_with(
        &app.base,
        &hank,
        "/api/v1/jobs",
        json!({"url": url, "name": "centos", "version": "2"}),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert!(error_of(&e).contains("belongs to group"), "{e}");
    app.stop().await;
}
