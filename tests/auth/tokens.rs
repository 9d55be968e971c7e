//! API tokens: their role, revocation, expiry, the secret shown once, and
//! `vmscan token create` on a real daemon.

use serde_json::json;
use vmscan::domain::{now_millis, Role};
use vmscan::identity::secret;
use vmscan::store::auth::NewToken;

use crate::support::daemon::{cli_token, Daemon};
use crate::support::{backends, TestApp};
use crate::{anonymous, error_of, get_with, post_with, status_json};

const URL: &str = "https://images.example/rocky-9.qcow2";

async fn delete_with(base: &str, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = anonymous()
        .delete(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    status_json(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_role_revocation_and_expiry_are_enforced() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let base = app.base.clone();

        // A viewer cannot submit; nor can an admin through a viewer token.
        let vic = app.token_for("vic", "viewer").await;
        let (status, body) = post_with(&base, &vic, "/api/v1/jobs", json!({"url": URL})).await;
        assert_eq!(status, 403, "{backend:?}: {body}");
        assert_eq!(body["required_role"], "requester");
        assert_eq!(
            error_of(&body),
            "this needs the requester role; vic has viewer"
        );
        let (status, body) = app
            .post(
                "/api/v1/tokens",
                json!({"name": "read-only", "role": "viewer"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let admin_ro = body["token"].as_str().unwrap().to_string();
        let (status, body) = post_with(&base, &admin_ro, "/api/v1/jobs", json!({"url": URL})).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            error_of(&body),
            "this needs the requester role; admin has viewer"
        );
        let (_, me) = get_with(&base, &admin_ro, "/api/v1/me").await;
        assert_eq!(
            (me["role"].as_str(), me["user_role"].as_str()),
            (Some("viewer"), Some("admin"))
        );

        // rita makes a token: the secret is in the answer, once.
        let rita = app.token_for("rita", "requester").await;
        let (status, made) = post_with(&base, &rita, "/api/v1/tokens", json!({"name": "ci"})).await;
        assert_eq!(status, 201, "{made}");
        let ci = made["token"].as_str().unwrap().to_string();
        assert!(ci.starts_with("vmscan_"), "{ci}");
        assert_eq!(made["record"]["user"], "rita");
        assert_eq!(made["record"]["role"], "requester");
        let ci_id = made["record"]["id"].as_i64().unwrap();
        let (status, list) = get_with(&base, &rita, "/api/v1/tokens").await;
        assert_eq!(status, 200);
        let text = list.to_string();
        assert!(
            !text.contains(&ci) && !text.contains(&rita),
            "a listing never shows a secret: {text}"
        );
        assert!(!text.contains(&secret::digest(&ci)), "nor its hash: {text}");
        let ids: Vec<_> = list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect();
        assert!(ids.contains(&ci_id) && ids.len() == 2, "{list}");
        assert!(list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["user"] == "rita"));
        // ...and only their own, unless an admin asks for all.
        let (status, _) = get_with(&base, &rita, "/api/v1/tokens?all=true").await;
        assert_eq!(status, 403);
        let (_, me) = get_with(&base, &ci, "/api/v1/me").await;
        assert_eq!(
            (me["user"].as_str(), me["via"].as_str()),
            (Some("rita"), Some("token"))
        );

        // A token's role never exceeds its user's.
        let (status, body) =
            post_with(&base, &rita, "/api/v1/tokens", json!({"role": "operator"})).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            error_of(&body).contains("rita has the requester role; a token cannot have more"),
            "{body}"
        );
        let (status, body) = app
            .post("/api/v1/tokens", json!({"user": "rita", "role": "admin"}))
            .await;
        assert_eq!(status, 422, "not even when an admin asks: {body}");
        assert!(
            error_of(&body).contains("a token cannot have more (admin)"),
            "{body}"
        );
        let (status, body) =
            post_with(&base, &rita, "/api/v1/tokens", json!({"user": "vic"})).await;
        assert_eq!(status, 403, "a token for someone else needs admin: {body}");

        // Someone else's token does not exist for a non-admin.
        let (status, body) = delete_with(&base, &vic, &format!("/api/v1/tokens/{ci_id}")).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(error_of(&body), format!("token {ci_id} not found"));
        assert_eq!(
            get_with(&base, &ci, "/api/v1/me").await.0,
            200,
            "still live"
        );

        // Revoked: 401, saying so.
        let (status, body) = delete_with(&base, &rita, &format!("/api/v1/tokens/{ci_id}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["revoked_at"].is_i64(), "{body}");
        let (status, body) = get_with(&base, &ci, "/api/v1/me").await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            error_of(&body),
            format!("API token {ci_id} (ci) was revoked")
        );
        let (status, _) = post_with(&base, &ci, "/api/v1/jobs", json!({"url": URL})).await;
        assert_eq!(status, 401);
        let (status, _) = delete_with(&base, &rita, &format!("/api/v1/tokens/{ci_id}")).await;
        assert_eq!(status, 409, "revoked once");
        // An admin revokes anyone's.
        let (_, made) = post_with(&base, &vic, "/api/v1/tokens", json!({"name": "vic2"})).await;
        let vic2 = made["token"].as_str().unwrap().to_string();
        let admin = app.token_for("admin", "admin").await;
        let (status, body) = delete_with(
            &base,
            &admin,
            &format!("/api/v1/tokens/{}", made["record"]["id"]),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(get_with(&base, &vic2, "/api/v1/me").await.0, 401);

        // Expired: a token whose expiry has passed, made through the store
        // as `issue_token` makes them, but dated yesterday.
        let old = secret::new_token();
        let t = app
            .store
            .create_token(&NewToken {
                hash: secret::digest(&old),
                user: "rita".into(),
                name: "old".into(),
                role: Role::Requester,
                created_by: Some("tests".into()),
                expires_at: Some(now_millis() - 86_400_000),
            })
            .await
            .unwrap();
        let (status, body) = get_with(&base, &old, "/api/v1/me").await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            error_of(&body),
            format!("API token {} (old) has expired", t.id)
        );
        // One with days left works, and says when it ends.
        let (status, made) = post_with(
            &base,
            &rita,
            "/api/v1/tokens",
            json!({"name": "week", "expires_days": 7}),
        )
        .await;
        assert_eq!(status, 201, "{made}");
        let left = made["record"]["expires_at"].as_i64().unwrap() - now_millis();
        assert!((6 * 86_400_000..=7 * 86_400_000).contains(&left), "{made}");
        assert_eq!(
            get_with(&base, made["token"].as_str().unwrap(), "/api/v1/me")
                .await
                .0,
            200
        );
        // A made-up token, and a malformed header.
        let (status, body) = get_with(&base, "vmscan_not-a-real-token", "/api/v1/me").await;
        assert_eq!((status, error_of(&body)), (401, "unknown API token"));
        let r = anonymous()
            .get(app.url("/api/v1/me"))
            .header("Authorization", "Basic YTpi")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_only_a_token_and_the_token_works_on_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "VMSCAN_STORAGE__DATABASE_URL",
            format!("sqlite:{}", tmp.path().join("vmscan.db").display()),
        ),
        (
            "VMSCAN_STORAGE__DATA_DIR",
            tmp.path().join("data").display().to_string(),
        ),
        ("VMSCAN_SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("VMSCAN_WORKER__POOL_SIZE", "0".to_string()),
    ];
    let d = Daemon::start(&["serve"], &env);
    // cli_token asserts stdout is exactly one line.
    let token = cli_token(&env, "cli-user", "requester");
    assert!(
        token.starts_with("vmscan_") && token.len() == 50,
        "{token:?}"
    );
    let (status, me) = get_with(d.base(), &token, "/api/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "cli-user");
    assert_eq!(me["role"], "requester");
    assert_eq!(me["via"], "token");
    let (status, job) = post_with(d.base(), &token, "/api/v1/jobs", json!({"url": URL})).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["requested_by"], "cli-user");
    // A viewer token from the CLI is a viewer's.
    let viewer = cli_token(&env, "cli-viewer", "viewer");
    let (status, body) = post_with(d.base(), &viewer, "/api/v1/jobs", json!({"url": URL})).await;
    assert_eq!(status, 403, "{body}");
    // And the CLI's token creation is in the audit trail.
    let admin = d.admin_client();
    let entries: serde_json::Value = admin
        .get(format!("{}/api/v1/audit?action=token_created", d.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let details: Vec<_> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        details.iter().any(|d| d == "for cli-user, role requester"),
        "{details:?}"
    );
}
