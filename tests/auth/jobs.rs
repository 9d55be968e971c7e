//! Whose job it is: a requester acts on their own jobs only, an operator on
//! anyone's; the requester of a job is always the login.

use serde_json::{json, Value};

use crate::support::{backends, TestApp};
use crate::{audit, error_of, get_with, post_with};

const URL: &str = "https://images.example/rocky-9.qcow2";

async fn job(app: &TestApp, id: &str) -> Value {
    app.job(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesters_cancel_and_retry_only_their_own_jobs_operators_anyones() {
    for backend in backends() {
        // No workers: a job stays where the API put it.
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let rita = app.token_for("rita", "requester").await;
        let rhea = app.token_for("rhea", "requester").await;
        let otto = app.token_for("otto", "operator").await;
        let (status, j) = post_with(&app.base, &rita, "/api/v1/jobs", json!({"url": URL})).await;
        assert_eq!(status, 201, "{j}");
        let id = j["id"].as_str().unwrap().to_string();
        let act = |t: &str, what: &str| {
            let (base, t, path) = (
                app.base.clone(),
                t.to_string(),
                format!("/api/v1/jobs/{id}/{what}"),
            );
            async move { post_with(&base, &t, &path, json!({})).await }
        };

        // rhea may not cancel rita's job; it stays queued, no cancel asked.
        let (status, body) = act(&rhea, "cancel").await;
        assert_eq!(status, 403, "{backend:?}: {body}");
        assert_eq!(body["required_role"], "operator");
        assert!(error_of(&body).contains("was requested by rita"), "{body}");
        let j = job(&app, &id).await;
        assert_eq!(
            (j["state"].as_str(), j["cancel_requested"].as_bool()),
            (Some("queued"), Some(false))
        );

        // rita may.
        let (status, body) = act(&rita, "cancel").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message"], "cancelled before it started");
        assert_eq!(job(&app, &id).await["state"], "cancelled");

        // rhea may not retry it either; it stays cancelled.
        let (status, body) = act(&rhea, "retry").await;
        assert_eq!(status, 403, "{body}");
        assert!(
            error_of(&body).contains("to retry someone else's job you need the operator role"),
            "{body}"
        );
        assert_eq!(job(&app, &id).await["state"], "cancelled");

        // rita may; then the operator cancels and retries it.
        let (status, body) = act(&rita, "retry").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(job(&app, &id).await["state"], "queued");
        let (status, body) = act(&otto, "cancel").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(job(&app, &id).await["state"], "cancelled");
        let (status, body) = act(&otto, "retry").await;
        assert_eq!(status, 202, "{body}");
        let j = job(&app, &id).await;
        assert_eq!(j["state"], "queued");
        assert_eq!(
            j["requested_by"], "rita",
            "acting on a job does not change whose it is"
        );

        // The refusals are in the audit trail.
        let refused = audit(&app, "actor=rhea&outcome=refused").await;
        let actions: Vec<_> = refused
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["retry", "cancel"], "{refused:?}");
        assert!(refused.iter().all(|e| e["object"] == id.as_str()));
        let log = app.log_text(&id).await;
        assert!(log.contains("submitted by rita"), "{log}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_is_the_login_and_extra_addresses_stay_in_the_allowed_domains() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let rita = app.token_for("rita", "requester").await;
        app.token_for("rhea", "requester").await;
        let submit = |body: Value| {
            let (base, t) = (app.base.clone(), rita.clone());
            async move { post_with(&base, &t, "/api/v1/jobs", body).await }
        };

        let (status, body) = submit(json!({"url": URL, "requested_by": "rhea"})).await;
        assert_eq!(status, 422, "{backend:?}: {body}");
        assert!(
            error_of(&body).starts_with("requested_by: is taken from your login (rita)"),
            "{body}"
        );
        let (status, body) = submit(json!({"url": URL, "email": "someone@evil.example"})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            error_of(&body),
            "email: someone@evil.example is not in a domain scan email may go to (example.com)"
        );
        let (status, body) =
            submit(json!({"url": URL, "email": "ann@example.com, x@sub.example.com"})).await;
        assert_eq!(status, 422, "a subdomain is another domain: {body}");
        // Nothing was queued by the refusals.
        let (_, list) = get_with(&app.base, &rita, "/api/v1/jobs").await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "{list}");

        // Naming oneself is fine; so is naming nobody.
        let (status, j) =
            submit(json!({"url": URL, "requested_by": "rita", "email": "ann@example.com"})).await;
        assert_eq!(status, 201, "{j}");
        assert_eq!(j["requested_by"], "rita");
        assert_eq!(
            j["email"], "rita@example.com",
            "scan email goes to the login's own address"
        );
        assert_eq!(j["options"]["also_notify"], json!(["ann@example.com"]));
        let (status, j) = submit(json!({"url": URL})).await;
        assert_eq!(status, 201, "{j}");
        let stored = app.job(j["id"].as_str().unwrap()).await;
        assert_eq!(stored["requested_by"], "rita");
        assert_eq!(stored["email"], "rita@example.com");
        let (_, mine) = get_with(&app.base, &rita, "/api/v1/jobs?requested_by=rita").await;
        assert_eq!(mine["jobs"].as_array().unwrap().len(), 2);
        app.stop().await;
    }
}
