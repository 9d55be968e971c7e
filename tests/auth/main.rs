//! Authentication and authorization (#12), proved from outside: the real
//! app over HTTP, as a browser, a script with a token, or the CLI would.
//! Everything that touches the database runs on SQLite and PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod catalog;
mod hardening;
mod jobs;
mod ldap;
mod routes;
mod sessions;
mod tokens;

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};

/// A client that sends no credentials and never follows redirects.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Status and JSON body (`Null` when the body is not JSON).
pub async fn status_json(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `vmscan_session` value a response sets, if any.
pub fn session_cookie_of(r: &Response) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == "vmscan_session" && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// A logged-in browser: the session cookie and its CSRF token.
pub struct Browser {
    pub base: String,
    pub cookie: String,
    pub csrf: String,
    pub client: reqwest::Client,
}

impl Browser {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn with_cookie(&self, b: RequestBuilder) -> RequestBuilder {
        b.header(COOKIE, format!("vmscan_session={}", self.cookie))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.with_cookie(self.client.get(self.url(path)))
    }

    /// A POST with the cookie but without the CSRF header.
    pub fn post_no_csrf(&self, path: &str) -> RequestBuilder {
        self.with_cookie(self.client.post(self.url(path)))
    }

    /// A POST as the dashboard's script sends it: cookie and CSRF header.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.post_no_csrf(path).header("X-CSRF-Token", &self.csrf)
    }

    pub async fn me(&self) -> (u16, Value) {
        status_json(self.get("/api/v1/me").send().await.expect("GET /api/v1/me")).await
    }
}

/// `POST /login` with a JSON body.
pub async fn login_json(base: &str, user: &str, password: &str) -> Response {
    anonymous()
        .post(format!("{base}/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .expect("POST /login")
}

/// Logs in over JSON and expects it to work.
pub async fn login(base: &str, user: &str, password: &str) -> Browser {
    let r = login_json(base, user, password).await;
    let cookie = session_cookie_of(&r);
    let (status, body) = status_json(r).await;
    assert_eq!(status, 200, "login as {user}: {body}");
    Browser {
        base: base.to_string(),
        cookie: cookie.unwrap_or_else(|| panic!("login as {user} set no session cookie")),
        csrf: body["csrf_token"]
            .as_str()
            .expect("csrf_token in the login answer")
            .to_string(),
        client: anonymous(),
    }
}

/// A GET with a bearer token.
pub async fn get_with(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = anonymous()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    status_json(r).await
}

/// A JSON POST with a bearer token.
pub async fn post_with(base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = anonymous()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST");
    status_json(r).await
}

/// The `error` text of a JSON error body.
pub fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

/// Audit entries matching `query` (e.g. `action=login&outcome=refused`), newest first.
pub async fn audit(app: &support::TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/audit?{query}")).await;
    assert_eq!(status, 200, "GET /api/v1/audit?{query}: {body}");
    body["entries"].as_array().cloned().unwrap_or_default()
}
