//! OpenStack (Keystone, Glance, Nova, Neutron) against the fake cloud: the
//! conformance suite, the failures those APIs really produce, HTTPS, and a
//! whole scan over HTTP with a real guest behind the fake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use vmscan::cluster::openstack::{OpenStackConfig, OpenStackProvider, SecurityGroupMode};
use vmscan::cluster::{vm_name, ClusterError, ClusterProvider, Owned};
use vmscan::domain::JobId;

use crate::conformance::{self, deadlines, spec};
use crate::support::guest::{banner_port, fixture_dir, GuestBackend};
use crate::support::image_of;
use crate::support::openstack::{self as os, FakeOpenStack};
use crate::support::tls;

fn config(fake: &FakeOpenStack, ssh_port: u16) -> OpenStackConfig {
    OpenStackConfig {
        auth_url: fake.auth_url(),
        region: Some(os::REGION.into()),
        interface: "public".into(),
        username: os::USER.into(),
        password: Some(os::PASSWORD.to_string().into()),
        user_domain_name: os::USER_DOMAIN.into(),
        project_name: os::PROJECT.into(),
        project_domain_name: os::PROJECT_DOMAIN.into(),
        flavor: os::FLAVOR.into(),
        network: os::NETWORK.into(),
        ssh_port,
        request_secs: 10,
        poll_ms: 50,
        task_timeout_secs: 30,
        max_attempts: 4,
        retry_backoff_ms: 20,
        ..OpenStackConfig::default()
    }
}

async fn cloud() -> (FakeOpenStack, OpenStackProvider) {
    let fake = FakeOpenStack::start().await;
    let p = OpenStackProvider::new("t", config(&fake, banner_port().await)).unwrap();
    (fake, p)
}

/// A small disk image (raw, 3 MiB of patterned bytes).
fn image_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

fn api_error(e: &ClusterError) -> (&str, bool) {
    match e {
        ClusterError::Api {
            message, retryable, ..
        } => (message.as_str(), *retryable),
        other => panic!("expected an API error, got {other}"),
    }
}

async fn upload(p: &OpenStackProvider, job: JobId, file: &Path) -> vmscan::cluster::ClusterImage {
    p.upload_image(job, &image_of(file).await, &|_, _| {})
        .await
        .expect("upload")
}

#[tokio::test]
async fn openstack_passes_the_conformance_lifecycle() {
    let (fake, p) = cloud().await;
    let file = image_file();
    conformance::lifecycle(&p, &image_of(file.path()).await).await;
    assert!(fake.images().is_empty() && fake.servers().is_empty());
    // The lists were paged (two items a page) and followed.
    assert!(fake.count(Method::GET, "/flavors/detail") >= 2);
}

#[tokio::test]
async fn openstack_tears_down_a_vm_that_never_gets_an_address() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let f = fake.clone();
    conformance::teardown_after_no_address(&p, &image_of(file.path()).await, move || {
        f.make_next_vm_addressless()
    })
    .await;
    assert!(fake.images().is_empty() && fake.servers().is_empty());
}

#[tokio::test]
async fn openstack_tags_the_image_and_server_with_the_job() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let props = fake.image_props(&image.id).unwrap();
    assert_eq!(props["vmscan_job"], job.to_string());
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    assert_eq!(
        fake.server_metadata(&vm.id).unwrap()["vmscan_job"],
        job.to_string()
    );
    assert_eq!(fake.user_data(), vec![spec(job, image.clone()).user_data]);
    let owned = p.list_owned().await.unwrap();
    assert!(owned.contains(&Owned::Vm {
        id: vm.id.clone(),
        name: vm_name(job),
        job: Some(job)
    }));
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn openstack_gives_each_server_its_own_security_group_and_removes_it_at_teardown() {
    let fake = FakeOpenStack::start().await;
    let mut cfg = config(&fake, banner_port().await);
    cfg.security_group = SecurityGroupMode::PerJob;
    cfg.shell_from_cidr = "192.0.2.10/32".into();
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let mut s = spec(job, image.clone());
    s.egress = vec![
        "127.0.0.1:8443".parse().unwrap(),
        "198.51.100.7:443".parse().unwrap(),
    ];
    let vm = p.create_vm(&s).await.unwrap();

    // One group, named after the server and attached to it (instead of "default").
    let groups = fake.security_groups();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let (gid, gname, rules) = &groups[0];
    assert_eq!(gname, &vm_name(job));
    assert_eq!(
        fake.server_security_groups(&vm.id).unwrap(),
        vec![gid.clone()]
    );
    // Neutron's default allow-all egress rules are gone: exactly ours remain.
    let mut shown: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{} {} {}:{}",
                r["direction"].as_str().unwrap(),
                r["ethertype"].as_str().unwrap(),
                r["remote_ip_prefix"].as_str().unwrap_or("any"),
                r["port_range_min"]
            )
        })
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        [
            "egress IPv4 127.0.0.1/32:8443",
            "egress IPv4 198.51.100.7/32:443",
            &format!("ingress IPv4 192.0.2.10/32:{}", vm.port.unwrap()),
        ]
    );
    assert_eq!(vm.detail["security_group"]["name"], vm_name(job));

    // A retried create replaces the group with the server: still one.
    let again = p.create_vm(&s).await.unwrap();
    assert_eq!(fake.security_groups().len(), 1);
    assert_eq!(
        fake.server_security_groups(&again.id).unwrap(),
        vec![fake.security_groups()[0].0.clone()]
    );

    // Teardown (and the janitor, which deletes through delete_vm) removes it after the server.
    p.delete_vm(&again.id).await.unwrap();
    assert!(fake.servers().is_empty());
    assert!(
        fake.security_groups().is_empty(),
        "{:?}",
        fake.security_groups()
    );
    p.delete_image(&image.id).await.unwrap();

    // Per-job groups need vmscan's address.
    let mut bad = config(&fake, 22);
    bad.security_group = SecurityGroupMode::PerJob;
    let err = OpenStackProvider::new("t", bad).err().unwrap().to_string();
    assert!(err.contains("shell_from_cidr"), "{err}");
}

#[tokio::test]
async fn openstack_a_wrong_password_fails_clearly_and_is_not_retried() {
    let fake = FakeOpenStack::start().await;
    let mut cfg = config(&fake, 22);
    cfg.password = Some("not-the-password".to_string().into());
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("wrong password");
    let (msg, retryable) = api_error(&err);
    assert!(!retryable, "{err}");
    assert!(
        msg.contains("Keystone refused to authenticate user scanner")
            && msg.contains("HTTP 401: The request you have made requires authentication."),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");
    assert_eq!(fake.count(Method::POST, "/v3/auth/tokens"), 1);
}

#[tokio::test]
async fn openstack_authenticates_with_an_application_credential_in_the_configured_region() {
    let fake = FakeOpenStack::start().await;
    let cfg = OpenStackConfig {
        username: String::new(),
        password: None,
        application_credential_id: os::APP_CRED_ID.into(),
        application_credential_secret: Some(os::APP_CRED_SECRET.to_string().into()),
        ..config(&fake, 22)
    };
    let p = OpenStackProvider::new("t", cfg.clone()).unwrap();
    assert_eq!(p.list_owned().await.unwrap(), vec![]);
    assert_eq!(fake.tokens_issued(), 1);

    let p = OpenStackProvider::new(
        "t",
        OpenStackConfig {
            region: Some("RegionThree".into()),
            ..cfg
        },
    )
    .unwrap();
    let err = p.list_owned().await.unwrap_err();
    assert!(
        err.to_string().contains(
            "the service catalog has no public endpoint for compute in region RegionThree"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn openstack_reauthenticates_when_the_token_expires_mid_job() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    assert_eq!(p.authentications(), 1);
    fake.expire_tokens();
    let vm = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect("create after expiry");
    p.wait_ready(&vm, &deadlines(30)).await.expect("ready");
    assert_eq!(p.authentications(), 2, "one new token");
    // A token expiring as the file goes up: a new token, the PUT again.
    fake.expire_tokens_at(Method::PUT, "/file");
    let puts = fake.count(Method::PUT, "/file");
    let again = upload(&p, job, file.path()).await;
    assert_eq!(fake.count(Method::PUT, "/file") - puts, 2);
    assert_eq!(p.authentications(), 3);
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&again.id).await.unwrap();
    assert!(fake.images().is_empty() && fake.servers().is_empty());
}

#[tokio::test]
async fn openstack_a_killed_upload_fails_clearly_and_deletes_the_image() {
    let (fake, p) = cloud().await;
    let file = image_file();
    fake.kill_next_upload();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("killed");
    let (msg, _) = api_error(&err);
    assert!(
        msg.contains("Glance could not store image") && msg.contains("\"killed\""),
        "{msg}"
    );
    assert_eq!(fake.images(), vec![], "the killed image is deleted");
}

#[tokio::test]
async fn openstack_detects_a_hash_mismatch_and_deletes_the_image() {
    let (fake, p) = cloud().await;
    let file = image_file();
    fake.corrupt_next_hash();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("mismatch");
    let (msg, _) = api_error(&err);
    assert!(
        msg.contains("checksum mismatch after upload") && msg.contains("Glance has sha512"),
        "{msg}"
    );
    assert_eq!(fake.images(), vec![]);

    // A Glance hashing with sha256 is checked in its own algorithm.
    fake.set_hash_algo("sha256");
    let img = upload(&p, JobId::new(), file.path()).await;
    fake.corrupt_next_hash();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("Glance has sha256"), "{err}");
    p.delete_image(&img.id).await.unwrap();
    assert_eq!(fake.images(), vec![]);
}

#[tokio::test]
async fn openstack_a_failed_build_shows_novas_fault_message() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    fake.fail_next_server("No valid host was found. There are not enough hosts available.");
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    let err = p.wait_ready(&vm, &deadlines(30)).await.expect_err("ERROR");
    let (msg, retryable) = api_error(&err);
    assert!(
        msg.contains(
            "went to ERROR: No valid host was found. There are not enough hosts available."
        ),
        "{msg}"
    );
    assert!(retryable, "no valid host: capacity, worth a later try");
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    assert!(fake.servers().is_empty());
}

#[tokio::test]
async fn openstack_a_conflict_while_the_server_is_busy_is_retried() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    fake.inject(Method::DELETE, "/servers/", 409, 2);
    p.delete_vm(&vm.id).await.expect("delete after 409s");
    assert_eq!(
        fake.count(Method::DELETE, "/servers/"),
        3,
        "two 409s, then 204"
    );
    assert!(fake.servers().is_empty());

    // Busy for longer than the tries: a later teardown can still succeed.
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    fake.inject(Method::DELETE, "/servers/", 409, 4);
    let err = p.delete_vm(&vm.id).await.expect_err("busy");
    let (msg, retryable) = api_error(&err);
    assert!(retryable && msg.contains("in task_state spawning"), "{msg}");
    p.delete_vm(&vm.id).await.expect("delete later");

    // A conflict on create is the request's fault: not retried.
    fake.inject(Method::POST, "/servers", 409, 1);
    let posts = fake.count(Method::POST, "/servers");
    let err = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect_err("409");
    let (msg, retryable) = api_error(&err);
    assert!(
        !retryable && msg.contains("HTTP 409: Multiple possible networks found"),
        "{msg}"
    );
    assert_eq!(fake.count(Method::POST, "/servers") - posts, 1);
    assert!(fake.servers().is_empty());
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn openstack_server_errors_are_retried_until_they_succeed() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    fake.inject(Method::POST, "/v3/auth/tokens", 503, 1);
    fake.inject(Method::POST, "/v2/images", 500, 1);
    fake.inject(Method::PUT, "/file", 502, 1);
    let image = upload(&p, job, file.path()).await;
    assert_eq!(fake.count(Method::POST, "/v3/auth/tokens"), 2);
    assert_eq!(fake.count(Method::PUT, "/file"), 2, "the upload went again");
    // The image whose upload failed was deleted: one image for the job.
    assert_eq!(fake.images().len(), 1);

    fake.inject(Method::GET, "/flavors/detail", 502, 1);
    fake.inject(Method::POST, "/servers", 500, 2);
    let vm = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect("create");
    assert_eq!(fake.count(Method::POST, "/v2.1/"), 3, "two 500s, then 202");
    fake.inject(Method::GET, &format!("/servers/{}", vm.id), 503, 2);
    p.wait_ready(&vm, &deadlines(30)).await.expect("ready");

    // Retries end: 5xx on every try is a retryable failure.
    fake.inject(Method::GET, "/servers/detail", 500, 100);
    let before = fake.count(Method::GET, "/servers/detail");
    let err = p.list_owned().await.expect_err("always 500");
    assert!(api_error(&err).1, "retryable: {err}");
    assert!(
        err.to_string().contains("HTTP 500: Unexpected API Error"),
        "{err}"
    );
    assert_eq!(
        fake.count(Method::GET, "/servers/detail") - before,
        4,
        "max_attempts"
    );

    // 403 is never retried.
    fake.clear_injections();
    fake.inject(Method::DELETE, "/v2/images/", 403, 1);
    let before = fake.count(Method::DELETE, "/v2/images/");
    let err = p.delete_image(&image.id).await.expect_err("forbidden");
    assert!(!api_error(&err).1, "{err}");
    assert_eq!(fake.count(Method::DELETE, "/v2/images/") - before, 1);
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn openstack_attaches_a_floating_ip_from_the_pool_and_releases_it() {
    let fake = FakeOpenStack::start().await;
    // The fixed address is unreachable: only the floating one answers.
    fake.set_addresses("10.255.255.1", "127.0.0.1");
    let cfg = OpenStackConfig {
        floating_ip_pool: os::POOL.into(),
        ..config(&fake, banner_port().await)
    };
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    let ready = p.wait_ready(&vm, &deadlines(20)).await.expect("ready");
    assert_eq!(ready.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(fake.floating_ips(), 1);
    p.delete_vm(&vm.id).await.unwrap();
    assert_eq!(fake.floating_ips(), 0, "released with the server");
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn openstack_a_vm_without_an_address_hits_the_address_deadline_with_the_console() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    fake.make_next_vm_addressless();
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    match p.wait_ready(&vm, &deadlines(2)).await {
        Err(ClusterError::Deadline {
            what, console_tail, ..
        }) => {
            assert_eq!(what, "address");
            assert!(console_tail.unwrap_or_default().contains("login:"));
        }
        other => panic!("expected the address deadline, got {other:?}"),
    }
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_scans_the_fixture_image_end_to_end() {
    use crate::support::fileserver::FileServer;
    use crate::support::{stage, Backend, TestApp};

    let guest = GuestBackend::start().await;
    let fake = FakeOpenStack::start_with(Some(guest.clone())).await;
    let images = FileServer::start(fixture_dir()).await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let cloud = OpenStackConfig {
        poll_ms: 500,
        task_timeout_secs: 120,
        ..config(&fake, guest.port())
    };
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        c.pipeline.retry_limit = 2;
        c.pipeline.retry_backoff_secs = 1;
        c.cluster.qemu.enabled = false;
        c.cluster.openstack.insert("t".into(), cloud);
        c.vm.memory_mib = 256;
        c.vm.login_secs = 60;
        c.vm.port_secs = 180;
    })
    .await;
    let archive = fixture_dir().join("disk.raw.tar.gz");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()))
    };
    let job = app
        .submit(json!({"url": images.url("disk.raw.tar.gz"), "checksum": format!("sha256:{sha}"), "cluster": "openstack:t"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(420)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\n{}",
        app.log_text(id).await
    );
    for s in [
        "fetch",
        "extract",
        "checksum",
        "inspect",
        "convert",
        "cluster-upload",
        "vm-create",
        "teardown",
    ] {
        assert_eq!(stage(&done, s)["state"], "succeeded", "stage {s}: {done:#}");
    }
    assert_eq!(
        stage(&done, "cluster-upload")["detail"]["cluster"],
        "openstack:t"
    );
    let vm = &stage(&done, "vm-create")["detail"];
    assert_eq!(vm["cluster"], "openstack:t");
    assert!(
        vm["host_key"].as_str().unwrap().starts_with("SHA256:"),
        "{vm}"
    );
    for r in done["resources"].as_array().unwrap() {
        assert!(!r["deleted_at"].is_null(), "resource not deleted: {r}");
    }
    let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
    assert!(
        page.contains("openstack:t"),
        "the job page names the cluster"
    );
    assert!(fake.images().is_empty(), "images left: {:?}", fake.images());
    assert!(
        fake.servers().is_empty(),
        "servers left: {:?}",
        fake.servers()
    );
    assert_eq!(guest.running(), 0, "guests left");
    // The guest got the job's user-data through Nova.
    assert!(fake.user_data()[0].starts_with("#cloud-config"));
    app.stop().await;
}

#[tokio::test]
async fn openstack_a_create_whose_answer_was_lost_leaves_no_twin() {
    let (fake, p) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    // Glance and Nova carry out the POST, but the gateway answers 504.
    fake.inject_after(Method::POST, "/v2/images", 504, 1);
    let image = upload(&p, job, file.path()).await;
    assert_eq!(fake.count(Method::POST, "/v2/images"), 2);
    assert_eq!(
        fake.images().len(),
        1,
        "the queued twin is gone: {:?}",
        fake.images()
    );
    fake.inject_after(Method::POST, "/servers", 504, 1);
    let vm = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect("create");
    assert_eq!(fake.count(Method::POST, "/servers"), 2);
    let servers = fake.servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].0, vm.id);
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn openstack_renews_a_token_before_it_expires() {
    let (fake, p) = cloud().await;
    fake.set_token_ttl(4);
    p.list_owned().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    p.list_owned().await.unwrap();
    assert_eq!(
        p.authentications(),
        2,
        "renewed in the last quarter of its life"
    );
    assert_eq!(
        fake.rejected(),
        0,
        "no request was sent with an expired token"
    );
}

/// Every API over HTTPS with a fresh self-signed certificate, and that
/// certificate in a PEM file to use as `ca_bundle`.
async fn https_cloud() -> (FakeOpenStack, tempfile::TempDir, PathBuf) {
    let (cert, key) = tls::self_signed();
    let fake = FakeOpenStack::start_https(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("cloud-ca.pem");
    std::fs::write(&bundle, cert).unwrap();
    (fake, dir, bundle)
}

#[tokio::test]
async fn openstack_over_https_with_the_certificate_as_ca_bundle_passes_the_conformance_lifecycle() {
    let (fake, _dir, bundle) = https_cloud().await;
    assert!(fake.auth_url().starts_with("https://127.0.0.1:"));
    let mut cfg = config(&fake, banner_port().await);
    cfg.verify_tls = true;
    cfg.ca_bundle = Some(bundle);
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    conformance::lifecycle(&p, &image_of(file.path()).await).await;
    assert!(fake.images().is_empty() && fake.servers().is_empty());
    assert!(fake.tls_handshakes() >= 1);
}

#[tokio::test]
async fn openstack_an_untrusted_certificate_fails_at_once_and_says_so() {
    let (fake, _dir, _bundle) = https_cloud().await;
    let mut cfg = config(&fake, 22);
    cfg.verify_tls = true;
    cfg.ca_bundle = None;
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("untrusted certificate");
    let (msg, retryable) = api_error(&err);
    // The cause from reqwest's source chain, and what to do about it.
    assert!(
        msg.contains("Keystone POST /v3/auth/tokens")
            && msg.contains("invalid peer certificate")
            && msg.contains("ca_bundle"),
        "{msg}"
    );
    assert!(!retryable, "a refused certificate never heals: {msg}");
    assert_eq!(fake.tls_handshakes(), 1, "not retried with back-off");
    assert_eq!(fake.count(Method::POST, "/v3/auth/tokens"), 0);
    assert_eq!(fake.tokens_issued(), 0);
}

#[tokio::test]
async fn openstack_over_https_without_verification_accepts_the_self_signed_certificate() {
    let (fake, _dir, _bundle) = https_cloud().await;
    let mut cfg = config(&fake, 22);
    cfg.verify_tls = false;
    cfg.ca_bundle = None;
    let p = OpenStackProvider::new("t", cfg).unwrap();
    let file = image_file();
    let image = upload(&p, JobId::new(), file.path()).await;
    assert_eq!(fake.images().len(), 1);
    p.delete_image(&image.id).await.unwrap();
    assert!(fake.images().is_empty());
    assert!(fake.tls_handshakes() >= 1);
}

#[tokio::test]
async fn openstack_a_missing_or_non_pem_ca_bundle_is_a_config_error_naming_the_path() {
    let fake = FakeOpenStack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let build = |bundle: &Path| {
        let mut cfg = config(&fake, 22);
        cfg.ca_bundle = Some(bundle.to_path_buf());
        match OpenStackProvider::new("t", cfg) {
            Ok(_) => panic!("{} was accepted as a CA bundle", bundle.display()),
            Err(ClusterError::Local(msg)) => msg,
            Err(other) => panic!("not a configuration error: {other}"),
        }
    };
    let missing = dir.path().join("missing.pem");
    let msg = build(&missing);
    assert!(
        msg.starts_with("cluster.openstack.t: ")
            && msg.contains(&format!("ca_bundle {}: cannot read it", missing.display())),
        "{msg}"
    );
    let text = dir.path().join("ca.txt");
    std::fs::write(&text, "ask the cloud team for the CA\n").unwrap();
    let msg = build(&text);
    assert!(
        msg.contains(&format!(
            "ca_bundle {}: holds no PEM certificate",
            text.display()
        )),
        "{msg}"
    );
}
