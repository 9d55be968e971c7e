//! Notifications end to end: real emails received by a real SMTP server
//! (aiosmtpd) and a Jira ticket per scan on a faithful fake Jira (v2 and v3),
//! including Jira failures that must never touch the scan.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmscan::config::{Config, JiraDeployment, SmtpSecurity};
use vmscan::domain::StageName;

use support::jira::{Failure, FakeJira, TOKEN, USER};
use support::smtp::SmtpSink;
use support::{backends, Backend, TestApp};

const EXTERNAL: &str = "https://vmscan.example.com";
const ADMIN: &str = "sam-admin@example.com";

fn image_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rocky-9.raw");
    std::fs::write(&path, vec![7u8; 300_000]).unwrap();
    let url = format!("file://{}", path.display());
    (dir, url)
}

/// Intake stages only (no VM), fast outbox polling, email to the sink and
/// Jira to the fake.
fn configure(
    c: &mut Config,
    root: &std::path::Path,
    smtp: Option<&SmtpSink>,
    jira: Option<(&FakeJira, JiraDeployment)>,
) {
    c.fetch.allowed_roots = vec![root.to_path_buf()];
    c.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
    c.pipeline.retry_limit = 0;
    c.server.external_url = Some(EXTERNAL.into());
    c.notify.poll_interval_ms = 100;
    c.notify.backoff_secs = 1;
    c.notify.jira_link_wait_secs = 20;
    if let Some(s) = smtp {
        c.notify.email.enabled = true;
        c.notify.email.host = "127.0.0.1".into();
        c.notify.email.port = s.port;
        c.notify.email.security = SmtpSecurity::None;
        c.notify.email.from = "vmscan <vmscan@example.com>".into();
        c.notify.email.admins = vec![ADMIN.into()];
    }
    if let Some((j, deployment)) = jira {
        c.notify.jira.enabled = true;
        c.notify.jira.base_url = j.base.clone();
        c.notify.jira.deployment = deployment;
        c.notify.jira.user = Some(USER.into());
        c.notify.jira.token = Some(TOKEN.into());
        c.notify.jira.project = "OPS".into();
        c.notify.jira.labels = vec!["vm-scan".into(), "auto".into()];
        c.notify.jira.success_transition = "Done".into();
        c.notify.jira.failure_transition = "Scan failed".into();
    }
}

/// Waits until every notification of the job is sent, failed or skipped.
async fn settled_notifications(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let job = app.job(id).await;
        let ns = job["notifications"].as_array().cloned().unwrap_or_default();
        if !ns.is_empty()
            && ns
                .iter()
                .all(|n| matches!(n["state"].as_str(), Some("sent" | "failed" | "skipped")))
        {
            return job;
        }
        if start.elapsed() > Duration::from_secs(40) {
            panic!("notifications did not settle: {:#}", job["notifications"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn notes<'a>(job: &'a Value, channel: &str) -> Vec<&'a Value> {
    job["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["channel"] == channel)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successful_scan_emails_people_and_logs_every_step_in_jira() {
    for backend in backends() {
        let smtp = SmtpSink::start().await;
        let jira = FakeJira::start(2).await;
        let (dir, url) = image_dir();
        let app = TestApp::spawn(backend, |c| {
            configure(
                c,
                dir.path(),
                Some(&smtp),
                Some((&jira, JiraDeployment::Server)),
            )
        })
        .await;
        // Ann's name and mail come from her account, not from the request.
        let ann = app.person("ann", "Ann Smith", "requester").await;
        let job = app
            .submit_with(&ann, json!({"url": url, "note": "nightly"}))
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        assert_eq!(job["requester_name"], "Ann Smith");
        let done = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let done = settled_notifications(&app, &id).await;
        let link = format!("{EXTERNAL}/jobs/{id}");

        // Emails: started (with the ticket) and succeeded, to the requester and the admins.
        let started = smtp.wait_for("scan started", Duration::from_secs(10)).await;
        let ok = smtp
            .wait_for("scan succeeded", Duration::from_secs(10))
            .await;
        for m in [&started, &ok] {
            assert_eq!(m.mail_from, "vmscan@example.com");
            let mut to = m.rcpt_tos.clone();
            to.sort();
            assert_eq!(to, vec!["ann@example.com".to_string(), ADMIN.to_string()]);
            assert!(m.to.contains("Ann Smith"), "{}", m.to);
            assert_eq!(m.content_type, "multipart/alternative");
            assert!(m.subject.contains("rocky-9.raw"), "{}", m.subject);
            assert!(m.text.contains(&link), "{}", m.text);
            assert!(m.html.contains(&format!("href=\"{link}\"")), "{}", m.html);
            assert!(!m.raw.contains(TOKEN));
        }
        assert!(started.text.contains("Jira: OPS-1"), "{}", started.text);
        // The end-of-scan mail links the scan report; the first one has none yet.
        let report = format!("{EXTERNAL}/api/v1/jobs/{id}/report.html");
        assert!(
            ok.text.contains(&format!("Scan report: {report}")),
            "{}",
            ok.text
        );
        assert!(
            ok.html.contains(&format!("href=\"{report}\"")),
            "{}",
            ok.html
        );
        assert!(!started.text.contains("Scan report"), "{}", started.text);
        assert!(started
            .html
            .contains(&format!("{}/browse/OPS-1", jira.base)));
        assert!(ok.text.contains("fetch") && ok.text.contains("checksum"));
        assert!(
            ok.html.contains("<td>checksum</td><td>succeeded</td>"),
            "{}",
            ok.html
        );
        assert_eq!(smtp.messages().len(), 2);

        // Jira: one ticket, a comment per stage transition, the summary, then Done.
        assert!(jira.problems().is_empty(), "{:?}", jira.problems());
        let issues = jira.issues();
        assert_eq!(issues.len(), 1);
        let t = &issues[0];
        assert_eq!(t.fields["project"]["key"], "OPS");
        assert_eq!(t.fields["issuetype"]["name"], "Task");
        assert_eq!(t.fields["labels"], json!(["vm-scan", "auto"]));
        assert_eq!(t.fields["summary"], "VM image scan: rocky-9.raw");
        let desc = t.fields["description"].as_str().unwrap();
        assert!(desc.contains(&url) && desc.contains("Ann Smith <ann@example.com>"));
        assert!(desc.contains(&link) && desc.contains("nightly"), "{desc}");
        assert_eq!(t.comments.len(), 5, "{:#?}", t.comments);
        assert_eq!(t.comments[0], "fetch started.");
        assert!(
            t.comments[1].starts_with("fetch succeeded in"),
            "{}",
            t.comments[1]
        );
        assert!(
            t.comments[1].contains("size: 293 KiB") || t.comments[1].contains("size:"),
            "{}",
            t.comments[1]
        );
        assert_eq!(t.comments[2], "checksum started.");
        assert!(t.comments[3].starts_with("checksum succeeded in"));
        assert!(
            t.comments[4].starts_with("Scan succeeded"),
            "{}",
            t.comments[4]
        );
        assert!(t.comments[4].contains(&link));
        assert!(
            t.comments[4].contains(&format!("Scan report: {report}")),
            "{}",
            t.comments[4]
        );
        assert_eq!(t.transitions, vec!["Done"]);
        let reqs = jira.requests();
        assert_eq!(reqs.last().unwrap(), "POST transition OPS-1");
        assert!(reqs.contains(&"GET transitions OPS-1".to_string()));

        // The job shows the ticket and every notification's state.
        assert_eq!(done["jira"]["key"], "OPS-1");
        assert_eq!(notes(&done, "email").len(), 2);
        assert_eq!(notes(&done, "jira").len(), 7);
        assert!(done["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "sent" && n["attempts"] == 1));
        let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
        assert!(
            page.contains("Notifications") && page.contains("OPS-1") && page.contains("Ann Smith")
        );
        assert!(!page.contains(TOKEN) && !done.to_string().contains(TOKEN));
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jira_cloud_gets_adf_bodies_and_basic_auth() {
    let jira = FakeJira::start(3).await;
    let (dir, url) = image_dir();
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        configure(c, dir.path(), None, Some((&jira, JiraDeployment::Cloud)))
    })
    .await;
    let job = app
        .submit(json!({"url": url, "email": "ann@example.com"}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_final(&id, Duration::from_secs(20)).await["state"],
        "succeeded"
    );
    let done = settled_notifications(&app, &id).await;
    assert!(jira.problems().is_empty(), "{:?}", jira.problems());
    let t = &jira.issues()[0];
    assert_eq!(t.fields["description"]["type"], "doc");
    assert_eq!(t.fields["description"]["content"][0]["type"], "paragraph");
    assert!(t.fields["description_text"]
        .as_str()
        .unwrap()
        .contains(&url));
    assert_eq!(t.comments.len(), 5);
    assert_eq!(t.transitions, vec!["Done"]);
    assert!(notes(&done, "jira").iter().all(|n| n["state"] == "sent"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_scan_emails_the_stage_and_error_and_transitions_the_ticket() {
    for backend in backends() {
        let smtp = SmtpSink::start().await;
        let jira = FakeJira::start(2).await;
        let (dir, _) = image_dir();
        let missing = format!("file://{}/gone.qcow2", dir.path().display());
        let app = TestApp::spawn(backend, |c| {
            configure(
                c,
                dir.path(),
                Some(&smtp),
                Some((&jira, JiraDeployment::Server)),
            )
        })
        .await;
        let job = app
            .submit(json!({"url": missing, "email": "bob@example.com"}))
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        let done = app.wait_final(&id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "failed", "{done:#}");
        settled_notifications(&app, &id).await;
        let error = done["error"].as_str().unwrap().to_string();

        let m = smtp.wait_for("scan failed", Duration::from_secs(10)).await;
        assert!(m.subject.contains("failed at fetch"), "{}", m.subject);
        assert!(m.rcpt_tos.contains(&"bob@example.com".to_string()));
        assert!(
            m.text.contains("The scan failed at stage fetch."),
            "{}",
            m.text
        );
        assert!(m.text.contains(&error), "{}\n---\n{error}", m.text);
        assert!(m.text.contains("Last log lines:"), "{}", m.text);
        assert!(
            m.html.contains("Last log lines") && m.html.contains("<td>fetch</td><td>failed</td>")
        );

        assert!(jira.problems().is_empty(), "{:?}", jira.problems());
        let t = &jira.issues()[0];
        assert!(
            t.comments
                .iter()
                .any(|c| c.starts_with("fetch failed after")),
            "{:#?}",
            t.comments
        );
        assert!(t.comments.last().unwrap().starts_with("Scan failed"));
        assert_eq!(t.transitions, vec!["Scan failed"]);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_jira_is_retried_and_the_scan_is_unaffected() {
    for backend in backends() {
        let smtp = SmtpSink::start().await;
        let jira = FakeJira::start(2).await;
        jira.fail("create", Failure::RateLimited(1), 2);
        let (dir, url) = image_dir();
        let app = TestApp::spawn(backend, |c| {
            configure(
                c,
                dir.path(),
                Some(&smtp),
                Some((&jira, JiraDeployment::Server)),
            )
        })
        .await;
        let job = app
            .submit(json!({"url": url, "email": "ann@example.com"}))
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        assert_eq!(
            app.wait_final(&id, Duration::from_secs(20)).await["state"],
            "succeeded"
        );
        let done = settled_notifications(&app, &id).await;
        let create = notes(&done, "jira")[0];
        assert_eq!(create["kind"], "job_started");
        assert_eq!(create["state"], "sent", "{done:#}");
        assert_eq!(create["attempts"], 3);
        assert!(notes(&done, "jira").iter().all(|n| n["state"] == "sent"));
        let t = &jira.issues()[0];
        assert_eq!(t.comments.len(), 5);
        assert_eq!(t.transitions, vec!["Done"]);
        // The started email waited for the ticket and links it.
        let started = smtp.wait_for("scan started", Duration::from_secs(10)).await;
        assert!(started.text.contains("Jira: OPS-1"), "{}", started.text);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jira_400_shows_on_the_job_and_the_scan_still_succeeds() {
    let smtp = SmtpSink::start().await;
    let jira = FakeJira::start(2).await;
    jira.fail("create", Failure::BadRequest, 1);
    let (dir, url) = image_dir();
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        configure(
            c,
            dir.path(),
            Some(&smtp),
            Some((&jira, JiraDeployment::Server)),
        )
    })
    .await;
    let job = app
        .submit(json!({"url": url, "email": "ann@example.com"}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_final(&id, Duration::from_secs(20)).await["state"],
        "succeeded"
    );
    let done = settled_notifications(&app, &id).await;
    let create = notes(&done, "jira")[0];
    assert_eq!(create["state"], "failed");
    assert_eq!(create["attempts"], 1, "a 400 is not retried");
    let err = create["last_error"].as_str().unwrap();
    assert!(err.contains("400"), "{err}");
    assert!(err.contains("Field 'labels' cannot be set"), "{err}");
    assert!(
        err.contains("customfield_10010: Team is required."),
        "{err}"
    );
    assert!(notes(&done, "jira")[1]["last_error"]
        .as_str()
        .unwrap()
        .contains("no Jira ticket"));
    assert!(done["jira"].is_null());
    // Email still goes out, without a ticket link.
    let started = smtp.wait_for("scan started", Duration::from_secs(10)).await;
    assert!(!started.text.contains("Jira:"));
    smtp.wait_for("scan succeeded", Duration::from_secs(10))
        .await;
    let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
    assert!(
        page.contains("Team is required."),
        "the page shows the Jira error"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_jira_credentials_are_reported_not_retried() {
    let jira = FakeJira::start(2).await;
    let (dir, url) = image_dir();
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        configure(c, dir.path(), None, Some((&jira, JiraDeployment::Server)));
        c.notify.jira.token = Some("wrong-token".into());
    })
    .await;
    let job = app.submit(json!({"url": url})).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_final(&id, Duration::from_secs(20)).await["state"],
        "succeeded"
    );
    let done = settled_notifications(&app, &id).await;
    let create = notes(&done, "jira")[0];
    assert_eq!(create["state"], "failed");
    assert_eq!(create["attempts"], 1);
    let err = create["last_error"].as_str().unwrap();
    assert!(
        err.contains("401") && err.contains("check notify.jira.token"),
        "{err}"
    );
    assert!(!done.to_string().contains("wrong-token"));
    app.stop().await;
}

#[test]
fn secrets_are_redacted_from_the_shown_config() {
    let mut c = Config::default();
    c.notify.email.password = Some("smtp-hunter2".into());
    c.notify.jira.token = Some(TOKEN.into());
    let shown = c.to_redacted_json();
    assert!(
        !shown.contains("smtp-hunter2") && !shown.contains(TOKEN),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_rows_go_to_one_deliverer_each_and_in_order_per_job() {
    use vmscan::store::notify::Delivered;
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let j = app.submit(json!({"url": "https://h.example/a.img"})).await;
            jobs.push(
                j["id"]
                    .as_str()
                    .unwrap()
                    .parse::<vmscan::domain::JobId>()
                    .unwrap(),
            );
        }
        for i in 0..10 {
            for j in &jobs {
                app.store
                    .enqueue_notification(*j, "jira", "stage_started", &json!({"i": i}))
                    .await
                    .unwrap();
            }
        }
        // Four deliverers race; each row must be claimed once, and a job's
        // rows only after the earlier ones were settled.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = app.store.clone();
            let seen = seen.clone();
            tasks.push(tokio::spawn(async move {
                let me = format!("deliverer-{w}");
                let mut idle = 0;
                while idle < 20 {
                    let batch = store
                        .claim_notifications(&me, Duration::from_secs(60), 4)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    idle = 0;
                    for n in batch {
                        seen.lock()
                            .unwrap()
                            .push((n.job_id, n.payload["i"].as_i64().unwrap()));
                        assert!(store
                            .finish_notification(n.id, &me, &Delivered::Sent)
                            .await
                            .unwrap());
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 30, "each row exactly once: {seen:?}");
        for j in &jobs {
            let order: Vec<i64> = seen
                .iter()
                .filter(|(id, _)| id == j)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(order, (0..10).collect::<Vec<_>>());
        }
        // A lost lease is not recorded; an expired one is taken over.
        let j = jobs[0];
        app.store
            .enqueue_notification(j, "email", "job_started", &json!({}))
            .await
            .unwrap();
        let a = app
            .store
            .claim_notifications("a", Duration::from_millis(1), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let b = app
            .store
            .claim_notifications("b", Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(b[0].attempts, 2);
        assert!(!app
            .store
            .finish_notification(a[0].id, "a", &Delivered::Sent)
            .await
            .unwrap());
        assert!(app
            .store
            .finish_notification(b[0].id, "b", &Delivered::Sent)
            .await
            .unwrap());
        app.stop().await;
    }
}
