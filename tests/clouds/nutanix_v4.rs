//! The Nutanix provider on Prism Central's v4 APIs against the same fake:
//! the conformance suite, one state shared with v3, the v4 write rules
//! (ETag/If-Match, NTNX-Request-Id), failed tasks, an unserved v4, and a
//! whole scan booting the image Prism pulled in a real QEMU guest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use vmscan::cluster::nutanix::v4::V4Provider;
use vmscan::cluster::nutanix::{self, ApiVersion, NutanixConfig, NutanixProvider};
use vmscan::cluster::{ClusterError, ClusterProvider, ImageFile, Owned};
use vmscan::domain::JobId;

use crate::conformance;
use crate::support::guest::banner_port;
use crate::support::nutanix::v4::CATEGORY;
use crate::support::nutanix::{FakeNutanix, Seen};

const KEY_SECRET: &str = "pull-key-secret-for-tests";

/// What vmscan's `GET /api/v1/jobs/{id}/image` does for Prism, reduced to
/// the contract: the file, only with the job's own key.
#[derive(Clone)]
struct PullServer {
    base: String,
    /// (job, key accepted) of each pull.
    pulls: Arc<Mutex<Vec<(String, bool)>>>,
}

type Pull = (Arc<Mutex<Option<PathBuf>>>, Arc<Mutex<Vec<(String, bool)>>>);

async fn serve_image(
    State((file, pulls)): State<Pull>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let job: JobId = id.parse().unwrap();
    let want = vmscan::identity::secret::image_key(KEY_SECRET, &job.to_string());
    let ok = q.get("key") == Some(&want);
    pulls.lock().unwrap().push((id, ok));
    if !ok {
        return StatusCode::FORBIDDEN.into_response();
    }
    let path = file.lock().unwrap().clone().unwrap();
    std::fs::read(path).unwrap().into_response()
}

impl PullServer {
    async fn start(file: &std::path::Path) -> PullServer {
        let st: Pull = (
            Arc::new(Mutex::new(Some(file.to_path_buf()))),
            Arc::default(),
        );
        let app = axum::Router::new()
            .route("/api/v1/jobs/{id}/image", axum::routing::get(serve_image))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        PullServer { base, pulls: st.1 }
    }
}

/// v4 against the fake: Prism pulls from `pull_base`, the category exists.
pub fn config(fake: &FakeNutanix, ssh_port: u16, pull_base: &str) -> NutanixConfig {
    NutanixConfig {
        api_version: ApiVersion::V4,
        image_url_base: pull_base.into(),
        image_key_secret: Some(SecretString::from(KEY_SECRET)),
        category_key: CATEGORY.0.into(),
        category_value: CATEGORY.1.into(),
        ..crate::nutanix::config(fake, ssh_port)
    }
}

async fn image() -> (tempfile::TempDir, ImageFile) {
    crate::nutanix::image().await
}

async fn setup() -> (
    FakeNutanix,
    PullServer,
    V4Provider,
    tempfile::TempDir,
    ImageFile,
) {
    let fake = FakeNutanix::start().await;
    let (dir, img) = image().await;
    let pull = PullServer::start(&img.path).await;
    let p = V4Provider::new("pc1", config(&fake, banner_port().await, &pull.base)).unwrap();
    (fake, pull, p, dir, img)
}

fn v4_requests(fake: &FakeNutanix) -> Vec<Seen> {
    fake.seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/api/"))
        .collect()
}

fn no_leftovers(fake: &FakeNutanix) {
    let left = fake.entities();
    assert!(left.is_empty(), "left in Prism: {left:?}");
}

#[tokio::test]
async fn nutanix_v4_passes_the_conformance_suite() {
    let (fake, pull, p, _d, img) = setup().await;
    conformance::lifecycle(&p, &img).await;
    conformance::teardown_after_no_address(&p, &img, || fake.make_next_vm_addressless()).await;
    no_leftovers(&fake);
    let seen = fake.seen();
    assert!(
        seen.iter().all(|s| s.path.starts_with("/api/")),
        "v4 only, no v3 request: {seen:?}"
    );
    // Every mutation carries an idempotency key; every VM write its ETag.
    for s in &seen {
        if s.method != "GET" {
            assert!(s.request_id.is_some(), "no NTNX-Request-Id: {s:?}");
        }
        if s.method != "GET" && s.path.starts_with("/api/vmm/v4.0/ahv/config/vms/") {
            assert!(s.if_match.is_some(), "no If-Match: {s:?}");
        }
    }
    assert!(
        seen.iter().all(|s| ![400, 412, 428].contains(&s.status)),
        "no refused write: {seen:?}"
    );
    // Prism pulled each image with the job's own key.
    let pulls = pull.pulls.lock().unwrap().clone();
    assert!(
        pulls.len() >= 3 && pulls.iter().all(|(_, ok)| *ok),
        "{pulls:?}"
    );
    assert!(fake.count("GET", "/api/prism/v4.0/config/tasks/ZXJnb24=:") >= 10);
}

/// A finished create task does not make the image usable: vmscan waits
/// until it reports its size, which is the qcow2's virtual size.
#[tokio::test]
async fn the_image_is_ready_when_it_reports_its_virtual_size_not_when_its_task_ends() {
    let (fake, _pull, p, _d, img) = setup().await;
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    assert_eq!((image.size, image.virtual_size), (img.file_size, 64 << 20));
    assert!(img.file_size < img.virtual_size);
    assert_eq!(fake.image_size_bytes(&image.name), Some(64 << 20));
    let path = format!("/api/vmm/v4.0/content/images/{}", image.id);
    let reads = fake
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path == path)
        .count();
    assert!(
        reads >= 2,
        "the image was read again until it had a size ({reads} reads)"
    );
    assert_eq!(
        fake.image_bytes(&image.name).unwrap(),
        std::fs::read(&img.path).unwrap(),
        "Prism pulled exactly the file"
    );
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

#[tokio::test]
async fn an_image_made_through_v4_is_seen_through_v3_and_back() {
    let (fake, _pull, v4, _d, img) = setup().await;
    let v3 = NutanixProvider::new("pc1", crate::nutanix::config(&fake, 22)).unwrap();
    let (a, b) = (JobId::new(), JobId::new());
    let from_v4 = v4.upload_image(a, &img, &|_, _| {}).await.unwrap();
    let from_v3 = v3.upload_image(b, &img, &|_, _| {}).await.unwrap();
    assert_eq!(from_v3.virtual_size, from_v4.virtual_size);
    let images = |owned: Vec<Owned>| {
        let mut v: Vec<(String, Option<JobId>)> = owned
            .into_iter()
            .filter_map(|o| match o {
                Owned::Image { id, job, .. } => Some((id, job)),
                _ => None,
            })
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let mut want = vec![(from_v4.id.clone(), Some(a)), (from_v3.id.clone(), Some(b))];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(images(v3.list_owned().await.unwrap()), want);
    assert_eq!(images(v4.list_owned().await.unwrap()), want);
    // Each deletes what the other made.
    v3.delete_image(&from_v4.id).await.unwrap();
    v4.delete_image(&from_v3.id).await.unwrap();
    no_leftovers(&fake);
}

/// A background update changes the VM's ETag between vmscan's read and its
/// write: Prism answers 412, vmscan reads the VM again and writes with the
/// fresh ETag (and a new request id: the refused write did nothing).
#[tokio::test]
async fn a_stale_etag_gets_412_and_the_write_is_made_again_after_reading_the_vm() {
    let (fake, _pull, p, _d, img) = setup().await;
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    fake.churn_next_vm_etags(2);
    let vm = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap();
    let power: Vec<Seen> = v4_requests(&fake)
        .into_iter()
        .filter(|s| s.path.ends_with("/$actions/power-on"))
        .collect();
    let statuses: Vec<u16> = power.iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![412, 412, 202], "{power:?}");
    assert_ne!(power[0].if_match, power[2].if_match, "a fresh ETag");
    assert_ne!(power[0].request_id, power[2].request_id);
    p.wait_ready(&vm, &conformance::deadlines(20))
        .await
        .unwrap();
    // Without If-Match at all, Prism refuses with 428.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/vmm/v4.0/ahv/config/vms/{}/$actions/power-off",
            fake.url(),
            vm.id
        ))
        .basic_auth(
            crate::support::nutanix::USER,
            Some(crate::support::nutanix::PASSWORD),
        )
        .header("NTNX-Request-Id", uuid::Uuid::now_v7().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 428);
    let body = resp.text().await.unwrap();
    assert!(body.contains("PLAT-10004"), "{body}");
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

/// The answer to a create is lost (a gateway times out after Prism did
/// it): the retry repeats the NTNX-Request-Id and gets the first answer,
/// so there is one image and one VM, not twins.
#[tokio::test]
async fn a_create_whose_answer_is_lost_is_retried_with_its_request_id_and_makes_no_twin() {
    let (fake, _pull, p, _d, img) = setup().await;
    let job = JobId::new();
    fake.lose_next_answers(1);
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    fake.lose_next_answers(1);
    let vm = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap();
    for path in [
        "/api/vmm/v4.0/content/images",
        "/api/vmm/v4.0/ahv/config/vms",
    ] {
        let posts: Vec<Seen> = v4_requests(&fake)
            .into_iter()
            .filter(|s| s.method == "POST" && s.path == path)
            .collect();
        let statuses: Vec<u16> = posts.iter().map(|s| s.status).collect();
        assert_eq!(statuses, vec![504, 202], "{path}: {posts:?}");
        assert_eq!(
            posts[0].request_id, posts[1].request_id,
            "{path}: the same key"
        );
    }
    let mut kinds: Vec<String> = fake.entities().into_iter().map(|(k, _)| k).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["image", "vm"], "no twin");
    p.wait_ready(&vm, &conformance::deadlines(20))
        .await
        .unwrap();
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

fn api_message(e: &ClusterError) -> String {
    match e {
        ClusterError::Api { message, .. } => message.clone(),
        other => panic!("expected an API error, got {other}"),
    }
}

/// A VM task that fails with an AppMessage: the error carries its code and
/// text, and the half-made VM is deleted at once.
#[tokio::test]
async fn a_failed_vm_task_names_its_app_message_and_leaves_no_vm() {
    let (fake, _pull, p, _d, img) = setup().await;
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    fake.fail_next_v4_task(
        "vm",
        "VMM-30422",
        "Insufficient memory on the cluster to create the VM",
    );
    let err = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap_err();
    let msg = api_message(&err);
    assert!(
        msg.contains(
            "(kVmCreate) FAILED: VMM-30422 Insufficient memory on the cluster to create the VM"
        ),
        "{msg}"
    );
    assert!(
        !fake.entities().iter().any(|(k, _)| k == "vm"),
        "the half-made VM was deleted"
    );
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_prism_central_without_v4_fails_at_once_suggesting_api_version_v3() {
    let (fake, _pull, p, _d, img) = setup().await;
    fake.stop_serving_v4();
    let err = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not serve /api/vmm/v4.0/content/images")
            && msg.contains("set api_version = \"v3\" for this Prism Central"),
        "{msg}"
    );
    assert!(!err.is_retryable(), "{msg}");
    assert_eq!(fake.seen().len(), 1, "no retries: {:?}", fake.seen());
}

#[tokio::test]
async fn v4_refuses_an_upload_source_and_needs_the_pull_address() {
    let fake = FakeNutanix::start().await;
    let build = |cfg: NutanixConfig| match nutanix::provider("pc1", cfg) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let mut cfg = config(&fake, 22, "http://vmscan.example:8080");
    cfg.image_source = Some(nutanix::ImageSource::Upload);
    let msg = build(cfg);
    assert!(
        msg.contains("api_version = \"v4\" has no endpoint that takes an image's bytes")
            && msg.contains("api_version = \"v3\" to upload"),
        "{msg}"
    );
    let msg = build(config(&fake, 22, ""));
    assert!(msg.contains("needs image_url_base"), "{msg}");
    // The default is v4 pulling from vmscan.
    let ok = nutanix::provider("pc1", config(&fake, 22, "http://vmscan.example:8080")).unwrap();
    assert_eq!(ok.name(), "nutanix:pc1");
}

/// A job whose image task fails with an AppMessage fails with that message
/// on its page, and nothing is left in Prism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_task_failing_with_an_app_message_fails_the_job_with_it() {
    use crate::support::fileserver::FileServer;
    use crate::support::guest::fixture_dir;
    use crate::support::{Backend, TestApp};
    use serde_json::json;
    use vmscan::domain::StageName;

    let fake = FakeNutanix::start().await;
    let images = FileServer::start(fixture_dir()).await;
    let port = free_port();
    let cfg = config(&fake, 22, &format!("http://127.0.0.1:{port}"));
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.pipeline.stages = vec![
            StageName::Fetch,
            StageName::Extract,
            StageName::Inspect,
            StageName::Convert,
            StageName::ClusterUpload,
            StageName::Teardown,
        ];
        c.pipeline.retry_limit = 0;
        c.cluster.qemu.enabled = false;
        c.cluster.nutanix.insert("pc1".into(), cfg);
    })
    .await;
    fake.fail_next_v4_task(
        "image",
        "VMM-30301",
        "Image creation failed: the source URL's certificate is not trusted",
    );
    let job = app
        .submit(json!({"url": images.url("disk.raw.tar.gz")}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.contains("cluster-upload")
            && err.contains("(kImageCreate) FAILED: VMM-30301 Image creation failed: the source URL's certificate is not trusted"),
        "{err}"
    );
    no_leftovers(&fake);
    app.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A whole scan on v4: Prism Central pulls the converted qcow2 from
/// vmscan, the VM is cloned from it, powered on by its action, and a real
/// QEMU guest boots those bytes with the cloud-init user-data sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_runs_end_to_end_on_nutanix_v4_with_a_real_guest() {
    use crate::support::fileserver::FileServer;
    use crate::support::guest::{fixture_dir, GuestBackend};
    use crate::support::{stage, Backend, TestApp};
    use serde_json::json;

    let guest = GuestBackend::start().await;
    let fake = FakeNutanix::start_with(Some(guest.clone())).await;
    let images = FileServer::start(fixture_dir()).await;
    let port = free_port();
    let cfg = config(&fake, guest.port(), &format!("http://127.0.0.1:{port}"));
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        c.pipeline.retry_limit = 2;
        c.pipeline.retry_backoff_secs = 1;
        c.vm.port_secs = 120;
        c.vm.login_secs = 60;
        c.cluster.qemu.enabled = false;
        c.cluster.nutanix.insert("pc1".into(), cfg);
    })
    .await;
    let started = Instant::now();
    let job = app
        .submit(json!({"url": images.url("disk.raw.tar.gz")}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(300)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\n{}",
        app.log_text(id).await
    );
    eprintln!(
        "whole scan on Nutanix v4: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        stage(&done, "cluster-upload")["detail"]["cluster"],
        "nutanix:pc1"
    );
    crate::nutanix::scan_left_nothing(&done, &fake, &guest).await;
    let seen = fake.seen();
    assert!(
        seen.iter().all(|s| s.path.starts_with("/api/")),
        "v4 only: {seen:?}"
    );
    let power_ons = seen
        .iter()
        .filter(|s| s.path.ends_with("/$actions/power-on"))
        .count();
    assert_eq!(power_ons, 1, "powered on by its action, once");
    app.stop().await;
}

/// Windows on v4: the sysprep answer file (`Sysprep` / `Unattendxml`) with
/// the hostname and the job's own password, XML-escaped.
#[tokio::test]
async fn a_windows_vm_gets_its_sysprep_answer_file_through_v4() {
    let fake = FakeNutanix::start().await;
    let (_d, img) = image().await;
    let pull = PullServer::start(&img.path).await;
    let mut cfg = config(&fake, 22, &pull.base);
    cfg.sysprep_unattend_xml =
        "<unattend><ComputerName>{hostname}</ComputerName><Password>{admin_password}</Password></unattend>".into();
    let p = V4Provider::new("pc1", cfg).unwrap();
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    let mut spec = conformance::spec(job, image.clone());
    spec.os = vmscan::domain::OsFamily::Windows;
    spec.admin_password = Some(SecretString::from("P<w>&1"));
    let vm = p.create_vm(&spec).await.unwrap();
    assert_eq!(vm.detail["admin_password_set"], true);
    assert_eq!(vm.detail["api_version"], "v4");
    let sent = fake.last_vm_customization().unwrap();
    use base64::Engine;
    let xml = base64::engine::general_purpose::STANDARD
        .decode(sent["sysprep"]["unattend_xml"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(xml).unwrap(),
        format!(
            "<unattend><ComputerName>{}</ComputerName><Password>P&lt;w&gt;&amp;1</Password></unattend>",
            spec.hostname
        )
    );
    assert_eq!(sent["sysprep"]["install_type"], "PREPARED");
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

#[tokio::test]
async fn v4_server_errors_are_retried_with_back_off() {
    let (fake, _pull, p, _d, img) = setup().await;
    fake.fail_next_requests(2);
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    assert_eq!(&statuses[..3], &[500, 500, 200], "{statuses:?}");
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

/// Names that are not in Prism (or a source Prism cannot reach) fail with
/// what is missing, and the pull key Prism was given stays out of the error.
#[tokio::test]
async fn missing_names_and_an_unreachable_source_fail_clearly() {
    let fake = FakeNutanix::start().await;
    let (_d, img) = image().await;
    let pull = PullServer::start(&img.path).await;
    for (field, value, want) in [
        (
            "cluster",
            "nope",
            "no cluster named \"nope\" in Prism Central",
        ),
        (
            "subnet",
            "nope",
            "no subnet named \"nope\" in Prism Central",
        ),
        (
            "category",
            "nope",
            "no category named \"VmscanOwner: nope\" in Prism Central",
        ),
    ] {
        let mut cfg = config(&fake, 22, &pull.base);
        match field {
            "cluster" => cfg.cluster_name = value.into(),
            "subnet" => cfg.subnet_name = value.into(),
            _ => cfg.category_value = value.into(),
        }
        let p = V4Provider::new("pc1", cfg).unwrap();
        let err = p
            .upload_image(JobId::new(), &img, &|_, _| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // Prism cannot reach vmscan: the task fails saying so, without the key.
    let mut cfg = config(&fake, 22, "http://127.0.0.1:9");
    cfg.max_attempts = 1;
    let p = V4Provider::new("pc1", cfg).unwrap();
    let job = JobId::new();
    let err = p.upload_image(job, &img, &|_, _| {}).await.unwrap_err();
    let msg = err.to_string();
    let key = vmscan::identity::secret::image_key(KEY_SECRET, &job.to_string());
    assert!(msg.contains("Could not access the URL"), "{msg}");
    assert!(
        !msg.contains(&key) && msg.contains("(the job's pull key)"),
        "{msg}"
    );
    no_leftovers(&fake);
}
