//! Logging in and out with local users: form and JSON logins, the cookie,
//! wrong passwords and the rate limit, logout, expiry, disabled users and
//! the first admin.

use reqwest::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::json;
use vmscan::domain::{now_millis, Role};
use vmscan::identity::secret;
use vmscan::store::auth::Session;

use crate::hardening::{add_user, LOU_PW};
use crate::support::{backends, TestApp};
use crate::{
    anonymous, audit, error_of, get_with, login, login_json, session_cookie_of, status_json,
    Browser,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_by_form_and_json_refuses_wrong_passwords_and_rate_limits() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| {
            c.worker.pool_size = 0;
            c.auth.max_failed_logins = 3;
        })
        .await;
        add_user(&app, "lou", "requester", LOU_PW).await;
        add_user(&app, "max", "viewer", "max-password-123").await;
        let client = anonymous();

        // The form: 303 to `next`, an HttpOnly SameSite=Lax cookie.
        let r = client
            .post(app.url("/login"))
            .form(&[("username", "lou"), ("password", LOU_PW), ("next", "/jobs")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{backend:?}");
        assert_eq!(r.headers()[LOCATION], "/jobs");
        let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
        assert!(set.starts_with("vmscan_session="), "{set}");
        for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
            assert!(set.split("; ").any(|p| p == part), "{part} missing: {set}");
        }
        assert!(!set.contains("Secure"), "plain http: {set}");
        let form = Browser {
            base: app.base.clone(),
            cookie: session_cookie_of(&r).unwrap(),
            csrf: String::new(),
            client: anonymous(),
        };
        let (status, me) = form.me().await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(
            (me["user"].as_str(), me["role"].as_str(), me["via"].as_str()),
            (Some("lou"), Some("requester"), Some("session"))
        );
        let r = form.get("/").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("lou"));
        // `next` stays on this site.
        let r = client
            .post(app.url("/login"))
            .form(&[
                ("username", "lou"),
                ("password", LOU_PW),
                ("next", "//evil.example/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[LOCATION], "/");
        // JSON: the user, role and the CSRF token in the body.
        let r = login_json(&app.base, "lou", LOU_PW).await;
        assert!(session_cookie_of(&r).is_some());
        let (status, body) = status_json(r).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                body["user"].as_str(),
                body["role"].as_str(),
                body["email"].as_str()
            ),
            (Some("lou"), Some("requester"), Some("lou@example.com"))
        );
        assert_eq!(body["csrf_token"].as_str().unwrap().len(), 43);

        // A wrong password: 401, the same words as an unknown user, audited.
        let (status, body) =
            status_json(login_json(&app.base, "lou", "not-the-password").await).await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "wrong user name or password"),
            "{body}"
        );
        let (status, body) =
            status_json(login_json(&app.base, "nobody-here", "whatever-it-is").await).await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "wrong user name or password"),
            "{body}"
        );
        let refused = audit(&app, "action=login&outcome=refused&actor=lou").await;
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0]["detail"], "local: wrong password");
        assert_eq!(refused[0]["address"], "127.0.0.1");
        let r = client
            .post(app.url("/login"))
            .form(&[("username", "lou"), ("password", "nope-nope-nope")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("id=\"login-error\"") && page.contains("wrong user name or password"),
            "{page}"
        );
        assert!(session_cookie_of_text(&page).is_none());
        let ok = audit(&app, "action=login&outcome=ok&actor=lou").await;
        assert_eq!(ok.len(), 3, "{ok:?}");

        // max_failed_logins = 3: the fourth try is refused even when right.
        for _ in 0..3 {
            let (status, _) =
                status_json(login_json(&app.base, "max", "wrong-password-1").await).await;
            assert_eq!(status, 401);
        }
        let r = login_json(&app.base, "max", "max-password-123").await;
        assert_eq!(r.status(), 429, "{backend:?}");
        assert_eq!(r.headers()[RETRY_AFTER], "300");
        assert!(session_cookie_of(&r).is_none());
        let (_, body) = status_json(r).await;
        assert_eq!(
            error_of(&body),
            "too many failed logins for max; try again in 5 minutes"
        );
        let limited = audit(&app, "action=login&outcome=refused&actor=max").await;
        assert!(
            limited[0]["detail"]
                .as_str()
                .unwrap()
                .starts_with("rate limited"),
            "{limited:?}"
        );
        // Per user: lou is not locked out by max's failures.
        login(&app.base, "lou", LOU_PW).await;
        app.stop().await;
    }
}

fn session_cookie_of_text(page: &str) -> Option<&str> {
    page.find("vmscan_session=").map(|i| &page[i..])
}

/// A session row as `POST /login` writes it, for `lou`; returns the cookie value.
async fn stored_session(
    app: &TestApp,
    role: Role,
    last_seen_ago_ms: i64,
    expires_in_ms: i64,
) -> String {
    let sid = secret::random_id();
    let now = now_millis();
    app.store
        .create_session(&Session {
            id_hash: secret::digest(&sid),
            user: "lou".into(),
            role,
            csrf: secret::random_id(),
            address: Some("127.0.0.1".into()),
            created_at: now - 3_600_000,
            last_seen_at: now - last_seen_ago_ms,
            expires_at: now + expires_in_ms,
        })
        .await
        .unwrap();
    sid
}

/// A PATCH as the suite's admin (token).
async fn patch(app: &TestApp, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    status_json(
        app.client
            .patch(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn browser(app: &TestApp, cookie: String) -> Browser {
    Browser {
        base: app.base.clone(),
        cookie,
        csrf: String::new(),
        client: anonymous(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_expiry_end_a_session() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| {
            c.worker.pool_size = 0;
            c.auth.session_idle_secs = 600;
        })
        .await;
        add_user(&app, "lou", "requester", LOU_PW).await;

        // Logout ends it: the same cookie no longer works, on the API or a page.
        let lou = login(&app.base, "lou", LOU_PW).await;
        assert_eq!(lou.me().await.0, 200);
        let r = lou.post("/logout").send().await.unwrap();
        assert_eq!(r.status(), 200, "{backend:?}");
        let cleared = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
        assert!(
            cleared.starts_with("vmscan_session=;") && cleared.contains("Max-Age=0"),
            "{cleared}"
        );
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["message"],
            "logged out"
        );
        let (status, body) = lou.me().await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "your session has ended; log in again"),
            "{body}"
        );
        let r = lou.get("/jobs").send().await.unwrap();
        assert_eq!(r.status(), 401);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("id=\"login-form\"") && page.contains("your session has ended"),
            "{page}"
        );
        let r = lou
            .post("/api/v1/jobs")
            .json(&json!({"url": "https://images.example/a.qcow2"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let logouts = audit(&app, "action=logout&actor=lou").await;
        assert_eq!(logouts.len(), 1);

        // Sessions written to the store as a login writes them: a live one
        // works (its role never above the user's)...
        let live = stored_session(&app, Role::Admin, 1_000, 3_600_000).await;
        let (status, me) = browser(&app, live).me().await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["role"], "requester", "capped at lou's role");
        let (status, _) = status_json(
            browser(
                &app,
                stored_session(&app, Role::Requester, 1_000, 3_600_000).await,
            )
            .get("/api/v1/users")
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 403);
        // ...past its absolute expiry it does not, and is removed...
        let expired = stored_session(&app, Role::Requester, 1_000, -1_000).await;
        let (status, body) = browser(&app, expired.clone()).me().await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "your session has expired; log in again"),
            "{body}"
        );
        assert!(app
            .store
            .get_session(&secret::digest(&expired))
            .await
            .unwrap()
            .is_none());
        let (status, body) = browser(&app, expired).me().await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "your session has ended; log in again")
        );
        // ...nor one idle longer than auth.session_idle_secs.
        let idle = stored_session(&app, Role::Requester, 601_000, 3_600_000).await;
        let (status, body) = browser(&app, idle).me().await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "your session has expired; log in again"),
            "{body}"
        );
        let nearly = stored_session(&app, Role::Requester, 590_000, 3_600_000).await;
        assert_eq!(
            browser(&app, nearly).me().await.0,
            200,
            "idle, but not for long enough"
        );
        // A made-up cookie is no session; the login page still shows.
        let fake = browser(&app, "made-up".into());
        assert_eq!(fake.me().await.0, 401);
        assert_eq!(fake.get("/login").send().await.unwrap().status(), 200);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_loses_tokens_and_sessions_and_the_first_admin_can_log_in() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        // The first start made `admin` with a printed password; it works.
        let pw = app
            .admin_password
            .clone()
            .expect("first start prints the admin password");
        let admin = login(&app.base, "admin", &pw).await;
        let (status, me) = admin.me().await;
        assert_eq!(
            (status, me["role"].as_str(), me["user"].as_str()),
            (200, Some("admin"), Some("admin"))
        );

        add_user(&app, "lou", "requester", LOU_PW).await;
        let token = app.token_for("lou", "requester").await;
        let lou = login(&app.base, "lou", LOU_PW).await;
        assert_eq!(get_with(&app.base, &token, "/api/v1/me").await.0, 200);
        assert_eq!(lou.me().await.0, 200);

        // Disabled by the admin's browser session (with its CSRF token).
        let r = admin
            .client
            .patch(admin.url("/api/v1/users/lou"))
            .header("Cookie", format!("vmscan_session={}", admin.cookie))
            .header("X-CSRF-Token", &admin.csrf)
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(r).await;
        assert_eq!(status, 200, "{backend:?}: {body}");
        assert_eq!(body["disabled"], true);
        let (status, body) = get_with(&app.base, &token, "/api/v1/me").await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "the account lou is disabled"),
            "{body}"
        );
        let (status, body) = lou.me().await;
        assert_eq!(status, 401, "{body}");
        let (status, body) = status_json(login_json(&app.base, "lou", LOU_PW).await).await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "wrong user name or password")
        );
        let refused = audit(&app, "action=login&outcome=refused&actor=lou").await;
        assert_eq!(refused[0]["detail"], "local: the account is disabled");
        let changed = audit(&app, "action=user_changed").await;
        assert_eq!(
            (
                changed[0]["actor"].as_str(),
                changed[0]["object"].as_str(),
                changed[0]["detail"].as_str()
            ),
            (Some("admin"), Some("user:lou"), Some("disabled"))
        );
        // The last admin cannot be disabled.
        let (status, body) = patch(&app, "/api/v1/users/admin", json!({"disabled": true})).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            error_of(&body),
            "admin is the last enabled admin; make another admin first"
        );

        // Enabled again: the token works again; the old session stays ended.
        let (status, body) = patch(&app, "/api/v1/users/lou", json!({"disabled": false})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(get_with(&app.base, &token, "/api/v1/me").await.0, 200);
        let (status, body) = lou.me().await;
        assert_eq!(
            (status, error_of(&body)),
            (401, "your session has ended; log in again")
        );
        login(&app.base, "lou", LOU_PW).await;
        app.stop().await;
    }
}

/// One address trying many user names is limited too (4x the per-user limit),
/// so guessing across accounts is as slow as guessing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_names_is_rate_limited() {
    let app = crate::support::TestApp::spawn(crate::support::Backend::Sqlite, |c| {
        c.worker.pool_size = 0;
        c.auth.max_failed_logins = 2;
    })
    .await;
    let http = reqwest::Client::new();
    let try_login = |user: String| {
        let http = http.clone();
        let url = app.url("/login");
        async move {
            http.post(url)
                .json(&serde_json::json!({"username": user, "password": "wrong-password-0"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Each name fails once: under its own limit, but they add up per address.
    for i in 0..8 {
        assert_eq!(try_login(format!("guess{i}")).await, 401);
    }
    let r = http
        .post(app.url("/login"))
        .json(&serde_json::json!({"username": "guess9", "password": "wrong-password-0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("from your address"),
        "{body}"
    );
    app.stop().await;
}
