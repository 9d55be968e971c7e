//! End to end on the local QEMU cluster: a real VM boots from the test
//! image, the test agent is installed over SSH, its logs and the (fake)
//! Flexera inventory are checked, and nothing is left running afterwards.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use vmscan::config::{AgentProfile, Config, InventoryKind};

use support::daemon::Daemon;
use support::fileserver::FileServer;
use support::flexera::{FakeFlexera, ORG, REFRESH_TOKEN, REPORT};
use support::{stage, Backend, TestApp};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture image, built (and cached) by the project's own script.
fn test_image_dir() -> PathBuf {
    support::guest::fixture_dir()
}

struct World {
    app: TestApp,
    images: FileServer,
    flexera: FakeFlexera,
    _tmp: tempfile::TempDir,
}

fn agent_profile(flexera: &FakeFlexera, mode: &str) -> AgentProfile {
    AgentProfile {
        installer: repo()
            .join("tests/fixtures/flexera-test-agent.sh")
            .display()
            .to_string(),
        // The agent's real (host) URLs: vmscan hands them to the guest as its guestfwd address.
        upload_url: format!("http://127.0.0.1:{}/ManageSoftRL/", flexera.addr.port()),
        download_url: format!("http://127.0.0.1:{}/ManageSoftDL/", flexera.addr.port()),
        install_command: format!("AGENT_MODE={mode} sh {{installer}}"),
        // Services, the inventory trigger and the log patterns: Flexera's defaults.
        log_timeout_secs: 20,
        log_poll_secs: 2,
        ..AgentProfile::default()
    }
}

async fn world(tweak: impl FnOnce(&mut Config, &FakeFlexera)) -> World {
    let images = FileServer::start(test_image_dir()).await;
    let flexera = FakeFlexera::start().await;
    flexera.set_reconcile_delay(Duration::from_secs(3));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let f = flexera.clone();
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES.to_vec();
        // Transient trouble (a guest's SSH session lost under load) is retried
        // as in production; the failure variants below are not retryable.
        c.pipeline.retry_limit = 2;
        c.pipeline.retry_backoff_secs = 1;
        // The busybox fixture needs far less than a cloud image.
        c.vm.memory_mib = 256;
        c.vm.cpus = 1;
        c.vm.login_secs = 60;
        c.vm.port_secs = 120;
        c.agent
            .profiles
            .insert("linux".into(), agent_profile(&f, "ok"));
        c.inventory.kind = InventoryKind::FlexeraOne;
        c.inventory.check_interval_secs = 2;
        c.inventory.deadline_secs = 60;
        c.inventory.flexera_one.token_url = format!("{}/oidc/token", f.base());
        c.inventory.flexera_one.api_base = f.base();
        c.inventory.flexera_one.org_id = ORG.into();
        c.inventory.flexera_one.report_id = REPORT.into();
        c.inventory.flexera_one.refresh_token = Some(REFRESH_TOKEN.to_string().into());
        tweak(c, &f);
    })
    .await;
    World {
        app,
        images,
        flexera,
        _tmp: tmp,
    }
}

/// No qemu process and no image of this job survive it.
fn assert_nothing_left(w: &World, job: &Value) {
    let id = job["id"].as_str().unwrap().replace('-', "");
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &format!("vmscan-{id}")])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "qemu still running for {id}: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    for r in job["resources"].as_array().unwrap() {
        assert!(!r["deleted_at"].is_null(), "resource not deleted: {r}");
    }
    let images = w.app.data_dir.join("images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().contains(&id)),
        "images left: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_the_fixture_image_from_a_tar_gz_end_to_end() {
    let w = world(|_, _| {}).await;
    let archive = test_image_dir().join("disk.raw.tar.gz");
    let job = w
        .app
        .submit(json!({"url": w.images.url("disk.raw.tar.gz"), "checksum": format!("sha256:{}", support::sha256_file(&archive)), "email": "sam@example.com"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = w.app.wait_final(id, Duration::from_secs(300)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\n{}",
        w.app.log_text(id).await
    );
    for s in [
        "fetch",
        "extract",
        "checksum",
        "inspect",
        "convert",
        "cluster-upload",
        "vm-create",
        "agent-install",
        "log-check",
        "report-check",
        "teardown",
    ] {
        assert_eq!(stage(&done, s)["state"], "succeeded", "stage {s}: {done:#}");
    }
    let vm = &stage(&done, "vm-create")["detail"];
    assert!(vm["host_key"].as_str().unwrap().starts_with("SHA256:"));
    let console = vm["console_tail"].as_str().unwrap_or("");
    assert!(
        console.contains(&format!("{} login:", vm["hostname"].as_str().unwrap())),
        "console: {vm}"
    );
    assert!(!vm["os"].as_str().unwrap().is_empty());
    // The job's own user logged in and became root with sudo.
    let user = vm["login_user"].as_str().unwrap();
    assert!(user.starts_with("vmscan-"), "{vm}");
    let agent = &stage(&done, "agent-install")["detail"];
    assert_eq!(agent["login_user"], user);
    assert_eq!(agent["service_manager"], "none (process check)", "{agent}");
    let services = support::service_states(agent);
    assert_eq!(
        services,
        [
            "ndtask running (process; no systemd)",
            "mgsusageag running (process; no systemd)"
        ]
    );
    assert_eq!(
        agent["inventory_command"],
        "/opt/managesoft/bin/ndtrack -t Machine"
    );
    assert_eq!(agent["inventory_exit_status"], 0);
    let excerpts = stage(&done, "log-check")["detail"]["excerpts"]
        .as_array()
        .unwrap()
        .clone();
    // Flexera's default success line, written only because ndtrack ran.
    assert_eq!(excerpts.len(), 1, "{excerpts:?}");
    assert!(excerpts[0]["line"]
        .as_str()
        .unwrap()
        .ends_with("Upload successful"));
    assert!(excerpts[0]["line"].as_str().unwrap().starts_with('['));
    assert_eq!(
        stage(&done, "log-check")["detail"]["upload_confirmed"],
        true
    );
    assert_eq!(stage(&done, "report-check")["detail"]["found"], true);
    let hostname = vm["hostname"].as_str().unwrap();
    // The agent in the VM reported itself (again, if a transient error made the install retry).
    let uploads = w.flexera.uploads();
    assert!(
        !uploads.is_empty() && uploads.iter().all(|u| u == hostname),
        "{uploads:?}"
    );
    let log = w.app.log_text(id).await;
    // The guest reached the beacon only through its guestfwd address, and the job says so.
    let beacon = w.flexera.addr.port();
    assert!(
        log.contains(&format!(
            "guest network: restricted; may reach 127.0.0.1:{beacon} (as 10.0.2.100:{beacon})"
        )),
        "{log}"
    );
    assert!(
        log.contains("QEMU process: seccomp sandbox on; runs as "),
        "{log}"
    );
    // Which accelerator ran, and under TCG the scaled deadlines.
    let accel = vm["accel"].as_str().unwrap();
    assert!(log.contains(&format!("accelerator: {accel}")), "{log}");
    if accel == "tcg" {
        assert_eq!(vm["deadline_factor"], 3);
        assert!(log.contains("login deadlines x3"), "{log}");
    }
    assert!(
        log.contains("installing managesoft agent"),
        "installer output streamed into the job log"
    );
    assert!(
        log.contains("$ sudo -n sh -c 'AGENT_MODE=ok sh /var/tmp/flexera-test-agent.sh'"),
        "{log}"
    );
    assert!(
        log.contains("$ sudo -n sh -c '/opt/managesoft/bin/ndtrack -t Machine'"),
        "{log}"
    );
    assert!(
        log.contains("waiting for inventory"),
        "the job parked while inventory caught up: {log}"
    );
    assert_nothing_left(&w, &done);
    let (_, page) = w.app.get_text(&format!("/jobs/{id}")).await;
    assert!(page.contains("report-check") && page.contains("Upload successful"));
    // The boot-to-login time counts for the image's family (its os-release).
    let (_, insights) = w.app.get("/api/v1/insights").await;
    let boot = &insights["boot_to_login"][0];
    assert!(
        boot["key"].as_str().is_some_and(|k| !k.is_empty()),
        "{insights:#}"
    );
    assert_eq!(boot["weeks"][0]["runs"], 1, "{insights:#}");
    assert!(boot["weeks"][0]["p50_ms"].as_i64().unwrap() > 0);

    // The scan report states what this real scan proved.
    let (status, report) = w.app.get(&format!("/api/v1/jobs/{id}/report.json")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["verdict"]["outcome"], "passed", "{report:#}");
    assert_eq!(report["image"]["format"], "raw");
    assert_eq!(report["image"]["checksum"]["verified"], true);
    assert_eq!(report["cluster"], "qemu-local");
    assert_eq!(report["guest_os"]["hostname"], hostname);
    let a = &report["agent"];
    assert_eq!(a["services"].as_array().unwrap().len(), 2, "{a}");
    assert!(a["matched_log_lines"][0]["line"]
        .as_str()
        .unwrap()
        .ends_with("Upload successful"));
    // The busybox guest has neither dpkg nor rpm: the version is unknown, and the report says why.
    assert!(a["version"].is_null(), "{a}");
    assert!(
        a["version_note"].as_str().unwrap().contains("exited"),
        "{a}"
    );
    assert_eq!(report["inventory"]["found"], true);
    assert_eq!(
        report["inventory"]["rows"][0]["ComputerName"], hostname,
        "{report:#}"
    );
    assert!(report["inventory"]["found_at"].is_string());
    assert_eq!(report["teardown"]["all_removed"], true, "{report:#}");
    assert!(!report["teardown"]["resources"]
        .as_array()
        .unwrap()
        .is_empty());
    if support::report::checkers() {
        support::report::validate(&[&report.to_string()]);
        let (_, xml) = w
            .app
            .get_text(&format!("/api/v1/jobs/{id}/report.xml"))
            .await;
        let j = support::report::junit(&xml);
        assert_eq!(j["suites"][0]["failures"], 0, "{j}");
    }
}

async fn failing_scan(
    mode: &str,
    tweak: impl FnOnce(&mut Config, &FakeFlexera),
) -> (World, Value, String) {
    let mode = mode.to_string();
    let w = world(move |c, f| {
        c.agent
            .profiles
            .insert("linux".into(), agent_profile(f, &mode));
        tweak(c, f);
    })
    .await;
    let job = w
        .app
        .submit(json!({"url": w.images.url("disk.qcow2")}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let done = w.app.wait_final(&id, Duration::from_secs(240)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    assert_eq!(stage(&done, "teardown")["state"], "succeeded", "{done:#}");
    assert_nothing_left(&w, &done);
    let err = done["error"].as_str().unwrap().to_string();
    (w, done, err)
}

/// `size` grows the disk before upload: the booted guest itself sees the
/// larger disk (its kernel's sector count of the boot disk, read over SSH
/// by a pre-install step), from the raw fixture and from the qcow2 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_boots_from_the_disk_grown_to_the_requested_size() {
    let w = world(|c, _| {
        let linux = c.agent.profiles.get_mut("linux").unwrap();
        linux.pre_install =
            vec!["for d in /sys/block/vd*; do echo \"blockdev $d $(cat $d/size)\"; done".into()];
    })
    .await;
    for (file, grown) in [("disk.raw", 64u64 << 20), ("disk.qcow2", 80 << 20)] {
        let job = w
            .app
            .submit(json!({"url": w.images.url(file), "size": grown}))
            .await;
        let id = job["id"].as_str().unwrap();
        let done = w.app.wait_final(id, Duration::from_secs(300)).await;
        let log = w.app.log_text(id).await;
        assert_eq!(done["state"], "succeeded", "{file}: {done:#}\n{log}");
        let convert = &stage(&done, "convert")["detail"];
        assert_eq!(
            convert["source_virtual_size"],
            32 << 20,
            "{file}: {convert}"
        );
        assert_eq!(convert["virtual_size"], grown, "{file}: {convert}");
        assert_eq!(convert["resized"], true);
        // 512-byte sectors, as the guest's kernel counts them.
        let want = format!("blockdev /sys/block/vda {}", grown / 512);
        assert!(
            log.contains(&want),
            "{file}: no {want:?} in the guest's output:\n{log}"
        );
        assert!(done["disk"]
            .as_str()
            .unwrap()
            .starts_with("grown from 32.0 MiB"));
        assert_nothing_left(&w, &done);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_installer_fails_the_scan_and_tears_down() {
    let (_w, done, err) = failing_scan("fail", |_, _| {}).await;
    assert!(err.starts_with("agent-install failed: install command `AGENT_MODE=fail sh /var/tmp/flexera-test-agent.sh` exited with status 1"), "{err}");
    assert!(err.contains("post-install script failed"), "{err}");
    assert_eq!(stage(&done, "log-check")["state"], "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_line_fails_the_log_check() {
    let (_w, _done, err) = failing_scan("nolog", |c, _| {
        c.agent.profiles.get_mut("linux").unwrap().log_timeout_secs = 6;
    })
    .await;
    assert!(
        err.starts_with(
            "log-check failed: after 6 s, the agent logs still lack Upload successful|Finished uploading inventory"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_that_never_lists_the_vm_fails_the_report_check() {
    let (w, done, err) = failing_scan("noupload", |c, _| {
        c.agent.profiles.get_mut("linux").unwrap().required_patterns =
            vec!["Program exited successfully".into()];
        c.inventory.deadline_secs = 5;
    })
    .await;
    assert!(
        err.contains(
            "report-check failed: Flexera One (org 35715, report 351) never listed vmscan-"
        ),
        "{err}"
    );
    assert!(
        done["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stage"] == "report-check")
            .count()
            >= 2
    );
    assert!(w.flexera.uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_never_boots_fails_at_once_with_its_console_line() {
    let w = world(|c, _| {
        c.vm.port_secs = 15;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blank.raw"), vec![0u8; 1 << 20]).unwrap();
    let blank = FileServer::start(dir.path()).await;
    let job = w.app.submit(json!({"url": blank.url("blank.raw")})).await;
    let id = job["id"].as_str().unwrap();
    let done = w.app.wait_final(id, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "failed");
    let err = done["error"].as_str().unwrap();
    // SeaBIOS says so on the console: no waiting for the 15 s deadline.
    assert!(
        err.starts_with("vm-create failed: VM cannot boot: its serial console says"),
        "{err}"
    );
    assert!(
        err.contains("No bootable device") || err.contains("Boot failed"),
        "{err}"
    );
    assert!(
        stage(&done, "vm-create")["detail"]["console_tail"].is_string(),
        "{done:#}"
    );
    assert_eq!(stage(&done, "teardown")["state"], "succeeded");
    assert_nothing_left(&w, &done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_scan_resumes_and_still_tears_down() {
    let images = FileServer::start(test_image_dir()).await;
    let flexera = FakeFlexera::start().await;
    // Inventory lags, so the job is mid-scan (VM up, inventory pending) when the daemon dies.
    flexera.set_reconcile_delay(Duration::from_secs(12));
    let tmp = tempfile::tempdir().unwrap();
    support::share_with_qemu(tmp.path());
    let p = flexera.addr.port();
    let agent = repo().join("tests/fixtures/flexera-test-agent.sh");
    let env: Vec<(String, String)> = [
        (
            "VMSCAN_STORAGE__DATA_DIR",
            tmp.path().join("data").display().to_string(),
        ),
        ("VMSCAN_SERVER__LISTEN", "127.0.0.1:0".into()),
        ("VMSCAN_WORKER__LEASE_SECS", "4".into()),
        // The image server listens on loopback: re-allowed the explicit way.
        ("VMSCAN_FETCH__DENY_CIDRS", "[]".into()),
        ("VMSCAN_WORKER__POLL_INTERVAL_MS", "200".into()),
        ("VMSCAN_PIPELINE__RETRY_LIMIT", "2".into()),
        ("VMSCAN_PIPELINE__RETRY_BACKOFF_SECS", "1".into()),
        // Root login, the explicit option (the other tests use the job's own user).
        ("VMSCAN_VM__SSH_USER", "root".into()),
        ("VMSCAN_VM__MEMORY_MIB", "256".into()),
        ("VMSCAN_VM__CPUS", "1".into()),
        (
            "VMSCAN_AGENT__PROFILES__LINUX__INSTALLER",
            agent.display().to_string(),
        ),
        (
            "VMSCAN_AGENT__PROFILES__LINUX__UPLOAD_URL",
            format!("http://127.0.0.1:{p}/ManageSoftRL/"),
        ),
        (
            "VMSCAN_AGENT__PROFILES__LINUX__INSTALL_COMMAND",
            "sh {installer}".into(),
        ),
        (
            "VMSCAN_AGENT__PROFILES__LINUX__REQUIRED_PATTERNS",
            "[\"Program exited successfully\", \"Upload successful\"]".into(),
        ),
        ("VMSCAN_AGENT__PROFILES__LINUX__LOG_POLL_SECS", "1".into()),
        ("VMSCAN_INVENTORY__KIND", "flexera-one".into()),
        ("VMSCAN_INVENTORY__CHECK_INTERVAL_SECS", "2".into()),
        ("VMSCAN_INVENTORY__DEADLINE_SECS", "120".into()),
        (
            "VMSCAN_INVENTORY__FLEXERA_ONE__TOKEN_URL",
            format!("{}/oidc/token", flexera.base()),
        ),
        ("VMSCAN_INVENTORY__FLEXERA_ONE__API_BASE", flexera.base()),
        ("VMSCAN_INVENTORY__FLEXERA_ONE__ORG_ID", ORG.into()),
        ("VMSCAN_INVENTORY__FLEXERA_ONE__REPORT_ID", REPORT.into()),
        (
            "VMSCAN_INVENTORY__FLEXERA_ONE__REFRESH_TOKEN",
            REFRESH_TOKEN.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let first = Daemon::start(&["serve"], &env);
    let client = first.admin_client();
    let job: Value = client
        .post(format!("{}/api/v1/jobs", first.base()))
        .json(&json!({"url": images.url("disk.qcow2")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let get = |base: String| {
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .get(format!("{base}/api/v1/jobs/{id}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let start = std::time::Instant::now();
    loop {
        let j = get(first.base().to_string()).await;
        if stage(&j, "report-check")["state"] != "pending" {
            break;
        }
        assert!(j["state"] != "failed", "{j:#}");
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "scan never reached report-check: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(first); // SIGKILL

    let second = Daemon::start(&["serve"], &env);
    let start = std::time::Instant::now();
    let done = loop {
        let j = get(second.base().to_string()).await;
        if matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "job stuck after restart: {j:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(stage(&done, "teardown")["state"], "succeeded");
    // vm-create ran once: the resumed job reused the VM the first daemon started.
    let vm_runs = done["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["stage"] == "vm-create")
        .count();
    assert_eq!(vm_runs, 1, "{done:#}");
    let id_hex = id.replace('-', "");
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &format!("vmscan-{id_hex}")])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "qemu left running after the restarted daemon's teardown"
    );
    drop(second);
}

/// Benchmark (ignored; `scripts/bench-scan.sh` runs it): per-stage times of a
/// whole scan, the guest's share of it, and how per-scan time degrades with
/// scans in parallel. Prints numbers and ratios against the 1-scan baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_scan_stage_times_and_parallel_scans() {
    let mut baseline: Option<f64> = None;
    for parallel in [1usize, 2, 3, 4] {
        let w = world(move |c, _| {
            c.worker.pool_size = parallel;
            c.cluster.qemu.max_vms = parallel;
        })
        .await;
        w.flexera.set_reconcile_delay(Duration::ZERO);
        let started = std::time::Instant::now();
        let mut ids = Vec::new();
        for i in 0..parallel {
            // Each its own version: the default (the submit time, to the
            // second) would collide between scans queued in the same second.
            let job = w
                .app
                .submit(json!({"url": w.images.url("disk.raw.tar.gz"), "version": format!("bench-{parallel}-{i}")}))
                .await;
            ids.push(job["id"].as_str().unwrap().to_string());
        }
        let mut totals = Vec::new();
        let mut per_stage: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut boot = Vec::new();
        let mut overhead = Vec::new();
        for id in &ids {
            let done = w.app.wait_final(id, Duration::from_secs(600)).await;
            assert_eq!(done["state"], "succeeded", "{done:#}");
            totals.push(done["duration_ms"].as_f64().unwrap() / 1000.0);
            for s in done["stages"].as_array().unwrap() {
                if let Some(ms) = s["duration_ms"].as_f64() {
                    per_stage
                        .entry(s["name"].as_str().unwrap().to_string())
                        .or_default()
                        .push(ms / 1000.0);
                }
            }
            let ready = stage(&done, "vm-create")["detail"]["ready_secs"]
                .as_f64()
                .unwrap_or(0.0);
            let agent = stage(&done, "agent-install")["duration_ms"]
                .as_f64()
                .unwrap_or(0.0)
                / 1000.0;
            boot.push(ready);
            // The measure: what the scan costs beyond the guest's
            // own boot-to-login and agent run.
            overhead.push(totals.last().unwrap() - ready - agent);
        }
        let wall = started.elapsed().as_secs_f64();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let per_scan = mean(&totals);
        let base = *baseline.get_or_insert(per_scan);
        println!("\n== {parallel} scan(s) in parallel: wall {wall:.1} s, per scan {per_scan:.1} s (x{:.2} vs 1 scan), throughput {:.2} scans/min", per_scan / base, parallel as f64 * 60.0 / wall);
        for (name, v) in &per_stage {
            println!("   {name:<15} {:>7.2} s", mean(v));
        }
        println!(
            "   guest boot to SSH banner: {:.1} s = {:.0}% of the scan",
            mean(&boot),
            100.0 * mean(&boot) / per_scan
        );
        println!(
            "   overhead (scan - boot to login - agent run): {:.2} s = {:.0}% of the scan (goal <= 20%); load average {}",
            mean(&overhead),
            100.0 * mean(&overhead) / per_scan,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        w.app.stop().await;
    }
}
