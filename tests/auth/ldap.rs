//! Logging in against a real OpenLDAP slapd over HTTP: roles from groups,
//! the directory's mail on jobs, refusals, and a directory that goes away.
//! SQLite only: the database plays no part that the other tests miss.

use serde_json::json;
use vmscan::config::AuthBackendKind;

use crate::support::slapd::{password, Slapd};
use crate::support::{Backend, TestApp};
use crate::{error_of, login, login_json, status_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_users_log_in_with_their_groups_role_and_a_directory_outage_is_503() {
    if !Slapd::installed() {
        return;
    }
    let mut d = Slapd::new();
    let ldap = d.config();
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.worker.pool_size = 0;
        c.auth.backend = AuthBackendKind::Ldap;
        c.auth.ldap = ldap;
    })
    .await;
    let base = app.base.clone();

    // alice: scan-admins → admin, with her directory mail and name.
    let alice = login(&base, "alice", &password("alice")).await;
    let (status, me) = alice.me().await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "alice");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["display_name"], "Alice Example");
    assert_eq!(me["via"], "session");
    let r = alice.get("/api/v1/users").send().await.unwrap();
    assert_eq!(r.status(), 200, "an admin's session");

    // bob: sam-team → requester; his job is his, with his directory mail.
    let bob = login(&base, "bob", &password("bob")).await;
    let (_, me) = bob.me().await;
    assert_eq!(
        (me["role"].as_str(), me["email"].as_str()),
        (Some("requester"), Some("bob@example.com"))
    );
    let r = bob
        .post("/api/v1/jobs")
        .json(&json!({"url": "https://images.example/rocky.qcow2", "requested_by": "bob"}))
        .send()
        .await
        .unwrap();
    let (status, job) = status_json(r).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["requested_by"], "bob");
    assert_eq!(job["email"], "bob@example.com");
    let stored = app.job(job["id"].as_str().unwrap()).await;
    assert_eq!(
        (stored["requested_by"].as_str(), stored["email"].as_str()),
        (Some("bob"), Some("bob@example.com"))
    );
    let r = bob.get("/api/v1/users").send().await.unwrap();
    assert_eq!(r.status(), 403);
    // The directory user is recorded, from the directory.
    let (_, users) = app.get("/api/v1/users").await;
    let rec = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .cloned()
        .expect("bob recorded");
    assert_eq!(
        (
            rec["source"].as_str(),
            rec["role"].as_str(),
            rec["has_password"].as_bool()
        ),
        (Some("ldap"), Some("requester"), Some(false))
    );

    // carol: no mapped group → 403; dave (disabled) and a wrong password → 401.
    let (status, body) = status_json(login_json(&base, "carol", &password("carol")).await).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        error_of(&body).starts_with("carol is in no group that grants a vmscan role"),
        "{body}"
    );
    let (status, body) = status_json(login_json(&base, "dave", &password("dave")).await).await;
    assert_eq!(
        (status, error_of(&body)),
        (401, "wrong user name or password"),
        "{body}"
    );
    let (status, body) = status_json(login_json(&base, "alice", &password("bob")).await).await;
    assert_eq!(
        (status, error_of(&body)),
        (401, "wrong user name or password"),
        "{body}"
    );
    let refused = crate::audit(&app, "action=login&outcome=refused").await;
    let actors: Vec<_> = refused
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actors, ["alice", "dave", "carol"], "{refused:?}");
    assert!(refused
        .iter()
        .all(|e| e["detail"].as_str().unwrap().starts_with("ldap: ")));

    // The directory goes away: 503, never "wrong password"; sessions go on.
    d.stop();
    let (status, body) = status_json(login_json(&base, "bob", &password("bob")).await).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        error_of(&body).starts_with("directory unreachable"),
        "{body}"
    );
    assert!(error_of(&body).contains(&d.url), "{body}");
    let (status, me) = bob.me().await;
    assert_eq!(
        (status, me["user"].as_str()),
        (200, Some("bob")),
        "bob's session does not need the directory"
    );
    let failed = crate::audit(&app, "action=login&outcome=failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["actor"], "bob");

    // Back again: logins work.
    d.start();
    let again = login(&base, "bob", &password("bob")).await;
    assert_eq!(again.me().await.1["role"], "requester");
    app.stop().await;
}
