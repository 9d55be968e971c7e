//! The vSphere provider against VMware's own simulator (vcsim, govmomi
//! 0.24.2, started per test): the conformance suite, the failures vCenter
//! really produces, HTTPS, and a whole scan where vmscan talks SOAP to vcsim
//! and SSH to a real QEMU guest whose address the test reports through
//! vcsim's `SET.guest.ipAddress`. Run alone with `cargo test --test vsphere`.

mod support;

// Shared with tests/clouds.rs; not every helper is used here.
#[allow(dead_code)]
#[path = "clouds/conformance.rs"]
mod conformance;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;
use vmscan::cluster::vsphere::client::ObjectContent;
use vmscan::cluster::vsphere::{
    Client, LinuxCustomization, MoRef, VsphereConfig, VsphereProvider, GUEST_IP,
};
use vmscan::cluster::{
    guest_hostname, vm_name, windows_computer_name, ClusterError, ClusterProvider, Owned,
};
use vmscan::domain::{JobId, OsFamily};

use conformance::{deadlines, spec};
use support::guest::{banner_port, fixture_dir, GuestBackend};
use support::image_of;
use support::vcsim::{self, Vcsim};

fn config(sim: &Vcsim, ssh_port: u16) -> VsphereConfig {
    VsphereConfig {
        url: sim.url.clone(),
        username: vcsim::USER.into(),
        password: Some(vcsim::PASSWORD.to_string().into()),
        datacenter: vcsim::DATACENTER.into(),
        cluster: vcsim::CLUSTER.into(),
        datastore: vcsim::DATASTORE.into(),
        network: vcsim::NETWORK.into(),
        ssh_port,
        request_secs: 10,
        poll_ms: 50,
        lease_progress_secs: 1,
        task_timeout_secs: 30,
        max_attempts: 3,
        retry_backoff_ms: 20,
        ..VsphereConfig::default()
    }
}

/// The test's own session with vcsim, as an administrator would have one.
fn admin(sim: &Vcsim) -> Arc<Client> {
    let mut cfg = config(sim, 22);
    cfg.verify_tls = false;
    Arc::new(Client::new(Arc::new(cfg)).unwrap())
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

async fn vms(c: &Client, paths: &[&str]) -> Vec<ObjectContent> {
    let root = c.content().await.unwrap().root_folder.clone();
    let mut p = vec!["name"];
    p.extend_from_slice(paths);
    c.find_all(&root, "VirtualMachine", &p).await.unwrap()
}

/// The VMs vmscan made (by name), as vcsim lists them.
async fn vmscan_vms(c: &Client) -> Vec<String> {
    vms(c, &[])
        .await
        .into_iter()
        .map(|o| o.text("name"))
        .filter(|n| n.starts_with("vmscan-"))
        .collect()
}

fn extra_config(o: &ObjectContent) -> BTreeMap<String, String> {
    o.props
        .get("config.extraConfig")
        .map(|l| {
            l.children
                .iter()
                .map(|ov| (ov.text_at("key"), ov.text_at("value")))
                .collect()
        })
        .unwrap_or_default()
}

fn decode(b64: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// Stands in for VMware Tools, which vcsim has not: once vmscan powers a
/// scan VM on, the test reports its address with the `SET.guest.ipAddress`
/// extraConfig key (vcsim's documented way, virtual_machine.go). With a
/// `guest`, it first boots a real QEMU guest for the VM with the
/// cloud-init user-data vmscan put in `guestinfo.userdata`, and removes
/// the guest when vmscan destroys the VM.
struct Tools {
    skip_next: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Tools {
    fn start(c: Arc<Client>, guest: Option<Arc<GuestBackend>>) -> Tools {
        let skip_next = Arc::new(AtomicBool::new(false));
        let skip = skip_next.clone();
        let disk = fixture_dir().join("disk.raw");
        let task = tokio::spawn(async move {
            let mut seen: BTreeSet<String> = BTreeSet::new();
            let mut booted: BTreeSet<String> = BTreeSet::new();
            loop {
                let root = c.content().await.unwrap().root_folder.clone();
                let all = match c
                    .find_all(
                        &root,
                        "VirtualMachine",
                        &["name", "runtime.powerState", "config.extraConfig"],
                    )
                    .await
                {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let present: BTreeSet<String> = all
                    .iter()
                    .filter(|o| o.text("runtime.powerState") == "poweredOn")
                    .map(|o| o.obj.value.clone())
                    .collect();
                for o in &all {
                    let name = o.text("name");
                    let on = o.text("runtime.powerState") == "poweredOn";
                    if !on || !name.starts_with("vmscan-") || seen.contains(&o.obj.value) {
                        continue;
                    }
                    seen.insert(o.obj.value.clone());
                    if skip.swap(false, Ordering::SeqCst) {
                        continue;
                    }
                    if let Some(g) = &guest {
                        let ec = extra_config(o);
                        let user_data = decode(&ec["guestinfo.userdata"]);
                        let meta = decode(&ec["guestinfo.metadata"]);
                        let hostname = meta
                            .lines()
                            .find_map(|l| l.strip_prefix("local-hostname: "))
                            .unwrap()
                            .to_string();
                        g.boot(&o.obj.value, &disk, user_data, hostname).await;
                        booted.insert(o.obj.value.clone());
                    }
                    let set = r#"<spec><extraConfig xsi:type="OptionValue"><key>SET.guest.ipAddress</key><value xsi:type="xsd:string">127.0.0.1</value></extraConfig></spec>"#;
                    c.run_task("ReconfigVM_Task", &o.obj, set, "reporting the guest IP")
                        .await
                        .unwrap();
                }
                if let Some(g) = &guest {
                    for gone in booted.difference(&present).cloned().collect::<Vec<_>>() {
                        g.destroy(&gone).await;
                        booted.remove(&gone);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Tools { skip_next, task }
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn cloud() -> (Vcsim, VsphereProvider, Tools) {
    let sim = Vcsim::start().await;
    let p = VsphereProvider::new("t", config(&sim, banner_port().await)).unwrap();
    let tools = Tools::start(admin(&sim), None);
    (sim, p, tools)
}

async fn upload(p: &VsphereProvider, job: JobId, file: &Path) -> vmscan::cluster::ClusterImage {
    p.upload_image(job, &image_of(file).await, &|_, _| {})
        .await
        .expect("upload")
}

#[tokio::test]
async fn vsphere_passes_the_conformance_lifecycle() {
    let (sim, p, _tools) = cloud().await;
    let file = image_file();
    conformance::lifecycle(&p, &image_of(file.path()).await).await;
    assert!(vmscan_vms(&admin(&sim)).await.is_empty());
    p.logout().await;
    assert_eq!(
        p.client().logins(),
        1,
        "one session for the whole lifecycle"
    );
}

#[tokio::test]
async fn vsphere_tears_down_a_vm_that_never_reports_a_guest_ip() {
    let (sim, p, tools) = cloud().await;
    let file = image_file();
    let skip = tools.skip_next.clone();
    conformance::teardown_after_deadline(&p, &image_of(file.path()).await, GUEST_IP, move || {
        skip.store(true, Ordering::SeqCst)
    })
    .await;
    assert!(vmscan_vms(&admin(&sim)).await.is_empty());
}

#[tokio::test]
async fn vsphere_imports_an_ovf_template_and_clones_the_scan_vm_with_the_jobs_settings() {
    let (sim, p, _tools) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    assert_eq!(image.virtual_size, 3 * 1024 * 1024);
    let mut s = spec(job, image.clone());
    s.cpus = 2;
    s.memory_mib = 768;
    let vm = p.create_vm(&s).await.expect("create");
    let c = admin(&sim);
    let all = vms(
        &c,
        &[
            "config.template",
            "config.annotation",
            "config.hardware.numCPU",
            "config.hardware.memoryMB",
            "config.extraConfig",
            "config.guestId",
            "network",
            "runtime.powerState",
        ],
    )
    .await;
    let img = all.iter().find(|o| o.obj.value == image.id).unwrap();
    assert_eq!(img.text("name"), vmscan::cluster::image_name(job));
    assert_eq!(
        img.text("config.template"),
        "true",
        "the image is a template"
    );
    assert_eq!(
        vmscan::cluster::vsphere::job_of_annotation(&img.text("config.annotation")),
        Some(job)
    );
    let o = all.iter().find(|o| o.obj.value == vm.id).unwrap();
    assert_eq!(o.text("name"), vm_name(job));
    assert_eq!(o.text("runtime.powerState"), "poweredOn");
    assert_eq!(o.text("config.hardware.numCPU"), "2");
    assert_eq!(o.text("config.hardware.memoryMB"), "768");
    assert_eq!(o.text("config.guestId"), "otherLinux64Guest");
    assert_eq!(
        vmscan::cluster::vsphere::job_of_annotation(&o.text("config.annotation")),
        Some(job)
    );
    // The NIC is on the configured port group.
    let nets = o.props.get("network").unwrap();
    let net = MoRef::from_element(&nets.children[0]).unwrap();
    let named = c.properties(&net, &["name"]).await.unwrap();
    assert_eq!(named.text("name"), vcsim::NETWORK);
    // cloud-init's VMware datasource finds the job's user-data and meta-data.
    let ec = extra_config(o);
    assert_eq!(ec["guestinfo.userdata.encoding"], "base64");
    assert_eq!(decode(&ec["guestinfo.userdata"]), s.user_data);
    assert!(decode(&ec["guestinfo.metadata"])
        .contains(&format!("local-hostname: {}", guest_hostname(job))));
    assert_eq!(vm.detail["customization"], "cloud-init");
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    assert!(vmscan_vms(&c).await.is_empty());
}

#[tokio::test]
async fn vsphere_a_distributed_port_group_backs_the_nic_by_its_switch() {
    let sim = Vcsim::start().await;
    let mut cfg = config(&sim, banner_port().await);
    cfg.network = vcsim::DV_PORTGROUP.into();
    let p = VsphereProvider::new("t", cfg).unwrap();
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    // vcsim checks the switch uuid and the host's membership (dvs.go).
    let vm = p
        .create_vm(&spec(job, image.clone()))
        .await
        .expect("create");
    let c = admin(&sim);
    let o = c
        .properties(&MoRef::new("VirtualMachine", &vm.id), &["network"])
        .await
        .unwrap();
    let net = MoRef::from_element(&o.props["network"].children[0]).unwrap();
    assert_eq!(net.kind, "DistributedVirtualPortgroup");
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn vsphere_customizes_windows_with_sysprep_and_linux_without_cloud_init_with_linux_prep() {
    let sim = Vcsim::start().await;
    let port = banner_port().await;
    let mut cfg = config(&sim, port);
    cfg.linux_customization = LinuxCustomization::LinuxPrep;
    cfg.winrm_port = port;
    let p = VsphereProvider::new("t", cfg).unwrap();
    let _tools = Tools::start(admin(&sim), None);
    let file = image_file();

    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let mut s = spec(job, image.clone());
    s.os = OsFamily::Windows;
    s.admin_password = Some("Job-Only-Pw-1".to_string().into());
    let vm = p.create_vm(&s).await.expect("create windows");
    assert_eq!(vm.detail["customization"], "sysprep");
    assert_eq!(vm.detail["admin_password_set"], true);
    assert!(!vm.detail.to_string().contains("Job-Only-Pw-1"));
    let ready = p.wait_ready(&vm, &deadlines(30)).await.expect("ready");
    // vcsim applies the spec's computer name at power-on (guest.hostName).
    assert_eq!(ready.detail["guest_hostname"], windows_computer_name(job));
    assert!(windows_computer_name(job).len() <= 15);
    p.delete_vm(&vm.id).await.unwrap();

    let linux = spec(job, image.clone());
    let vm = p.create_vm(&linux).await.expect("create linux");
    assert_eq!(vm.detail["customization"], "linux-prep");
    let ready = p.wait_ready(&vm, &deadlines(30)).await.expect("ready");
    assert_eq!(ready.detail["guest_hostname"], guest_hostname(job));
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn vsphere_a_wrong_password_fails_clearly_and_is_not_retried() {
    let sim = Vcsim::start().await;
    let mut cfg = config(&sim, 22);
    cfg.password = Some("not-the-password".to_string().into());
    cfg.retry_backoff_ms = 3000;
    let p = VsphereProvider::new("t", cfg).unwrap();
    let file = image_file();
    let t0 = Instant::now();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("wrong password");
    let (msg, retryable) = api_error(&err);
    assert!(!retryable, "{err}");
    assert!(msg.contains("Login: Login failure (InvalidLogin)"), "{msg}");
    assert!(!msg.contains("not-the-password"), "{msg}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "no back-off: {:?}",
        t0.elapsed()
    );
    assert_eq!(p.client().logins(), 0);
}

#[tokio::test]
async fn vsphere_names_the_missing_datastore_network_or_folder() {
    let sim = Vcsim::start().await;
    let file = image_file();
    let image = image_of(file.path()).await;
    type Tweak = fn(&mut VsphereConfig);
    let cases: [(&str, Tweak); 5] = [
        (
            "datastore \"ssd-9\" not found (there are: LocalDS_0)",
            |c| c.datastore = "ssd-9".into(),
        ),
        ("network \"scan-net\" not found (there are: ", |c| {
            c.network = "scan-net".into()
        }),
        ("VM folder \"templates\" not found", |c| {
            c.folder = "templates".into()
        }),
        ("datacenter \"DC9\" not found (there are: DC0)", |c| {
            c.datacenter = "DC9".into()
        }),
        ("cluster \"C9\" not found (there are: ", |c| {
            c.cluster = "C9".into()
        }),
    ];
    for (want, tweak) in cases {
        let mut cfg = config(&sim, 22);
        tweak(&mut cfg);
        let p = VsphereProvider::new("t", cfg).unwrap();
        let err = p
            .upload_image(JobId::new(), &image, &|_, _| {})
            .await
            .expect_err(want);
        let (msg, retryable) = api_error(&err);
        assert!(msg.contains(want) && !retryable, "{want}: {msg}");
    }
    assert!(vmscan_vms(&admin(&sim)).await.is_empty());
}

#[tokio::test]
async fn vsphere_a_task_that_fails_shows_the_fault_and_leaves_no_vm() {
    let sim = Vcsim::start().await;
    let mut cfg = config(&sim, 22);
    // A guest OS id this vCenter does not know: ReconfigVM_Task fails.
    cfg.windows_guest_id = "windows99Guest".into();
    let p = VsphereProvider::new("t", cfg).unwrap();
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let mut s = spec(job, image.clone());
    s.os = OsFamily::Windows;
    let err = p.create_vm(&s).await.expect_err("bad guest id");
    let (msg, retryable) = api_error(&err);
    assert!(
        msg.contains(&format!(
            "configuring {} (1 CPU, 256 MiB) failed",
            vm_name(job)
        )) && msg.contains("InvalidArgument"),
        "{msg}"
    );
    assert!(!retryable, "{msg}");
    let left = vmscan_vms(&admin(&sim)).await;
    assert_eq!(
        left,
        vec![vmscan::cluster::image_name(job)],
        "the half-made VM is gone"
    );
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn vsphere_an_upload_over_its_time_limit_aborts_the_lease_and_leaves_no_vm() {
    let sim = Vcsim::start().await;
    let mut cfg = config(&sim, 22);
    // No time at all for the disk: the POST times out at once.
    cfg.upload_base_secs = 0;
    cfg.upload_min_bytes_per_sec = u64::MAX;
    let p = VsphereProvider::new("t", cfg).unwrap();
    let file = image_file();
    let err = p
        .upload_image(JobId::new(), &image_of(file.path()).await, &|_, _| {})
        .await
        .expect_err("no time for the upload");
    let (msg, retryable) = api_error(&err);
    assert!(
        msg.contains("upload to /nfc/") && msg.contains("timed out"),
        "{msg}"
    );
    assert!(retryable, "a slow upload may work next time: {msg}");
    assert!(
        vmscan_vms(&admin(&sim)).await.is_empty(),
        "the half-imported VM is destroyed"
    );
    // The VMDK made for the upload is gone too.
    let dir = file.path().parent().unwrap();
    let name = file
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(!dir.join(format!("{name}.stream.vmdk")).exists());
}

#[tokio::test]
async fn vsphere_the_janitor_finds_a_renamed_vm_by_its_annotation() {
    let (sim, p, _tools) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    let vm = p.create_vm(&spec(job, image.clone())).await.unwrap();
    // Someone renames it in the vSphere client.
    admin(&sim)
        .run_task(
            "Rename_Task",
            &MoRef::new("VirtualMachine", &vm.id),
            "<newName>renamed-by-admin</newName>",
            "renaming",
        )
        .await
        .unwrap();
    let owned = p.list_owned().await.unwrap();
    assert!(
        owned.contains(&Owned::Vm {
            id: vm.id.clone(),
            name: "renamed-by-admin".into(),
            job: Some(job)
        }),
        "{owned:?}"
    );
    p.delete_vm(&vm.id).await.unwrap();
    p.delete_image(&image.id).await.unwrap();
    assert!(p.list_owned().await.unwrap().is_empty());
}

#[tokio::test]
async fn vsphere_logs_in_again_once_when_vcenter_ends_the_session() {
    let (sim, p, _tools) = cloud().await;
    let file = image_file();
    let job = JobId::new();
    let image = upload(&p, job, file.path()).await;
    assert_eq!(p.client().logins(), 1);
    // vCenter ends idle sessions; an administrator can end one at once.
    let ended = admin(&sim).terminate_other_sessions().await.unwrap();
    assert!(ended >= 1);
    let owned = p.list_owned().await.expect("list after the session ended");
    assert!(owned
        .iter()
        .any(|o| matches!(o, Owned::Image { id, .. } if *id == image.id)));
    assert_eq!(p.client().logins(), 2, "one new login");
    p.delete_image(&image.id).await.unwrap();
}

#[tokio::test]
async fn vsphere_over_https_with_the_certificate_as_ca_bundle_and_without_verification() {
    let sim = Vcsim::start_tls().await;
    assert!(sim.url.starts_with("https://127.0.0.1:"), "{}", sim.url);
    let file = image_file();
    let image = image_of(file.path()).await;

    let mut cfg = config(&sim, 22);
    cfg.ca_bundle = sim.cert.clone();
    let p = VsphereProvider::new("t", cfg).unwrap();
    let img = p
        .upload_image(JobId::new(), &image, &|_, _| {})
        .await
        .expect("upload over https with the CA bundle");
    p.delete_image(&img.id).await.unwrap();

    let mut cfg = config(&sim, 22);
    cfg.verify_tls = false;
    let p = VsphereProvider::new("t", cfg).unwrap();
    let img = p
        .upload_image(JobId::new(), &image, &|_, _| {})
        .await
        .expect("upload without verification");
    p.delete_image(&img.id).await.unwrap();

    let p = VsphereProvider::new("t", config(&sim, 22)).unwrap();
    let t0 = Instant::now();
    let err = p
        .upload_image(JobId::new(), &image, &|_, _| {})
        .await
        .expect_err("untrusted certificate");
    let (msg, retryable) = api_error(&err);
    assert!(
        msg.contains("RetrieveServiceContent") && msg.contains("ca_bundle") && !retryable,
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "not retried");
}

#[tokio::test]
async fn vsphere_a_missing_ca_bundle_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("missing.pem");
    let cfg = VsphereConfig {
        url: "https://vc.example.com".into(),
        username: "u".into(),
        password: Some("p".to_string().into()),
        datacenter: "DC0".into(),
        cluster: "C0".into(),
        datastore: "ds".into(),
        network: "n".into(),
        ca_bundle: Some(missing.clone()),
        ..VsphereConfig::default()
    };
    match VsphereProvider::new("t", cfg) {
        Err(ClusterError::Local(msg)) => assert!(
            msg.starts_with("cluster.vsphere.t: ")
                && msg.contains(&format!("ca_bundle {}: cannot read it", missing.display())),
            "{msg}"
        ),
        Err(other) => panic!("not a configuration error: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsphere_scans_the_fixture_image_end_to_end() {
    use support::fileserver::FileServer;
    use support::{stage, Backend, TestApp};

    let sim = Vcsim::start().await;
    let guest = GuestBackend::start().await;
    let _tools = Tools::start(admin(&sim), Some(guest.clone()));
    let images = FileServer::start(fixture_dir()).await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let cloud = VsphereConfig {
        poll_ms: 200,
        task_timeout_secs: 120,
        ..config(&sim, guest.port())
    };
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        c.pipeline.retry_limit = 2;
        c.pipeline.retry_backoff_secs = 1;
        c.cluster.qemu.enabled = false;
        c.cluster.vsphere.insert("t".into(), cloud);
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
        .submit(json!({"url": images.url("disk.raw.tar.gz"), "checksum": format!("sha256:{sha}"), "cluster": "vsphere:t"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(300)).await;
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
        "vsphere:t"
    );
    let vm = &stage(&done, "vm-create")["detail"];
    assert_eq!(vm["cluster"], "vsphere:t");
    assert!(
        vm["host_key"].as_str().unwrap().starts_with("SHA256:"),
        "{vm}"
    );
    for r in done["resources"].as_array().unwrap() {
        assert!(!r["deleted_at"].is_null(), "resource not deleted: {r}");
    }
    let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
    assert!(page.contains("vsphere:t"), "the job page names the cluster");
    let log = app.log_text(id).await;
    assert!(
        !log.contains(vcsim::PASSWORD),
        "the password stays out of the log"
    );
    assert!(
        vmscan_vms(&admin(&sim)).await.is_empty(),
        "VMs left in vCenter"
    );
    // The Tools stand-in removes the guest once vmscan destroyed the VM.
    let t0 = Instant::now();
    while guest.running() > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(guest.running(), 0, "guests left");
    app.stop().await;
}
