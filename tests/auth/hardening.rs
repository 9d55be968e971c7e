//! What a browser needs against other sites: JSON-only API bodies, Origin
//! and Host checks, CSRF tokens for cookie sessions, security headers.

use reqwest::header::{CONTENT_TYPE, HOST, LOCATION, ORIGIN};
use reqwest::Response;
use serde_json::json;

use crate::support::{backends, TestApp};
use crate::{anonymous, error_of, login, status_json};

const URL: &str = "https://images.example/rocky-9.qcow2";
pub const LOU_PW: &str = "lou-password-123";

/// A local user with a password, made by the admin over the API.
pub async fn add_user(app: &TestApp, name: &str, role: &str, password: &str) {
    let (status, body) = app
        .post(
            "/api/v1/users",
            json!({"name": name, "role": role, "password": password, "email": format!("{name}@example.com")}),
        )
        .await;
    assert_eq!(status, 201, "add {name}: {body}");
}

fn assert_security_headers(r: &Response, what: &str) {
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {n} header"))
            .to_string()
    };
    let csp = h("content-security-policy");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{what}: {csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("referrer-policy"), "same-origin", "{what}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_and_non_json_bodies_are_refused() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        let rita = app.token_for("rita", "requester").await;
        let client = anonymous();
        let jobs = app.url("/api/v1/jobs");
        let body = json!({"url": URL}).to_string();

        // The API takes JSON only, whatever the identity.
        for ctype in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let r = client
                .post(&jobs)
                .bearer_auth(&rita)
                .header(CONTENT_TYPE, ctype)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let (status, b) = status_json(r).await;
            assert_eq!(status, 415, "{backend:?} {ctype}: {b}");
            assert_eq!(
                error_of(&b),
                "the API takes JSON only: send Content-Type: application/json"
            );
        }
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "no Content-Type at all");
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "JSON with a charset");

        // A foreign Origin, or a cross-site fetch, is refused; our own is fine.
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(ORIGIN, "https://evil.example")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        let (status, b) = status_json(r).await;
        assert_eq!(status, 403, "{b}");
        assert!(
            error_of(&b).starts_with(
                "cross-site request refused: Origin https://evil.example is not this site"
            ),
            "{b}"
        );
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(ORIGIN, "null")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "an opaque origin");
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header("Sec-Fetch-Site", "cross-site")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(ORIGIN, &app.base)
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "same origin");
        let r = client
            .delete(app.url("/api/v1/tokens/1"))
            .bearer_auth(&rita)
            .header(ORIGIN, "http://127.0.0.1:1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "same host, another port");

        // A name this vmscan is not reached by (DNS rebinding).
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(HOST, "evil.example")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        let (status, b) = status_json(r).await;
        assert_eq!(status, 403, "{b}");
        assert!(
            error_of(&b)
                .starts_with("Host \"evil.example\" is not a name this vmscan is reached by"),
            "{b}"
        );
        let r = client
            .post(&jobs)
            .bearer_auth(&rita)
            .header(HOST, "localhost")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "localhost is fine");
        // Refusals are audited.
        let denied = crate::audit(&app, "action=denied").await;
        assert!(
            denied
                .iter()
                .any(|e| e["detail"].as_str().unwrap_or("").contains("evil.example")),
            "{denied:?}"
        );
        // None of the refused ones queued anything: 3 good submissions.
        let (_, list) = app.get("/api/v1/jobs").await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_session_needs_its_csrf_token_to_change_anything() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| c.worker.pool_size = 0).await;
        add_user(&app, "lou", "requester", LOU_PW).await;
        let lou = login(&app.base, "lou", LOU_PW).await;

        let r = lou
            .post_no_csrf("/api/v1/jobs")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        let (status, b) = status_json(r).await;
        assert_eq!(status, 403, "{backend:?}: {b}");
        assert_eq!(
            error_of(&b),
            "missing or wrong CSRF token (send the X-CSRF-Token header of your session)"
        );
        let r = lou
            .post_no_csrf("/api/v1/jobs")
            .header("X-CSRF-Token", "x".repeat(lou.csrf.len()))
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a wrong token");
        let (_, list) = app.get("/api/v1/jobs").await;
        assert_eq!(list["jobs"].as_array().unwrap().len(), 0, "nothing queued");
        let r = lou
            .post("/api/v1/jobs")
            .json(&json!({"url": URL}))
            .send()
            .await
            .unwrap();
        let (status, job) = status_json(r).await;
        assert_eq!(status, 201, "{job}");
        assert_eq!(job["requested_by"], "lou");
        // Reading needs no CSRF token.
        let (status, me) = lou.me().await;
        assert_eq!((status, me["via"].as_str()), (200, Some("session")));

        // Form posts from pages carry it as a field.
        let r = lou
            .post_no_csrf("/tokens")
            .form(&[("name", "from-page")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a form post without the csrf field");
        let r = lou
            .post_no_csrf("/tokens")
            .form(&[("name", "from-page"), ("csrf", lou.csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("vmscan_"),
            "the new token is shown once on the page"
        );
        let (_, toks) = lou.me().await;
        assert_eq!(toks["user"], "lou");
        let tokens = app.store.list_tokens(Some("lou")).await.unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].name, "from-page");
        // Logging out is a change too.
        let r = lou.post_no_csrf("/logout").send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(lou.me().await.0, 200, "still logged in");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::spawn(crate::support::Backend::Sqlite, |c| c.worker.pool_size = 0).await;
    let client = anonymous();
    let rita = app.token_for("rita", "requester").await;
    let cases = [
        ("/healthz", None, 200),
        ("/login", None, 200),
        ("/", None, 401),
        ("/api/v1/jobs", None, 401),
        ("/api/v1/jobs", Some(&rita), 200),
        ("/", Some(&rita), 200),
        ("/api/v1/users", Some(&rita), 403),
        ("/no/such/page", Some(&rita), 404),
        ("/static/app.js", None, 200),
    ];
    for (path, token, want) in cases {
        let mut req = client.get(app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
        assert_security_headers(&r, path);
    }
    let r = client
        .post(app.url("/api/v1/jobs"))
        .header(ORIGIN, "https://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_security_headers(&r, "a refused cross-site POST");
    let r = client
        .get(app.url("/login?next=/jobs"))
        .bearer_auth(&rita)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "logged in: the login page sends you on");
    assert_eq!(r.headers()[LOCATION], "/jobs");
    assert_security_headers(&r, "a redirect");
    app.stop().await;
}
