//! The Prism Central v3 HTTP client: Basic auth, retries with back-off for
//! 5xx and dropped connections (never for 401/403 or a refused
//! certificate), v3 error bodies, task polling and list paging.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::config::NutanixConfig;
use crate::cluster::tls::{self, CaBundleError};

#[derive(Debug, thiserror::Error)]
pub enum PrismError {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Http {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("{method} {path}: {reason}")]
    Transport {
        method: Method,
        path: String,
        reason: String,
    },
    /// Prism's TLS certificate was refused: not retried, it never heals.
    #[error("{method} {path}: {reason} ({})", tls::CERTIFICATE_HINT)]
    Certificate {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("task {uuid} ({operation}) {state}: {detail}")]
    TaskFailed {
        uuid: String,
        operation: String,
        state: String,
        detail: String,
    },
    #[error("task {uuid} still {state} after {secs} s")]
    TaskTimeout {
        uuid: String,
        state: String,
        secs: u64,
    },
    #[error("{0}")]
    Protocol(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("configuration: {0}")]
    CaBundle(#[from] CaBundleError),
}

impl PrismError {
    /// 5xx, 409 (a concurrent update), 429, dropped connections and slow
    /// tasks may succeed later; 401/403, other 4xx and a refused
    /// certificate never do.
    pub fn is_retryable(&self) -> bool {
        match self {
            PrismError::Http { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::CONFLICT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            PrismError::Transport { .. } | PrismError::TaskTimeout { .. } => true,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PrismError::Http { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// A request that got no answer: a refused certificate, or a transport
    /// failure worth retrying.
    pub fn unanswered(method: Method, path: &str, e: &reqwest::Error) -> PrismError {
        let (path, reason) = (path.to_string(), describe(e));
        if tls::certificate_rejected(e) {
            PrismError::Certificate {
                method,
                path,
                reason,
            }
        } else {
            PrismError::Transport {
                method,
                path,
                reason,
            }
        }
    }
}

/// The message of a v3 error body (`message_list[].message` with reasons),
/// or the raw text (401 bodies are not JSON).
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let msgs: Vec<String> = v
            .get("message_list")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|m| {
                        let text = m.get("message").and_then(Value::as_str).unwrap_or("");
                        match m.get("reason").and_then(Value::as_str) {
                            Some(r) if !r.is_empty() => format!("{text} ({r})"),
                            _ => text.to_string(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let t = body.trim();
    if t.is_empty() {
        "(empty body)".into()
    } else {
        t.chars().take(500).collect()
    }
}

/// The entity's tasks: `execution_context.task_uuid` is a string in a 202
/// answer and a list in later GETs; list answers may carry `task_uuids`
/// (terraform-provider-nutanix out.txt, a recorded `vms/list`).
pub fn task_uuids(entity: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["task_uuid", "task_uuids"] {
        match entity.pointer(&format!("/status/execution_context/{key}")) {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)))
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

pub struct PrismClient {
    http: reqwest::Client,
    base: String,
    pub cfg: NutanixConfig,
}

impl PrismClient {
    pub fn new(cfg: NutanixConfig) -> Result<Self, PrismError> {
        let missing = |what: &str| PrismError::Config(format!("{what} is not set"));
        if cfg.url.trim().is_empty() {
            return Err(missing("url"));
        }
        if cfg.username.is_empty() {
            return Err(missing("username"));
        }
        let password = cfg
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| missing("password (set it in the environment)"))?;
        let mut headers = HeaderMap::new();
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", cfg.username));
        let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|_| PrismError::Config("username contains characters not allowed".into()))?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(15))
            .danger_accept_invalid_certs(!cfg.verify_tls);
        if let Some(ca) = &cfg.ca_bundle {
            builder = tls::add_ca_bundle(builder, ca)?;
        }
        let http = builder
            .build()
            .map_err(|e| PrismError::Config(format!("HTTP client: {e}")))?;
        let base = format!("{}/api/nutanix/v3", cfg.url.trim_end_matches('/'));
        Ok(PrismClient { http, base, cfg })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// One request with retries: JSON in, JSON out (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PrismError> {
        let mut delay = Duration::from_millis(self.cfg.retry_backoff_ms.max(1));
        let attempts = self.cfg.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.call_once(method.clone(), path, body).await {
                Err(e) if e.is_retryable() && attempt < attempts => {
                    tracing::warn!(error = %e, attempt, "Prism Central request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PrismError> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(Duration::from_secs(self.cfg.request_secs.max(1)));
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").json(b);
        }
        let transport = |e: reqwest::Error| PrismError::unanswered(method.clone(), path, &e);
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = match crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT).await
        {
            Ok(t) => t,
            Err(crate::bounded_body::BodyError::Transport(e)) => return Err(transport(e)),
            Err(e) => return Err(PrismError::Protocol(format!("{method} {path}: {e}"))),
        };
        if !status.is_success() {
            return Err(PrismError::Http {
                method,
                path: path.to_string(),
                status,
                message: error_message(&text),
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            PrismError::Protocol(format!("{method} {path}: the answer is not JSON: {e}"))
        })
    }

    /// Polls `GET /tasks/{uuid}` until SUCCEEDED; FAILED or INVALID_UUID
    /// report `error_detail` and `progress_message`.
    pub async fn wait_task(&self, uuid: &str) -> Result<Value, PrismError> {
        let limit = Duration::from_secs(self.cfg.task_timeout_secs.max(1));
        self.wait_task_within(uuid, limit, &|_| {}).await
    }

    /// Like [`wait_task`](Self::wait_task) with its own time limit, passing
    /// on `percentage_complete` as it grows.
    pub async fn wait_task_within(
        &self,
        uuid: &str,
        limit: Duration,
        on_percent: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Value, PrismError> {
        let started = Instant::now();
        let poll = Duration::from_millis(self.cfg.task_poll_ms.max(10));
        loop {
            let task = self
                .call(Method::GET, &format!("/tasks/{uuid}"), None)
                .await?;
            let state = task
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN")
                .to_string();
            if let Some(p) = task.get("percentage_complete").and_then(Value::as_u64) {
                on_percent(p.min(100));
            }
            match state.as_str() {
                "SUCCEEDED" => return Ok(task),
                "QUEUED" | "RUNNING" => {}
                _ => {
                    let field = |k: &str| {
                        task.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    };
                    let mut detail = field("error_detail");
                    let progress = field("progress_message");
                    if detail.is_empty() {
                        detail = progress.clone();
                    } else if !progress.is_empty() {
                        detail = format!("{detail} ({progress})");
                    }
                    return Err(PrismError::TaskFailed {
                        uuid: uuid.to_string(),
                        operation: field("operation_type"),
                        state,
                        detail,
                    });
                }
            }
            if started.elapsed() >= limit {
                return Err(PrismError::TaskTimeout {
                    uuid: uuid.to_string(),
                    state,
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Every entity of `kind` (`POST /{kind}s/list`), paging by offset.
    pub async fn list_all(
        &self,
        kind: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Value>, PrismError> {
        const PAGE: u64 = 100;
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            let mut body = json!({"kind": kind, "length": PAGE, "offset": offset});
            if let Some(f) = filter {
                body["filter"] = json!(f);
            }
            let page = self
                .call(Method::POST, &format!("/{kind}s/list"), Some(&body))
                .await?;
            let entities = page
                .get("entities")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let n = entities.len() as u64;
            out.extend(entities);
            let total = page
                .pointer("/metadata/total_matches")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            offset += n;
            if n == 0 || offset >= total {
                return Ok(out);
            }
        }
    }
}

/// A reqwest error with its causes (reqwest's Display hides them).
pub fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v3_error_bodies_and_plain_text() {
        let body = r#"{"api_version":"3.1","code":404,"kind":"vm","message_list":[{"message":"vm : 8f65 does not exist.","reason":"ENTITY_NOT_FOUND"}],"state":"ERROR"}"#;
        assert_eq!(
            error_message(body),
            "vm : 8f65 does not exist. (ENTITY_NOT_FOUND)"
        );
        assert_eq!(
            error_message("Authentication required\n"),
            "Authentication required"
        );
    }

    #[test]
    fn task_uuid_is_a_string_or_a_list() {
        let a = json!({"status": {"execution_context": {"task_uuid": "t1"}}});
        let b = json!({"status": {"execution_context": {"task_uuid": ["t1", "t2"]}}});
        let listed = json!({"status": {"execution_context": {"task_uuids": ["t3"]}}});
        assert_eq!(task_uuids(&a), vec!["t1"]);
        assert_eq!(task_uuids(&b), vec!["t1", "t2"]);
        assert_eq!(task_uuids(&listed), vec!["t3"]);
        assert!(task_uuids(&json!({})).is_empty());
    }
}
