//! A fake Nutanix Prism Central, v3 here and v4 in [`v4`] over the same
//! entities and tasks, written from the contracts in the
//! reference notes (terraform-provider-nutanix, prism-go-client recordings):
//! Basic auth with a non-JSON 401; mutations answer 202 with
//! `status.execution_context.task_uuid` (a string), later GETs carry it as a
//! list and list answers as `task_uuids`; an image's `size_bytes` is the disk
//! Prism made of it (a qcow2's virtual size), absent until its task ends;
//! uploads and source_uri downloads are checked against the sha256 given
//! (`X-Nutanix-Checksum-*` headers, `resources.checksum`) and a mismatch
//! fails the task; tasks go QUEUED → RUNNING → SUCCEEDED/FAILED over time, whether or
//! not anyone polls; deletes leave the entity DELETE_PENDING until their
//! task ends, then GET answers the v3 404 `ENTITY_NOT_FOUND` body; lists
//! page with offset/length/total_matches and include Prism Central itself
//! among the clusters; a VM created without `power_state: ON` stays off.
//! Failure knobs: 5xx for the next N requests, a dropped connection during
//! an upload, failing upload or VM tasks with an error detail, 409 on the
//! next deletes, a VM that never gets an IP. With a [`GuestBackend`] a
//! powered-on VM is a real QEMU guest booted from the uploaded bytes with
//! the base64-decoded cloud-init user-data. Plain HTTP, or HTTPS with a
//! given certificate (real Prism Central is HTTPS only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

use super::guest::GuestBackend;
use super::tls::{serve_https, tls_acceptor};

pub mod v4;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "nutanix/4u";
pub const CLUSTER: &str = "pe-cluster-1";
pub const SUBNET: &str = "vm-network";
const CLUSTER_UUID: &str = "00061f7f-44f7-19dc-3be1-7cc25586ee44";
const PC_UUID: &str = "7a1b9c1e-0000-4000-8000-0000000000pc";
const SUBNET_UUID: &str = "b2e46975-5b4c-4b8f-9b43-6e3b2f3e6a01";

#[derive(Clone, Debug)]
struct Entity {
    kind: &'static str,
    uuid: String,
    spec: Value,
    categories: Value,
    state: &'static str,
    tasks: Vec<String>,
    spec_version: u64,
    // Images
    size_bytes: Option<u64>,
    file: Option<PathBuf>,
    // VMs
    power_on: bool,
    ip: Option<String>,
    addressless: bool,
    powered_at: Option<Instant>,
    /// Created through v4: its size shows a while after its task ends.
    v4: bool,
    size_due: Option<Instant>,
    /// Bumped by invisible background changes (the ETag changes with them).
    etag_salt: u64,
}

#[derive(Clone, Debug)]
enum Effect {
    None,
    ImageUploaded { uuid: String },
    VmCreated { uuid: String },
    Remove { uuid: String },
    PowerOn { uuid: String },
    PowerOff { uuid: String },
}

#[derive(Clone, Debug)]
struct Task {
    uuid: String,
    operation: String,
    entity: (String, String),
    created: Instant,
    fail: Option<String>,
    /// The failure's AppMessage `code` and `errorGroup` (v4 readers).
    fail_code: Option<(String, String)>,
    effect: Effect,
    done: bool,
    /// Held tasks wait for an outside event (Prism downloading a source_uri).
    hold: bool,
}

impl Task {
    /// Its status and percentage by its own clock: QUEUED for the first
    /// third of its time, RUNNING, then its end (both API generations).
    fn status(&self, task_time: Duration) -> (&'static str, u64) {
        match (&self.fail, self.done) {
            (Some(_), true) => ("FAILED", 100),
            (None, true) => ("SUCCEEDED", 100),
            _ if self.created.elapsed() < task_time / 3 => ("QUEUED", 0),
            _ => ("RUNNING", 50),
        }
    }
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub request_id: Option<String>,
    pub if_match: Option<String>,
}

struct Inner {
    entities: HashMap<String, Entity>,
    tasks: HashMap<String, Task>,
    seen: Vec<Seen>,
    task_time: Duration,
    ip_after: Duration,
    fail_5xx: u32,
    drop_uploads: u32,
    fail_upload_task: Option<String>,
    fail_vm_task: Option<String>,
    conflict_deletes: u32,
    addressless_next_vm: bool,
    corrupt_uploads: bool,
    /// The checksum headers of each upload, (type, hex) or none.
    upload_checksums: Vec<Option<(String, String)>>,
    uploads_dir: PathBuf,
    guest: Option<Arc<GuestBackend>>,
    /// For guest boots that finish after the request that started them.
    me: std::sync::Weak<Mutex<Inner>>,
    last_customization: Option<Value>,
    /// v4: the first answer to each `NTNX-Request-Id`, (status, body, ETag).
    replays: HashMap<String, (u16, Bytes)>,
    lose_answers: u32,
    etag_churn: u32,
    serve_v4: bool,
    fail_v4_task: Option<(String, String, String)>,
}

#[derive(Clone)]
pub struct FakeNutanix {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _dir: Arc<tempfile::TempDir>,
    https: bool,
    handshakes: Arc<AtomicUsize>,
}

fn v3_error(status: u16, kind: &str, message: &str, reason: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({
            "api_version": "3.1",
            "code": status,
            "kind": kind,
            "message_list": [{"message": message, "reason": reason}],
            "state": "ERROR",
        })),
    )
        .into_response()
}

fn not_found(kind: &str, uuid: &str) -> Response {
    v3_error(
        404,
        kind,
        &format!("{kind} : {uuid} does not exist."),
        "ENTITY_NOT_FOUND",
    )
}

fn new_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Inner {
    fn add_task(
        &mut self,
        operation: &str,
        kind: &str,
        uuid: &str,
        fail: Option<String>,
        effect: Effect,
    ) -> String {
        let t = new_uuid();
        self.tasks.insert(
            t.clone(),
            Task {
                uuid: t.clone(),
                operation: operation.into(),
                entity: (kind.into(), uuid.into()),
                created: Instant::now(),
                fail,
                fail_code: None,
                effect,
                done: false,
                hold: false,
            },
        );
        if let Some(e) = self.entities.get_mut(uuid) {
            e.tasks.push(t.clone());
        }
        t
    }

    /// Prism works on its own: tasks whose time has come end, with their effects.
    fn settle(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .tasks
            .values()
            .filter(|t| !t.done && !t.hold && now.duration_since(t.created) >= self.task_time)
            .map(|t| t.uuid.clone())
            .collect();
        for id in due {
            let t = self.tasks.get_mut(&id).unwrap();
            t.done = true;
            let (fail, effect) = (t.fail.clone(), t.effect.clone());
            match (fail, effect) {
                (Some(_), Effect::ImageUploaded { uuid, .. }) => {
                    if let Some(e) = self.entities.get_mut(&uuid) {
                        e.state = "ERROR";
                    }
                }
                (Some(_), Effect::VmCreated { uuid }) => {
                    if let Some(e) = self.entities.get_mut(&uuid) {
                        e.state = "ERROR";
                    }
                }
                (Some(_), _) => {}
                (None, Effect::ImageUploaded { uuid, .. }) => {
                    let lag = self.task_time;
                    if let Some(e) = self.entities.get_mut(&uuid) {
                        e.state = "COMPLETE";
                        if e.v4 {
                            // v4: "the task may complete before the image is
                            // fully usable" — sizeBytes comes later (packer
                            // driver.go CreateImageURL polls for it).
                            e.size_due = Some(now + lag);
                        } else {
                            // Prism reports the vDisk it made, not the file it got.
                            e.size_bytes = e.file.as_deref().and_then(disk_size);
                        }
                    }
                }
                (None, Effect::VmCreated { uuid }) => {
                    let mut wants_on = false;
                    if let Some(e) = self.entities.get_mut(&uuid) {
                        e.state = "COMPLETE";
                        wants_on = e
                            .spec
                            .pointer("/resources/power_state")
                            .and_then(Value::as_str)
                            == Some("ON");
                    }
                    if wants_on {
                        self.power_on(&uuid, now);
                    }
                }
                (None, Effect::PowerOn { uuid }) => self.power_on(&uuid, now),
                (None, Effect::PowerOff { uuid }) => {
                    if let Some(e) = self.entities.get_mut(&uuid) {
                        e.power_on = false;
                        e.ip = None;
                        e.powered_at = None;
                    }
                    if let Some(g) = self.guest.clone() {
                        tokio::spawn(async move { g.destroy(&uuid).await });
                    }
                }
                (None, Effect::Remove { uuid }) => {
                    if let Some(e) = self.entities.remove(&uuid) {
                        if let Some(f) = e.file {
                            let _ = std::fs::remove_file(f);
                        }
                        if e.kind == "vm" {
                            if let Some(g) = self.guest.clone() {
                                tokio::spawn(async move { g.destroy(&uuid).await });
                            }
                        }
                    }
                }
                (None, Effect::None) => {
                    let (_, uuid) = &self.tasks[&id].entity;
                    if let Some(e) = self.entities.get_mut(uuid) {
                        if e.state == "PENDING" {
                            e.state = "COMPLETE";
                        }
                    }
                }
            }
        }
        for e in self.entities.values_mut() {
            if e.size_due.is_some_and(|d| now >= d) {
                e.size_due = None;
                e.size_bytes = e.file.as_deref().and_then(disk_size);
            }
        }
        // Without a real guest, an address appears a while after power-on.
        if self.guest.is_none() {
            for e in self.entities.values_mut() {
                if e.kind == "vm"
                    && e.power_on
                    && e.ip.is_none()
                    && !e.addressless
                    && e.powered_at
                        .is_some_and(|p| now.duration_since(p) >= self.ip_after)
                {
                    e.ip = Some("127.0.0.1".into());
                }
            }
        }
    }

    /// The VM is on; with a guest backend its disk boots for real.
    fn power_on(&mut self, uuid: &str, now: Instant) {
        let Some(e) = self.entities.get_mut(uuid) else {
            return;
        };
        e.power_on = true;
        e.powered_at = Some(now);
        let vm = e.clone();
        if let Some(g) = self.guest.clone() {
            if !vm.addressless {
                let disk = vm
                    .spec
                    .pointer("/resources/disk_list/0/data_source_reference/uuid")
                    .and_then(Value::as_str)
                    .and_then(|img| self.entities.get(img))
                    .and_then(|img| img.file.clone());
                self.boot_guest(g, vm, disk);
            }
        }
    }

    fn boot_guest(&self, g: Arc<GuestBackend>, vm: Entity, disk: Option<PathBuf>) {
        let Some(disk) = disk else { return };
        use base64::Engine;
        let user_data = vm
            .spec
            .pointer("/resources/guest_customization/cloud_init/user_data")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let name = vm.spec["name"].as_str().unwrap_or("vm").to_string();
        let uuid = vm.uuid.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            g.boot(&uuid, &disk, user_data, name).await;
            if let Some(inner) = me.upgrade() {
                if let Some(e) = inner.lock().unwrap().entities.get_mut(&uuid) {
                    e.ip = Some("127.0.0.1".into());
                }
            }
        });
    }

    fn entity_json(&self, e: &Entity) -> Value {
        let mut resources = e.spec.get("resources").cloned().unwrap_or(json!({}));
        if e.kind == "image" {
            if let Some(n) = e.size_bytes {
                resources["size_bytes"] = json!(n);
                // Recorded GETs (OVHcloud docs): an uploaded image's source is
                // `file://<uuid>`, and Prism serves it back from `/file`.
                resources["retrieval_uri_list"] = json!([format!(
                    "https://127.0.0.1:9440/api/nutanix/v3/images/{}/file",
                    e.uuid
                )]);
                if resources.get("source_uri").is_none() {
                    resources["source_uri"] = json!(format!("file://{}", e.uuid));
                }
            }
        }
        if e.kind == "vm" {
            resources["power_state"] = json!(if e.power_on { "ON" } else { "OFF" });
            if let Some(nics) = resources.get_mut("nic_list").and_then(Value::as_array_mut) {
                for (i, nic) in nics.iter_mut().enumerate() {
                    let eps = match (&e.ip, i) {
                        (Some(ip), 0) => json!([{"type": "ASSIGNED", "ip": ip}]),
                        _ => json!([]),
                    };
                    nic["ip_endpoint_list"] = eps;
                }
            }
            // Customization is write-only: it is not echoed in status.
            if let Some(r) = resources.as_object_mut() {
                r.remove("guest_customization");
            }
        }
        let mut status = json!({
            "state": e.state,
            "name": e.spec["name"],
            "resources": resources,
            "execution_context": {"task_uuid": e.tasks},
        });
        if e.kind == "vm" {
            status["cluster_reference"] = json!({"kind": "cluster", "uuid": CLUSTER_UUID});
        }
        json!({
            "api_version": "3.1",
            "metadata": {"kind": e.kind, "uuid": e.uuid, "spec_version": e.spec_version, "categories": e.categories},
            "spec": e.spec,
            "status": status,
        })
    }
}

impl FakeNutanix {
    pub async fn start() -> FakeNutanix {
        Self::start_with(None).await
    }

    /// Serves HTTPS with this certificate and key (PEM), as Prism Central
    /// does on port 9440.
    pub async fn start_https(cert: &str, key: &str) -> FakeNutanix {
        Self::serve(None, Some(tls_acceptor(cert, key))).await
    }

    /// With a guest backend, powered-on VMs are real QEMU guests.
    pub async fn start_with(guest: Option<Arc<GuestBackend>>) -> FakeNutanix {
        Self::serve(guest, None).await
    }

    async fn serve(
        guest: Option<Arc<GuestBackend>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeNutanix {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let inner = Arc::new_cyclic(|me| {
            Mutex::new(Inner {
                entities: HashMap::new(),
                tasks: HashMap::new(),
                seen: Vec::new(),
                task_time: Duration::from_millis(300),
                ip_after: Duration::from_millis(300),
                fail_5xx: 0,
                drop_uploads: 0,
                fail_upload_task: None,
                fail_vm_task: None,
                conflict_deletes: 0,
                addressless_next_vm: false,
                corrupt_uploads: false,
                upload_checksums: Vec::new(),
                uploads_dir: dir.path().to_path_buf(),
                guest,
                me: me.clone(),
                last_customization: None,
                replays: HashMap::new(),
                lose_answers: 0,
                etag_churn: 0,
                serve_v4: true,
                fail_v4_task: None,
            })
        });
        let app = Router::new()
            .route("/api/nutanix/v3/{kind}/list", post(list))
            .route("/api/nutanix/v3/images", post(create_image))
            .route("/api/nutanix/v3/images/{uuid}/file", put(upload_file))
            .route("/api/nutanix/v3/vms", post(create_vm))
            .route("/api/nutanix/v3/tasks/{uuid}", get(get_task))
            .route(
                "/api/nutanix/v3/{kind}/{uuid}",
                get(get_entity).delete(delete_entity),
            )
            .merge(v4::routes())
            // An unserved path (or API version) answers the web server's own
            // 404, not a v4 body (packer issue #370, zerotouch-framework #25).
            .fallback(|| async { v4::not_served() })
            .layer(axum::middleware::from_fn_with_state(inner.clone(), gate))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let https = tls.is_some();
        match tls {
            Some(acceptor) => {
                tokio::spawn(serve_https(listener, app, acceptor, handshakes.clone()));
            }
            None => {
                tokio::spawn(async move {
                    axum::serve(listener, app).await.unwrap();
                });
            }
        }
        FakeNutanix {
            addr,
            inner,
            _dir: dir,
            https,
            handshakes,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// TLS handshakes begun (HTTPS only), accepted certificate or not.
    pub fn tls_handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn fail_next_requests(&self, n: u32) {
        self.inner.lock().unwrap().fail_5xx = n;
    }
    pub fn drop_next_uploads(&self, n: u32) {
        self.inner.lock().unwrap().drop_uploads = n;
    }
    pub fn fail_next_upload_task(&self, detail: &str) {
        self.inner.lock().unwrap().fail_upload_task = Some(detail.into());
    }
    pub fn fail_next_vm_task(&self, detail: &str) {
        self.inner.lock().unwrap().fail_vm_task = Some(detail.into());
    }
    pub fn conflict_next_deletes(&self, n: u32) {
        self.inner.lock().unwrap().conflict_deletes = n;
    }
    /// Flips a bit in the next upload as it arrives.
    pub fn corrupt_next_upload(&self) {
        self.inner.lock().unwrap().corrupt_uploads = true;
    }
    pub fn upload_checksums(&self) -> Vec<Option<(String, String)>> {
        self.inner.lock().unwrap().upload_checksums.clone()
    }
    /// What Prism reports as the named image's `size_bytes`.
    pub fn image_size_bytes(&self, name: &str) -> Option<u64> {
        let mut s = self.inner.lock().unwrap();
        s.settle();
        s.entities
            .values()
            .find(|e| e.kind == "image" && e.spec["name"] == name)
            .and_then(|e| e.size_bytes)
    }
    pub fn make_next_vm_addressless(&self) {
        self.inner.lock().unwrap().addressless_next_vm = true;
    }
    /// v4: the next `n` mutations are carried out but their answers are
    /// lost (a 504 instead), as a gateway timing out would.
    pub fn lose_next_answers(&self, n: u32) {
        self.inner.lock().unwrap().lose_answers = n;
    }
    /// v4: the next `n` reads of a VM return an ETag that a background
    /// update makes stale at once.
    pub fn churn_next_vm_etags(&self, n: u32) {
        self.inner.lock().unwrap().etag_churn = n;
    }
    /// A Prism Central without the v4 APIs (older than pc.2024.3).
    pub fn stop_serving_v4(&self) {
        self.inner.lock().unwrap().serve_v4 = false;
    }
    /// v4: the next task of `kind` ("image", "vm") fails with this AppMessage.
    pub fn fail_next_v4_task(&self, kind: &str, code: &str, message: &str) {
        self.inner.lock().unwrap().fail_v4_task = Some((kind.into(), code.into(), message.into()));
    }
    pub fn set_task_time(&self, d: Duration) {
        self.inner.lock().unwrap().task_time = d;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Requests matching a method and a path prefix.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(path_prefix))
            .count()
    }

    /// Entities (kind, name) that still exist.
    pub fn entities(&self) -> Vec<(String, String)> {
        let mut s = self.inner.lock().unwrap();
        s.settle();
        s.entities
            .values()
            .map(|e| {
                (
                    e.kind.to_string(),
                    e.spec["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The spec vmscan sent for the VM named `name`.
    pub fn vm_spec(&self, name: &str) -> Option<Value> {
        let s = self.inner.lock().unwrap();
        s.entities
            .values()
            .find(|e| e.kind == "vm" && e.spec["name"] == name)
            .map(|e| e.spec.clone())
    }

    /// The guest customization of the last VM created (kept after it is deleted).
    pub fn last_vm_customization(&self) -> Option<Value> {
        self.inner.lock().unwrap().last_customization.clone()
    }

    /// The bytes Prism holds for the image named `name`.
    pub fn image_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.inner.lock().unwrap();
        s.entities
            .values()
            .find(|e| e.kind == "image" && e.spec["name"] == name)
            .and_then(|e| e.file.as_ref())
            .and_then(|f| std::fs::read(f).ok())
    }
}

/// Auth, injected 5xx, settling and the request log, for every request.
async fn gate(
    State(inner): State<Arc<Mutex<Inner>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path()
        .trim_start_matches("/api/nutanix/v3")
        .to_string();
    let expected = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        )
    };
    let authorised = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    let early = {
        let mut s = inner.lock().unwrap();
        s.settle();
        if !authorised {
            // Prism's 401 body is not JSON.
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    "<html><body>401 Unauthorized: Authentication required</body></html>",
                )
                    .into_response(),
            )
        } else if s.fail_5xx > 0 {
            s.fail_5xx -= 1;
            let message = "Internal Server Error: service temporarily unavailable";
            Some(if req.uri().path().starts_with("/api/nutanix/v3") {
                v3_error(500, "", message, "INTERNAL_ERROR")
            } else {
                v4::server_error(message)
            })
        } else {
            None
        }
    };
    let (request_id, if_match) = {
        let header = |k: &str| {
            req.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header("ntnx-request-id"), header("if-match"))
    };
    let v4_path = !req.uri().path().starts_with("/api/nutanix/v3");
    let resp = match early {
        Some(r) => r,
        None if v4_path => v4::gate(&inner, req, next, request_id.clone()).await,
        None => next.run(req).await,
    };
    inner.lock().unwrap().seen.push(Seen {
        method,
        path,
        status: resp.status().as_u16(),
        request_id,
        if_match,
    });
    // Every recorded Prism Central answer carries these (prism-go-client
    // keploy recordings, TestOperations_GetPrismCentral.yaml).
    let mut resp = resp;
    let h = resp.headers_mut();
    h.insert("x-ntnx-env", axum::http::HeaderValue::from_static("pc"));
    h.insert(
        "x-ntnx-product",
        axum::http::HeaderValue::from_static("pc.2024.1.0.1"),
    );
    resp
}

fn accepted(s: &Inner, uuid: &str, task: &str) -> Response {
    let e = &s.entities[uuid];
    let mut body = s.entity_json(e);
    body["status"] = json!({"state": "PENDING", "execution_context": {"task_uuid": task}});
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn list(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(kind): Path<String>,
    body: Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let kind = kind.trim_end_matches('s').to_string();
    let filter = req.get("filter").and_then(Value::as_str).unwrap_or("");
    let name_is = filter
        .strip_prefix("name==")
        .or_else(|| filter.strip_prefix("vm_name=="))
        .map(str::to_string);
    let length = req
        .get("length")
        .and_then(Value::as_u64)
        .unwrap_or(20)
        .min(500) as usize;
    let offset = req.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let s = inner.lock().unwrap();
    let mut all: Vec<Value> = match kind.as_str() {
        "cluster" => vec![
            json!({"metadata": {"kind": "cluster", "uuid": PC_UUID}, "spec": {"name": "prism-central"}, "status": {"name": "prism-central", "resources": {"config": {"service_list": ["PRISM_CENTRAL"]}}}}),
            json!({"metadata": {"kind": "cluster", "uuid": CLUSTER_UUID}, "spec": {"name": CLUSTER}, "status": {"name": CLUSTER, "resources": {"config": {"service_list": ["AOS"]}}}}),
        ],
        "subnet" => vec![
            json!({"metadata": {"kind": "subnet", "uuid": SUBNET_UUID}, "spec": {"name": SUBNET}, "status": {"name": SUBNET, "cluster_reference": {"kind": "cluster", "uuid": CLUSTER_UUID}, "resources": {"vlan_id": 0, "subnet_type": "VLAN"}}}),
        ],
        "vm" | "image" => {
            let mut v: Vec<&Entity> = s.entities.values().filter(|e| e.kind == kind).collect();
            v.sort_by(|a, b| a.uuid.cmp(&b.uuid));
            // A recorded `vms/list` (terraform-provider-nutanix out.txt) names
            // the entity's tasks `task_uuids`; single GETs say `task_uuid`.
            v.into_iter()
                .map(|e| {
                    let mut j = s.entity_json(e);
                    let ec = &mut j["status"]["execution_context"];
                    ec["task_uuids"] = ec["task_uuid"].take();
                    if let Some(o) = ec.as_object_mut() {
                        o.remove("task_uuid");
                    }
                    j
                })
                .collect()
        }
        _ => {
            return v3_error(
                400,
                &kind,
                &format!("unknown kind {kind}"),
                "INVALID_REQUEST",
            )
        }
    };
    if let Some(n) = name_is {
        // Prism's FIQL `==` is a regular-expression match, not equality.
        let re = regex::Regex::new(&n).ok();
        all.retain(|e| {
            let name = e
                .pointer("/spec/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            re.as_ref().map(|r| r.is_match(name)).unwrap_or(name == n)
        });
    }
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(offset).take(length).collect();
    Json(json!({
        "api_version": "3.1",
        "metadata": {"kind": kind, "offset": offset, "length": page.len(), "total_matches": total},
        "entities": page,
    }))
    .into_response()
}

fn new_entity(kind: &'static str, spec: Value, categories: Value) -> Entity {
    Entity {
        kind,
        uuid: new_uuid(),
        spec,
        categories,
        state: "PENDING",
        tasks: Vec::new(),
        spec_version: 0,
        size_bytes: None,
        file: None,
        power_on: false,
        ip: None,
        addressless: false,
        powered_at: None,
        v4: false,
        size_due: None,
        etag_salt: 0,
    }
}

async fn create_image(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return v3_error(
            400,
            "image",
            "the request body is not JSON",
            "INVALID_REQUEST",
        );
    };
    let spec = req.get("spec").cloned().unwrap_or(Value::Null);
    if spec
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return v3_error(
            422,
            "image",
            "spec.name: Missing required field",
            "INVALID_REQUEST",
        );
    }
    let image_type = spec
        .pointer("/resources/image_type")
        .and_then(Value::as_str);
    if !matches!(image_type, Some("DISK_IMAGE") | Some("ISO_IMAGE")) {
        return v3_error(
            422,
            "image",
            "spec.resources.image_type must be DISK_IMAGE or ISO_IMAGE",
            "INVALID_REQUEST",
        );
    }
    let categories = req
        .pointer("/metadata/categories")
        .cloned()
        .unwrap_or(json!({}));
    let source = spec
        .pointer("/resources/source_uri")
        .and_then(Value::as_str)
        .map(str::to_string);
    let expected = spec.pointer("/resources/checksum").map(|c| {
        let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        (f("checksum_algorithm"), f("checksum_value"))
    });
    let mut s = inner.lock().unwrap();
    let e = new_entity("image", spec, categories);
    let uuid = e.uuid.clone();
    s.entities.insert(uuid.clone(), e);
    let Some(source) = source else {
        let t = s.add_task("create_image_intentful", "image", &uuid, None, Effect::None);
        return accepted(&s, &uuid, &t);
    };
    let t = pull_source(&mut s, &uuid, source, expected, "create_image_intentful");
    accepted(&s, &uuid, &t)
}

/// Prism downloads an image's source within its create task (held until
/// the download ends), checks it against the checksum given (v3
/// ImageResources.checksum: "used to validate the image when a source is
/// given"; terraform issue #469: honoured for source_uri) and fails the
/// task on a mismatch or an unreachable URL.
fn pull_source(
    s: &mut Inner,
    uuid: &str,
    source: String,
    expected: Option<(String, String)>,
    operation: &str,
) -> String {
    let uuid = uuid.to_string();
    let effect = Effect::ImageUploaded { uuid: uuid.clone() };
    let t = s.add_task(operation, "image", &uuid, None, effect);
    s.tasks.get_mut(&t).unwrap().hold = true;
    let file = s.uploads_dir.join(&uuid);
    let (me, task, image) = (s.me.clone(), t.clone(), uuid.clone());
    tokio::spawn(async move {
        let algo = expected
            .as_ref()
            .map(|(a, _)| a.clone())
            .unwrap_or_default();
        let result = download(&source, &file, &algo).await;
        let Some(inner) = me.upgrade() else { return };
        let mut s = inner.lock().unwrap();
        let task_time = s.task_time;
        let t = s.tasks.get_mut(&task).unwrap();
        t.hold = false;
        t.created = Instant::now() - task_time;
        match result {
            // A source_uri download is checked against spec.resources.checksum
            // (v3 ImageResources: "used to validate the image when a source is given").
            Ok(got)
                if expected
                    .as_ref()
                    .is_some_and(|(_, want)| !want.eq_ignore_ascii_case(&got)) =>
            {
                let want = &expected.as_ref().unwrap().1;
                t.fail = Some(format!(
                    "Image checksum mismatch: expected {want}, computed {got}"
                ));
            }
            Ok(_) => {
                t.effect = Effect::ImageUploaded {
                    uuid: image.clone(),
                };
                if let Some(e) = s.entities.get_mut(&image) {
                    e.file = Some(file);
                }
            }
            Err(why) => t.fail = Some(format!("Could not access the URL {source}: {why}")),
        }
    });
    t
}

/// How Prism fetches a `source_uri`: a plain GET, the body to a file;
/// answers the hex digest of `algo` (SHA_256 / SHA_1) over the bytes.
async fn download(url: &str, to: &std::path::Path, algo: &str) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let resp = reqwest::get(url).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut f = tokio::fs::File::create(to)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = resp.bytes_stream();
    let mut hash = Hasher::new(algo);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        f.write_all(&chunk).await.map_err(|e| e.to_string())?;
        hash.update(&chunk);
    }
    f.flush().await.map_err(|e| e.to_string())?;
    Ok(hash.hex())
}

/// The digests Prism knows (`SHA_1`, `SHA_256`), fed while bytes arrive.
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(algo: &str) -> Hasher {
        use digest::Digest;
        match algo {
            "SHA_1" => Hasher::Sha1(sha1::Sha1::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        use digest::Digest;
        match self {
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        use digest::Digest;
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// The size of the disk Prism makes of an image file: a qcow2 header's
/// virtual size (bytes 24..32, big-endian), else the file's length. Real
/// Prism reports a ~600 MB Ubuntu cloud qcow2 as `size_bytes` 2361393152,
/// its virtual size (recorded GETs in the OVHcloud docs).
fn disk_size(path: &std::path::Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if f.read_exact(&mut head).is_ok() && head.starts_with(b"QFI\xfb") {
        return Some(u64::from_be_bytes(head[24..32].try_into().ok()?));
    }
    Some(len)
}

async fn upload_file(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (path, drop_it) = {
        let mut s = inner.lock().unwrap();
        match s.entities.get(&uuid) {
            None => return not_found("image", &uuid),
            Some(e) if e.state != "COMPLETE" => {
                return v3_error(
                    409,
                    "image",
                    &format!("image {uuid} is in state {}: wait for its task", e.state),
                    "INVALID_STATE",
                )
            }
            Some(_) => {}
        }
        if headers.get("content-type").and_then(|v| v.to_str().ok())
            != Some("application/octet-stream")
        {
            return v3_error(
                415,
                "image",
                "Content-Type must be application/octet-stream",
                "INVALID_REQUEST",
            );
        }
        let d = s.drop_uploads > 0;
        if d {
            s.drop_uploads -= 1;
        }
        (s.uploads_dir.join(&uuid), d)
    };
    // terraform-provider-nutanix UploadImage sends the spec's checksum as
    // these headers (type SHA_1/SHA_256, value hex); Prism checks the bytes
    // and fails the upload task on a mismatch (terraform PR #481).
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let claimed = match (
        header("x-nutanix-checksum-type"),
        header("x-nutanix-checksum-bytes"),
    ) {
        (None, None) => None,
        (Some(t), Some(v)) if matches!(t.as_str(), "SHA_1" | "SHA_256") => Some((t, v)),
        (t, v) => {
            return v3_error(
                400,
                "image",
                &format!("invalid checksum headers: type {t:?}, bytes {v:?}"),
                "INVALID_REQUEST",
            )
        }
    };
    let corrupt = std::mem::take(&mut inner.lock().unwrap().corrupt_uploads);
    let mut hash = Hasher::new(claimed.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""));
    let mut file = tokio::fs::File::create(&path).await.unwrap();
    let mut stream = body.into_data_stream();
    let mut n: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return v3_error(400, "image", "upload interrupted", "INVALID_REQUEST");
        };
        use tokio::io::AsyncWriteExt;
        let mut chunk = chunk.to_vec();
        if corrupt && n == 0 && !chunk.is_empty() {
            // A bit flipped on the way: what the checksum is for.
            chunk[0] ^= 1;
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.unwrap();
        n += chunk.len() as u64;
        if drop_it {
            // Logged here: the panic skips the request log (status 0: dropped).
            inner.lock().unwrap().seen.push(Seen {
                method: "PUT".into(),
                path: format!("/images/{uuid}/file"),
                status: 0,
                request_id: None,
                if_match: None,
            });
            // Abort mid-body: the client sees the connection dropped.
            std::panic::resume_unwind(Box::new("fake prism drops the upload"));
        }
    }
    let got = hash.hex();
    let mut s = inner.lock().unwrap();
    s.upload_checksums.push(claimed.clone());
    let mut fail = s.fail_upload_task.take();
    if let Some((t, want)) = claimed.filter(|(_, want)| !want.eq_ignore_ascii_case(&got)) {
        fail = Some(format!(
            "Image checksum mismatch: {t} given {want}, computed {got}"
        ));
    }
    if let Some(e) = s.entities.get_mut(&uuid) {
        e.file = Some(path);
        e.state = "PENDING";
    }
    s.add_task(
        "upload_image_file",
        "image",
        &uuid,
        fail,
        Effect::ImageUploaded { uuid: uuid.clone() },
    );
    (StatusCode::ACCEPTED, "").into_response()
}

async fn create_vm(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return v3_error(400, "vm", "the request body is not JSON", "INVALID_REQUEST");
    };
    let spec = req.get("spec").cloned().unwrap_or(Value::Null);
    let mut s = inner.lock().unwrap();
    let bad = |m: &str| v3_error(422, "vm", m, "INVALID_REQUEST");
    if spec
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad("spec.name: Missing required field");
    }
    if spec
        .pointer("/cluster_reference/uuid")
        .and_then(Value::as_str)
        != Some(CLUSTER_UUID)
    {
        return bad("spec.cluster_reference: no such Prism Element cluster");
    }
    let image = spec
        .pointer("/resources/disk_list/0/data_source_reference/uuid")
        .and_then(Value::as_str);
    match image.and_then(|i| s.entities.get(i)) {
        Some(img) if img.kind == "image" && img.state == "COMPLETE" => {}
        _ => return bad("spec.resources.disk_list[0].data_source_reference: image does not exist or is not ready"),
    }
    if spec
        .pointer("/resources/nic_list/0/subnet_reference/uuid")
        .and_then(Value::as_str)
        != Some(SUBNET_UUID)
    {
        return bad("spec.resources.nic_list[0].subnet_reference: no such subnet");
    }
    if let Some(gc) = spec.pointer("/resources/guest_customization") {
        if gc.get("cloud_init").is_some() && gc.get("sysprep").is_some() {
            return bad("guest_customization: only one of cloud_init and sysprep");
        }
        use base64::Engine;
        let b64 = gc
            .pointer("/cloud_init/user_data")
            .or_else(|| gc.pointer("/sysprep/unattend_xml"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if base64::engine::general_purpose::STANDARD
            .decode(b64)
            .is_err()
        {
            return bad("guest_customization: user_data must be base64");
        }
    }
    let categories = req
        .pointer("/metadata/categories")
        .cloned()
        .unwrap_or(json!({}));
    s.last_customization = spec.pointer("/resources/guest_customization").cloned();
    let mut e = new_entity("vm", spec, categories);
    e.addressless = std::mem::take(&mut s.addressless_next_vm);
    let uuid = e.uuid.clone();
    s.entities.insert(uuid.clone(), e);
    let fail = s.fail_vm_task.take();
    let t = s.add_task(
        "create_vm_intentful",
        "vm",
        &uuid,
        fail,
        Effect::VmCreated { uuid: uuid.clone() },
    );
    accepted(&s, &uuid, &t)
}

async fn get_task(State(inner): State<Arc<Mutex<Inner>>>, Path(uuid): Path<String>) -> Response {
    let s = inner.lock().unwrap();
    let Some(t) = s.tasks.get(&uuid) else {
        return v3_error(
            404,
            "task",
            &format!("task : {uuid} does not exist."),
            "ENTITY_NOT_FOUND",
        );
    };
    let (status, pct) = t.status(s.task_time);
    let mut body = json!({
        "status": status,
        "uuid": t.uuid,
        "operation_type": t.operation,
        "progress_message": t.operation,
        "percentage_complete": pct,
        "entity_reference_list": [{"kind": t.entity.0, "uuid": t.entity.1}],
        "cluster_reference": {"kind": "cluster", "uuid": CLUSTER_UUID},
        "subtask_reference_list": [],
        "api_version": "3.1",
    });
    if let (Some(detail), true) = (&t.fail, t.done) {
        body["error_detail"] = json!(detail);
        body["error_code"] = json!(1);
    }
    Json(body).into_response()
}

fn kind_of(path_kind: &str) -> Option<&'static str> {
    match path_kind {
        "vms" => Some("vm"),
        "images" => Some("image"),
        _ => None,
    }
}

async fn get_entity(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((kind, uuid)): Path<(String, String)>,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return v3_error(404, &kind, "unknown resource", "ENTITY_NOT_FOUND");
    };
    let s = inner.lock().unwrap();
    match s.entities.get(&uuid) {
        Some(e) if e.kind == kind => Json(s.entity_json(e)).into_response(),
        _ => not_found(kind, &uuid),
    }
}

async fn delete_entity(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((kind, uuid)): Path<(String, String)>,
) -> Response {
    let Some(kind) = kind_of(&kind) else {
        return v3_error(404, &kind, "unknown resource", "ENTITY_NOT_FOUND");
    };
    let mut s = inner.lock().unwrap();
    match s.entities.get(&uuid) {
        Some(e) if e.kind == kind => {}
        _ => return not_found(kind, &uuid),
    }
    if s.conflict_deletes > 0 {
        s.conflict_deletes -= 1;
        return v3_error(
            409,
            kind,
            &format!("{kind} {uuid} is being modified by another operation; try again"),
            "CONCURRENT_REQUESTS_NOT_ALLOWED",
        );
    }
    let already = s.entities[&uuid].state == "DELETE_PENDING";
    let t = if already {
        s.entities[&uuid].tasks.last().cloned().unwrap_or_default()
    } else {
        s.add_task(
            &format!("delete_{kind}_intentful"),
            kind,
            &uuid,
            None,
            Effect::Remove { uuid: uuid.clone() },
        )
    };
    let e = s.entities.get_mut(&uuid).unwrap();
    e.state = "DELETE_PENDING";
    let categories = e.categories.clone();
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "status": {"state": "DELETE_PENDING", "execution_context": {"task_uuid": t}},
            "spec": "",
            "api_version": "3.1",
            "metadata": {"kind": kind, "categories": categories},
        })),
    )
        .into_response()
}
