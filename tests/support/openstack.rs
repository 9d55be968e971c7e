//! A fake OpenStack, faithful to the published contracts (see the reference
//! notes, section 2): Keystone v3 tokens (`X-Subject-Token`, a catalog with
//! public and internal endpoints in two regions), Glance v2 (images created
//! `queued`, a streamed `PUT …/file` → 204, `saving` → `active` over several
//! polls with `os_hash_algo`/`os_hash_value`, `next` links), Nova v2.1
//! (flavors, servers `BUILD` → `ACTIVE` or `ERROR` with `fault`, addresses,
//! console output, delete → 404 `itemNotFound` a few polls later) and
//! Neutron (networks by name, ports, floating IPs). Failures on demand:
//! expired tokens, killed uploads, wrong hashes, failed builds, servers
//! without an address, 409 conflicts and 5xx answers. With a
//! [`GuestBackend`], a server boots the uploaded image for real. Plain
//! HTTP, or HTTPS with a given certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::guest::GuestBackend;
use super::tls::{serve_https, tls_acceptor};

pub const USER: &str = "scanner";
pub const PASSWORD: &str = "correct horse battery staple";
pub const USER_DOMAIN: &str = "Default";
pub const PROJECT: &str = "vmscan";
pub const PROJECT_DOMAIN: &str = "Default";
pub const PROJECT_ID: &str = "8d1f0b3e5c2a4e6f9a7b1c3d5e7f9a0b";
pub const APP_CRED_ID: &str = "5a8e2c7d0f3b4a6c";
pub const APP_CRED_SECRET: &str = "app-cred-secret-value";
pub const REGION: &str = "RegionOne";
/// The flavor and networks the provider is configured with.
pub const FLAVOR: &str = "m1.scan";
pub const NETWORK: &str = "scan-net";
pub const POOL: &str = "public";
/// Lists answer at most this many items a page, so clients must follow links.
const PAGE: usize = 2;

const UNAUTHORIZED: &str = "The request you have made requires authentication.";

struct Img {
    id: String,
    name: String,
    status: String,
    disk_format: String,
    props: serde_json::Map<String, Value>,
    size: Option<u64>,
    md5: Option<String>,
    sha512: Option<String>,
    file: Option<PathBuf>,
    polls: u32,
    kill: bool,
    bad_hash: bool,
    created: String,
}

struct Srv {
    id: String,
    name: String,
    image: String,
    flavor: String,
    key_name: Option<String>,
    metadata: Value,
    status: String,
    polls: u32,
    fail: Option<String>,
    addressless: bool,
    port: String,
    fixed: String,
    floating: Option<String>,
    deleting: Option<u32>,
    guest: Option<tokio::task::JoinHandle<()>>,
    guest_gone: Arc<Mutex<bool>>,
    created: String,
    /// Security group ids (Nova takes a name or an id; the fake stores ids).
    security_groups: Vec<String>,
}

/// A Neutron security group and its rules (as the API returns them).
struct Sg {
    id: String,
    name: String,
    description: String,
    rules: Vec<Value>,
}

struct Fip {
    id: String,
    address: String,
    port: Option<String>,
    network: String,
}

struct Injection {
    method: Method,
    path: String,
    status: u16,
    times: u32,
    /// The request is carried out, then answered with the error.
    after: bool,
}

struct Inner {
    /// Token → when it expires (set to now when expired on demand).
    tokens: HashMap<String, std::time::Instant>,
    token_ttl_secs: i64,
    rejected: u32,
    issued: u32,
    images: Vec<Img>,
    servers: Vec<Srv>,
    fips: Vec<Fip>,
    sgs: Vec<Sg>,
    injections: Vec<Injection>,
    expire_on: Vec<(Method, String)>,
    requests: Vec<(Method, String)>,
    kill_next_upload: bool,
    bad_hash_next: bool,
    hash_algo: String,
    fail_next_server: Option<String>,
    addressless_next: bool,
    image_polls: u32,
    build_polls: u32,
    delete_polls: u32,
    fixed_address: String,
    floating_address: String,
    guest: Option<Arc<GuestBackend>>,
    user_data: Vec<String>,
}

#[derive(Clone)]
pub struct FakeOpenStack {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _dir: Arc<tempfile::TempDir>,
    /// `http://127.0.0.1:PORT` or `https://…`: Keystone and every endpoint.
    base: String,
    handshakes: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct St {
    inner: Arc<Mutex<Inner>>,
    base: String,
    dir: PathBuf,
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl FakeOpenStack {
    pub async fn start() -> FakeOpenStack {
        Self::start_with(None).await
    }

    /// Every API over HTTPS with this certificate and key (PEM).
    pub async fn start_https(cert: &str, key: &str) -> FakeOpenStack {
        Self::serve(None, Some(tls_acceptor(cert, key))).await
    }

    /// With a guest backend, an ACTIVE server runs the image it was given.
    pub async fn start_with(guest: Option<Arc<GuestBackend>>) -> FakeOpenStack {
        Self::serve(guest, None).await
    }

    async fn serve(
        guest: Option<Arc<GuestBackend>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeOpenStack {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            tokens: HashMap::new(),
            token_ttl_secs: 3600,
            rejected: 0,
            issued: 0,
            images: Vec::new(),
            servers: Vec::new(),
            fips: Vec::new(),
            sgs: Vec::new(),
            injections: Vec::new(),
            expire_on: Vec::new(),
            requests: Vec::new(),
            kill_next_upload: false,
            bad_hash_next: false,
            hash_algo: "sha512".into(),
            fail_next_server: None,
            addressless_next: false,
            image_polls: 2,
            build_polls: 3,
            delete_polls: 2,
            fixed_address: "127.0.0.1".into(),
            floating_address: "127.0.0.1".into(),
            guest,
            user_data: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let st = St {
            inner: inner.clone(),
            base: format!("{scheme}://{addr}"),
            dir: dir.path().to_path_buf(),
        };
        let compute = "/v2.1/{project}";
        let app = Router::new()
            .route("/v3/auth/tokens", post(issue_token))
            .route("/v2/images", get(list_images).post(create_image))
            .route("/v2/images/{id}", get(show_image).delete(delete_image))
            .route("/v2/images/{id}/file", put(upload_file))
            .route(&format!("{compute}/flavors/detail"), get(list_flavors))
            .route(&format!("{compute}/servers"), post(create_server))
            .route(&format!("{compute}/servers/detail"), get(list_servers))
            .route(
                &format!("{compute}/servers/{{id}}"),
                get(show_server).delete(delete_server),
            )
            .route(&format!("{compute}/servers/{{id}}/action"), post(action))
            .route("/v2.0/networks", get(list_networks))
            .route("/v2.0/ports", get(list_ports))
            .route("/v2.0/floatingips", get(list_fips).post(create_fip))
            .route("/v2.0/floatingips/{id}", axum::routing::delete(delete_fip))
            .route("/v2.0/security-groups", get(list_sgs).post(create_sg))
            .route(
                "/v2.0/security-groups/{id}",
                axum::routing::delete(delete_sg),
            )
            .route(
                "/v2.0/security-group-rules",
                get(list_sg_rules).post(create_sg_rule),
            )
            .route(
                "/v2.0/security-group-rules/{id}",
                axum::routing::delete(delete_sg_rule),
            )
            .layer(middleware::from_fn_with_state(st.clone(), gate))
            .with_state(st.clone());
        let handshakes = Arc::new(AtomicUsize::new(0));
        match tls {
            Some(acceptor) => {
                tokio::spawn(serve_https(listener, app, acceptor, handshakes.clone()));
            }
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
            }
        }
        FakeOpenStack {
            addr,
            inner,
            _dir: dir,
            base: st.base,
            handshakes,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    /// Keystone's URL as a client is configured with it.
    pub fn auth_url(&self) -> String {
        format!("{}/v3", self.base)
    }

    /// TLS handshakes begun (HTTPS only), accepted certificate or not.
    pub fn tls_handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Every token issued so far now answers 401 (as when it expired mid-job).
    pub fn expire_tokens(&self) {
        self.with(expire_all);
    }

    /// Tokens expire just as the next request `method` whose path contains
    /// `path` arrives (which then gets 401).
    pub fn expire_tokens_at(&self, method: Method, path: &str) {
        self.with(|i| i.expire_on.push((method, path.into())));
    }

    /// Lifetime of the tokens issued from now on (an hour by default).
    pub fn set_token_ttl(&self, secs: i64) {
        self.with(|i| i.token_ttl_secs = secs);
    }

    /// Requests answered 401 because of their token.
    pub fn rejected(&self) -> u32 {
        self.with(|i| i.rejected)
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u32 {
        self.with(|i| i.issued)
    }

    /// The next upload is accepted, then Glance gives up on it: `killed`.
    pub fn kill_next_upload(&self) {
        self.with(|i| i.kill_next_upload = true);
    }

    /// The next image turns active with a hash that is not the file's.
    pub fn corrupt_next_hash(&self) {
        self.with(|i| i.bad_hash_next = true);
    }

    /// Glance's `hashing_algorithm` (sha512 by default).
    pub fn set_hash_algo(&self, algo: &str) {
        self.with(|i| i.hash_algo = algo.into());
    }

    /// The next server goes BUILD → ERROR with this fault message.
    pub fn fail_next_server(&self, fault: &str) {
        self.with(|i| i.fail_next_server = Some(fault.into()));
    }

    /// The next server becomes ACTIVE but never gets an address.
    pub fn make_next_vm_addressless(&self) {
        self.with(|i| i.addressless_next = true);
    }

    /// The fixed address servers get (127.0.0.1 by default) and the floating one.
    pub fn set_addresses(&self, fixed: &str, floating: &str) {
        self.with(|i| {
            i.fixed_address = fixed.into();
            i.floating_address = floating.into();
        });
    }

    /// The next `times` requests `method` whose path contains `path` answer
    /// `status` with the service's own error body.
    pub fn inject(&self, method: Method, path: &str, status: u16, times: u32) {
        self.with(|i| {
            i.injections.push(Injection {
                method,
                path: path.into(),
                status,
                times,
                after: false,
            })
        });
    }

    /// Like [`inject`](Self::inject), but the request is carried out first
    /// (a gateway timing out on a request the service completed).
    pub fn inject_after(&self, method: Method, path: &str, status: u16, times: u32) {
        self.with(|i| {
            i.injections.push(Injection {
                method,
                path: path.into(),
                status,
                times,
                after: true,
            })
        });
    }

    /// Forgets the failures still to come.
    pub fn clear_injections(&self) {
        self.with(|i| i.injections.clear());
    }

    /// Requests `method` whose path contains `path` so far.
    pub fn count(&self, method: Method, path: &str) -> usize {
        self.with(|i| {
            i.requests
                .iter()
                .filter(|(m, p)| *m == method && p.contains(path))
                .count()
        })
    }

    /// (id, name, status) of every image Glance holds.
    pub fn images(&self) -> Vec<(String, String, String)> {
        self.with(|i| {
            i.images
                .iter()
                .map(|m| (m.id.clone(), m.name.clone(), m.status.clone()))
                .collect()
        })
    }

    /// (id, name, status) of every server Nova holds.
    pub fn servers(&self) -> Vec<(String, String, String)> {
        self.with(|i| {
            i.servers
                .iter()
                .map(|s| (s.id.clone(), s.name.clone(), s.status.clone()))
                .collect()
        })
    }

    /// Every security group: (id, name, its rules).
    pub fn security_groups(&self) -> Vec<(String, String, Vec<Value>)> {
        let i = self.inner.lock().unwrap();
        i.sgs
            .iter()
            .map(|g| (g.id.clone(), g.name.clone(), g.rules.clone()))
            .collect()
    }

    /// The security group ids a server was created with.
    pub fn server_security_groups(&self, id: &str) -> Option<Vec<String>> {
        let i = self.inner.lock().unwrap();
        i.servers
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.security_groups.clone())
    }

    pub fn floating_ips(&self) -> usize {
        self.with(|i| i.fips.len())
    }

    /// The image properties of image `id` (custom keys included).
    pub fn image_props(&self, id: &str) -> Option<Value> {
        self.with(|i| {
            i.images
                .iter()
                .find(|m| m.id == id)
                .map(|m| Value::Object(m.props.clone()))
        })
    }

    /// Server metadata and the decoded user-data of the servers created so far.
    pub fn user_data(&self) -> Vec<String> {
        self.with(|i| i.user_data.clone())
    }

    pub fn server_metadata(&self, id: &str) -> Option<Value> {
        self.with(|i| {
            i.servers
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.metadata.clone())
        })
    }
}

fn expire_all(i: &mut Inner) {
    let now = std::time::Instant::now();
    i.tokens.values_mut().for_each(|v| *v = now);
}

// ---- errors, in each service's own shape ----

fn service_of(path: &str) -> &'static str {
    if path.starts_with("/v3") {
        "keystone"
    } else if path.starts_with("/v2.1") {
        "nova"
    } else if path.starts_with("/v2.0") {
        "neutron"
    } else {
        "glance"
    }
}

fn error(path: &str, status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    let title = code.canonical_reason().unwrap_or("Error");
    match service_of(path) {
        "keystone" => (
            code,
            Json(json!({"error": {"code": status, "message": message, "title": title}})),
        )
            .into_response(),
        "nova" => {
            let kind = match status {
                400 => "badRequest",
                403 => "forbidden",
                404 => "itemNotFound",
                409 => "conflictingRequest",
                _ => "computeFault",
            };
            (code, Json(json!({kind: {"code": status, "message": message}}))).into_response()
        }
        "neutron" => (
            code,
            Json(json!({"NeutronError": {"type": title.replace(' ', ""), "message": message, "detail": ""}})),
        )
            .into_response(),
        // Glance answers errors as HTML pages.
        _ => (
            code,
            [("content-type", "text/html; charset=UTF-8")],
            format!("<html>\n <head>\n  <title>{status} {title}</title>\n </head>\n <body>\n  <h1>{status} {title}</h1>\n  {message}<br /><br />\n\n\n </body>\n</html>"),
        )
            .into_response(),
    }
}

/// Counts requests, answers injected failures, and checks the token.
async fn gate(State(st): State<St>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let token = req
        .headers()
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut after = None;
    let verdict = {
        let mut i = st.inner.lock().unwrap();
        i.requests.push((method.clone(), path.clone()));
        if let Some(k) = i
            .expire_on
            .iter()
            .position(|(m, p)| *m == method && path.contains(p.as_str()))
        {
            i.expire_on.remove(k);
            expire_all(&mut i);
        }
        let injected = i
            .injections
            .iter_mut()
            .find(|j| j.times > 0 && j.method == method && path.contains(&j.path));
        if let Some(j) = injected {
            j.times -= 1;
            let msg = match j.status {
                409 if method == Method::POST => {
                    "Multiple possible networks found, use a Network ID to be more specific."
                        .to_string()
                }
                409 => "Cannot 'delete' instance while it is in task_state spawning".to_string(),
                503 => "The server is currently unavailable. Please try again at a later time."
                    .to_string(),
                504 => "Gateway Time-out".to_string(),
                s => format!("Unexpected API Error ({s}). Please report this."),
            };
            let e = error(&path, j.status, &msg);
            if j.after {
                after = Some(e);
                None
            } else {
                Some(e)
            }
        } else if path == "/v3/auth/tokens" {
            None
        } else {
            let until = token.and_then(|t| i.tokens.get(&t).copied());
            let valid = until.is_some_and(|u| std::time::Instant::now() < u);
            if !valid {
                i.rejected += 1;
            }
            (!valid).then(|| {
                let mut r = error("/v3", 401, UNAUTHORIZED);
                r.headers_mut().insert(
                    "WWW-Authenticate",
                    format!("Keystone uri=\"{}/v3\"", st.base).parse().unwrap(),
                );
                r
            })
        }
    };
    match (verdict, after) {
        (Some(r), _) => r,
        // The request is done, but its answer is lost to a failing proxy.
        (None, Some(e)) => {
            let _ = next.run(req).await;
            e
        }
        (None, None) => next.run(req).await,
    }
}

// ---- Keystone ----

async fn issue_token(State(st): State<St>, Json(body): Json<Value>) -> Response {
    let id = &body["auth"]["identity"];
    let methods = id["methods"].as_array().cloned().unwrap_or_default();
    let ok = if methods == [json!("password")] {
        let u = &id["password"]["user"];
        let scope = &body["auth"]["scope"]["project"];
        u["name"] == USER
            && u["domain"]["name"] == USER_DOMAIN
            && u["password"] == PASSWORD
            && scope["name"] == PROJECT
            && scope["domain"]["name"] == PROJECT_DOMAIN
    } else if methods == [json!("application_credential")] {
        let c = &id["application_credential"];
        c["id"] == APP_CRED_ID && c["secret"] == APP_CRED_SECRET
    } else {
        false
    };
    if !ok {
        return error("/v3", 401, UNAUTHORIZED);
    }
    let token = format!("gAAAAA{}", uuid::Uuid::now_v7().simple());
    let ttl = {
        let mut i = st.inner.lock().unwrap();
        let ttl = i.token_ttl_secs;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(ttl as u64);
        i.tokens.insert(token.clone(), until);
        i.issued += 1;
        ttl
    };
    let issued = chrono::Utc::now();
    let expires = issued + chrono::Duration::seconds(ttl);
    let b = &st.base;
    let ep = |url: String, iface: &str, region: &str| json!({"id": new_id(), "interface": iface, "region": region, "region_id": region, "url": url});
    let service = |kind: &str, name: &str, public: String| {
        json!({"type": kind, "name": name, "id": new_id(), "endpoints": [
            ep(public, "public", REGION),
            ep(format!("http://{kind}.internal.invalid:1"), "internal", REGION),
            ep(format!("http://{kind}.region-two.invalid:1"), "public", "RegionTwo"),
        ]})
    };
    let catalog = json!([
        service("identity", "keystone", format!("{b}/v3")),
        service("compute", "nova", format!("{b}/v2.1/{PROJECT_ID}")),
        service("image", "glance", b.clone()),
        service("network", "neutron", format!("{b}/")),
    ]);
    let out = json!({"token": {
        "methods": methods,
        "expires_at": expires.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "issued_at": issued.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "user": {"id": "u-1", "name": USER, "domain": {"id": "default", "name": USER_DOMAIN}},
        "project": {"id": PROJECT_ID, "name": PROJECT, "domain": {"id": "default", "name": PROJECT_DOMAIN}},
        "roles": [{"id": "r-1", "name": "member"}],
        "catalog": catalog,
    }});
    (StatusCode::CREATED, [("X-Subject-Token", token)], Json(out)).into_response()
}

// ---- Glance ----

fn image_json(m: &Img) -> Value {
    let active = m.status == "active";
    let mut v = json!({
        "id": m.id, "name": m.name, "status": m.status,
        "disk_format": m.disk_format, "container_format": "bare",
        "visibility": "private", "protected": false, "owner": PROJECT_ID,
        "min_disk": 0, "min_ram": 0, "tags": [],
        "size": if active || m.status == "saving" { json!(m.size) } else { Value::Null },
        "virtual_size": Value::Null,
        "checksum": if active { json!(m.md5) } else { Value::Null },
        "os_hash_algo": Value::Null, "os_hash_value": Value::Null,
        "created_at": m.created, "updated_at": now(),
        "file": format!("/v2/images/{}/file", m.id),
        "self": format!("/v2/images/{}", m.id),
        "schema": "/v2/schemas/image",
    });
    for (k, val) in &m.props {
        v[k] = val.clone();
    }
    v
}

async fn create_image(State(st): State<St>, Json(body): Json<Value>) -> Response {
    const DISK: [&str; 11] = [
        "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "ploop", "iso",
    ];
    const CONTAINER: [&str; 8] = [
        "ami",
        "ari",
        "aki",
        "bare",
        "ovf",
        "ova",
        "docker",
        "compressed",
    ];
    let p = "/v2/images";
    let disk = body["disk_format"].as_str().unwrap_or_default();
    let container = body["container_format"].as_str().unwrap_or_default();
    if !DISK.contains(&disk) {
        return error(p, 400, &format!("Invalid disk format '{disk}' for image."));
    }
    if !CONTAINER.contains(&container) {
        return error(
            p,
            400,
            &format!("Invalid container format '{container}' for image."),
        );
    }
    let mut props = serde_json::Map::new();
    for (k, v) in body.as_object().into_iter().flatten() {
        if matches!(
            k.as_str(),
            "name" | "disk_format" | "container_format" | "visibility"
        ) {
            continue;
        }
        if !v.is_string() {
            return error(
                p,
                400,
                &format!(
                    "Provided object does not match schema 'image': {v} is not of type 'string'"
                ),
            );
        }
        props.insert(k.clone(), v.clone());
    }
    let mut i = st.inner.lock().unwrap();
    let m = Img {
        id: new_id(),
        name: body["name"].as_str().unwrap_or_default().into(),
        status: "queued".into(),
        disk_format: disk.into(),
        props,
        size: None,
        md5: None,
        sha512: None,
        file: None,
        polls: 0,
        kill: false,
        bad_hash: false,
        created: now(),
    };
    let out = image_json(&m);
    i.images.push(m);
    (
        StatusCode::CREATED,
        [(
            "OpenStack-image-import-methods",
            "glance-direct,web-download",
        )],
        Json(out),
    )
        .into_response()
}

async fn show_image(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let algo = i.hash_algo.clone();
    let Some(m) = i.images.iter_mut().find(|m| m.id == id) else {
        return error("/v2", 404, &format!("No image found with ID {id}"));
    };
    if m.status == "saving" {
        if m.polls > 0 {
            m.polls -= 1;
        } else {
            m.status = if m.kill { "killed" } else { "active" }.into();
        }
    }
    let mut v = image_json(m);
    if m.status == "active" {
        let hash = if algo == "sha512" {
            m.sha512.clone().unwrap_or_default()
        } else {
            let bytes = std::fs::read(m.file.as_ref().unwrap()).unwrap();
            hex::encode(sha2::Sha256::digest(&bytes))
        };
        let hash = if m.bad_hash {
            hash.chars().rev().collect()
        } else {
            hash
        };
        v["os_hash_algo"] = json!(algo);
        v["os_hash_value"] = json!(hash);
    }
    Json(v).into_response()
}

async fn list_images(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let i = st.inner.lock().unwrap();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25)
        .min(PAGE);
    let all: Vec<&Img> = i
        .images
        .iter()
        .filter(|m| q.get("name").is_none_or(|n| &m.name == n))
        .collect();
    let start = match q.get("marker") {
        Some(mk) => match all.iter().position(|m| &m.id == mk) {
            Some(p) => p + 1,
            None => return error("/v2", 400, &format!("marker not found: {mk}")),
        },
        None => 0,
    };
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| image_json(m))
        .collect();
    let mut out = json!({"images": page, "first": "/v2/images", "schema": "/v2/schemas/images"});
    if start + limit < all.len() {
        let last = &all[start + limit - 1].id;
        let name = q
            .get("name")
            .map(|n| format!("&name={n}"))
            .unwrap_or_default();
        out["next"] = json!(format!("/v2/images?marker={last}&limit={limit}{name}"));
    }
    Json(out).into_response()
}

async fn delete_image(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let Some(pos) = i.images.iter().position(|m| m.id == id) else {
        return error("/v2", 404, &format!("No image found with ID {id}"));
    };
    let m = i.images.remove(pos);
    if let Some(f) = m.file {
        let _ = std::fs::remove_file(f);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn upload_file(
    State(st): State<St>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let p = "/v2";
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/octet-stream")
    {
        return error(p, 415, "The request has an unsupported content type");
    }
    {
        let mut i = st.inner.lock().unwrap();
        let Some(m) = i.images.iter_mut().find(|m| m.id == id) else {
            return error(p, 404, &format!("No image found with ID {id}"));
        };
        if m.status != "queued" {
            let s = m.status.clone();
            return error(
                p,
                409,
                &format!("Image status transition from {s} to saving is not allowed"),
            );
        }
        m.status = "saving".into();
    }
    let path = st.dir.join(&id);
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut sha = sha2::Sha512::new();
    let mut md5 = md5::Md5::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(c) = chunk else {
            let mut i = st.inner.lock().unwrap();
            if let Some(m) = i.images.iter_mut().find(|m| m.id == id) {
                m.status = "queued".into();
            }
            return error(
                p,
                400,
                "Client disconnected before sending all data to backend",
            );
        };
        sha.update(&c);
        md5.update(&c);
        size += c.len() as u64;
        file.write_all(&c).await.unwrap();
    }
    file.flush().await.unwrap();
    let mut i = st.inner.lock().unwrap();
    let (kill, bad) = (
        std::mem::take(&mut i.kill_next_upload),
        std::mem::take(&mut i.bad_hash_next),
    );
    let polls = i.image_polls;
    if let Some(m) = i.images.iter_mut().find(|m| m.id == id) {
        m.size = Some(size);
        m.sha512 = Some(hex::encode(sha.finalize()));
        m.md5 = Some(hex::encode(md5.finalize()));
        m.file = Some(path);
        m.polls = polls;
        m.kill = kill;
        m.bad_hash = bad;
    }
    StatusCode::NO_CONTENT.into_response()
}

// ---- Nova ----

fn flavors() -> Vec<Value> {
    [
        ("1", "m1.tiny", 512, 1),
        ("2", "m1.small", 2048, 1),
        ("3", "m1.large", 8192, 4),
        ("42", FLAVOR, 1024, 1),
    ]
    .iter()
    .map(|(id, name, ram, vcpus)| {
        json!({"id": id, "name": name, "ram": ram, "vcpus": vcpus, "disk": 10,
                   "OS-FLV-EXT-DATA:ephemeral": 0, "os-flavor-access:is_public": true,
                   "links": []})
    })
    .collect()
}

async fn list_flavors(
    State(st): State<St>,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let all = flavors();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000)
        .min(PAGE);
    let start = q
        .get("marker")
        .and_then(|mk| all.iter().position(|f| f["id"] == mk.as_str()))
        .map(|p| p + 1)
        .unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let mut out = json!({"flavors": page});
    if start + limit < all.len() {
        let last = all[start + limit - 1]["id"].as_str().unwrap().to_string();
        out["flavors_links"] = json!([{"rel": "next",
            "href": format!("{}/v2.1/{project}/flavors/detail?limit={limit}&marker={last}", st.base)}]);
    }
    Json(out).into_response()
}

/// Moves the server one poll along: BUILD → ACTIVE/ERROR, deleting → gone.
fn advance(s: &mut Srv) -> bool {
    if let Some(left) = s.deleting.as_mut() {
        if *left > 0 {
            *left -= 1;
        }
        let guest_gone = *s.guest_gone.lock().unwrap();
        return *left == 0 && guest_gone;
    }
    if s.status == "BUILD" {
        if s.polls > 0 {
            s.polls -= 1;
        } else if s.fail.is_some() {
            s.status = "ERROR".into();
        } else {
            s.status = "ACTIVE".into();
        }
    }
    false
}

fn server_json(s: &Srv, base: &str) -> Value {
    let mut addresses = json!({});
    if s.status == "ACTIVE" && !s.addressless {
        let mut list = vec![
            json!({"addr": s.fixed, "version": 4, "OS-EXT-IPS:type": "fixed",
                                   "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:4c:2c:30"}),
        ];
        if let Some(f) = &s.floating {
            list.push(
                json!({"addr": f, "version": 4, "OS-EXT-IPS:type": "floating",
                             "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:4c:2c:30"}),
            );
        }
        addresses[NETWORK] = json!(list);
    }
    let task = if s.deleting.is_some() {
        json!("deleting")
    } else if s.status == "BUILD" {
        json!("spawning")
    } else {
        Value::Null
    };
    let mut v = json!({
        "id": s.id, "name": s.name, "status": s.status,
        "tenant_id": PROJECT_ID, "user_id": "u-1",
        "metadata": s.metadata, "addresses": addresses,
        "image": {"id": s.image}, "flavor": {"id": s.flavor},
        "key_name": s.key_name,
        "OS-EXT-STS:task_state": task,
        "OS-EXT-STS:vm_state": s.status.to_lowercase(),
        "OS-EXT-STS:power_state": if s.status == "ACTIVE" { 1 } else { 0 },
        "created": s.created, "updated": now(), "hostId": "",
        "links": [{"rel": "self", "href": format!("{base}/v2.1/{PROJECT_ID}/servers/{}", s.id)}],
    });
    if s.status == "ERROR" {
        v["fault"] = json!({"code": 500, "created": now(),
            "message": s.fail.clone().unwrap_or_default(), "details": "Traceback (most recent call last): …"});
    }
    v
}

async fn create_server(
    State(st): State<St>,
    Path(project): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let p = "/v2.1";
    let s = &body["server"];
    let name = s["name"].as_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return error(
            p,
            400,
            "Invalid input for field/attribute server. Value: name is a required property",
        );
    }
    let image = s["imageRef"].as_str().unwrap_or_default().to_string();
    let flavor = s["flavorRef"].as_str().unwrap_or_default().to_string();
    if !flavors().iter().any(|f| f["id"] == flavor.as_str()) {
        return error(p, 400, &format!("Flavor {flavor} could not be found."));
    }
    let net = s["networks"][0]["uuid"].as_str().unwrap_or_default();
    if !networks()
        .iter()
        .any(|n| n["id"] == net && n["router:external"] == false)
    {
        return error(p, 400, &format!("Network {net} could not be found."));
    }
    let user_data = match s["user_data"].as_str() {
        Some(u) => match base64::engine::general_purpose::STANDARD.decode(u) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => return error(p, 400, "User data needs to be valid base 64."),
        },
        None => String::new(),
    };
    let mut i = st.inner.lock().unwrap();
    // Nova resolves each group by name or id in Neutron; an unknown one is a 400.
    let mut security_groups = Vec::new();
    for g in s["security_groups"].as_array().into_iter().flatten() {
        let want = g["name"].as_str().unwrap_or_default();
        let found: Vec<&Sg> = i
            .sgs
            .iter()
            .filter(|sg| sg.id == want || sg.name == want)
            .collect();
        match found.as_slice() {
            [one] => security_groups.push(one.id.clone()),
            [] if want == "default" => {}
            [] => return error(p, 400, &format!("Security group {want} not found.")),
            _ => {
                return error(
                    p,
                    409,
                    &format!("Multiple security_group matches found for name '{want}', use an ID to be more specific."),
                )
            }
        }
    }
    let disk = match i.images.iter().find(|m| m.id == image) {
        Some(m) if m.status == "active" => m.file.clone(),
        Some(_) => return error(p, 400, &format!("Image {image} is not active.")),
        None => return error(p, 400, "Can not find requested image"),
    };
    let id = new_id();
    let fail = i.fail_next_server.take();
    let addressless = std::mem::take(&mut i.addressless_next);
    let guest_gone = Arc::new(Mutex::new(true));
    let guest = match (&i.guest, disk, fail.is_none()) {
        (Some(g), Some(disk), true) => {
            *guest_gone.lock().unwrap() = false;
            let (g, cid, ud, host) = (g.clone(), id.clone(), user_data.clone(), name.clone());
            Some(tokio::spawn(
                async move { g.boot(&cid, &disk, ud, host).await },
            ))
        }
        _ => None,
    };
    i.user_data.push(user_data);
    let srv = Srv {
        id: id.clone(),
        name,
        image,
        flavor,
        key_name: s["key_name"].as_str().map(str::to_string),
        metadata: s["metadata"].clone(),
        status: "BUILD".into(),
        polls: i.build_polls,
        fail,
        addressless,
        port: new_id(),
        fixed: i.fixed_address.clone(),
        floating: None,
        deleting: None,
        guest,
        guest_gone,
        created: now(),
        security_groups,
    };
    i.servers.push(srv);
    let location = format!("{}/v2.1/{project}/servers/{id}", st.base);
    (
        StatusCode::ACCEPTED,
        [("Location", location.clone())],
        Json(
            json!({"server": {"id": id, "links": [{"rel": "self", "href": location}],
            "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
            "adminPass": "fake-admin-pass"}}),
        ),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    error("/v2.1", 404, &format!("Instance {id} could not be found."))
}

async fn show_server(State(st): State<St>, Path((_, id)): Path<(String, String)>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let Some(pos) = i.servers.iter().position(|s| s.id == id) else {
        return not_found(&id);
    };
    if advance(&mut i.servers[pos]) {
        i.servers.remove(pos);
        return not_found(&id);
    }
    Json(json!({"server": server_json(&i.servers[pos], &st.base)})).into_response()
}

async fn list_servers(
    State(st): State<St>,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let i = st.inner.lock().unwrap();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000)
        .min(PAGE);
    // Nova's name filter is a regular expression; the fake knows ^exact$ and substrings.
    let matches = |n: &str| match q.get("name") {
        None => true,
        Some(f) => match f.strip_prefix('^').and_then(|f| f.strip_suffix('$')) {
            Some(exact) => n == exact,
            None => n.contains(f.as_str()),
        },
    };
    let all: Vec<&Srv> = i.servers.iter().filter(|s| matches(&s.name)).collect();
    let start = match q.get("marker") {
        Some(mk) => match all.iter().position(|s| &s.id == mk) {
            Some(p) => p + 1,
            None => return error("/v2.1", 400, &format!("marker [{mk}] not found")),
        },
        None => 0,
    };
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| server_json(s, &st.base))
        .collect();
    let mut out = json!({"servers": page});
    if start + limit < all.len() {
        let last = &all[start + limit - 1].id;
        let name = q
            .get("name")
            .map(|n| format!("&name={}", urlenc(n)))
            .unwrap_or_default();
        out["servers_links"] = json!([{"rel": "next",
            "href": format!("{}/v2.1/{project}/servers/detail?limit={limit}&marker={last}{name}", st.base)}]);
    }
    Json(out).into_response()
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn delete_server(State(st): State<St>, Path((_, id)): Path<(String, String)>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let polls = i.delete_polls;
    let guest = i.guest.clone();
    let Some(s) = i.servers.iter_mut().find(|s| s.id == id) else {
        return not_found(&id);
    };
    if s.deleting.is_none() {
        s.deleting = Some(polls);
        // The guest goes away before Nova reports the server gone.
        if let (Some(g), Some(boot)) = (guest, s.guest.take()) {
            let (gone, cid) = (s.guest_gone.clone(), s.id.clone());
            tokio::spawn(async move {
                let _ = boot.await;
                g.destroy(&cid).await;
                *gone.lock().unwrap() = true;
            });
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn action(
    State(st): State<St>,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let i = st.inner.lock().unwrap();
    let Some(s) = i.servers.iter().find(|s| s.id == id) else {
        return not_found(&id);
    };
    let Some(req) = body.get("os-getConsoleOutput") else {
        return error("/v2.1", 400, "There is no such action");
    };
    let mut lines = vec![
        "SeaBIOS (version 1.16.3)".to_string(),
        "Booting from Hard Disk...".into(),
        "[    0.000000] Linux version 6.6.0 (fake)".into(),
    ];
    if s.status == "ACTIVE" {
        lines.push(format!("{} login: ", s.name));
    }
    let n = req["length"]
        .as_u64()
        .map(|n| n as usize)
        .unwrap_or(lines.len());
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    Json(json!({"output": tail})).into_response()
}

// ---- Neutron ----

pub const NETWORK_ID: &str = "3c1e7a4f-8b2d-4e6a-9f0c-1d2e3f4a5b6c";
const SHARED_NETWORK_ID: &str = "7e9d2b1a-0c3f-4a5e-8b6d-2f1e0d9c8b7a";
const POOL_ID: &str = "b4f6a2c8-1e3d-4f5a-9b7c-0d2e4f6a8c1e";

fn networks() -> Vec<Value> {
    vec![
        // Another project's shared network of the same name: not ours.
        json!({"id": SHARED_NETWORK_ID, "name": NETWORK, "status": "ACTIVE", "shared": true,
               "router:external": false, "project_id": "0000", "subnets": [], "mtu": 1450}),
        json!({"id": NETWORK_ID, "name": NETWORK, "status": "ACTIVE", "shared": false,
               "router:external": false, "project_id": PROJECT_ID, "subnets": ["s-1"], "mtu": 1450}),
        json!({"id": POOL_ID, "name": POOL, "status": "ACTIVE", "shared": false,
               "router:external": true, "project_id": "0000", "subnets": ["s-ext"], "mtu": 1500}),
    ]
}

async fn list_networks(Query(q): Query<HashMap<String, String>>) -> Response {
    let nets: Vec<Value> = networks()
        .into_iter()
        .filter(|n| q.get("name").is_none_or(|name| n["name"] == name.as_str()))
        .collect();
    Json(json!({"networks": nets})).into_response()
}

async fn list_ports(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let i = st.inner.lock().unwrap();
    let ports: Vec<Value> = i
        .servers
        .iter()
        .filter(|s| s.status == "ACTIVE" && q.get("device_id").is_none_or(|d| &s.id == d))
        .map(|s| {
            json!({"id": s.port, "device_id": s.id, "device_owner": "compute:nova",
                        "network_id": NETWORK_ID, "status": "ACTIVE",
                        "fixed_ips": [{"subnet_id": "s-1", "ip_address": s.fixed}]})
        })
        .collect();
    Json(json!({"ports": ports})).into_response()
}

fn fip_json(f: &Fip) -> Value {
    json!({"id": f.id, "floating_ip_address": f.address, "floating_network_id": f.network,
           "port_id": f.port, "status": if f.port.is_some() { "ACTIVE" } else { "DOWN" },
           "project_id": PROJECT_ID})
}

async fn create_fip(State(st): State<St>, Json(body): Json<Value>) -> Response {
    let p = "/v2.0";
    let b = &body["floatingip"];
    let net = b["floating_network_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !networks()
        .iter()
        .any(|n| n["id"] == net.as_str() && n["router:external"] == true)
    {
        return error(
            p,
            400,
            &format!("Bad floatingip request: Network {net} is not a valid external network."),
        );
    }
    let mut i = st.inner.lock().unwrap();
    let port = b["port_id"].as_str().map(str::to_string);
    let address = i.floating_address.clone();
    if let Some(port) = &port {
        match i.servers.iter_mut().find(|s| &s.port == port) {
            Some(s) => s.floating = Some(address.clone()),
            None => return error(p, 404, &format!("Port {port} could not be found.")),
        }
    }
    let f = Fip {
        id: new_id(),
        address,
        port,
        network: net,
    };
    let out = fip_json(&f);
    i.fips.push(f);
    (StatusCode::CREATED, Json(json!({"floatingip": out}))).into_response()
}

async fn list_fips(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let i = st.inner.lock().unwrap();
    let fips: Vec<Value> = i
        .fips
        .iter()
        .filter(|f| q.get("port_id").is_none_or(|p| f.port.as_ref() == Some(p)))
        .map(fip_json)
        .collect();
    Json(json!({"floatingips": fips})).into_response()
}

async fn delete_fip(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let Some(pos) = i.fips.iter().position(|f| f.id == id) else {
        return error(
            "/v2.0",
            404,
            &format!("Floating IP {id} could not be found"),
        );
    };
    let f = i.fips.remove(pos);
    if let Some(port) = f.port {
        if let Some(s) = i.servers.iter_mut().find(|s| s.port == port) {
            s.floating = None;
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

// Neutron security groups, after the Networking API v2.0 reference
// (docs.openstack.org/api-ref/network/v2, "Security groups" and "Security
// group rules"): POST /v2.0/security-groups → 201 with the group and the two
// egress rules Neutron adds to every new group (IPv4 and IPv6, any protocol,
// any remote); DELETE → 204, 404, or 409 while a port (here: a server that
// is not gone yet) uses it; rules: POST → 201, 409 for a duplicate, DELETE → 204.

fn sg_json(g: &Sg) -> Value {
    json!({"id": g.id, "name": g.name, "description": g.description,
           "stateful": true, "security_group_rules": g.rules})
}

fn rule_json(sg: &str, direction: &str, ethertype: &str, b: &Value) -> Value {
    json!({
        "id": new_id(),
        "security_group_id": sg,
        "direction": direction,
        "ethertype": ethertype,
        "protocol": b["protocol"],
        "port_range_min": b["port_range_min"],
        "port_range_max": b["port_range_max"],
        "remote_ip_prefix": b["remote_ip_prefix"],
        "remote_group_id": null,
    })
}

async fn create_sg(State(st): State<St>, Json(body): Json<Value>) -> Response {
    let b = &body["security_group"];
    let id = new_id();
    let defaults = ["IPv4", "IPv6"]
        .map(|e| rule_json(&id, "egress", e, &json!({})))
        .to_vec();
    let g = Sg {
        id: id.clone(),
        name: b["name"].as_str().unwrap_or_default().to_string(),
        description: b["description"].as_str().unwrap_or_default().to_string(),
        rules: defaults,
    };
    let out = sg_json(&g);
    st.inner.lock().unwrap().sgs.push(g);
    (StatusCode::CREATED, Json(json!({"security_group": out}))).into_response()
}

async fn list_sgs(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let i = st.inner.lock().unwrap();
    let groups: Vec<Value> = i
        .sgs
        .iter()
        .filter(|g| q.get("name").is_none_or(|n| &g.name == n))
        .map(sg_json)
        .collect();
    Json(json!({"security_groups": groups})).into_response()
}

async fn delete_sg(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut i = st.inner.lock().unwrap();
    let Some(pos) = i.sgs.iter().position(|g| g.id == id) else {
        return error("/v2.0", 404, &format!("Security group {id} does not exist"));
    };
    if i.servers.iter().any(|s| s.security_groups.contains(&id)) {
        return error("/v2.0", 409, &format!("Security Group {id} in use."));
    }
    i.sgs.remove(pos);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_sg_rules(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let i = st.inner.lock().unwrap();
    let rules: Vec<Value> = i
        .sgs
        .iter()
        .filter(|g| q.get("security_group_id").is_none_or(|id| &g.id == id))
        .flat_map(|g| g.rules.clone())
        .collect();
    Json(json!({"security_group_rules": rules})).into_response()
}

async fn create_sg_rule(State(st): State<St>, Json(body): Json<Value>) -> Response {
    let p = "/v2.0";
    let b = &body["security_group_rule"];
    let direction = b["direction"].as_str().unwrap_or_default();
    let ethertype = b["ethertype"].as_str().unwrap_or("IPv4");
    if !matches!(direction, "ingress" | "egress") || !matches!(ethertype, "IPv4" | "IPv6") {
        return error(p, 400, "Invalid input for direction or ethertype.");
    }
    let sg = b["security_group_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut i = st.inner.lock().unwrap();
    let Some(g) = i.sgs.iter_mut().find(|g| g.id == sg) else {
        return error(p, 404, &format!("Security group {sg} does not exist"));
    };
    let rule = rule_json(&sg, direction, ethertype, b);
    let same = |r: &Value| {
        [
            "direction",
            "ethertype",
            "protocol",
            "port_range_min",
            "port_range_max",
            "remote_ip_prefix",
        ]
        .iter()
        .all(|k| r[*k] == rule[*k])
    };
    if g.rules.iter().any(same) {
        return error(p, 409, "Security group rule already exists.");
    }
    g.rules.push(rule.clone());
    (
        StatusCode::CREATED,
        Json(json!({"security_group_rule": rule})),
    )
        .into_response()
}

async fn delete_sg_rule(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut i = st.inner.lock().unwrap();
    for g in i.sgs.iter_mut() {
        if let Some(pos) = g.rules.iter().position(|r| r["id"] == id.as_str()) {
            g.rules.remove(pos);
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    error(
        "/v2.0",
        404,
        &format!("Security group rule {id} does not exist"),
    )
}
