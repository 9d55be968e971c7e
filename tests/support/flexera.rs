//! A fake Flexera back end, faithful to the contracts in the reference notes
//! (../shared/reference/flexera.md section 2, apis.md 5b): the beacon the
//! agent uploads inventory to, the OAuth token endpoint (`POST /oidc/token`,
//! refresh_token grant for users, client_credentials for service accounts;
//! developer.flexera.com "authentication") and the report-execute API
//! (`GET /fnms/v1/orgs/{org}/reports/{report}/execute?searchText=`) with
//! relative `nextPage` links carrying a `skipToken`. Uploaded computers
//! appear in the report after a configurable reconcile delay.

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
pub const CLIENT_ID: &str = "svc-vmscan";
pub const CLIENT_SECRET: &str = "test-client-secret";

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
    /// Grant types of the token requests, in order.
    grants: Vec<String>,
    /// Send `expires_in` as a string: its type is unconfirmed ([U] in
    /// apis.md 5b), so the client must take a number or a string.
    expires_in_as_string: bool,
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

    pub fn grants(&self) -> Vec<String> {
        self.inner.lock().unwrap().grants.clone()
    }

    pub fn expires_in_as_string(&self, on: bool) {
        self.inner.lock().unwrap().expires_in_as_string = on;
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
    let field = |k: &str| form.get(k).map(String::as_str);
    let grant = field("grant_type").unwrap_or("").to_string();
    s.grants.push(grant.clone());
    // RFC 6749 5.2 error codes, as an OAuth server answers them.
    let refused = |error: &str, description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    match grant.as_str() {
        "refresh_token" if field("refresh_token") == Some(REFRESH_TOKEN) => {}
        "refresh_token" => return refused("invalid_grant", "refresh token is invalid"),
        "client_credentials"
            if field("client_id") == Some(CLIENT_ID)
                && field("client_secret") == Some(CLIENT_SECRET) => {}
        "client_credentials" => return refused("invalid_client", "client authentication failed"),
        _ => return refused("unsupported_grant_type", "grant type not supported"),
    }
    let t = format!("at-{}", uuid::Uuid::now_v7().simple());
    s.tokens.push(t.clone());
    // Access tokens last an hour (flexera.md 2, "Auth").
    let expires_in = if s.expires_in_as_string {
        json!("3600")
    } else {
        json!(3600)
    };
    let mut body = json!({"access_token": t, "expires_in": expires_in, "token_type": "Bearer"});
    if grant == "refresh_token" {
        body["refresh_token"] = json!(REFRESH_TOKEN);
    }
    Json(body).into_response()
}

/// The skipToken of page `n`: an opaque base64 token, padded with `=`.
fn skip_token(n: usize) -> String {
    use base64::Engine;
    let mut raw = format!("{{\"offset\":{}}}", n * PAGE);
    while raw.len() % 3 != 1 {
        raw.push(' ');
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
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
    // The service pages with skipToken; the token arrives decoded once, as
    // Flexera's own client sends it (schedule_itam_report.pt turns %3D and
    // %253D back into '='). A token still encoded is not a token it issued.
    let page: usize = match q.get("skipToken") {
        None => 0,
        Some(t) => match (1..1000).find(|n| skip_token(*n) == *t) {
            Some(n) => n,
            // Inferred, not documented: how the service answers a token it
            // did not issue; a 400 makes a mis-encoded token fail loudly.
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"message": format!("invalid skipToken {t:?}")})),
                )
                    .into_response()
            }
        },
    };
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
        // The real nextPage double-encodes the token's '=' as %253D
        // (flexera.md 2; schedule_itam_report.pt decodes exactly that).
        let token = skip_token(page + 1).replace('=', "%253D");
        body["nextPage"] = json!(format!(
            "/fnms/v1/orgs/{org}/reports/{report}/execute?searchText={q}&skipToken={token}"
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
