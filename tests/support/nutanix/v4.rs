//! The fake Prism Central's v4 routes, over the same entities and tasks as
//! its v3 routes (an image made through one is seen through the other).
//! Sources, cited per behaviour below: ../shared/reference/nutanix-v4.md
//! (§ numbers), which quotes the v4.0 spec (via the Ruby SDK generated from
//! it), the Go SDKs' models, packer-plugin-nutanix, CAPX, terraform and
//! prism-go-client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{
    new_entity, pull_source, Effect, Entity, Inner, CLUSTER, CLUSTER_UUID, PC_UUID, SUBNET,
    SUBNET_UUID,
};

type St = State<Arc<Mutex<Inner>>>;

/// The category the fake knows (`key: value`), with its extId.
pub const CATEGORY: (&str, &str) = ("VmscanOwner", "vmscan-ci");
const CATEGORY_ID: &str = "5b8e0a6c-2f0e-4a43-9a4f-6d1c3c1f0c11";
/// Task extIds are `ZXJnb24=:<uuid>` (base64 "ergon", the task service) (§0.4).
const TASK_PREFIX: &str = "ZXJnb24=:";

pub(super) fn routes() -> Router<Arc<Mutex<Inner>>> {
    Router::new()
        .route("/api/clustermgmt/v4.0/config/clusters", get(clusters))
        .route("/api/networking/v4.0/config/subnets", get(subnets))
        .route("/api/prism/v4.0/config/categories", get(categories))
        .route("/api/prism/v4.0/config/tasks/{id}", get(task))
        .route(
            "/api/vmm/v4.0/content/images",
            get(list_images).post(create_image),
        )
        .route(
            "/api/vmm/v4.0/content/images/{id}",
            get(get_image).delete(delete_image),
        )
        .route(
            "/api/vmm/v4.0/ahv/config/vms",
            get(list_vms).post(create_vm),
        )
        .route(
            "/api/vmm/v4.0/ahv/config/vms/{id}",
            get(get_vm).delete(delete_vm),
        )
        .route(
            "/api/vmm/v4.0/ahv/config/vms/{id}/{*action}",
            post(vm_action),
        )
}

/// A 404 for a path this Prism Central does not serve: the web server's
/// JSON, not a v4 envelope (packer issue #370).
pub(super) fn not_served() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again."})),
    )
        .into_response()
}

/// The v4 part of the gate: unserved v4, required `NTNX-Request-Id` on
/// mutations, answers replayed by request id, lost answers.
pub(super) async fn gate(
    inner: &Arc<Mutex<Inner>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
    request_id: Option<String>,
) -> Response {
    let mutation = req.method() != axum::http::Method::GET;
    {
        let s = inner.lock().unwrap();
        if !s.serve_v4 {
            return not_served();
        }
        if mutation {
            let Some(id) = &request_id else {
                // "Missing the required parameter 'ntnx_request_id'" (v4.0
                // spec via the Ruby SDK, §0.2); the status code is [U].
                return error(
                    400,
                    "vmm",
                    "VMM-10001",
                    "NTNX-Request-Id header is required",
                    "VALIDATION_ERROR",
                );
            };
            // "also used as an idempotence token for safely retrying
            // requests in case of network errors" (spec text, §0.2): a
            // replayed id is answered with the first answer, never done
            // twice (CAPX PR #478 keeps a stable id for this).
            if let Some((status, body)) = s.replays.get(id) {
                return (StatusCode::from_u16(*status).unwrap(), body.clone()).into_response();
            }
        }
    }
    let resp = next.run(req).await;
    if !mutation {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut s = inner.lock().unwrap();
    if parts.status.is_success() {
        s.replays.insert(
            request_id.clone().unwrap_or_default(),
            (parts.status.as_u16(), bytes.clone()),
        );
        if s.lose_answers > 0 {
            s.lose_answers -= 1;
            // Done, but the answer is lost: the Go SDK retries 503/504 even
            // for POSTs because the same request id is replayed (§0.9).
            return (StatusCode::GATEWAY_TIMEOUT, "upstream timed out").into_response();
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// The v4 error envelope: `data` is an ErrorResponse holding a list of
/// AppMessage (§0.7, the recorded CAPX 404 body).
fn error(status: u16, ns: &str, code: &str, message: &str, group: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({
            "$objectType": format!("{ns}.v4.config.ApiResponse"),
            "$reserved": {"$fv": "v4.r0"},
            "data": {
                "$objectType": format!("{ns}.v4.error.ErrorResponse"),
                "$reserved": {"$fv": "v4.r0"},
                "error": [app_message(ns, code, message, group)],
            },
        })),
    )
        .into_response()
}

/// A 5xx in the v4 envelope (§0.5: errors carry the same ErrorResponse).
pub(super) fn server_error(message: &str) -> Response {
    error(500, "prism", "PRISM-50000", message, "INTERNAL_ERROR")
}

fn app_message(ns: &str, code: &str, message: &str, group: &str) -> Value {
    let mut m = json!({
        "$objectType": format!("{ns}.v4.error.AppMessage"),
        "$reserved": {"$fv": "v4.r0"},
        "code": code, "message": message, "severity": "ERROR", "locale": "en_US",
    });
    if !group.is_empty() {
        m["errorGroup"] = json!(group);
    }
    m
}

/// The recorded 404 of a missing entity (CAPX test, §0.7).
fn missing() -> Response {
    error(
        404,
        "vmm",
        "VMM-20005",
        "Failed to perform the operation as the backend service could not find the entity.",
        "ENTITY_NOT_FOUND",
    )
}

fn bad(message: &str) -> Response {
    error(400, "vmm", "VMM-10002", message, "VALIDATION_ERROR")
}

/// `{"$objectType": "...ApiResponse", "data": …, "metadata": …}` (§0.4).
fn envelope(object_type: &str, data: Value, metadata: Value) -> Value {
    json!({
        "$objectType": object_type,
        "$reserved": {"$fv": "v4.r0"},
        "data": data,
        "metadata": metadata,
    })
}

/// 202 with a `prism.v4.config.TaskReference` (§0.4 recorded body).
fn task_accepted(object_type: &str, task: &str) -> Response {
    let id = format!("{TASK_PREFIX}{task}");
    (
        StatusCode::ACCEPTED,
        Json(envelope(
            object_type,
            json!({"$objectType": "prism.v4.config.TaskReference", "$reserved": {"$fv": "v4.r0"}, "extId": id}),
            json!({"$objectType": "common.v1.response.ApiResponseMetadata",
                   "flags": [{"name": "hasError", "value": false}, {"name": "isPaginated", "value": false}],
                   "links": [{"href": format!("/api/prism/v4.0/config/tasks/{id}"), "rel": "self"}]}),
        )),
    )
        .into_response()
}

/// One entity with its `ETag` header, opaque and changing whenever what
/// it shows (or a background update) changes (§0.3).
fn single(object_type: &str, data: Value, etag: String) -> Response {
    let mut resp = Json(envelope(
        object_type,
        data,
        json!({"$objectType": "common.v1.response.ApiResponseMetadata"}),
    ))
    .into_response();
    resp.headers_mut()
        .insert("ETag", axum::http::HeaderValue::from_str(&etag).unwrap());
    resp
}

fn etag_of(e: &Entity, shown: &Value) -> String {
    use base64::Engine;
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{shown}:{}", e.etag_salt).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&h[..12])
}

/// A list page: `$page` 0-based, `$limit` 1..=100 (default 50),
/// `metadata.totalAvailableResults` (§0.8); `$filter` in OData.
fn page(object_type: &str, items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    let items = match q.get("$filter") {
        Some(f) => match filter(f) {
            Some(keep) => items.into_iter().filter(|i| keep(i)).collect(),
            None => return bad(&format!("unsupported $filter: {f}")),
        },
        None => items,
    };
    let limit: usize = match q.get("$limit").map(|l| l.parse()) {
        None => 50,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return bad("$limit must be between 1 and 100"),
    };
    let page: usize = q.get("$page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let total = items.len();
    let data: Vec<Value> = items.into_iter().skip(page * limit).take(limit).collect();
    Json(envelope(
        object_type,
        json!(data),
        json!({"$objectType": "common.v1.response.ApiResponseMetadata", "totalAvailableResults": total,
               "flags": [{"name": "hasError", "value": false}, {"name": "isPaginated", "value": true}]}),
    ))
    .into_response()
}

type Keep = Box<dyn Fn(&Value) -> bool>;

/// The OData the clients send (§0.8): `f eq 'v'` clauses joined by `and`,
/// and `startswith(f, 'v')`. Anything else is refused, so a client that
/// sends more than the fake knows fails here rather than passing.
fn filter(f: &str) -> Option<Keep> {
    let eq = regex::Regex::new(r"^(\w+) eq '((?:[^']|'')*)'$").unwrap();
    let sw = regex::Regex::new(r"^startswith\((\w+), ?'((?:[^']|'')*)'\)$").unwrap();
    let mut clauses: Vec<(String, String, bool)> = Vec::new();
    for c in f.split(" and ") {
        let c = c.trim();
        let (cap, prefix) = match (eq.captures(c), sw.captures(c)) {
            (Some(cap), _) => (cap, false),
            (None, Some(cap)) => (cap, true),
            _ => return None,
        };
        clauses.push((cap[1].to_string(), cap[2].replace("''", "'"), prefix));
    }
    Some(Box::new(move |item: &Value| {
        clauses.iter().all(|(field, want, prefix)| {
            let got = item.get(field).and_then(Value::as_str).unwrap_or("");
            if *prefix {
                got.starts_with(want.as_str())
            } else {
                got == want
            }
        })
    }))
}

/// The cluster list includes Prism Central itself (§2; packer `isPECluster`).
async fn clusters(Query(q): Query<HashMap<String, String>>) -> Response {
    let items = vec![
        json!({"$objectType": "clustermgmt.v4.config.Cluster", "extId": PC_UUID, "name": "prism-central",
               "config": {"clusterFunction": ["PRISM_CENTRAL"], "buildInfo": {"version": "pc.2024.3.1"}}}),
        json!({"$objectType": "clustermgmt.v4.config.Cluster", "extId": CLUSTER_UUID, "name": CLUSTER,
               "config": {"clusterFunction": ["AOS"], "buildInfo": {"version": "7.0"}}}),
    ];
    page("clustermgmt.v4.config.ListClustersApiResponse", items, &q)
}

/// A VLAN subnet names its cluster as a plain string (§2 example).
async fn subnets(Query(q): Query<HashMap<String, String>>) -> Response {
    let items = vec![
        json!({"$objectType": "networking.v4.config.Subnet", "extId": SUBNET_UUID,
        "name": SUBNET, "subnetType": "VLAN", "clusterReference": CLUSTER_UUID, "networkId": 0}),
    ];
    page("networking.v4.config.ListSubnetsApiResponse", items, &q)
}

/// Categories are key/value entities with an extId (§6).
async fn categories(Query(q): Query<HashMap<String, String>>) -> Response {
    let items = vec![
        json!({"$objectType": "prism.v4.config.Category", "extId": CATEGORY_ID,
        "key": CATEGORY.0, "value": CATEGORY.1, "type": "USER"}),
    ];
    page("prism.v4.config.ListCategoriesApiResponse", items, &q)
}

/// v3 stores categories as `{key: value}`; v4 names them by extId.
fn category_ids(categories: &Value) -> Vec<Value> {
    let ours = categories.get(CATEGORY.0).and_then(Value::as_str) == Some(CATEGORY.1);
    if ours {
        vec![json!(CATEGORY_ID)]
    } else {
        vec![]
    }
}

fn categories_of(ids: &[Value]) -> Result<Value, String> {
    let mut map = serde_json::Map::new();
    for id in ids {
        if id.as_str() != Some(CATEGORY_ID) {
            return Err(format!("category {id} does not exist"));
        }
        map.insert(CATEGORY.0.into(), json!(CATEGORY.1));
    }
    Ok(Value::Object(map))
}

/// GET task: either `ZXJnb24=:<uuid>` raw or percent-encoded (§0.1: bash
/// clients encode it; axum has decoded the path already). Status from the
/// task's own clock, QUEUED → RUNNING → SUCCEEDED/FAILED (§4).
async fn task(State(inner): St, Path(id): Path<String>) -> Response {
    let s = inner.lock().unwrap();
    let uuid = id.strip_prefix(TASK_PREFIX).unwrap_or(&id);
    let Some(t) = s.tasks.get(uuid) else {
        return error(
            404,
            "prism",
            "PRISM-10001",
            &format!("Task {id} not found"),
            "ENTITY_NOT_FOUND",
        );
    };
    let (status, pct) = t.status(s.task_time);
    let (kind, entity) = &t.entity;
    let rel = match kind.as_str() {
        "vm" => "vmm:ahv:config:vm",
        _ => "vmm:content:image",
    };
    let name = s
        .entities
        .get(entity)
        .and_then(|e| e.spec["name"].as_str())
        .unwrap_or("");
    let mut affected = vec![
        json!({"$objectType": "prism.v4.config.EntityReference", "extId": entity, "rel": rel, "name": name}),
    ];
    if kind == "vm" {
        // "On VM creation sometimes returns duplicates" (prism-go-client
        // structs.go): a sub-entity comes first, so only `rel` finds the VM.
        affected.insert(
            0,
            json!({"$objectType": "prism.v4.config.EntityReference", "extId": super::new_uuid(), "rel": "vmm:ahv:config:vm:disk"}),
        );
    }
    let mut data = json!({
        "$objectType": "prism.v4.config.Task",
        "extId": format!("{TASK_PREFIX}{uuid}"),
        "operation": t.operation,
        "status": status,
        "progressPercentage": pct,
        "entitiesAffected": affected,
        "isCancelable": false,
        "ownedBy": {"extId": "00000000-0000-0000-0000-000000000000", "name": "admin"},
    });
    if let (Some(detail), true) = (&t.fail, t.done) {
        // errorMessages (AppMessage) and legacyErrorMessage may carry the
        // same text (§4, CAPX PR #783).
        let (code, group) = t
            .fail_code
            .clone()
            .unwrap_or_else(|| ("VMM-30000".into(), String::new()));
        data["errorMessages"] = json!([app_message("prism", &code, detail, &group)]);
        data["legacyErrorMessage"] = json!(detail);
    }
    Json(envelope(
        "prism.v4.config.GetTaskApiResponse",
        data,
        json!({}),
    ))
    .into_response()
}

/// The hook's AppMessage for the next task of `kind`, if armed.
fn take_failure(s: &mut Inner, kind: &str) -> Option<(String, String)> {
    match &s.fail_v4_task {
        Some((k, _, _)) if k == kind => s.fail_v4_task.take().map(|(_, c, m)| (c, m)),
        _ => None,
    }
}

fn fail_task(s: &mut Inner, task: &str, failure: Option<(String, String)>) {
    if let (Some((code, message)), Some(t)) = (failure, s.tasks.get_mut(task)) {
        t.fail = Some(message);
        t.fail_code = Some((code, "VALIDATION_ERROR".into()));
    }
}

/// `vmm.v4.content.Image` from the shared entity. `sizeBytes` only once
/// the image is usable (§3.1, packer); `source` is not echoed ("V4 API may
/// not return Source for downloaded images", packer driver.go).
fn image_json(e: &Entity) -> Value {
    let r = &e.spec["resources"];
    let mut v = json!({
        "$objectType": "vmm.v4.content.Image",
        "$reserved": {"$fv": "v4.r0"},
        "extId": e.uuid,
        "name": e.spec["name"],
        "description": e.spec.get("description").cloned().unwrap_or(json!("")),
        "type": r.get("image_type").cloned().unwrap_or(json!("DISK_IMAGE")),
        // The fake has one Prism Element cluster: every image is placed there.
        "clusterLocationExtIds": [CLUSTER_UUID],
        "categoryExtIds": category_ids(&e.categories),
    });
    if let Some(n) = e.size_bytes {
        v["sizeBytes"] = json!(n);
    }
    if let Some(c) = r.get("checksum") {
        let object_type = match c["checksum_algorithm"].as_str() {
            Some("SHA_1") => "vmm.v4.content.ImageSha1Checksum",
            _ => "vmm.v4.content.ImageSha256Checksum",
        };
        v["checksum"] = json!({"$objectType": object_type, "hexDigest": c["checksum_value"]});
    }
    v
}

/// Entities of `kind`, oldest first (uuid v7 sorts by time).
fn all_of<'a>(s: &'a Inner, kind: &str) -> Vec<&'a Entity> {
    let mut v: Vec<&Entity> = s.entities.values().filter(|e| e.kind == kind).collect();
    v.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    v
}

async fn list_images(State(inner): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = inner.lock().unwrap();
    let items = all_of(&s, "image").into_iter().map(image_json).collect();
    page("vmm.v4.content.ListImagesApiResponse", items, &q)
}

async fn get_image(State(inner): St, Path(id): Path<String>) -> Response {
    let s = inner.lock().unwrap();
    match s.entities.get(&id) {
        Some(e) if e.kind == "image" => {
            let v = image_json(e);
            let tag = etag_of(e, &v);
            single("vmm.v4.content.GetImageApiResponse", v, tag)
        }
        _ => missing(),
    }
}

/// `POST content/images`: "The name, type and source are mandatory" (SDK
/// doc, §3.1); the source is a oneOf told by `$objectType`; Prism fetches
/// a UrlSource itself within the task and checks the checksum (as for a
/// v3 source_uri); placement on `clusterLocationExtIds`.
async fn create_image(State(inner): St, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("the request body is not JSON");
    };
    let name = req.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        return bad("name: must not be null");
    }
    let kind = req.get("type").and_then(Value::as_str);
    if !matches!(kind, Some("DISK_IMAGE" | "ISO_IMAGE")) {
        return bad("type: must be DISK_IMAGE or ISO_IMAGE");
    }
    let src = &req["source"];
    if src["$objectType"] != "vmm.v4.content.UrlSource" {
        return bad("source: only vmm.v4.content.UrlSource is served by this Prism Central");
    }
    let Some(url) = src.get("url").and_then(Value::as_str) else {
        return bad("source.url: must not be null");
    };
    let expected = match req.get("checksum") {
        None => None,
        Some(c) => {
            let algo = match c["$objectType"].as_str() {
                Some("vmm.v4.content.ImageSha256Checksum") => "SHA_256",
                Some("vmm.v4.content.ImageSha1Checksum") => "SHA_1",
                _ => return bad("checksum: unknown $objectType"),
            };
            let hex = c["hexDigest"].as_str().unwrap_or("");
            Some((algo.to_string(), hex.to_string()))
        }
    };
    let clusters = req["clusterLocationExtIds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if clusters.iter().any(|c| c.as_str() != Some(CLUSTER_UUID)) {
        return bad("clusterLocationExtIds: no such cluster");
    }
    let ids = req["categoryExtIds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let categories = match categories_of(&ids) {
        Ok(c) => c,
        Err(m) => return bad(&m),
    };
    let mut resources = json!({"image_type": kind, "source_uri": url});
    if let Some((algo, hex)) = &expected {
        resources["checksum"] = json!({"checksum_algorithm": algo, "checksum_value": hex});
    }
    let spec = json!({"name": name, "description": req["description"], "resources": resources});
    let mut s = inner.lock().unwrap();
    let mut e = new_entity("image", spec, categories);
    e.v4 = true;
    let uuid = e.uuid.clone();
    s.entities.insert(uuid.clone(), e);
    let t = pull_source(&mut s, &uuid, url.to_string(), expected, "kImageCreate");
    let failure = take_failure(&mut s, "image");
    fail_task(&mut s, &t, failure);
    task_accepted("vmm.v4.content.CreateImageApiResponse", &t)
}

/// Image delete takes no If-Match (§0.6); 202 with the task.
async fn delete_image(State(inner): St, Path(id): Path<String>) -> Response {
    let mut s = inner.lock().unwrap();
    match s.entities.get(&id) {
        Some(e) if e.kind == "image" => {}
        _ => return missing(),
    }
    let t = s.add_task(
        "kImageDelete",
        "image",
        &id,
        None,
        Effect::Remove { uuid: id.clone() },
    );
    s.entities.get_mut(&id).unwrap().state = "DELETE_PENDING";
    task_accepted("vmm.v4.content.DeleteImageApiResponse", &t)
}

/// `vmm.v4.ahv.config.Vm` from the shared entity: addresses under the NIC's
/// `networkInfo.ipv4Info.learnedIpAddresses` (§5.3); customization is
/// write-only (not echoed, as in v3).
fn vm_json(e: &Entity) -> Value {
    let r = &e.spec["resources"];
    let learned: Vec<Value> =
        e.ip.iter()
            .map(|ip| json!({"value": ip, "prefixLength": 32}))
            .collect();
    let nics: Vec<Value> = r["nic_list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut info = json!({"nicType": "NORMAL_NIC", "vlanMode": "ACCESS",
                "subnet": {"extId": n["subnet_reference"]["uuid"]}});
            if i == 0 && !learned.is_empty() {
                info["ipv4Info"] = json!({"learnedIpAddresses": learned});
            }
            json!({"$objectType": "vmm.v4.ahv.config.Nic", "extId": format!("{}-nic{i}", e.uuid),
                   "backingInfo": {"model": "VIRTIO", "isConnected": true}, "networkInfo": info})
        })
        .collect();
    let disks: Vec<Value> = r["disk_list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({"$objectType": "vmm.v4.ahv.config.Disk", "diskAddress": {"busType": "SCSI", "index": i},
                   "backingInfo": {"$objectType": "vmm.v4.ahv.config.VmDisk",
                       "dataSource": {"reference": {"$objectType": "vmm.v4.ahv.config.ImageReference",
                                                    "imageExtId": d["data_source_reference"]["uuid"]}}}})
        })
        .collect();
    json!({
        "$objectType": "vmm.v4.ahv.config.Vm",
        "$reserved": {"$fv": "v4.r0"},
        "extId": e.uuid,
        "name": e.spec["name"],
        "description": e.spec.get("description").cloned().unwrap_or(json!("")),
        "cluster": {"extId": e.spec["cluster_reference"]["uuid"]},
        "powerState": if e.power_on { "ON" } else { "OFF" },
        "numSockets": r["num_sockets"],
        "numCoresPerSocket": r["num_vcpus_per_socket"],
        "memorySizeBytes": r["memory_size_mib"].as_u64().unwrap_or(0) << 20,
        "disks": disks,
        "nics": nics,
        "categories": category_ids(&e.categories).into_iter().map(|id| json!({"extId": id})).collect::<Vec<_>>(),
    })
}

async fn list_vms(State(inner): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = inner.lock().unwrap();
    let items = all_of(&s, "vm").into_iter().map(vm_json).collect();
    page("vmm.v4.ahv.config.ListVmsApiResponse", items, &q)
}

/// GET VM with its ETag. The churn hook makes the ETag stale right after
/// it is read, as background updates (learned IPs, guest tools) do on
/// real VMs (§0.3; terraform issue #1089).
async fn get_vm(State(inner): St, Path(id): Path<String>) -> Response {
    let mut s = inner.lock().unwrap();
    let churn = s.etag_churn > 0;
    if churn {
        s.etag_churn -= 1;
    }
    match s.entities.get_mut(&id) {
        Some(e) if e.kind == "vm" => {
            let v = vm_json(e);
            let tag = etag_of(e, &v);
            if churn {
                e.etag_salt += 1;
            }
            single("vmm.v4.ahv.config.GetVmApiResponse", v, tag)
        }
        _ => missing(),
    }
}

/// If-Match on VM writes: missing → 428 (PLAT-10004 MISSING_ETAG_HEADER,
/// terraform PR #1231), stale → 412 (PLAT-10005 "Invalid eTag header",
/// nutanix.ansible issue #706); spec text in §0.2.
fn check_etag(e: &Entity, headers: &HeaderMap) -> Option<Response> {
    let current = etag_of(e, &vm_json(e));
    match headers.get("if-match").and_then(|v| v.to_str().ok()) {
        None => Some(error(
            428,
            "vmm",
            "PLAT-10004",
            "If-Match header is required",
            "MISSING_ETAG_HEADER",
        )),
        Some(t) if t != current => Some(error(412, "vmm", "PLAT-10005", "Invalid eTag header", "")),
        Some(_) => None,
    }
}

/// `POST ahv/config/vms`: a VM created off ("Cannot specify power state as
/// ON during VM creation", packer driver.go), its disk cloned from a
/// usable image, one NIC on the subnet, cloud-init user-data that must be
/// base64 and start with `#cloud-config` (AOS 7.3 check, CAPX
/// `addGuestCustomizationToVM`) or a sysprep answer file.
async fn create_vm(State(inner): St, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("the request body is not JSON");
    };
    let name = req.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        return bad("name: must not be null");
    }
    if req.get("powerState").and_then(Value::as_str) == Some("ON") {
        return bad("Cannot specify power state as ON during VM creation. Please use the VM power action endpoints instead.");
    }
    if req["cluster"]["extId"] != CLUSTER_UUID {
        return bad("cluster.extId: no such cluster");
    }
    let backing = &req["disks"][0]["backingInfo"];
    let reference = &backing["dataSource"]["reference"];
    if backing["$objectType"] != "vmm.v4.ahv.config.VmDisk"
        || reference["$objectType"] != "vmm.v4.ahv.config.ImageReference"
    {
        return bad("disks[0].backingInfo: a VmDisk with an ImageReference is required");
    }
    let image = reference["imageExtId"].as_str().unwrap_or("").to_string();
    let net = req["nics"][0]
        .get("networkInfo")
        .or_else(|| req["nics"][0].get("nicNetworkInfo"))
        .cloned()
        .unwrap_or(Value::Null);
    if net["subnet"]["extId"] != SUBNET_UUID {
        return bad("nics[0].networkInfo.subnet: no such subnet");
    }
    let mut resources = json!({
        "num_sockets": req["numSockets"],
        "num_vcpus_per_socket": req["numCoresPerSocket"],
        "memory_size_mib": req["memorySizeBytes"].as_u64().unwrap_or(0) >> 20,
        "disk_list": [{"data_source_reference": {"kind": "image", "uuid": image}}],
        "nic_list": [{"subnet_reference": {"kind": "subnet", "uuid": SUBNET_UUID}}],
    });
    let config = &req["guestCustomization"]["config"];
    use base64::Engine;
    let decode = |v: &Value| {
        v.as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    match config["$objectType"].as_str() {
        None => {}
        Some("vmm.v4.ahv.config.CloudInit") => {
            let script = &config["cloudInitScript"];
            if script["$objectType"] != "vmm.v4.ahv.config.Userdata" {
                return bad("cloudInitScript: a vmm.v4.ahv.config.Userdata is required");
            }
            match decode(&script["value"]) {
                Some(ud) if ud.starts_with("#cloud-config") => {}
                Some(_) => return bad("user data must start with #cloud-config"),
                None => return bad("cloudInitScript.value: the value must be base64 encoded"),
            }
            resources["guest_customization"] =
                json!({"cloud_init": {"user_data": script["value"]}});
        }
        Some("vmm.v4.ahv.config.Sysprep") => {
            let script = &config["sysprepScript"];
            if script["$objectType"] != "vmm.v4.ahv.config.Unattendxml"
                || decode(&script["value"]).is_none()
            {
                return bad("sysprepScript: a base64 vmm.v4.ahv.config.Unattendxml is required");
            }
            resources["guest_customization"] = json!({"sysprep": {
                "install_type": config["installType"], "unattend_xml": script["value"]}});
        }
        Some(other) => return bad(&format!("guestCustomization.config: unknown {other}")),
    }
    let ids: Vec<Value> = req["categories"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| c["extId"].clone())
        .collect();
    let categories = match categories_of(&ids) {
        Ok(c) => c,
        Err(m) => return bad(&m),
    };
    let mut s = inner.lock().unwrap();
    match s.entities.get(&image) {
        Some(img) if img.kind == "image" && img.state == "COMPLETE" && img.size_bytes.is_some() => {
        }
        _ => return bad("disks[0]: the image does not exist or is not usable yet"),
    }
    s.last_customization = resources.get("guest_customization").cloned();
    let spec = json!({"name": name, "description": req["description"],
        "cluster_reference": {"kind": "cluster", "uuid": CLUSTER_UUID}, "resources": resources});
    let mut e = new_entity("vm", spec, categories);
    e.addressless = std::mem::take(&mut s.addressless_next_vm);
    let uuid = e.uuid.clone();
    s.entities.insert(uuid.clone(), e);
    let t = s.add_task(
        "kVmCreate",
        "vm",
        &uuid,
        None,
        Effect::VmCreated { uuid: uuid.clone() },
    );
    let failure = take_failure(&mut s, "vm");
    fail_task(&mut s, &t, failure);
    task_accepted("vmm.v4.ahv.config.CreateVmApiResponse", &t)
}

/// VM delete needs If-Match and a request id (§0.6); a running VM may be
/// deleted (packer deletes without powering off first, §5.4).
async fn delete_vm(State(inner): St, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let mut s = inner.lock().unwrap();
    match s.entities.get(&id) {
        Some(e) if e.kind == "vm" => {
            if let Some(r) = check_etag(e, &headers) {
                return r;
            }
        }
        _ => return missing(),
    }
    let t = s.add_task(
        "kVmDelete",
        "vm",
        &id,
        None,
        Effect::Remove { uuid: id.clone() },
    );
    s.entities.get_mut(&id).unwrap().state = "DELETE_PENDING";
    task_accepted("vmm.v4.ahv.config.DeleteVmApiResponse", &t)
}

/// `$actions/power-on` and `$actions/power-off` (hard), no body, If-Match
/// required; 202 with a task (§5.2).
async fn vm_action(
    State(inner): St,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = inner.lock().unwrap();
    match s.entities.get(&id) {
        Some(e) if e.kind == "vm" => {
            if let Some(r) = check_etag(e, &headers) {
                return r;
            }
        }
        _ => return missing(),
    }
    let (op, effect, object_type) = match action.as_str() {
        "$actions/power-on" => (
            "kVmPowerOn",
            Effect::PowerOn { uuid: id.clone() },
            "vmm.v4.ahv.config.PowerOnVmApiResponse",
        ),
        "$actions/power-off" => (
            "kVmPowerOff",
            Effect::PowerOff { uuid: id.clone() },
            "vmm.v4.ahv.config.PowerOffVmApiResponse",
        ),
        _ => return not_served(),
    };
    let t = s.add_task(op, "vm", &id, None, effect);
    task_accepted(object_type, &t)
}
