//! The Nutanix provider against the fake Prism Central: the conformance
//! suite, then the failures Prism really produces, and HTTPS.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use vmscan::cluster::nutanix::{ApiVersion, NutanixConfig, NutanixProvider};
use vmscan::cluster::{ClusterError, ClusterProvider, ImageFile};
use vmscan::domain::JobId;

use crate::conformance;
use crate::support::guest::banner_port;
use crate::support::nutanix::{FakeNutanix, CLUSTER, PASSWORD, SUBNET, USER};
use crate::support::tls;

pub fn config(fake: &FakeNutanix, ssh_port: u16) -> NutanixConfig {
    NutanixConfig {
        url: fake.url(),
        api_version: ApiVersion::V3,
        username: USER.into(),
        password: Some(SecretString::from(PASSWORD)),
        cluster_name: CLUSTER.into(),
        subnet_name: SUBNET.into(),
        ssh_port,
        task_poll_ms: 50,
        vm_poll_ms: 50,
        retry_backoff_ms: 50,
        max_attempts: 3,
        task_timeout_secs: 20,
        ..NutanixConfig::default()
    }
}

async fn provider(fake: &FakeNutanix) -> NutanixProvider {
    NutanixProvider::new("pc1", config(fake, banner_port().await)).unwrap()
}

/// A small qcow2 image (real bytes, so sizes and contents can be compared):
/// like every qcow2, its file is much smaller than its 64 MiB disk.
pub async fn image() -> (tempfile::TempDir, ImageFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let file = ImageFile::read(&path).await.unwrap();
    assert!(file.file_size < file.virtual_size, "{file:?}");
    (dir, file)
}

fn no_leftovers(fake: &FakeNutanix) {
    let left = fake.entities();
    assert!(left.is_empty(), "left in Prism: {left:?}");
}

#[tokio::test]
async fn nutanix_passes_the_conformance_suite() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    conformance::lifecycle(&p, &img).await;
    conformance::teardown_after_no_address(&p, &img, || fake.make_next_vm_addressless()).await;
    no_leftovers(&fake);
    // Tasks took several polls each; the VM spec is what Prism expects.
    assert!(fake.count("GET", "/tasks/") >= 10, "tasks were polled");
}

#[tokio::test]
async fn the_vm_is_cloned_from_the_image_powered_on_and_customized() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    assert_eq!(
        fake.image_bytes(&image.name).unwrap(),
        std::fs::read(&img.path).unwrap(),
        "Prism holds exactly the bytes sent"
    );
    let spec = conformance::spec(job, image.clone());
    let vm = p.create_vm(&spec).await.unwrap();
    let sent = fake.vm_spec(&spec.name).unwrap();
    assert_eq!(sent["resources"]["power_state"], "ON");
    assert_eq!(
        sent["resources"]["disk_list"][0]["data_source_reference"]["uuid"],
        image.id
    );
    use base64::Engine;
    let ud = base64::engine::general_purpose::STANDARD
        .decode(
            sent["resources"]["guest_customization"]["cloud_init"]["user_data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(String::from_utf8(ud).unwrap(), spec.user_data);
    assert_eq!(sent["description"], format!("vmscan job {}", job.as_uuid()));
    let ready = p
        .wait_ready(&vm, &conformance::deadlines(20))
        .await
        .unwrap();
    assert_eq!(ready.host.as_deref(), Some("127.0.0.1"));
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

/// Real Prism reports `size_bytes` as the disk it made (a qcow2's virtual
/// size), and checks the sha256 sent with the bytes.
#[tokio::test]
async fn a_qcow2_passes_the_size_check_by_its_virtual_size_and_is_sent_with_its_sha256() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(fake.image_size_bytes(&image.name), Some(64 << 20));
    assert_eq!((image.size, image.virtual_size), (img.file_size, 64 << 20));
    assert_eq!(
        fake.upload_checksums(),
        vec![Some(("SHA_256".to_string(), img.sha256().to_string()))]
    );
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_size_prism_does_not_confirm_fails_the_upload_naming_both_sizes() {
    let fake = FakeNutanix::start().await;
    let mut cfg = config(&fake, 22);
    cfg.max_attempts = 1;
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    // vmscan believes in a bigger disk than the file holds.
    let wrong = ImageFile::new(
        img.path.clone(),
        img.format,
        img.file_size,
        1 << 30,
        img.sha256(),
    )
    .unwrap();
    let err = p
        .upload_image(JobId::new(), &wrong, &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "Prism Central reports a disk of {} bytes for the image, vmscan's holds {} bytes (virtual size)",
            64 << 20,
            1u64 << 30
        )),
        "{err}"
    );
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_bit_flipped_in_transit_fails_prisms_checksum_and_the_upload_is_sent_again() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    fake.corrupt_next_upload();
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(fake.count("PUT", "/images/"), 2, "uploaded twice");
    assert_eq!(
        fake.image_bytes(&image.name).unwrap(),
        std::fs::read(&img.path).unwrap()
    );
    let images = fake
        .entities()
        .into_iter()
        .filter(|(k, _)| k == "image")
        .count();
    assert_eq!(images, 1, "the corrupt image was deleted");
    p.delete_image(&image.id).await.unwrap();
}

/// The fake answers in the shapes real Prism Central was recorded with.
#[tokio::test]
async fn the_fake_answers_like_recorded_prism_central() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}/api/nutanix/v3{path}", fake.url()))
            .basic_auth(USER, Some(PASSWORD))
    };
    // Headers of every answer (prism-go-client keploy recordings).
    let resp = call(reqwest::Method::GET, &format!("/images/{}", image.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ntnx-env"], "pc");
    assert!(resp.headers()["x-ntnx-product"]
        .to_str()
        .unwrap()
        .starts_with("pc."));
    let one: serde_json::Value = resp.json().await.unwrap();
    let r = &one["status"]["resources"];
    assert_eq!(r["source_uri"], format!("file://{}", image.id));
    assert_eq!(r["size_bytes"], 64 << 20);
    assert!(one["status"]["execution_context"]["task_uuid"].is_array());
    // A list names the tasks task_uuids (terraform-provider-nutanix out.txt).
    let list: serde_json::Value = call(reqwest::Method::POST, "/images/list")
        .json(&serde_json::json!({"kind": "image"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ec = &list["entities"][0]["status"]["execution_context"];
    assert!(
        ec["task_uuids"].is_array() && ec.get("task_uuid").is_none(),
        "{ec}"
    );
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_with_a_clear_error() {
    let fake = FakeNutanix::start().await;
    let mut cfg = config(&fake, 22);
    cfg.password = Some(SecretString::from("wrong"));
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    let err = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 401") && msg.contains("Authentication required"),
        "{msg}"
    );
    assert!(!err.is_retryable(), "401 is never retried");
    assert!(!msg.contains("wrong"), "the password does not leak: {msg}");
    assert_eq!(fake.seen().len(), 1, "no retries: {:?}", fake.seen());
}

#[tokio::test]
async fn server_errors_are_retried_with_back_off() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    fake.fail_next_requests(2);
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    assert_eq!(
        &statuses[..3],
        &[500, 500, 200],
        "two 500s, then the retry: {statuses:?}"
    );
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_dropped_upload_deletes_the_half_made_image_and_starts_again() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    fake.drop_next_uploads(1);
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(fake.count("PUT", "/images/"), 2, "uploaded twice");
    assert_eq!(
        fake.count("POST", "/images"),
        2 + fake.count("POST", "/images/list")
    );
    assert_eq!(
        fake.count("DELETE", "/images/"),
        1,
        "the first image was deleted"
    );
    let images: Vec<_> = fake
        .entities()
        .into_iter()
        .filter(|(k, _)| k == "image")
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn a_failed_upload_task_is_reported_and_cleaned_up() {
    let fake = FakeNutanix::start().await;
    let mut cfg = config(&fake, 22);
    cfg.max_attempts = 1;
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    fake.fail_next_upload_task("Image upload failed: checksum mismatch on the storage container");
    let err = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("FAILED") && msg.contains("checksum mismatch on the storage container"),
        "{msg}"
    );
    assert!(err.is_retryable(), "a new upload may pass");
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_failed_vm_task_shows_prisms_error_and_teardown_finds_the_vm() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    fake.fail_next_vm_task("Not enough memory on host to power on the VM");
    let err = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Not enough memory on host to power on the VM"),
        "{err}"
    );
    // The half-made VM is listed as the job's, so teardown removes it.
    let owned = p.list_owned().await.unwrap();
    for o in owned {
        match o {
            vmscan::cluster::Owned::Vm { id, job: j, .. } => {
                assert_eq!(j, Some(job));
                p.delete_vm(&id).await.unwrap();
            }
            vmscan::cluster::Owned::Image { id, .. } => p.delete_image(&id).await.unwrap(),
        }
    }
    no_leftovers(&fake);
}

#[tokio::test]
async fn a_conflicting_delete_is_retried() {
    let fake = FakeNutanix::start().await;
    let p = provider(&fake).await;
    let (_d, img) = image().await;
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    fake.conflict_next_deletes(1);
    p.delete_image(&image.id).await.unwrap();
    let deletes: Vec<u16> = fake
        .seen()
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.status)
        .collect();
    assert_eq!(deletes, vec![409, 202]);
    no_leftovers(&fake);
}

#[tokio::test]
async fn unknown_cluster_or_subnet_names_are_named_in_the_error() {
    let fake = FakeNutanix::start().await;
    let mut cfg = config(&fake, 22);
    cfg.subnet_name = "no-such-net".into();
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    let err = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nutanix:pc1: no subnet named \"no-such-net\" in Prism Central"
    );
    assert!(!err.is_retryable());
    p.delete_image(&image.id).await.unwrap();
    // Prism Central itself is listed among the clusters, and not chosen.
    let mut cfg = config(&fake, 22);
    cfg.cluster_name = "prism-central".into();
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let job = JobId::new();
    let image = p.upload_image(job, &img, &|_, _| {}).await.unwrap();
    let err = p
        .create_vm(&conformance::spec(job, image.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Api { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no cluster named \"prism-central\""),
        "{err}"
    );
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn a_task_that_never_ends_times_out_with_its_state() {
    let fake = FakeNutanix::start().await;
    fake.set_task_time(Duration::from_secs(30));
    let mut cfg = config(&fake, 22);
    cfg.task_timeout_secs = 1;
    cfg.max_attempts = 1;
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    let err = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("still"),
        "a task that never ends times out: {err}"
    );
}

/// Prism Central over HTTPS with a fresh self-signed certificate (as most
/// sites run it), and that certificate in a PEM file to use as `ca_bundle`.
async fn https_prism() -> (FakeNutanix, tempfile::TempDir, PathBuf) {
    let (cert, key) = tls::self_signed();
    let fake = FakeNutanix::start_https(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("prism-ca.pem");
    std::fs::write(&bundle, cert).unwrap();
    (fake, dir, bundle)
}

#[tokio::test]
async fn https_with_the_certificate_as_ca_bundle_passes_the_conformance_suite() {
    let (fake, _dir, bundle) = https_prism().await;
    assert!(fake.url().starts_with("https://127.0.0.1:"));
    let mut cfg = config(&fake, banner_port().await);
    cfg.verify_tls = true;
    cfg.ca_bundle = Some(bundle);
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    conformance::lifecycle(&p, &img).await;
    no_leftovers(&fake);
    assert!(fake.tls_handshakes() >= 1);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_once_and_says_so() {
    let (fake, _dir, _bundle) = https_prism().await;
    let mut cfg = config(&fake, 22);
    cfg.verify_tls = true;
    cfg.ca_bundle = None;
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    let err = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    // The cause from reqwest's source chain, and what to do about it.
    assert!(
        msg.contains("invalid peer certificate") && msg.contains("ca_bundle"),
        "{msg}"
    );
    assert!(
        !err.is_retryable(),
        "a refused certificate never heals: {msg}"
    );
    assert_eq!(fake.tls_handshakes(), 1, "not retried with back-off");
    assert!(fake.seen().is_empty(), "no request got through");
}

#[tokio::test]
async fn https_without_verification_accepts_the_self_signed_certificate() {
    let (fake, _dir, _bundle) = https_prism().await;
    let mut cfg = config(&fake, 22);
    cfg.verify_tls = false;
    cfg.ca_bundle = None;
    let p = NutanixProvider::new("pc1", cfg).unwrap();
    let (_d, img) = image().await;
    let image = p
        .upload_image(JobId::new(), &img, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(
        fake.image_bytes(&image.name).unwrap(),
        std::fs::read(&img.path).unwrap()
    );
    p.delete_image(&image.id).await.unwrap();
    no_leftovers(&fake);
    assert!(fake.tls_handshakes() >= 1);
}

#[tokio::test]
async fn a_missing_or_non_pem_ca_bundle_is_a_config_error_naming_the_path() {
    let fake = FakeNutanix::start().await;
    let dir = tempfile::tempdir().unwrap();
    let build = |bundle: &std::path::Path| {
        let mut cfg = config(&fake, 22);
        cfg.ca_bundle = Some(bundle.to_path_buf());
        match NutanixProvider::new("pc1", cfg) {
            Ok(_) => panic!("{} was accepted as a CA bundle", bundle.display()),
            Err(ClusterError::Local(msg)) => msg,
            Err(other) => panic!("not a configuration error: {other}"),
        }
    };
    let missing = dir.path().join("missing.pem");
    let msg = build(&missing);
    assert!(
        msg.contains(&format!("ca_bundle {}: cannot read it", missing.display())),
        "{msg}"
    );
    let der = dir.path().join("prism-ca.der");
    std::fs::write(&der, b"\x30\x82\x01\x0a not PEM at all").unwrap();
    let msg = build(&der);
    assert!(
        msg.contains(&format!(
            "ca_bundle {}: holds no PEM certificate",
            der.display()
        )),
        "{msg}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let msg = build(&broken);
    assert!(
        msg.contains(&format!("ca_bundle {}: not a PEM file", broken.display())),
        "{msg}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let msg = build(&garbage);
    assert!(
        msg.contains(&format!(
            "ca_bundle {}: a certificate in it cannot be used",
            garbage.display()
        )),
        "{msg}"
    );
}

/// A whole scan on the fake Prism Central, with a real QEMU guest booted
/// from the bytes vmscan uploaded and the cloud-init user-data it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_runs_end_to_end_on_nutanix_with_a_real_guest() {
    use crate::support::fileserver::FileServer;
    use crate::support::guest::{fixture_dir, GuestBackend};
    use crate::support::{stage, Backend, TestApp};
    use serde_json::json;

    let guest = GuestBackend::start().await;
    let fake = FakeNutanix::start_with(Some(guest.clone())).await;
    let images = FileServer::start(fixture_dir()).await;
    let cfg = config(&fake, guest.port());
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        c.pipeline.retry_limit = 2;
        c.pipeline.retry_backoff_secs = 1;
        c.vm.port_secs = 120;
        c.vm.login_secs = 60;
        c.cluster.nutanix.insert("pc1".into(), cfg);
    })
    .await;
    let (_, clusters) = app.get("/api/v1/clusters").await;
    assert_eq!(
        clusters["clusters"],
        json!([
            {"name": "nutanix:pc1", "kind": "nutanix", "default": false,
             "endpoint": format!("Prism Central {}", fake.url())},
            {"name": "qemu-local", "kind": "qemu", "default": true},
        ])
    );
    // The form tells several Prism Centrals apart.
    let (_, index) = app.get_text("/").await;
    assert!(
        index.contains(&format!(
            ">nutanix:pc1 (Prism Central {})</option>",
            fake.url()
        )),
        "{index}"
    );
    let started = std::time::Instant::now();
    let job = app
        .submit(json!({"url": images.url("disk.raw.tar.gz"), "cluster": "nutanix:pc1"}))
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
        "whole scan on Nutanix v3: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(done["cluster"], "nutanix:pc1");
    let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
    assert!(
        page.contains("<dd class=\"mono\" id=\"job-cluster\">nutanix:pc1</dd>"),
        "{page}"
    );
    let upload = &stage(&done, "cluster-upload")["detail"];
    assert_eq!(upload["cluster"], "nutanix:pc1");
    // Which Prism Central, and how big the image is.
    let at = format!("Prism Central {}", fake.url());
    assert_eq!(upload["endpoint"], at.as_str());
    let log = app.log_text(id).await;
    assert!(
        log.lines()
            .any(|l| l.starts_with("uploading ")
                && l.ends_with(&format!(") to nutanix:pc1 at {at}"))),
        "{log}"
    );
    assert!(
        upload["size_human"].as_str().unwrap().ends_with("MiB"),
        "{upload}"
    );
    scan_left_nothing(&done, &fake, &guest).await;
    // An unknown cluster is refused at submit with the list to choose from.
    let (status, err) = app
        .post(
            "/api/v1/jobs",
            json!({"url": images.url("disk.raw.tar.gz"), "cluster": "nutanix:nope"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        err.to_string()
            .contains("choose one of: nutanix:pc1, qemu-local"),
        "{err}"
    );
    app.stop().await;
}

/// What a whole scan on Nutanix (either API) must show: the qcow2's disk
/// (bigger than its file) as Prism reports it, a VM reached over SSH, and
/// everything deleted, the guest included.
pub async fn scan_left_nothing(
    done: &serde_json::Value,
    fake: &FakeNutanix,
    guest: &crate::support::guest::GuestBackend,
) {
    use crate::support::stage;
    let upload = &stage(done, "cluster-upload")["detail"];
    let image = &upload["image"];
    assert_eq!(image["virtual_size"], 32 << 20, "{upload}");
    assert!(
        image["size"].as_u64().unwrap() < 32 << 20,
        "the qcow2 file is smaller than its disk: {upload}"
    );
    let vm = &stage(done, "vm-create")["detail"];
    assert_eq!(vm["cluster"], "nutanix:pc1");
    assert_eq!(vm["ssh_host"], "127.0.0.1");
    assert!(
        vm["host_key"].as_str().unwrap().starts_with("SHA256:"),
        "{vm}"
    );
    assert_eq!(stage(done, "teardown")["state"], "succeeded");
    for r in done["resources"].as_array().unwrap() {
        assert_eq!(r["provider"], "nutanix:pc1", "{r}");
        assert!(!r["deleted_at"].is_null(), "not deleted: {r}");
    }
    no_leftovers(fake);
    for _ in 0..50 {
        if guest.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(guest.running(), 0, "the guest was powered off with the VM");
}

/// `image_source = "url"`: Prism Central pulls the image from vmscan's
/// `/api/v1/jobs/{id}/image` within its create task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_url_mode_prism_pulls_the_image_from_vmscan() {
    use crate::support::fileserver::FileServer;
    use crate::support::guest::fixture_dir;
    use crate::support::{stage, Backend, TestApp};
    use serde_json::json;
    use vmscan::domain::StageName;

    let fake = FakeNutanix::start().await;
    let images = FileServer::start(fixture_dir()).await;
    // vmscan's own address must be known before it starts: reserve a port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&fake, 22);
    cfg.image_source = Some(vmscan::cluster::nutanix::ImageSource::Url);
    cfg.image_url_base = format!("http://127.0.0.1:{port}");
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
        c.vm.delete_image = false;
        c.cluster.qemu.enabled = false;
        c.cluster.nutanix.insert("pc1".into(), cfg);
    })
    .await;
    let job = app
        .submit(json!({"url": images.url("disk.raw.tar.gz")}))
        .await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        job["cluster"], "nutanix:pc1",
        "the only cluster is the default"
    );
    let done = app.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\n{}",
        app.log_text(id).await
    );
    let upload = &stage(&done, "cluster-upload")["detail"];
    let name = upload["image"]["name"].as_str().unwrap();
    let converted = stage(&done, "convert")["detail"]["path"].as_str().unwrap();
    assert_eq!(
        fake.image_bytes(name).unwrap(),
        std::fs::read(converted).unwrap(),
        "Prism pulled exactly the converted image"
    );
    assert_eq!(fake.count("PUT", "/images/"), 0, "nothing was pushed");
    // Without the job's key (what Prism was given) nothing is served.
    let (status, body) = app.get(&format!("/api/v1/jobs/{id}/image")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .get(&format!("/api/v1/jobs/{id}/image?key={}", "0".repeat(64)))
        .await;
    assert_eq!(status, 403);
    // Outside its upload the image is not served, even with the key.
    let secret = app
        .store
        .server_secret("image_key", "unused")
        .await
        .unwrap();
    let key = vmscan::identity::secret::image_key(&secret, id);
    let (status, body) = app.get(&format!("/api/v1/jobs/{id}/image?key={key}")).await;
    assert_eq!(status, 404);
    assert!(
        body.to_string()
            .contains("served only during cluster-upload"),
        "{body}"
    );
    app.stop().await;
}

/// Upload throughput against the fake Prism Central: `curl -T` to the same
/// `PUT /images/{uuid}/file` endpoint (the baseline) and then the provider's
/// whole upload (create, stream, tasks), on the same file in one run.
/// Run by `scripts/bench-cloud-upload.sh` (release build, a large file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_nutanix_upload() {
    use std::time::Instant;
    let file = PathBuf::from(std::env::var("BENCH_FILE").expect("BENCH_FILE"));
    let size = std::fs::metadata(&file).unwrap().len();
    // The fake serves from its own runtime (as curl runs in its own process),
    // so client and server do not share the test's two worker threads.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            tx.send(FakeNutanix::start().await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let fake = rx.recv().unwrap();
    // Real tasks take seconds; here they take 20 ms so the stream dominates.
    fake.set_task_time(Duration::from_millis(20));
    let p = provider(&fake).await;

    // Baseline: an image record made by the provider's client, then curl streams the file.
    let job = JobId::new();
    let image = p
        .upload_image(job, &image().await.1, &|_, _| {})
        .await
        .unwrap();
    let url = format!("{}/api/nutanix/v3/images/{}/file", fake.url(), image.id);
    let t = Instant::now();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .args(["-u", &format!("{USER}:{PASSWORD}"), "-T"])
        .arg(&file)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl = t.elapsed().as_secs_f64();
    p.delete_image(&image.id).await.unwrap();

    let t = Instant::now();
    let bench = ImageFile::read(&file).await.unwrap();
    let image = p
        .upload_image(JobId::new(), &bench, &|_, _| {})
        .await
        .unwrap();
    let ours = t.elapsed().as_secs_f64();
    assert_eq!(image.size, size);
    let mb = size as f64 / 1e6;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0)
        .unwrap();
    println!("size: {size} bytes");
    println!("curl -T PUT …/file: {curl:.2} s ({:.1} MB/s)", mb / curl);
    println!(
        "vmscan upload_image (create + stream + tasks): {ours:.2} s ({:.1} MB/s)",
        mb / ours
    );
    println!("throughput vs curl: {:.2}x", curl / ours);
    println!("peak RSS of the test process (client and fake together): {hwm:.1} MiB");
    p.delete_image(&image.id).await.unwrap();
}

/// Two installations share one Prism Central: each janitor removes only the
/// leftovers of its own ended jobs, never the other's VMs or a person's
/// `vmscan-*` VM.
#[tokio::test]
async fn a_janitor_leaves_other_installations_vms_alone() {
    use std::sync::Arc;
    use vmscan::domain::SourceUrl;
    use vmscan::store::NewJob;

    let fake = FakeNutanix::start().await;
    let p: Arc<dyn ClusterProvider> = Arc::new(provider(&fake).await);
    let (_dir, file) = image().await;
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let url = format!("sqlite:{}", tmp.path().join(name).display());
        async move { vmscan::store::open(&url, 2).await.unwrap() }
    };
    let (ours, theirs) = (open("a.db").await, open("b.db").await);
    let new_job = || NewJob {
        url: "https://h.example/x.qcow2".parse::<SourceUrl>().unwrap(),
        checksum: None,
        requested_by: None,
        email: None,
        note: None,
        options: serde_json::json!({}),
    };
    // Ours has ended (cancelled before it started); theirs is still queued.
    let mine = ours.create_job(new_job()).await.unwrap();
    ours.request_cancel(mine.id).await.unwrap();
    let other = theirs.create_job(new_job()).await.unwrap();
    let mut vm_of = std::collections::HashMap::new();
    for job in [mine.id, other.id, JobId::new()] {
        let image = p.upload_image(job, &file, &|_, _| {}).await.unwrap();
        let vm = p.create_vm(&conformance::spec(job, image)).await.unwrap();
        vm_of.insert(job, vm.id);
    }
    let names = |fake: &FakeNutanix| {
        let mut n: Vec<String> = fake
            .entities()
            .into_iter()
            .filter(|(k, _)| k == "vm")
            .map(|(_, n)| n)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&fake).len(), 3);
    // Their janitor: their job still runs, the rest is not theirs.
    assert_eq!(vmscan::worker::janitor::sweep(&theirs, &p).await, 0);
    assert_eq!(names(&fake).len(), 3);
    // Ours removes exactly our ended job's VM and image.
    assert_eq!(vmscan::worker::janitor::sweep(&ours, &p).await, 2);
    let left = names(&fake);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        !left.contains(&vmscan::cluster::vm_name(mine.id)),
        "{left:?}"
    );
    assert!(left.contains(&vmscan::cluster::vm_name(other.id)));
}
