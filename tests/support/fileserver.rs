//! A small HTTP file server for fetch tests: serves a directory with Range
//! support, can be slowed down or made to drop connections, and counts hits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[derive(Clone, Default)]
pub struct Behaviour {
    /// Bytes per second (0: as fast as possible).
    pub rate: u64,
    /// Drop the connection after this many body bytes of a full (non-range) response.
    pub drop_after: Option<u64>,
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Ignore Range headers (a server that cannot resume).
    pub no_ranges: bool,
}

#[derive(Clone)]
struct St {
    root: PathBuf,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<Mutex<HashMap<String, Vec<Option<String>>>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
}

pub struct FileServer {
    pub addr: SocketAddr,
    st: St,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    pub async fn start(root: impl Into<PathBuf>) -> FileServer {
        let st = St {
            root: root.into(),
            behaviour: Arc::default(),
            hits: Arc::default(),
            redirects: Arc::default(),
        };
        let app = Router::new()
            .route("/{*path}", get(serve))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileServer { addr, st, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn set(&self, b: Behaviour) {
        *self.st.behaviour.lock().unwrap() = b;
    }

    /// The Range header of every request for `path` (None: a full request).
    pub fn hits(&self, path: &str) -> Vec<Option<String>> {
        self.st
            .hits
            .lock()
            .unwrap()
            .get(path.trim_start_matches('/'))
            .cloned()
            .unwrap_or_default()
    }

    /// Answers requests for `path` with `302 Location: location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.st.redirects.lock().unwrap().insert(
            path.trim_start_matches('/').to_string(),
            location.to_string(),
        );
    }

    pub fn all_hits(&self) -> HashMap<String, Vec<Option<String>>> {
        self.st.hits.lock().unwrap().clone()
    }
}

async fn serve(State(st): State<St>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.hits
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push(range.clone());
    let b = st.behaviour.lock().unwrap().clone();
    if let Some(to) = st.redirects.lock().unwrap().get(&path) {
        return (StatusCode::FOUND, [("location", to.clone())]).into_response();
    }
    if let Some(s) = b.status {
        return (
            StatusCode::from_u16(s).unwrap(),
            format!("forced status {s}\n"),
        )
            .into_response();
    }
    if path.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let file_path = st.root.join(&path);
    let Ok(mut f) = tokio::fs::File::open(&file_path).await else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let len = f.metadata().await.unwrap().len();
    let start = range.filter(|_| !b.no_ranges).and_then(|r| {
        r.strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<u64>().ok())
    });
    if let Some(s) = start {
        if s >= len {
            return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        }
        f.seek(std::io::SeekFrom::Start(s)).await.unwrap();
    }
    let from = start.unwrap_or(0);
    let limit = if start.is_none() { b.drop_after } else { None };
    let rate = b.rate;
    let stream = async_stream::stream! {
        let mut sent = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match f.read(&mut buf).await { Ok(0) | Err(_) => break, Ok(n) => n };
            if let Some(l) = limit {
                if sent + n as u64 > l {
                    yield Err(std::io::Error::other("connection dropped on purpose"));
                    break;
                }
            }
            sent += n as u64;
            yield Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&buf[..n]));
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
    };
    let mut resp = Response::new(Body::from_stream(stream));
    if start.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = resp.headers_mut();
    h.insert("content-length", (len - from).to_string().parse().unwrap());
    h.insert("accept-ranges", "bytes".parse().unwrap());
    h.insert("etag", format!("\"{len}\"").parse().unwrap());
    if start.is_some() {
        h.insert(
            "content-range",
            format!("bytes {from}-{}/{len}", len - 1).parse().unwrap(),
        );
    }
    resp
}
