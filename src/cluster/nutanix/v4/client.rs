//! Prism Central v4 HTTP: the `{data, metadata}` envelope, `AppMessage`
//! errors, `NTNX-Request-Id` on every write (the idempotency key a retry
//! repeats, so a lost answer never makes a twin) and `If-Match` with the
//! entity's ETag (a 412 or 428 re-reads the entity and tries again).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::super::client::{describe, PrismClient};
use super::super::config::NutanixConfig;
use super::V4Error;

/// How many times a conditional write re-reads a changed entity.
const ETAG_RETRIES: u32 = 10;

/// The message of a v4 error body: `data.error` is a list of `AppMessage`
/// (`code`, `message`, `errorGroup`) or a `SchemaValidationError`; a 401
/// or an unserved path may have no v4 body at all.
pub fn error_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        let t = body.trim();
        return if t.is_empty() {
            "(empty body)".into()
        } else {
            t.chars().take(500).collect()
        };
    };
    let err = v.pointer("/data/error").unwrap_or(&Value::Null);
    if let Some(list) = err.as_array() {
        let msgs: Vec<String> = list.iter().map(app_message).collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    if let Some(items) = err.get("validationErrorMessages").and_then(Value::as_array) {
        let msgs: Vec<String> = items
            .iter()
            .map(|m| {
                format!(
                    "{}: {}",
                    m.get("attributePath")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    m.get("message").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect();
        return msgs.join("; ");
    }
    // Unserved paths answer the web server's own JSON (packer issue #370).
    v.get("message")
        .or_else(|| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(500).collect())
}

/// "VMM-20005 Failed to … (ENTITY_NOT_FOUND)" from one `AppMessage`.
pub fn app_message(m: &Value) -> String {
    let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = match (s("code"), s("message")) {
        ("", msg) => msg.to_string(),
        (code, msg) => format!("{code} {msg}"),
    };
    if !s("errorGroup").is_empty() {
        out.push_str(&format!(" ({})", s("errorGroup")));
    }
    out
}

/// A 404 that is not a v4 answer: the path (so the API version) is not served.
fn is_unserved(body: &str) -> bool {
    serde_json::from_str::<Value>(body)
        .map(|v| v.get("$objectType").is_none() && v.pointer("/data/error").is_none())
        .unwrap_or(true)
}

/// A read entity: its `data` and the ETag a write to it must send back.
pub struct Read {
    pub data: Value,
    pub etag: Option<String>,
}

pub struct V4Client {
    /// The v3 client's HTTP client, auth and settings: one Prism Central.
    pub prism: PrismClient,
}

impl V4Client {
    pub fn new(cfg: NutanixConfig) -> Result<V4Client, V4Error> {
        Ok(V4Client {
            prism: PrismClient::new(cfg).map_err(|e| V4Error::Config(e.to_string()))?,
        })
    }

    pub fn cfg(&self) -> &NutanixConfig {
        &self.prism.cfg
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cfg().url.trim_end_matches('/'))
    }

    /// `GET path` → its `data` and ETag.
    pub async fn get(&self, path: &str) -> Result<Read, V4Error> {
        self.send(Method::GET, path, None, None, None).await
    }

    /// A write with its idempotency key; the same key on every retry.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        request_id: &str,
    ) -> Result<Value, V4Error> {
        Ok(self
            .send(method, path, body, if_match, Some(request_id))
            .await?
            .data)
    }

    /// `GET path` as a typed entity, with its ETag.
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Option<String>), V4Error> {
        let read = self.get(path).await?;
        Ok((typed(path, read.data)?, read.etag))
    }

    /// Every item of a list, typed.
    pub async fn list_as<T: DeserializeOwned>(
        &self,
        path: &str,
        filter: Option<&str>,
    ) -> Result<Vec<T>, V4Error> {
        self.list_all(path, filter)
            .await?
            .into_iter()
            .map(|v| typed(path, v))
            .collect()
    }

    /// `POST path` (an asynchronous create) under one fresh idempotency key,
    /// which every transport retry repeats: a create whose answer was lost
    /// is answered again, never made twice. Returns the task's extId.
    pub async fn create<B: Serialize>(&self, path: &str, body: &B) -> Result<String, V4Error> {
        let body = serde_json::to_value(body)
            .map_err(|e| V4Error::Protocol(format!("POST {path}: {e}")))?;
        let data = self
            .write(Method::POST, path, Some(&body), None, &new_request_id())
            .await?;
        task_reference(path, data)
    }

    /// A write that needs the entity's ETag: read it, write with `If-Match`;
    /// a 412 (changed since) or 428 (missing) reads again and retries.
    /// Transport retries repeat the request id; a retry after a 412 takes a
    /// new one, since the refused write did nothing (and a server that
    /// replays answers by request id would otherwise answer 412 again).
    /// Returns the task's extId.
    pub async fn write_conditional(
        &self,
        method: Method,
        entity: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, V4Error> {
        let mut tries = 0;
        loop {
            let request_id = new_request_id();
            let etag = self.get(entity).await?.etag;
            match self
                .write(method.clone(), path, body, etag.as_deref(), &request_id)
                .await
            {
                Err(V4Error::Http { status, .. })
                    if (status == StatusCode::PRECONDITION_FAILED
                        || status == StatusCode::PRECONDITION_REQUIRED)
                        && tries < ETAG_RETRIES =>
                {
                    tries += 1;
                    tracing::info!(%path, tries, "the entity changed since it was read; reading it again");
                }
                other => return task_reference(path, other?),
            }
        }
    }

    /// Every item of a list, paging with `$page` (0-based) and `$limit`
    /// until `metadata.totalAvailableResults` or an empty page.
    pub async fn list_all(&self, path: &str, filter: Option<&str>) -> Result<Vec<Value>, V4Error> {
        const LIMIT: usize = 100;
        let mut out = Vec::new();
        for page in 0.. {
            let mut q = format!("{path}?$page={page}&$limit={LIMIT}");
            if let Some(f) = filter {
                q.push_str(&format!("&$filter={}", pct(f)));
            }
            let env = self.send_raw(Method::GET, &q, None, None, None).await?.0;
            let items = env
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let n = items.len();
            out.extend(items);
            let total = env
                .pointer("/metadata/totalAvailableResults")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            if n == 0 || out.len() >= total {
                break;
            }
        }
        Ok(out)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Read, V4Error> {
        let (env, etag) = self
            .send_raw(method, path, body, if_match, request_id)
            .await?;
        Ok(Read {
            data: env.get("data").cloned().unwrap_or(Value::Null),
            etag,
        })
    }

    /// One request with retries (5xx, 429, dropped connections) and back-off.
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<(Value, Option<String>), V4Error> {
        let cfg = self.cfg();
        let mut delay = Duration::from_millis(cfg.retry_backoff_ms.max(1));
        let attempts = cfg.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match self
                .once(method.clone(), path, body, if_match, request_id)
                .await
            {
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

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<(Value, Option<String>), V4Error> {
        let mut req = self
            .prism
            .http()
            .request(method.clone(), self.url(path))
            .timeout(Duration::from_secs(self.cfg().request_secs.max(1)));
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").json(b);
        }
        if let Some(tag) = if_match {
            req = req.header(IF_MATCH, tag);
        }
        if let Some(id) = request_id {
            req = req.header("NTNX-Request-Id", id);
        }
        let unanswered = |e: reqwest::Error| {
            let p = super::super::client::PrismError::unanswered(method.clone(), path, &e);
            match p {
                super::super::client::PrismError::Certificate { .. } => {
                    V4Error::Certificate(p.to_string())
                }
                _ => V4Error::Transport {
                    method: method.clone(),
                    path: path.to_string(),
                    reason: describe(&e),
                },
            }
        };
        let resp = req.send().await.map_err(unanswered)?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.map_err(unanswered)?;
        if status == StatusCode::NOT_FOUND && is_unserved(&text) {
            return Err(V4Error::NotServed {
                path: path.split('?').next().unwrap_or(path).to_string(),
            });
        }
        if !status.is_success() {
            return Err(V4Error::Http {
                method,
                path: path.to_string(),
                status,
                message: error_message(&text),
            });
        }
        if text.trim().is_empty() {
            return Ok((Value::Null, etag));
        }
        let env: Value = serde_json::from_str(&text).map_err(|e| {
            V4Error::Protocol(format!("{method} {path}: the answer is not JSON: {e}"))
        })?;
        Ok((env, etag))
    }
}

fn typed<T: DeserializeOwned>(path: &str, v: Value) -> Result<T, V4Error> {
    serde_json::from_value(v).map_err(|e| {
        V4Error::Protocol(format!(
            "{}: unexpected answer: {e}",
            path.split('?').next().unwrap_or(path)
        ))
    })
}

/// The task a mutation started: `data` is a `prism.v4.config.TaskReference`.
pub(super) fn task_reference(path: &str, data: Value) -> Result<String, V4Error> {
    data.get("extId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| V4Error::Protocol(format!("{path}: the answer names no task (data.extId)")))
}

/// A fresh idempotency key for one logical write.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Percent-encodes an OData `$filter` value for the query string.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An OData string literal: `'` doubled.
pub fn odata_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_app_messages_validation_errors_and_foreign_bodies() {
        // The recorded 404 of GET image (CAPX nutanixmachine_controller_test.go).
        let nf = r#"{"data":{"error":[{"$reserved":{"$fv":"v4.r1"},"$objectType":"vmm.v4.error.AppMessage","message":"Failed to perform the operation as the backend service could not find the entity.","severity":"ERROR","code":"VMM-20005","locale":"en_US"}],"$reserved":{"$fv":"v4.r1"},"$objectType":"vmm.v4.error.ErrorResponse"},"$reserved":{"$fv":"v4.r1"},"$objectType":"vmm.v4.content.GetImageApiResponse"}"#;
        assert_eq!(
            error_message(nf),
            "VMM-20005 Failed to perform the operation as the backend service could not find the entity."
        );
        assert!(!is_unserved(nf));
        let bad = r#"{"data":{"error":{"validationErrorMessages":[{"attributePath":"name","message":"must not be null"}]}}}"#;
        assert_eq!(error_message(bad), "name: must not be null");
        let unserved = r#"{"message": "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again."}"#;
        assert!(is_unserved(unserved));
        assert!(error_message(unserved).starts_with("The requested URL was not found"));
        assert_eq!(error_message("Unauthorized\n"), "Unauthorized");
    }

    #[test]
    fn odata_literals_double_their_quotes() {
        assert_eq!(odata_str("it's"), "'it''s'");
        assert_eq!(pct("name eq 'a b'"), "name%20eq%20%27a%20b%27");
    }
}
