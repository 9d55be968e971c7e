//! A fake Flexera back end, faithful to the contracts in the reference notes:
//! the beacon the agent uploads inventory to, the OAuth token endpoint
//! (`POST /oidc/token`, refresh_token grant) and the report-execute API
//! (`GET /fnms/v1/orgs/{org}/reports/{report}/execute?searchText=`) with
//! relative `nextPage` links. Uploaded computers appear in the report after
//! a configurable reconcile delay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::json;

pub const ORG: &str = "35715";
pub const REPORT: &str = "351";
pub const REFRESH_TOKEN: &str = "test-refresh-token";

#[derive(Default)]
struct Inner {
    /// Computer name → when it becomes visible in the report.
    computers: HashMap<String, Instant>,
    uploads: Vec<String>,
    tokens: Vec<String>,
    token_requests: usize,
    report_requests: usize,
    fail_reports_with: Option<u16>,
    reconcile: Duration,
}

#[derive(Clone)]
pub struct FakeFlexera {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeFlexera {
    pub async fn start() -> FakeFlexera {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/oidc/token", post(token))
            .route("/fnms/v1/orgs/{org}/reports/{report}/execute", get(execute))
            .route("/ManageSoftRL/{*rest}", post(upload))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeFlexera { addr, inner }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How long an uploaded computer takes to show in the report.
    pub fn set_reconcile_delay(&self, d: Duration) {
        self.inner.lock().unwrap().reconcile = d;
    }

    pub fn add_computer(&self, name: &str) {
        self.inner
            .lock()
            .unwrap()
            .computers
            .insert(name.to_string(), Instant::now());
    }

    pub fn fail_reports_with(&self, status: Option<u16>) {
        self.inner.lock().unwrap().fail_reports_with = status;
    }

    pub fn uploads(&self) -> Vec<String> {
        self.inner.lock().unwrap().uploads.clone()
    }

    pub fn token_requests(&self) -> usize {
        self.inner.lock().unwrap().token_requests
    }

    pub fn report_requests(&self) -> usize {
        self.inner.lock().unwrap().report_requests
    }

    /// Revokes every access token handed out so far.
    pub fn revoke_tokens(&self) {
        self.inner.lock().unwrap().tokens.clear();
    }
}

type St = Arc<Mutex<Inner>>;

async fn token(State(st): State<St>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut s = st.lock().unwrap();
    s.token_requests += 1;
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if form.get("refresh_token").map(String::as_str) != Some(REFRESH_TOKEN) {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "invalid_grant", "error_description": "refresh token is invalid"}),
            ),
        )
            .into_response();
    }
    let t = format!("at-{}", uuid::Uuid::now_v7().simple());
    s.tokens.push(t.clone());
    Json(json!({"access_token": t, "expires_in": 3600, "token_type": "Bearer", "scope": "openid"}))
        .into_response()
}

const PAGE: usize = 2;

async fn execute(
    State(st): State<St>,
    Path((org, report)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = st.lock().unwrap();
    s.report_requests += 1;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = auth
        .strip_prefix("Bearer ")
        .is_some_and(|t| s.tokens.iter().any(|k| k == t));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    }
    if let Some(code) = s.fail_reports_with {
        return (
            StatusCode::from_u16(code).unwrap(),
            Json(json!({"message": "report service unavailable"})),
        )
            .into_response();
    }
    if org != ORG || report != REPORT {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": format!("report {report} not found in org {org}")})),
        )
            .into_response();
    }
    let search = q
        .get("searchText")
        .cloned()
        .unwrap_or_default()
        .to_lowercase();
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let now = Instant::now();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut names: Vec<&String> = s
        .computers
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    for n in names
        .into_iter()
        .filter(|n| n.to_lowercase().contains(&search))
    {
        // A computer shows as one row per installed application.
        for app in ["FlexNet Inventory Agent", "OpenSSH"] {
            rows.push(json!({
                "ComputerName": n,
                "R2_1a2b_ComputerToInstallation_ApplicationName": app,
                "R3_9f8e_InstallationToApplication_Classification": "Commercial",
            }));
        }
    }
    let start = page * PAGE;
    let values: Vec<_> = rows.iter().skip(start).take(PAGE).cloned().collect();
    let mut body = json!({"values": values});
    if start + PAGE < rows.len() {
        let q: String = url::form_urlencoded::byte_serialize(search.as_bytes()).collect();
        body["nextPage"] = json!(format!(
            "/fnms/v1/orgs/{org}/reports/{report}/execute?searchText={q}&page={}",
            page + 1
        ));
    }
    Json(body).into_response()
}

/// The beacon: the test agent posts `hostname=NAME`.
async fn upload(State(st): State<St>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let host = url::form_urlencoded::parse(text.as_bytes())
        .find(|(k, _)| k == "hostname")
        .map(|(_, v)| v.to_string());
    let mut s = st.lock().unwrap();
    match host.filter(|h| !h.is_empty()) {
        Some(h) => {
            let at = Instant::now() + s.reconcile;
            s.uploads.push(h.clone());
            s.computers.insert(h, at);
            (StatusCode::OK, "upload accepted\n").into_response()
        }
        None => (StatusCode::BAD_REQUEST, "no hostname in upload\n").into_response(),
    }
}
