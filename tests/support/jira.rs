//! A faithful fake Jira (axum): REST API v2 (Server/DC, Bearer PAT, plain-text
//! bodies) or v3 (Cloud, basic email:token, Atlassian Document Format bodies).
//! It checks request shapes and auth, answers with real-shaped responses, and
//! can be told to fail (400 with errorMessages/errors, 401, 404, 429 + Retry-After).
#![allow(clippy::result_large_err)] // handlers return axum Responses as errors

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const TOKEN: &str = "jira-secret-token-123";
pub const USER: &str = "bot@example.com";

#[derive(Clone, Debug)]
pub enum Failure {
    /// 400 with `errorMessages` and `errors`.
    BadRequest,
    Unauthorized,
    NotFound,
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
}

#[derive(Clone, Debug, Default)]
pub struct Issue {
    pub key: String,
    pub fields: Value,
    /// Comment texts (ADF flattened to lines on v3).
    pub comments: Vec<String>,
    /// Names of the transitions applied, in order.
    pub transitions: Vec<String>,
}

#[derive(Default)]
struct Inner {
    version: u8,
    issues: Vec<Issue>,
    /// (route: "create" | "comment" | "transition" | "any", failure, times left)
    failures: VecDeque<(String, Failure, usize)>,
    /// Every request: "POST create", "POST comment OPS-1", …
    requests: Vec<String>,
    /// Shape violations found in requests; a test asserts there are none.
    problems: Vec<String>,
}

#[derive(Clone)]
pub struct FakeJira {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

const TRANSITIONS: &[(&str, &str)] =
    &[("11", "In Progress"), ("31", "Done"), ("41", "Scan failed")];

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        o.push(T[(n >> 18) as usize & 63] as char);
        o.push(T[(n >> 12) as usize & 63] as char);
        o.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        o.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    o
}

/// Text out of an ADF document, checking its shape; one line per paragraph.
fn adf_text(doc: &Value) -> Result<String, String> {
    if doc["type"] != "doc" || doc["version"] != 1 {
        return Err(format!("not an ADF doc (type doc, version 1): {doc}"));
    }
    let content = doc["content"]
        .as_array()
        .ok_or("ADF doc without content array")?;
    let mut lines = Vec::new();
    for p in content {
        if p["type"] != "paragraph" {
            return Err(format!("unexpected ADF node {p}"));
        }
        let mut line = String::new();
        for t in p["content"].as_array().ok_or("paragraph without content")? {
            match (t["type"].as_str(), t["text"].as_str()) {
                (Some("text"), Some(s)) if !s.is_empty() => line.push_str(s),
                (Some("hardBreak"), _) => line.push('\n'),
                _ => {
                    return Err(format!(
                        "bad ADF inline node {t} (text nodes need non-empty text)"
                    ))
                }
            }
        }
        lines.push(line);
    }
    Ok(lines.join("\n"))
}

fn error(status: StatusCode, messages: &[&str], errors: Value) -> Response {
    (
        status,
        Json(json!({"errorMessages": messages, "errors": errors})),
    )
        .into_response()
}

impl FakeJira {
    /// `version` 2 (Server/DC) or 3 (Cloud).
    pub async fn start(version: u8) -> FakeJira {
        let inner = Arc::new(Mutex::new(Inner {
            version,
            ..Default::default()
        }));
        let me = FakeJira {
            base: String::new(),
            inner: inner.clone(),
        };
        let app = Router::new()
            .route("/rest/api/{v}/issue", post(create))
            .route("/rest/api/{v}/issue/{key}/comment", post(comment))
            .route(
                "/rest/api/{v}/issue/{key}/transitions",
                get(list_transitions).post(transition),
            )
            .fallback(|| async { error(StatusCode::NOT_FOUND, &["no such endpoint"], json!({})) })
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeJira {
            base: format!("http://{addr}"),
            inner,
        }
    }

    /// The next `times` requests to `route` ("create", "comment", "transition", "any") fail.
    pub fn fail(&self, route: &str, f: Failure, times: usize) {
        self.inner
            .lock()
            .unwrap()
            .failures
            .push_back((route.into(), f, times));
    }

    pub fn issues(&self) -> Vec<Issue> {
        self.inner.lock().unwrap().issues.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn problems(&self) -> Vec<String> {
        self.inner.lock().unwrap().problems.clone()
    }

    /// Checks version and auth, records the request, applies injected failures.
    fn gate(
        &self,
        v: &str,
        headers: &HeaderMap,
        route: &str,
        what: String,
    ) -> Result<(), Response> {
        let mut s = self.inner.lock().unwrap();
        s.requests.push(what.clone());
        if v != s.version.to_string() {
            let p = format!("{what}: API version {v}, expected {}", s.version);
            s.problems.push(p);
            return Err(error(
                StatusCode::NOT_FOUND,
                &["wrong API version"],
                json!({}),
            ));
        }
        let auth = headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let want = if s.version == 2 {
            format!("Bearer {TOKEN}")
        } else {
            format!("Basic {}", b64(&format!("{USER}:{TOKEN}")))
        };
        if auth != want {
            s.problems
                .push(format!("{what}: bad Authorization {auth:?}"));
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                &["You are not authenticated."],
                json!({}),
            );
            r.headers_mut().insert(
                "X-Seraph-LoginReason",
                "AUTHENTICATED_FAILED".parse().unwrap(),
            );
            return Err(r);
        }
        let hit = s
            .failures
            .iter()
            .position(|(r, _, n)| *n > 0 && (r == route || r == "any"));
        if let Some(i) = hit {
            s.failures[i].2 -= 1;
            let f = s.failures[i].1.clone();
            if s.failures[i].2 == 0 {
                s.failures.remove(i);
            }
            return Err(match f {
                Failure::BadRequest => error(
                    StatusCode::BAD_REQUEST,
                    &["Field 'labels' cannot be set. It is not on the appropriate screen, or unknown."],
                    json!({"customfield_10010": "Team is required."}),
                ),
                Failure::Unauthorized => {
                    error(StatusCode::UNAUTHORIZED, &["You are not authenticated."], json!({}))
                }
                Failure::NotFound => error(
                    StatusCode::NOT_FOUND,
                    &["No project could be found with key 'OPS'."],
                    json!({}),
                ),
                Failure::RateLimited(secs) => {
                    let mut r = error(StatusCode::TOO_MANY_REQUESTS, &["Rate limit exceeded."], json!({}));
                    r.headers_mut().insert("Retry-After", secs.to_string().parse().unwrap());
                    r
                }
            });
        }
        Ok(())
    }

    /// A text body: a string on v2, an ADF document on v3.
    fn text(&self, what: &str, v: &Value) -> Result<String, Response> {
        let mut s = self.inner.lock().unwrap();
        let r = if s.version == 2 {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{what}: v2 wants a string, got {v}"))
        } else {
            adf_text(v).map_err(|e| format!("{what}: {e}"))
        };
        r.map_err(|p| {
            s.problems.push(p.clone());
            error(StatusCode::BAD_REQUEST, &[], json!({ what: p }))
        })
    }
}

async fn create(
    State(j): State<FakeJira>,
    Path(v): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = j.gate(&v, &h, "create", "POST create".into()) {
        return r;
    }
    let f = &body["fields"];
    let mut bad = Vec::new();
    if !f["project"]["key"].is_string() {
        bad.push("fields.project.key");
    }
    if !f["summary"]
        .as_str()
        .is_some_and(|s| !s.is_empty() && s.len() <= 255)
    {
        bad.push("fields.summary");
    }
    if !f["issuetype"]["name"].is_string() {
        bad.push("fields.issuetype.name");
    }
    if !f["labels"].as_array().is_some_and(|l| {
        l.iter()
            .all(|x| x.as_str().is_some_and(|s| !s.contains(' ')))
    }) {
        bad.push("fields.labels");
    }
    if !bad.is_empty() {
        j.inner
            .lock()
            .unwrap()
            .problems
            .push(format!("create: bad {bad:?} in {body}"));
        return error(
            StatusCode::BAD_REQUEST,
            &[],
            json!({"fields": bad.join(", ")}),
        );
    }
    let description = match j.text("description", &f["description"]) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut s = j.inner.lock().unwrap();
    let n = s.issues.len() + 1;
    let key = format!("{}-{n}", f["project"]["key"].as_str().unwrap());
    let mut fields = f.clone();
    fields["description_text"] = json!(description);
    s.issues.push(Issue {
        key: key.clone(),
        fields,
        ..Default::default()
    });
    let id = 10000 + n;
    (
        StatusCode::CREATED,
        Json(json!({"id": id.to_string(), "key": key, "self": format!("{}/rest/api/{v}/issue/{id}", j.base)})),
    )
        .into_response()
}

async fn comment(
    State(j): State<FakeJira>,
    Path((v, key)): Path<(String, String)>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = j.gate(&v, &h, "comment", format!("POST comment {key}")) {
        return r;
    }
    let text = match j.text("body", &body["body"]) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut s = j.inner.lock().unwrap();
    let Some(issue) = s.issues.iter_mut().find(|i| i.key == key) else {
        return error(
            StatusCode::NOT_FOUND,
            &["Issue does not exist or you do not have permission to see it."],
            json!({}),
        );
    };
    issue.comments.push(text);
    let id = issue.comments.len();
    (StatusCode::CREATED, Json(json!({"id": id.to_string(), "body": body["body"], "author": {"name": "vmscan"}, "created": "2026-11-01T10:00:00.000+0000"}))).into_response()
}

async fn list_transitions(
    State(j): State<FakeJira>,
    Path((v, key)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    if let Err(r) = j.gate(&v, &h, "transitions", format!("GET transitions {key}")) {
        return r;
    }
    if !j.inner.lock().unwrap().issues.iter().any(|i| i.key == key) {
        return error(
            StatusCode::NOT_FOUND,
            &["Issue does not exist or you do not have permission to see it."],
            json!({}),
        );
    }
    let list: Vec<Value> = TRANSITIONS
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name, "to": {"name": name, "id": "1"}}))
        .collect();
    Json(json!({"expand": "transitions", "transitions": list})).into_response()
}

async fn transition(
    State(j): State<FakeJira>,
    Path((v, key)): Path<(String, String)>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = j.gate(&v, &h, "transition", format!("POST transition {key}")) {
        return r;
    }
    let id = body["transition"]["id"].as_str().unwrap_or("");
    let Some((_, name)) = TRANSITIONS.iter().find(|(i, _)| *i == id) else {
        j.inner
            .lock()
            .unwrap()
            .problems
            .push(format!("transition: bad body {body}"));
        return error(
            StatusCode::BAD_REQUEST,
            &[],
            json!({"transition": format!("Transition id '{id}' is not valid for this issue.")}),
        );
    };
    let mut s = j.inner.lock().unwrap();
    match s.issues.iter_mut().find(|i| i.key == key) {
        Some(issue) => {
            issue.transitions.push(name.to_string());
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, &["Issue does not exist"], json!({})),
    }
}
