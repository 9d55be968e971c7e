//! A fake JFrog Artifactory, faithful to the contracts in the reference notes:
//! deploy (`PUT /artifactory/{repo}/{path};k=v`) checks the X-Checksum-*
//! headers against the body and answers 201 with the ItemCreated JSON;
//! checksum deploy (`X-Checksum-Deploy: true`, no body) answers 201 for known
//! bytes, else 404; the storage API sets and reads properties; the move API
//! moves items with their properties; every call needs the configured auth.
//! It can be told to fail: 5xx for the next N calls, a fixed status for
//! everything, or a dropped connection in the middle of an upload.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use digest::Digest;
use futures::StreamExt;
use serde_json::{json, Value};

pub const REPO: &str = "vm-images-local";
pub const ARCHIVE: &str = "vm-images-archive";
pub const TOKEN: &str = "test-access-token";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    Bearer(String),
    ApiKey(String),
    Basic(String, String),
}

#[derive(Clone, Debug)]
pub struct Item {
    pub bytes: Vec<u8>,
    pub sha1: String,
    pub sha256: String,
    pub md5: String,
    pub properties: BTreeMap<String, Vec<String>>,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The raw path and query.
    pub uri: String,
    pub checksum_deploy: bool,
    pub body_bytes: usize,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    repos: HashSet<String>,
    auth: Option<Auth>,
    items: HashMap<(String, String), Item>,
    /// Bytes known by checksum (sha1 and sha256), for checksum deploys.
    blobs: HashMap<String, Vec<u8>>,
    seen: Vec<Seen>,
    /// Answer 500 to this many further requests.
    fail_5xx: u32,
    /// Answer this status to every request.
    always: Option<u16>,
    /// Drop the connection mid-body for this many further uploads.
    drop_uploads: u32,
    /// Connections dropped so far.
    dropped: u32,
}

#[derive(Clone)]
pub struct FakeArtifactory {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn error(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({"errors": [{"status": status, "message": message}]}).to_string(),
    )
        .into_response()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `properties=` grammar of Set Item Properties (JFrog REST docs):
/// properties are separated by a raw `;` or `|` / `%7C`; within one, `=`
/// splits key from value and `,` or `%5C;` separates values; `\`
/// (`%5C`) before `, \ | =` makes them literal. A literal `;` can only be
/// sent percent-encoded (`%3B`) without a backslash before it.
fn parse_properties(raw: &str) -> Vec<(String, Vec<String>)> {
    // Properties split on the raw text, before decoding: `%3B` is no separator.
    let mut props = Vec::new();
    let mut cur = String::new();
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        let sep = if c == ';' || c == '|' {
            1
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%7C") {
            3
        } else {
            0
        };
        let escaped = cur.len() >= 3 && cur[cur.len() - 3..].eq_ignore_ascii_case("%5C");
        if sep > 0 && !escaped {
            props.push(std::mem::take(&mut cur));
            rest = &rest[sep..];
            continue;
        }
        cur.push(c);
        rest = &rest[c.len_utf8()..];
    }
    props.push(cur);
    props
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let text = pct_decode(&p);
            let mut key = String::new();
            let mut values = vec![String::new()];
            let mut in_key = true;
            let mut chars = text.chars();
            while let Some(c) = chars.next() {
                let target = if in_key {
                    &mut key
                } else {
                    values.last_mut().unwrap()
                };
                match c {
                    '\\' => match chars.next() {
                        Some(';') if !in_key => values.push(String::new()),
                        Some(n) => target.push(n),
                        None => target.push('\\'),
                    },
                    '=' if in_key => in_key = false,
                    ',' if !in_key => values.push(String::new()),
                    _ => target.push(c),
                }
            }
            (key, values)
        })
        .collect()
}

fn sums(bytes: &[u8]) -> (String, String, String) {
    (
        hex::encode(sha1::Sha1::digest(bytes)),
        hex::encode(sha2::Sha256::digest(bytes)),
        hex::encode(md5::Md5::digest(bytes)),
    )
}

impl FakeArtifactory {
    pub async fn start(auth: Option<Auth>) -> FakeArtifactory {
        let inner = Arc::new(Mutex::new(Inner {
            repos: [REPO, ARCHIVE].iter().map(|s| s.to_string()).collect(),
            auth,
            ..Default::default()
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeArtifactory { addr, inner }
    }

    /// The Artifactory root as configured: `http://host:port/artifactory`.
    pub fn url(&self) -> String {
        format!("http://{}/artifactory", self.addr)
    }

    pub fn item(&self, repo: &str, path: &str) -> Option<Item> {
        self.inner
            .lock()
            .unwrap()
            .items
            .get(&(repo.to_string(), path.to_string()))
            .cloned()
    }

    /// A property's single value.
    /// A single-valued property; several values come back as their list
    /// (`["a", "b"]`), so a value split by a separator never looks whole.
    pub fn property(&self, repo: &str, path: &str, key: &str) -> Option<String> {
        self.item(repo, path)?
            .properties
            .get(key)
            .map(|v| match v.as_slice() {
                [one] => one.clone(),
                many => format!("{many:?}"),
            })
    }

    pub fn paths(&self, repo: &str) -> Vec<String> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .unwrap()
            .items
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, p)| p.clone())
            .collect();
        v.sort();
        v
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().fail_5xx = n;
    }

    pub fn always(&self, status: Option<u16>) {
        self.inner.lock().unwrap().always = status;
    }

    pub fn drop_next_uploads(&self, n: u32) {
        self.inner.lock().unwrap().drop_uploads = n;
    }

    pub fn dropped(&self) -> u32 {
        self.inner.lock().unwrap().dropped
    }

    pub fn remove_repo(&self, repo: &str) {
        self.inner.lock().unwrap().repos.remove(repo);
    }
}

fn authorised(expected: &Option<Auth>, h: &HeaderMap) -> bool {
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    match expected {
        None => true,
        Some(Auth::Bearer(t)) => header("authorization") == format!("Bearer {t}"),
        Some(Auth::ApiKey(k)) => header("x-jfrog-art-api") == k,
        Some(Auth::Basic(u, p)) => {
            use base64_check::encode;
            header("authorization") == format!("Basic {}", encode(&format!("{u}:{p}")))
        }
    }
}

/// Base64 for checking Basic credentials.
mod base64_check {
    pub fn encode(s: &str) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    A[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    }
}

/// `/artifactory/{repo}/{path}[;k=v…]` → (repo, path, matrix properties).
fn split_item(rest: &str) -> Option<(String, String, BTreeMap<String, Vec<String>>)> {
    let mut parts = rest.split(';');
    let path = parts.next()?;
    let mut props: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in parts.filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        props.entry(pct_decode(k)).or_default().push(pct_decode(v));
    }
    let (repo, path) = path.trim_start_matches('/').split_once('/')?;
    Some((pct_decode(repo), pct_decode(path), props))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == key => Some(v),
        None if kv == key => Some(""),
        _ => None,
    })
}

fn created(base: &str, repo: &str, path: &str, item: &Item) -> Response {
    let uri = format!("{base}/{repo}/{path}");
    let sums = json!({"sha1": item.sha1, "md5": item.md5, "sha256": item.sha256});
    (
        StatusCode::CREATED,
        [(
            "content-type",
            "application/vnd.org.jfrog.artifactory.storage.ItemCreated+json",
        )],
        json!({
            "repo": repo, "path": format!("/{path}"), "created": "2026-11-20T10:00:00.000Z",
            "createdBy": "vmscan", "downloadUri": uri, "mimeType": "application/octet-stream",
            "size": item.bytes.len().to_string(), "checksums": sums, "originalChecksums": sums, "uri": uri,
        })
        .to_string(),
    )
        .into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let raw_path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let checksum_deploy = headers
        .get("x-checksum-deploy")
        .is_some_and(|v| v == "true");
    let mut seen = Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        checksum_deploy,
        body_bytes: 0,
        status: 0,
    };
    let resp = respond(
        &inner, &method, &raw_path, &query, &headers, body, &mut seen,
    )
    .await;
    seen.status = resp.status().as_u16();
    inner.lock().unwrap().seen.push(seen);
    resp
}

async fn respond(
    inner: &Arc<Mutex<Inner>>,
    method: &Method,
    raw_path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let base = format!("http://{host}/artifactory");
    {
        let mut s = inner.lock().unwrap();
        if !authorised(&s.auth, headers) {
            return error(401, "Bad credentials");
        }
        if let Some(status) = s.always {
            return error(status, "Forbidden by the fake: permission denied");
        }
        if s.fail_5xx > 0 {
            s.fail_5xx -= 1;
            return error(500, "Internal server error (injected by the fake)");
        }
    }
    let Some(rest) = raw_path.strip_prefix("/artifactory/") else {
        return error(404, "Not found");
    };
    if let Some(item) = rest.strip_prefix("api/storage/") {
        let Some((repo, path, _)) = split_item(item) else {
            return error(400, "bad storage path");
        };
        let mut s = inner.lock().unwrap();
        let key = (repo.clone(), path.clone());
        let Some(it) = s.items.get_mut(&key) else {
            return error(404, "Unable to find item");
        };
        if method == Method::PUT {
            let Some(raw) = query_param(query, "properties") else {
                return error(400, "properties parameter missing");
            };
            for (k, values) in parse_properties(raw) {
                it.properties.insert(k, values);
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        if method == Method::GET && query_param(query, "properties").is_some() {
            if it.properties.is_empty() {
                return error(404, "No properties could be found.");
            }
            return axum::Json(json!({"properties": it.properties, "uri": format!("{base}/api/storage/{repo}/{path}")})).into_response();
        }
        return axum::Json(
            json!({"repo": repo, "path": format!("/{path}"), "size": it.bytes.len().to_string(),
            "checksums": {"sha1": it.sha1, "md5": it.md5, "sha256": it.sha256}}),
        )
        .into_response();
    }
    if let Some(item) = rest.strip_prefix("api/move/") {
        if method != Method::POST {
            return error(405, "Method not allowed");
        }
        let Some((repo, path, _)) = split_item(item) else {
            return error(400, "bad move path");
        };
        let Some(to) = query_param(query, "to") else {
            return error(400, "to parameter missing");
        };
        let Some((to_repo, to_path, _)) = split_item(&pct_decode(to)) else {
            return error(400, "bad target");
        };
        let mut s = inner.lock().unwrap();
        if !s.repos.contains(&to_repo) {
            return error(404, &format!("Repository {to_repo} does not exist"));
        }
        let Some(it) = s.items.remove(&(repo.clone(), path.clone())) else {
            return error(404, &format!("Could not find item {repo}:{path}"));
        };
        s.items.insert((to_repo.clone(), to_path.clone()), it);
        return axum::Json(json!({"messages": [{"level": "INFO", "message": format!("moving {repo}:{path} to {to_repo}:{to_path} completed successfully, 1 artifacts and 0 folders were moved")}]})).into_response();
    }
    let Some((repo, path, matrix)) = split_item(rest) else {
        return error(400, "bad item path");
    };
    if !inner.lock().unwrap().repos.contains(&repo) {
        return error(404, &format!("Repository {repo} does not exist"));
    }
    let key = (repo.clone(), path.clone());
    match *method {
        Method::DELETE => {
            let removed = inner.lock().unwrap().items.remove(&key);
            match removed {
                Some(_) => StatusCode::NO_CONTENT.into_response(),
                None => error(404, "Could not locate artifact"),
            }
        }
        Method::GET => match inner.lock().unwrap().items.get(&key) {
            Some(it) => it.bytes.clone().into_response(),
            None => error(404, "File not found."),
        },
        Method::PUT => {
            let header = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.to_ascii_lowercase())
            };
            let (h_sha1, h_sha256, h_md5) = (
                header("x-checksum-sha1"),
                header("x-checksum-sha256"),
                header("x-checksum-md5"),
            );
            let bytes = if seen.checksum_deploy {
                let known = {
                    let s = inner.lock().unwrap();
                    h_sha1
                        .as_ref()
                        .and_then(|h| s.blobs.get(h))
                        .or_else(|| h_sha256.as_ref().and_then(|h| s.blobs.get(h)))
                        .cloned()
                };
                // A checksum deploy carries no body.
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                seen.body_bytes = body.len();
                match known {
                    Some(b) => b,
                    None => {
                        return error(
                            404,
                            "Checksum deploy failed: no binary with these checksums was found",
                        )
                    }
                }
            } else {
                let drop_it = {
                    let mut s = inner.lock().unwrap();
                    let d = s.drop_uploads > 0;
                    if d {
                        s.drop_uploads -= 1;
                    }
                    d
                };
                let mut stream = body.into_data_stream();
                let mut buf: Vec<u8> = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk: Bytes = match chunk {
                        Ok(c) => c,
                        Err(_) => return error(400, "upload interrupted"),
                    };
                    buf.extend_from_slice(&chunk);
                    if drop_it && !buf.is_empty() {
                        inner.lock().unwrap().dropped += 1;
                        // Abort the connection mid-upload: the client sees it dropped.
                        std::panic::resume_unwind(Box::new(
                            "fake artifactory drops the connection",
                        ));
                    }
                }
                seen.body_bytes = buf.len();
                buf
            };
            let (sha1, sha256, md5) = sums(&bytes);
            for (name, sent, actual) in [
                ("SHA-1", &h_sha1, &sha1),
                ("SHA-256", &h_sha256, &sha256),
                ("MD5", &h_md5, &md5),
            ] {
                if let Some(sent) = sent {
                    if sent != actual {
                        return error(
                            409,
                            &format!(
                                "Checksum error: received '{sent}' but actual {name} is '{actual}'"
                            ),
                        );
                    }
                }
            }
            let item = Item {
                bytes: bytes.clone(),
                sha1: sha1.clone(),
                sha256: sha256.clone(),
                md5,
                properties: matrix,
            };
            let resp = created(&base, &repo, &path, &item);
            let mut s = inner.lock().unwrap();
            s.blobs.insert(sha1, bytes.clone());
            s.blobs.insert(sha256, bytes);
            s.items.insert(key, item);
            resp
        }
        _ => error(405, "Method not allowed"),
    }
}

/// Properties as the fake holds them, flattened to one value each.
pub fn flat(props: &BTreeMap<String, Vec<String>>) -> Value {
    Value::Object(
        props
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.join(","))))
            .collect(),
    )
}
