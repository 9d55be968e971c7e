//! Reports built from stage records shaped as the stages write them.

use serde_json::{json, Value};

use super::*;
use crate::domain::{JobId, JobState, StageName, StageState};
use crate::store::{Job, Resource, StageRun};

const T0: i64 = 1_780_000_000_000;

fn job(state: JobState, error: Option<&str>) -> Job {
    Job {
        id: JobId::new(),
        url: "https://alice:pw@filer.example.com/rocky-9.4.qcow2?X-Amz-Signature=abc".into(),
        checksum: Some("file:https://filer.example.com/SHA256SUMS".into()),
        requested_by: Some("alice".into()),
        email: Some("alice@example.com".into()),
        note: Some("release 9.4".into()),
        options: json!({"cluster": "qemu-local", "os": "auto"}),
        state,
        current_stage: None,
        error: error.map(str::to_string),
        attempt: 1,
        run_base_attempt: 1,
        lease_expiries: 0,
        locked_by: None,
        lease_expires_at: None,
        wake_at: None,
        wait_reason: None,
        cancel_requested: false,
        abort_reason: None,
        created_at: T0,
        updated_at: T0 + 100_000,
        started_at: Some(T0 + 1_000),
        finished_at: state.is_final().then_some(T0 + 100_000),
        log_dropped: 0,
        batch_id: None,
    }
}

fn run(
    job: &Job,
    stage: StageName,
    at: i64,
    secs: i64,
    state: StageState,
    detail: Value,
) -> StageRun {
    StageRun {
        id: at,
        job_id: job.id,
        attempt: 1,
        stage: stage.as_str().into(),
        state,
        started_at: T0 + at * 1000,
        finished_at: Some(T0 + (at + secs) * 1000),
        duration_ms: Some(secs * 1000),
        detail,
        error: (state == StageState::Failed).then(|| "boom".to_string()),
    }
}

const SHA: &str = "9f3c1e0c5a1b6d2e8f7a4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918000";

/// The runs of a whole passing scan, with the details the stages record.
fn passing_runs(j: &Job) -> Vec<StageRun> {
    use StageName::*;
    let ok = StageState::Succeeded;
    vec![
        run(
            j,
            Fetch,
            1,
            3,
            ok,
            json!({"source": "https://***:***@filer.example.com/rocky-9.4.qcow2?X-Amz-Signature=***", "file_name": "rocky-9.4.qcow2", "size": 1_900_000_000u64, "sha256": SHA, "path": "/data/jobs/x/fetch/rocky-9.4.qcow2"}),
        ),
        run(
            j,
            Extract,
            4,
            0,
            ok,
            json!({"extracted": false, "container": null, "file_name": "rocky-9.4.qcow2"}),
        ),
        run(
            j,
            Checksum,
            4,
            1,
            ok,
            json!({"algorithm": "sha256", "expected": SHA, "actual": SHA, "source": "from https://filer.example.com/SHA256SUMS", "verified_file": "rocky-9.4.qcow2", "verified_target": "download", "verified": true}),
        ),
        run(
            j,
            Inspect,
            5,
            1,
            ok,
            json!({"format": "qcow2", "virtual_size": 21_474_836_480u64, "file_size": 1_900_000_000u64, "guest_os": {"family": "linux", "evidence": "partition 1 (Linux filesystem) holds ext4"}}),
        ),
        run(
            j,
            Convert,
            6,
            1,
            ok,
            json!({"format": "qcow2", "skipped": "already qcow2"}),
        ),
        run(j, ClusterUpload, 7, 2, ok, json!({"cluster": "qemu-local"})),
        run(
            j,
            VmCreate,
            9,
            41,
            ok,
            json!({"cluster": "qemu-local", "vm_name": "vmscan-x", "hostname": "vmscan-1a2b3c4d", "os": "Rocky Linux 9.4 (Blue Onyx)", "os_release": {"ID": "rocky", "VERSION_ID": "9.4"}}),
        ),
        run(
            j,
            AgentInstall,
            50,
            12,
            ok,
            json!({"package": "rpm", "package_reason": "ID_LIKE rhel", "installer": "https://files.example.com/managesoft.rpm?token=s3cr3t", "exit_status": 0, "agent_version": "24.0.0-1", "service_manager": "systemd", "services": [{"name": "ndtask", "state": "active"}, {"name": "mgsusageag", "state": "active"}], "inventory_command": "/opt/managesoft/bin/ndtrack -t Machine", "inventory_exit_status": 0}),
        ),
        run(
            j,
            LogCheck,
            62,
            8,
            ok,
            json!({"excerpts": [{"pattern": "Upload successful|Finished uploading inventory", "file": "/var/opt/managesoft/log/tracker.log", "line": "[Wed Jan  7 10:00:00 2026 (N, 0)] {42} Upload successful <b>&"}], "upload_confirmed": true}),
        ),
        run(
            j,
            ReportCheck,
            70,
            1,
            StageState::Parked,
            json!({"system": "Flexera One", "hostname": "vmscan-1a2b3c4d", "found": false}),
        ),
        run(
            j,
            ReportCheck,
            80,
            1,
            ok,
            json!({"system": "Flexera One", "hostname": "vmscan-1a2b3c4d", "found": true, "found_at": T0 + 81_000, "rows": [{"ComputerName": "vmscan-1a2b3c4d", "LastInventoryDate": "2026-01-07"}]}),
        ),
        run(
            j,
            Teardown,
            82,
            3,
            ok,
            json!({"vms_deleted": 1, "images_deleted": 1, "cluster": "qemu-local"}),
        ),
        run(
            j,
            Publish,
            85,
            2,
            ok,
            json!({"name": "rocky", "version": "9.4", "format": "qcow2", "store": "local", "repo": "vm-images", "path": "rocky/9.4/rocky-9.4.qcow2", "url": "file:///data/artifacts/vm-images/rocky/9.4/rocky-9.4.qcow2", "checksums": {"sha256": SHA}, "size": 1_900_000_000u64}),
        ),
    ]
}

fn resources(j: &Job, deleted: bool) -> Vec<Resource> {
    ["vm", "image"]
        .iter()
        .enumerate()
        .map(|(n, kind)| Resource {
            id: n as i64,
            job_id: j.id,
            kind: kind.to_string(),
            provider: "qemu-local".into(),
            external_id: format!("{kind}-1"),
            detail: json!({"name": format!("vmscan-{kind}")}),
            created_at: T0 + 9_000,
            deleted_at: deleted.then_some(T0 + 84_000),
        })
        .collect()
}

fn report_of(
    j: &Job,
    runs: &[StageRun],
    res: &[Resource],
    ending: Ending,
) -> Result<ScanReport, NotFinished> {
    build(&ReportInput {
        job: j,
        configured: crate::pipeline::BUILT_STAGES,
        omitted: &[],
        runs,
        resources: res,
        requester_name: Some("Alice Example".into()),
        generator: Generator {
            vmscan_version: "0.0.0-test".into(),
            config_sha256: SHA.into(),
        },
        default_cluster: Some("qemu-local".into()),
        ending,
        now: T0 + 200_000,
    })
}

#[test]
fn a_passed_scan_states_the_image_the_agent_the_inventory_and_the_teardown() {
    let j = job(JobState::Succeeded, None);
    let r = report_of(
        &j,
        &passing_runs(&j),
        &resources(&j, true),
        Ending::Finished,
    )
    .unwrap();
    assert_eq!(r.verdict.outcome, Outcome::Passed);
    assert_eq!(r.stages.len(), crate::pipeline::BUILT_STAGES.len());
    assert!(
        r.stages.iter().all(|s| s.outcome == StageOutcome::Passed),
        "{:#?}",
        r.stages
    );
    // Identity, with the URL's credentials hidden.
    assert!(!r.image.source_url.contains("pw") && !r.image.source_url.contains("abc"));
    assert_eq!(r.image.file_name.as_deref(), Some("rocky-9.4.qcow2"));
    assert_eq!(r.image.format.as_deref(), Some("qcow2"));
    assert_eq!(r.image.virtual_size_bytes, Some(21_474_836_480));
    assert_eq!(r.image.sha256.as_deref(), Some(SHA));
    assert!(r.image.checksum.verified);
    assert_eq!(r.image.checksum.method, ChecksumMethod::SumsFile);
    assert_eq!(r.cluster.as_deref(), Some("qemu-local"));
    assert_eq!(
        r.guest_os.name.as_deref(),
        Some("Rocky Linux 9.4 (Blue Onyx)")
    );
    assert_eq!(r.guest_os.family_source, "detected");
    assert_eq!(r.job.requested_by.as_deref(), Some("alice"));
    // The agent: package, version, services and the log line that proved the upload.
    let a = r.agent.as_ref().unwrap();
    assert_eq!(a.version.as_deref(), Some("24.0.0-1"));
    assert!(!a.installer.as_deref().unwrap().contains("s3cr3t"));
    assert_eq!(a.services.len(), 2);
    assert!(a.matched_log_lines[0].line.contains("Upload successful"));
    // Inventory: found on the second check, at the recorded time.
    let inv = r.inventory.as_ref().unwrap();
    assert!(inv.found);
    assert_eq!(inv.checks, 2);
    assert_eq!(
        inv.found_at.as_deref(),
        Some(crate::domain::fmt_millis(T0 + 81_000).as_str())
    );
    assert_eq!(inv.rows[0]["ComputerName"], "vmscan-1a2b3c4d");
    let rc = r.stages.iter().find(|s| s.name == "report-check").unwrap();
    assert_eq!(rc.attempts, 2);
    assert_eq!(rc.duration_secs, Some(11.0), "wall time over both checks");
    assert!(r.teardown.all_removed);
    assert_eq!(r.publication.as_ref().unwrap().version, "9.4");
    // JSON round trip.
    let back: ScanReport = serde_json::from_str(&render_json(&r)).unwrap();
    assert_eq!(back, r);
    validates_against_the_schema(&render_json(&r));
}

/// The committed schema accepts the report (python-jsonschema, installed by
/// scripts/install-test-deps.sh; required under CI).
fn validates_against_the_schema(json: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let have = std::process::Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CI").is_err(),
            "python3 jsonschema is missing under CI"
        );
        eprintln!("note: python3 jsonschema not installed; schema check skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("report.json");
    std::fs::write(&doc, json).unwrap();
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/fixtures/check_report.py"))
        .arg("schema")
        .arg(root.join("static/scan-report.schema.json"))
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failed_scan_names_the_failed_stage_and_its_error_and_skips_the_rest() {
    let j = job(JobState::Failed, Some("agent-install failed: boom"));
    let mut runs: Vec<StageRun> = passing_runs(&j)
        .into_iter()
        .filter(|r| {
            let s: StageName = r.stage.parse().unwrap();
            !matches!(
                s,
                StageName::LogCheck | StageName::ReportCheck | StageName::Publish
            )
        })
        .collect();
    let agent = runs
        .iter_mut()
        .find(|r| r.stage == "agent-install")
        .unwrap();
    agent.state = StageState::Failed;
    agent.error = Some("installer exited 1: managesoft: post-install script failed".into());
    let r = report_of(&j, &runs, &resources(&j, true), Ending::Finished).unwrap();
    assert_eq!(r.verdict.outcome, Outcome::Failed);
    assert_eq!(r.verdict.failed_stage.as_deref(), Some("agent-install"));
    assert!(r
        .verdict
        .error
        .as_deref()
        .unwrap()
        .contains("post-install script failed"));
    let outcome = |n: &str| r.stages.iter().find(|s| s.name == n).unwrap().outcome;
    assert_eq!(outcome("agent-install"), StageOutcome::Failed);
    assert_eq!(outcome("log-check"), StageOutcome::Skipped);
    assert_eq!(outcome("publish"), StageOutcome::Skipped);
    assert_eq!(outcome("teardown"), StageOutcome::Passed);
    assert!(r.teardown.all_removed);

    validates_against_the_schema(&render_json(&r));
    let html = render_html(&r).unwrap();
    assert!(html.contains("failed at agent-install"), "{html}");
    assert!(html.contains("post-install script failed"));

    let xml = render_junit(&r);
    assert!(xml.contains(r#"<testcase name="agent-install""#));
    assert!(
        xml.contains(
            r#"<failure message="installer exited 1: managesoft: post-install script failed""#
        ),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<skipped message="not run: the scan failed at agent-install"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"failures="1""#) && xml.contains(r#"skipped="3""#),
        "{xml}"
    );
}

#[test]
fn a_resource_left_behind_is_not_a_confirmed_teardown() {
    let j = job(JobState::Succeeded, None);
    let r = report_of(
        &j,
        &passing_runs(&j),
        &resources(&j, false),
        Ending::Finished,
    )
    .unwrap();
    assert!(!r.teardown.all_removed);
    assert!(r.teardown.resources.iter().all(|x| x.state == "present"));
    assert!(render_html(&r)
        .unwrap()
        .contains("not every resource is confirmed deleted"));
}

#[test]
fn an_unfinished_job_has_no_report_except_the_one_publish_writes() {
    let j = job(JobState::Running, None);
    let mut runs = passing_runs(&j);
    let publish = runs.last_mut().unwrap();
    publish.state = StageState::Running;
    publish.finished_at = None;
    let err = report_of(&j, &runs, &[], Ending::Finished).unwrap_err();
    assert!(err.to_string().contains("is running"), "{err}");
    let p = Publication {
        name: "rocky".into(),
        version: "9.4".into(),
        store: Some("local".into()),
        repo: None,
        path: None,
        url: None,
        sha256: None,
        size_bytes: None,
        format: None,
    };
    let r = report_of(&j, &runs, &[], Ending::Publishing(Box::new(p))).unwrap();
    assert_eq!(r.verdict.outcome, Outcome::Passed);
    assert_eq!(r.stages.last().unwrap().outcome, StageOutcome::Passed);
    assert_eq!(r.job.state, "running (publishing)");
}

#[test]
fn left_out_stages_say_why_and_no_agent_means_no_agent_evidence() {
    let j = job(JobState::Succeeded, None);
    let runs: Vec<StageRun> = passing_runs(&j)
        .into_iter()
        .filter(|r| !["agent-install", "log-check", "report-check"].contains(&r.stage.as_str()))
        .collect();
    let omitted = vec![(StageName::AgentInstall, "no agent profile".to_string())];
    let r = build(&ReportInput {
        job: &j,
        configured: crate::pipeline::BUILT_STAGES,
        omitted: &omitted,
        runs: &runs,
        resources: &[],
        requester_name: None,
        generator: Generator {
            vmscan_version: "x".into(),
            config_sha256: SHA.into(),
        },
        default_cluster: None,
        ending: Ending::Finished,
        now: T0,
    })
    .unwrap();
    let ai = r.stages.iter().find(|s| s.name == "agent-install").unwrap();
    assert_eq!(ai.outcome, StageOutcome::LeftOut);
    assert_eq!(ai.note.as_deref(), Some("no agent profile"));
    assert!(r.agent.is_none() && r.inventory.is_none());
    assert!(render_junit(&r).contains(r#"<skipped message="no agent profile"/>"#));
}

#[test]
fn the_html_is_self_contained_and_escapes_what_the_guest_wrote() {
    let j = job(JobState::Succeeded, None);
    let mut runs = passing_runs(&j);
    let logs = runs.iter_mut().find(|r| r.stage == "log-check").unwrap();
    logs.detail["excerpts"][0]["line"] = json!("<script>alert(1)</script> Upload successful");
    let r = report_of(&j, &runs, &resources(&j, true), Ending::Finished).unwrap();
    let html = render_html(&r).unwrap();
    assert!(!html.contains("<script"), "guest text is escaped");
    assert!(
        html.contains("&#60;script&#62;alert(1)"),
        "askama escapes it"
    );
    for external in ["<link", " src=", "@import", "url("] {
        assert!(!html.contains(external), "no external asset ({external})");
    }
    assert!(html.contains("@media print"));
    assert!(html.contains("24.0.0-1") && html.contains("ndtask") && html.contains("Flexera One"));
    // The policy allows exactly the page's style sheet.
    let css = html
        .split("<style>")
        .nth(1)
        .unwrap()
        .split("</style>")
        .next()
        .unwrap();
    use base64::Engine;
    use sha2::Digest;
    let hash =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(css.as_bytes()));
    assert!(REPORT_CSP.contains(&hash), "{}", *REPORT_CSP);
}

#[test]
fn junit_text_is_well_formed_whatever_the_error_holds() {
    let j = job(JobState::Failed, Some("x"));
    let mut runs = passing_runs(&j);
    runs.truncate(1);
    runs[0].state = StageState::Failed;
    runs[0].error = Some("bad \"quote\" <tag> & \u{1b}[31mansi\u{7}".into());
    let xml = render_junit(&report_of(&j, &runs, &[], Ending::Finished).unwrap());
    assert!(
        xml.contains("bad &quot;quote&quot; &lt;tag&gt; &amp; [31mansi"),
        "{xml}"
    );
    assert!(!xml.contains('\u{1b}') && !xml.contains('\u{7}'));
}

#[test]
fn the_config_digest_follows_settings_but_never_secrets() {
    use secrecy::SecretString;
    let mut a = crate::config::Config::default();
    let base = config_digest(&a);
    assert_eq!(base.len(), 64);
    assert_eq!(base, config_digest(&a.clone()), "stable");
    a.vm.ssh_password = Some(SecretString::from("hunter2"));
    let with_secret = config_digest(&a);
    a.vm.ssh_password = Some(SecretString::from("another-password"));
    assert_eq!(
        with_secret,
        config_digest(&a),
        "a secret's value does not enter the digest"
    );
    a.vm.memory_mib += 1;
    assert_ne!(with_secret, config_digest(&a), "a setting does");
}

#[test]
fn published_reports_sit_next_to_the_image() {
    assert_eq!(
        published_path("rocky/9.4/rocky-9.4.qcow2", "rocky", "9.4", "html"),
        "rocky/9.4/rocky-9.4.scan-report.html"
    );
    assert_eq!(
        published_url(
            "https://art/vm/rocky/9.4/rocky-9.4.qcow2",
            "rocky",
            "9.4",
            "json"
        ),
        "https://art/vm/rocky/9.4/rocky-9.4.scan-report.json"
    );
    assert_eq!(
        published_path("flat.qcow2", "flat", "1", "html"),
        "flat-1.scan-report.html"
    );
}
