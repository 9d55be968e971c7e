//! Every route × every role: the expected table below must equal the app's
//! own list (`vmscan::web::rules`), and each rule is then tried over HTTP
//! with no identity, a viewer, a requester, an operator and an admin.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::Method;
use serde_json::json;
use vmscan::domain::Role as R;
use vmscan::web::auth::Access as A;
use vmscan::web::{AppState, ImageKeys};

use crate::catalog::Images;
use crate::support::{backends, Backend, TestApp};
use crate::{anonymous, error_of};

const PUBLIC: A = A::Public;
const METRICS: A = A::Metrics;
const IMAGE_KEY: A = A::ImageKey;
const VIEWER: A = A::Role(R::Viewer);
const REQUESTER: A = A::Role(R::Requester);
const ADMIN: A = A::Role(R::Admin);

/// What each route requires. Adding a route to the app without adding it
/// here fails `every_route_has_the_expected_rule`.
const EXPECTED: &[(&str, &str, A)] = &[
    ("POST", "/api/v1/jobs", REQUESTER),
    ("GET", "/api/v1/jobs", VIEWER),
    ("GET", "/api/v1/clusters", VIEWER),
    ("GET", "/api/v1/jobs/{id}", VIEWER),
    ("GET", "/api/v1/jobs/{id}/log", VIEWER),
    ("GET", "/api/v1/jobs/{id}/log.txt", VIEWER),
    ("GET", "/api/v1/jobs/{id}/events", VIEWER),
    ("POST", "/api/v1/jobs/{id}/cancel", REQUESTER),
    ("POST", "/api/v1/jobs/{id}/retry", REQUESTER),
    ("GET", "/api/v1/jobs/{id}/report.html", VIEWER),
    ("GET", "/api/v1/jobs/{id}/report.json", VIEWER),
    ("GET", "/api/v1/jobs/{id}/report.xml", VIEWER),
    ("POST", "/api/v1/batches", REQUESTER),
    ("GET", "/api/v1/batches", VIEWER),
    ("GET", "/api/v1/batches/{id}", VIEWER),
    ("POST", "/api/v1/batches/{id}/cancel", REQUESTER),
    ("GET", "/batches/{id}", VIEWER),
    ("GET", "/batches/{id}/panel", VIEWER),
    ("GET", "/api/v1/images", VIEWER),
    ("GET", "/api/v1/images/{key}", VIEWER),
    ("DELETE", "/api/v1/images/{key}", ADMIN),
    ("POST", "/api/v1/images/{key}/restore", ADMIN),
    ("POST", "/api/v1/images/{key}/promote", ADMIN),
    ("PUT", "/api/v1/images/{key}/owner", ADMIN),
    ("GET", "/images", VIEWER),
    ("GET", "/images/{name}", VIEWER),
    ("POST", "/api/v1/watches", REQUESTER),
    ("GET", "/api/v1/watches", VIEWER),
    ("GET", "/api/v1/watches/{id}", VIEWER),
    ("PATCH", "/api/v1/watches/{id}", REQUESTER),
    ("DELETE", "/api/v1/watches/{id}", REQUESTER),
    ("POST", "/api/v1/watches/{id}/check", REQUESTER),
    ("GET", "/batches", VIEWER),
    ("GET", "/watches", VIEWER),
    ("GET", "/watches/{id}", VIEWER),
    ("GET", "/api/v1/jobs/{id}/image", IMAGE_KEY),
    ("GET", "/insights", VIEWER),
    ("GET", "/api/v1/insights", VIEWER),
    ("GET", "/", VIEWER),
    ("GET", "/jobs", VIEWER),
    ("GET", "/jobs/table", VIEWER),
    ("GET", "/jobs/{id}", VIEWER),
    ("GET", "/jobs/{id}/panel", VIEWER),
    ("GET", "/login", PUBLIC),
    ("POST", "/login", PUBLIC),
    ("POST", "/logout", VIEWER),
    ("GET", "/api/v1/me", VIEWER),
    ("GET", "/api/v1/tokens", VIEWER),
    ("POST", "/api/v1/tokens", VIEWER),
    ("DELETE", "/api/v1/tokens/{id}", VIEWER),
    ("GET", "/api/v1/users", ADMIN),
    ("POST", "/api/v1/users", ADMIN),
    ("PATCH", "/api/v1/users/{name}", ADMIN),
    ("GET", "/tokens", VIEWER),
    ("POST", "/tokens", VIEWER),
    ("POST", "/tokens/{id}/revoke", VIEWER),
    ("GET", "/api/v1/audit", ADMIN),
    ("GET", "/audit", ADMIN),
    ("GET", "/healthz", PUBLIC),
    ("GET", "/readyz", PUBLIC),
    ("GET", "/metrics", METRICS),
];

/// An `AppState` for listing the rules; no request is ever served with it.
fn state_of(app: &TestApp) -> AppState {
    AppState {
        store: app.store.clone(),
        config: Arc::new(app.config.clone()),
        stages: Arc::new(Vec::new()),
        notes: Arc::new(Vec::new()),
        clusters: Arc::new(Vec::new()),
        login: Arc::new(vmscan::identity::LocalBackend::new(app.store.clone())),
        image_keys: Arc::new(ImageKeys::new("rules only".to_string().into())),
        streams: Arc::default(),
    }
}

fn key(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_the_expected_rule() {
    let app = TestApp::spawn(Backend::Sqlite, |c| c.worker.pool_size = 0).await;
    let rules = vmscan::web::rules(state_of(&app));
    let mut actual: Vec<(String, A)> = rules
        .iter()
        .map(|r| (key(r.method.as_str(), r.path), r.access))
        .collect();
    let mut expected: Vec<(String, A)> = EXPECTED.iter().map(|(m, p, a)| (key(m, p), *a)).collect();
    actual.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &actual {
        assert!(seen.insert(k.clone()), "{k} is registered twice");
    }
    let missing: Vec<_> = actual
        .iter()
        .filter(|a| !expected.contains(a))
        .map(|(k, a)| format!("{k} ({a:?})"))
        .collect();
    let gone: Vec<_> = expected
        .iter()
        .filter(|e| !actual.contains(e))
        .map(|(k, a)| format!("{k} ({a:?})"))
        .collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "the app's rules differ from this test's table:\n  in the app, not (so) in the table: {missing:?}\n  in the table, not (so) in the app: {gone:?}"
    );
    assert_eq!(actual, expected);
    app.stop().await;
}

/// Real ids for the path parameters.
struct Ids {
    job: String,
    image_id: i64,
    image_name: String,
    token_id: i64,
    user: String,
    watch: String,
}

fn fill(method: &str, path: &str, ids: &Ids) -> String {
    let p = if path.starts_with("/api/v1/jobs/") || path.starts_with("/jobs/{id}") {
        path.replace("{id}", &ids.job)
    } else if path.starts_with("/api/v1/batches/") || path.starts_with("/batches/") {
        // No such batch: a 404 once the rule let the request through.
        path.replace("{id}", "0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60")
    } else if path.starts_with("/api/v1/tokens/") || path.starts_with("/tokens/") {
        path.replace("{id}", &ids.token_id.to_string())
    } else if path == "/api/v1/images/{key}" && method == "GET"
        || path == "/api/v1/images/{key}/owner"
    {
        // GET takes an image name (its history); the owner belongs to a name.
        path.replace("{key}", &ids.image_name)
    } else if path.starts_with("/api/v1/images/") {
        path.replace("{key}", &ids.image_id.to_string())
    } else if path == "/images/{name}" {
        path.replace("{name}", &ids.image_name)
    } else if path.starts_with("/api/v1/watches/") || path.starts_with("/watches/") {
        path.replace("{id}", &ids.watch)
    } else if path == "/api/v1/users/{name}" {
        path.replace("{name}", &ids.user)
    } else {
        path.to_string()
    };
    assert!(
        !p.contains('{'),
        "no test value for the parameter in {method} {path}: add one to fill()"
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_answers_each_role_as_the_table_says() {
    for backend in backends() {
        let images = Images::new();
        let app = images.app(backend, |_| {}).await;
        // An image in the catalog (published by the admin)...
        let (url, _) = images.write("golden.qcow2", 1);
        let published = images
            .scan(&app, json!({"url": url, "name": "golden", "version": "1"}))
            .await;
        assert_eq!(
            published["state"], "succeeded",
            "{backend:?}: {published:#}"
        );
        let (_, hist) = app.get("/api/v1/images/golden").await;
        let image_id = hist["versions"][0]["id"].as_i64().expect("image id");
        // ...the requester's own job (it fails: the file is not there)...
        let viewer = app.token_for("vic", "viewer").await;
        let requester = app.token_for("rita", "requester").await;
        let operator = app.token_for("otto", "operator").await;
        let admin = app.token_for("adele", "admin").await;
        let missing = format!("file://{}/missing.qcow2", images.dir.path().display());
        let (status, job) = crate::post_with(
            &app.base,
            &requester,
            "/api/v1/jobs",
            json!({"url": missing}),
        )
        .await;
        assert_eq!(status, 201, "{job}");
        let job_id = job["id"].as_str().unwrap().to_string();
        app.wait_final(&job_id, Duration::from_secs(30)).await;
        // ...and a token of someone else, for the token routes.
        app.token_for("spare", "viewer").await;
        let token_id = app.store.list_tokens(Some("spare")).await.unwrap()[0].id;
        // ...a watch of the requester's (never checked: it is paused at once)...
        let (status, watch) = crate::post_with(
            &app.base,
            &requester,
            "/api/v1/watches",
            json!({"url": "https://images.example.com/a.raw"}),
        )
        .await;
        assert_eq!(status, 201, "{watch}");
        let watch_id = watch["id"].as_str().unwrap().to_string();
        app.store.set_watch_enabled(&watch_id, false).await.unwrap();
        let ids = Ids {
            watch: watch_id,
            job: job_id.clone(),
            image_id,
            image_name: "golden".into(),
            token_id,
            user: "spare".into(),
        };
        let who: [(Option<R>, Option<&str>); 5] = [
            (None, None),
            (Some(R::Viewer), Some(&viewer)),
            (Some(R::Requester), Some(&requester)),
            (Some(R::Operator), Some(&operator)),
            (Some(R::Admin), Some(&admin)),
        ];
        let client = anonymous();
        let mut wrong = Vec::new();
        let mut tried = 0;
        for rule in vmscan::web::rules(state_of(&app)) {
            let method = rule.method.as_str();
            let path = fill(method, rule.path, &ids);
            for (role, token) in &who {
                tried += 1;
                let mut req = client.request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path),
                );
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if rule.method != Method::GET {
                    req = req.header(CONTENT_TYPE, "application/json").body("{}");
                }
                let r = req.send().await.expect("request");
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let what = format!(
                    "{method} {path} as {}",
                    role.map_or("nobody", |r| r.as_str())
                );
                let (want, why): (Option<u16>, String) = match rule.access {
                    A::Public | A::Metrics => (None, "open".into()),
                    A::ImageKey => (Some(403), "no ?key=".into()),
                    A::Role(need) => match role {
                        None => (Some(401), "no identity".into()),
                        Some(have) if *have < need => (Some(403), format!("needs {need}")),
                        Some(_) => (None, "allowed".into()),
                    },
                };
                match want {
                    None => {
                        // Allowed: anything but a refusal or a server error.
                        if status == 401 || status == 403 || status >= 500 {
                            let body = r.text().await.unwrap_or_default();
                            wrong.push(format!("{what}: {status} ({why}) {body}"));
                        }
                    }
                    Some(w) if status != w => {
                        let body = if status == 200 && rule.path.ends_with("/events") {
                            "(a stream)".to_string()
                        } else {
                            r.text().await.unwrap_or_default()
                        };
                        wrong.push(format!("{what}: {status}, expected {w} ({why}) {body}"));
                    }
                    Some(401) => {
                        let page = method == "GET" && !path.starts_with("/api/");
                        let ctype = headers
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = r.text().await.unwrap_or_default();
                        if page {
                            if !(ctype.starts_with("text/html")
                                && body.contains("id=\"login-form\""))
                            {
                                wrong.push(format!(
                                    "{what}: 401 without the login form: {ctype} {body}"
                                ));
                            }
                        } else {
                            let v: serde_json::Value =
                                serde_json::from_str(&body).unwrap_or_default();
                            if !error_of(&v).starts_with("log in first")
                                || headers.get(WWW_AUTHENTICATE).is_none()
                            {
                                wrong.push(format!("{what}: 401 without the JSON error and WWW-Authenticate: {body}"));
                            }
                        }
                    }
                    Some(_) => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        match rule.access {
                            A::Role(need) => {
                                if v["required_role"] != need.as_str() {
                                    wrong.push(format!(
                                        "{what}: 403 without required_role {need}: {v}"
                                    ));
                                }
                            }
                            _ => {
                                if !error_of(&v).contains("wrong or missing key") {
                                    wrong.push(format!("{what}: 403 for another reason: {v}"));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{backend:?}: {} of {tried} requests answered wrongly:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        assert_eq!(tried, EXPECTED.len() * 5);

        // The image route with the job's key: past the key check (the job is
        // not uploading, so there is nothing to serve).
        let secret = app
            .store
            .server_secret("image_key", "unused")
            .await
            .unwrap();
        let k = vmscan::identity::secret::image_key(&secret, &job_id);
        let r = client
            .get(app.url(&format!("/api/v1/jobs/{job_id}/image?key={k}")))
            .send()
            .await
            .unwrap();
        let (status, body) = crate::status_json(r).await;
        assert_eq!(status, 404, "{backend:?}: {body}");
        assert!(
            error_of(&body).contains("is not uploading its image now"),
            "{body}"
        );
        let r = client
            .get(app.url(&format!("/api/v1/jobs/{job_id}/image?key=0{}", &k[1..])))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{backend:?}: a wrong key");

        // /metrics is open by default.
        let r = client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("vmscan_jobs"));
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_needs_its_token_once_one_is_set() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| {
            c.worker.pool_size = 0;
            c.auth.metrics_token = Some("metrics-secret-1".to_string().into());
        })
        .await;
        let client = anonymous();
        let url = app.url("/metrics");
        let (status, body) = crate::status_json(client.get(&url).send().await.unwrap()).await;
        assert_eq!(status, 401, "{backend:?}: {body}");
        assert!(error_of(&body).contains("auth.metrics_token"), "{body}");
        let r = client
            .get(&url)
            .bearer_auth("metrics-secret-2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{backend:?}: a wrong token");
        // A user's API token is not the metrics token.
        let admin = app.token_for("adele", "admin").await;
        let r = client.get(&url).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(r.status(), 401, "{backend:?}: an API token");
        let r = client
            .get(&url)
            .bearer_auth("metrics-secret-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{backend:?}");
        assert!(r.text().await.unwrap().contains("# TYPE vmscan_jobs gauge"));
        app.stop().await;
    }
}
