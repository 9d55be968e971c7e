//! End to end on a real Debian 12 cloud image (systemd, OpenSSH, cloud-init,
//! dpkg), built from Debian's packages by scripts/build-debian-image.sh, with
//! the test agent as a real `managesoft_<ver>_amd64.deb`
//! (scripts/build-test-agent.sh): every stage on the local QEMU cluster
//! under software emulation, the way a hardened template is scanned — the
//! job's own user from the seed, `sudo -n` for the privileged steps, the
//! package chosen by `/etc/os-release`, `systemctl is-active` for the units,
//! `ndtrack` for the inventory, the fake beacon and the fake Flexera One.
//! One test: a TCG boot of this image takes one to two minutes.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use vmscan::config::{AgentProfile, InventoryKind, PackageConfig};

use support::fileserver::FileServer;
use support::flexera::{FakeFlexera, ORG, REFRESH_TOKEN, REPORT};
use support::{stage, Backend, TestApp};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The image and the agent package, as scripts/install-test-deps.sh leaves
/// them (cached outside the clone, linked into target/).
fn fixtures() -> (PathBuf, PathBuf) {
    let image = repo().join("target/debian-image");
    let agent = repo().join("target/test-agent");
    assert!(
        image.join("disk.qcow2").exists(),
        "no Debian fixture image at {}: run scripts/install-test-deps.sh (it builds and caches it)",
        image.display()
    );
    let deb = std::fs::read_dir(&agent)
        .unwrap_or_else(|_| {
            panic!(
                "no {}: run scripts/install-test-deps.sh (it builds the agent package)",
                agent.display()
            )
        })
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("managesoft_") && n.ends_with("_amd64.deb")
        })
        .expect("managesoft_<ver>_amd64.deb in target/test-agent");
    (image, deb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_a_debian_cloud_image_with_the_deb_agent_end_to_end() {
    let (image_dir, deb) = fixtures();
    let images = FileServer::start(image_dir.clone()).await;
    let flexera = FakeFlexera::start().await;
    flexera.set_reconcile_delay(Duration::from_secs(5));
    let f = flexera.clone();
    let deb_path = deb.display().to_string();
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        c.pipeline.retry_limit = 1;
        c.pipeline.retry_backoff_secs = 1;
        // The scan VM's defaults (1 GiB, 2 vCPUs, the job's own user, deadlines
        // scaled under TCG) are what a real cloud image needs: not overridden.
        let mut profile = AgentProfile {
            upload_url: format!("http://127.0.0.1:{}/ManageSoftRL/", f.addr.port()),
            download_url: format!("http://127.0.0.1:{}/ManageSoftDL/", f.addr.port()),
            log_timeout_secs: 120,
            log_poll_secs: 3,
            ..AgentProfile::default()
        };
        profile.packages = BTreeMap::from([(
            "deb".to_string(),
            PackageConfig {
                installer: deb_path,
                ..PackageConfig::default()
            },
        )]);
        // What the guest's kernel sees of its boot disk (grown by `size`).
        profile.pre_install =
            vec!["for d in /sys/block/vd*; do echo \"blockdev $d $(cat $d/size)\"; done".into()];
        c.agent.profiles.insert("linux".into(), profile);
        c.inventory.kind = InventoryKind::FlexeraOne;
        c.inventory.check_interval_secs = 3;
        c.inventory.deadline_secs = 120;
        c.inventory.flexera_one.token_url = format!("{}/oidc/token", f.base());
        c.inventory.flexera_one.api_base = f.base();
        c.inventory.flexera_one.org_id = ORG.into();
        c.inventory.flexera_one.report_id = REPORT.into();
        c.inventory.flexera_one.refresh_token = Some(REFRESH_TOKEN.to_string().into());
    })
    .await;

    let started = Instant::now();
    let job = app
        .submit(json!({
            "url": images.url("disk.qcow2"),
            "checksum": format!("sha256:{}", support::sha256_file(&image_dir.join("disk.qcow2"))),
            "email": "sam@example.com",
            // The 2 GiB image grown before upload; cloud-init's growpart
            // then grows the root partition in the guest.
            "size": "3G",
        }))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(1200)).await;
    let log = app.log_text(id).await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");

    // Stage by stage, for the closing note (cargo test -- --nocapture).
    println!(
        "Debian cloud image scan: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    for s in done["stages"].as_array().unwrap() {
        println!(
            "  {:<15} {:<10} {:>8.1} s",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        assert_eq!(s["state"], "succeeded", "stage {}: {done:#}", s["name"]);
    }

    let convert = &stage(&done, "convert")["detail"];
    assert_eq!(convert["source_virtual_size"], 2u64 << 30, "{convert}");
    assert_eq!(convert["virtual_size"], 3u64 << 30, "{convert}");
    let grown = format!("blockdev /sys/block/vda {}", (3u64 << 30) / 512);
    assert!(
        log.contains(&grown),
        "the guest sees the grown disk: no {grown:?} in\n{log}"
    );

    let inspect = &stage(&done, "inspect")["detail"];
    println!("  inspect: {inspect}");
    let vm = &stage(&done, "vm-create")["detail"];
    println!("  vm-create: {vm}");
    let user = vm["login_user"].as_str().unwrap();
    assert!(user.starts_with("vmscan-"), "the job's own user: {vm}");
    assert!(vm["host_key"].as_str().unwrap().starts_with("SHA256:"));

    let agent = &stage(&done, "agent-install")["detail"];
    println!("  agent-install: {agent}");
    assert_eq!(agent["login_user"], user);
    // Chosen by the guest's /etc/os-release, not configured per image.
    assert_eq!(agent["package"], "deb", "{agent}");
    let file = deb.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("$ sudo -n sh -c 'dpkg -i ") && l.contains(&file)),
        "{log}"
    );
    assert_eq!(agent["service_manager"], "systemd", "{agent}");
    let services = support::service_states(agent);
    assert_eq!(services.len(), 2, "{agent}");
    assert!(
        services[0].starts_with("ndtask active") && services[1].starts_with("mgsusageag active"),
        "{services:?}"
    );
    assert_eq!(agent["inventory_exit_status"], 0, "{agent}");

    let logs = &stage(&done, "log-check")["detail"];
    println!("  log-check: {logs}");
    assert_eq!(logs["upload_confirmed"], true, "{logs}");
    let excerpts = logs["excerpts"].as_array().unwrap();
    assert!(
        excerpts.iter().any(|e| e["line"]
            .as_str()
            .is_some_and(|l| l.starts_with('[') && l.contains("Upload successful"))),
        "{excerpts:?}"
    );

    let report = &stage(&done, "report-check")["detail"];
    println!("  report-check: {report}");
    assert_eq!(report["found"], true);
    let hostname = vm["hostname"].as_str().unwrap();
    let uploads = flexera.uploads();
    assert!(
        !uploads.is_empty() && uploads.iter().all(|u| u == hostname),
        "the guest's own ndtrack reported it: {uploads:?}"
    );

    // Nothing of the job survives it.
    let short = id.replace('-', "");
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &format!("vmscan-{short}")])
        .output()
        .unwrap();
    assert!(procs.stdout.is_empty(), "qemu still running");
    for r in done["resources"].as_array().unwrap() {
        assert!(!r["deleted_at"].is_null(), "resource not deleted: {r}");
    }
}
