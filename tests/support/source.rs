//! An image source whose contents change while a test runs: a directory
//! listing (the HTML shape of python's http.server), the files with ETag
//! and Last-Modified, conditional GETs answered 304 as RFC 9110 §13.1
//! says, a SHA256SUMS file, a LATEST pointer, and a hold that keeps
//! listing requests open (a check in flight).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::Digest;

#[derive(Default)]
struct Inner {
    /// name → (content, version counter for ETag / Last-Modified)
    files: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    hold: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests that carried If-None-Match, and how many were answered 304.
    conditional: AtomicUsize,
    not_modified: AtomicUsize,
    listings: AtomicUsize,
}

#[derive(Clone)]
pub struct Source {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Source {
    pub async fn start() -> Source {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/images/", get(listing))
            .route("/images/SHA256SUMS", get(sums))
            .route("/images/{name}", get(file))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Source { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Adds or replaces a file (a replaced file gets a new ETag).
    pub fn put(&self, name: &str, content: &[u8]) {
        let mut files = self.inner.files.lock().unwrap();
        let version = files.get(name).map_or(1, |(_, v)| v + 1);
        files.insert(name.to_string(), (content.to_vec(), version));
    }

    pub fn remove(&self, name: &str) {
        self.inner.files.lock().unwrap().remove(name);
    }

    /// While set, listing requests stay open (up to 20 s).
    pub fn hold(&self, on: bool) {
        self.inner.hold.store(on, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    pub fn listings(&self) -> usize {
        self.inner.listings.load(Ordering::SeqCst)
    }

    /// (conditional requests, of them answered 304)
    pub fn conditional(&self) -> (usize, usize) {
        (
            self.inner.conditional.load(Ordering::SeqCst),
            self.inner.not_modified.load(Ordering::SeqCst),
        )
    }
}

/// The page CPython's `http.server.SimpleHTTPRequestHandler.list_directory`
/// writes (Lib/http/server.py: the "Directory listing for …" title and h1,
/// then one `<li><a href="NAME">NAME</a></li>` per entry), the index the
/// demo and bench scripts serve images with.
async fn listing(State(s): State<Arc<Inner>>) -> Response {
    s.listings.fetch_add(1, Ordering::SeqCst);
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    for _ in 0..200 {
        if !s.hold.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let names: Vec<String> = s.files.lock().unwrap().keys().cloned().collect();
    let mut html = String::from("<!DOCTYPE HTML>\n<html><head><title>Directory listing for /images/</title></head>\n<body><h1>Directory listing for /images/</h1><hr><ul>\n");
    for n in names
        .iter()
        .chain(std::iter::once(&"SHA256SUMS".to_string()))
    {
        html.push_str(&format!("<li><a href=\"{n}\">{n}</a></li>\n"));
    }
    html.push_str("</ul><hr></body></html>\n");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// GNU coreutils `sha256sum` output: `HEX␠␠NAME` per line (text mode), the
/// SHA256SUMS format distributions publish next to their cloud images.
async fn sums(State(s): State<Arc<Inner>>) -> String {
    s.files
        .lock()
        .unwrap()
        .iter()
        .map(|(n, (c, _))| format!("{}  {n}\n", hex::encode(sha2::Sha256::digest(c))))
        .collect()
}

async fn file(
    State(s): State<Arc<Inner>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((content, version)) = s.files.lock().unwrap().get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A strong entity tag (RFC 9110 §8.8.3) that changes with the content,
    // and Last-Modified as an IMF-fixdate (§5.6.7).
    let etag = format!("\"{name}-{version}\"");
    let modified = format!("Tue, 01 Dec 2026 {:02}:00:00 GMT", version % 24);
    // If-None-Match (§13.1.2): a matching tag is answered 304 Not Modified
    // with the ETag and no body (§15.4.5). vmscan sends back exactly the one
    // tag it was given, so a single-tag comparison is the whole rule here
    // (no lists, no weak tags). If-Modified-Since is not evaluated: this
    // server always sends an ETag, so vmscan always sends If-None-Match
    // beside it, and §13.1.3 has a recipient ignore it then.
    if let Some(sent) = headers.get(header::IF_NONE_MATCH) {
        s.conditional.fetch_add(1, Ordering::SeqCst);
        if sent.as_bytes() == etag.as_bytes() {
            s.not_modified.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
        }
    }
    (
        [
            (header::ETAG, etag),
            (header::LAST_MODIFIED, modified),
            (header::CONTENT_TYPE, "application/octet-stream".into()),
        ],
        content,
    )
        .into_response()
}
