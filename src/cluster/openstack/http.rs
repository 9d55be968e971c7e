//! One authenticated request to Nova, Glance or Neutron: timeouts, retries
//! with back-off for 5xx, 429 and lost connections (not for a refused
//! certificate), one re-authentication on 401, and the API's own error message.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::auth::{Keystone, Session};
use super::error::{error_message, OsError};
use super::OpenStackConfig;
use crate::cluster::tls::{certificate_rejected, client_builder};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Compute,
    Image,
    Network,
}

impl Service {
    pub fn label(self) -> &'static str {
        match self {
            Service::Compute => "Nova",
            Service::Image => "Glance",
            Service::Network => "Neutron",
        }
    }

    /// `path` starts with the API version for Glance (`/v2/…`) and Neutron
    /// (`/v2.0/…`); Nova's endpoint already carries it.
    fn url(self, s: &Session, path: &str) -> String {
        let base = match self {
            Service::Compute => &s.compute,
            Service::Image => &s.image,
            Service::Network => &s.network,
        };
        format!("{base}{path}")
    }
}

pub struct Answer {
    pub body: Value,
}

pub struct Api {
    pub cfg: Arc<OpenStackConfig>,
    pub http: reqwest::Client,
    pub keystone: Keystone,
}

/// The text of a reqwest error with its causes ("error sending request: connection refused").
pub fn describe(e: &reqwest::Error) -> String {
    let head = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    crate::domain::with_causes(head, e)
}

/// Waits before try `attempt + 1`: `retry_backoff_ms` doubling, at most 30 s.
pub async fn backoff(cfg: &OpenStackConfig, attempt: u32) {
    let ms = cfg
        .retry_backoff_ms
        .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(10))
        .min(30_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Api {
    pub fn new(cfg: Arc<OpenStackConfig>) -> Result<Api, String> {
        let http = client_builder(cfg.request_secs, cfg.verify_tls, cfg.ca_bundle.as_deref())
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Api {
            keystone: Keystone::new(cfg.clone(), http.clone()),
            cfg,
            http,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.request_secs.max(1))
    }

    pub async fn get(&self, service: Service, path: &str) -> Result<Value, OsError> {
        Ok(self
            .call(service, Method::GET, path, None, false)
            .await?
            .body)
    }

    /// Every item under `key` of a paged listing, starting at `first` and
    /// following the path `next` finds in each page.
    pub async fn get_all(
        &self,
        service: Service,
        first: String,
        key: &str,
        next: impl Fn(&Value) -> Option<String>,
    ) -> Result<Vec<Value>, OsError> {
        let mut path = first;
        let mut all = Vec::new();
        // Bounded, in case a server keeps linking to more pages.
        for _ in 0..10_000 {
            let mut page = self.get(service, &path).await?;
            if let Some(items) = page.get_mut(key).and_then(Value::as_array_mut) {
                all.append(items);
            }
            match next(&page) {
                Some(p) => path = p,
                None => break,
            }
        }
        Ok(all)
    }

    /// Sends a request, retrying what can succeed later. `conflict_retry`:
    /// a 409 means "busy now" (Nova's task states) and is retried too.
    pub async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        json: Option<&Value>,
        conflict_retry: bool,
    ) -> Result<Answer, OsError> {
        let max = self.cfg.max_attempts.max(1);
        let label = service.label();
        let shown = path.split('?').next().unwrap_or(path).to_string();
        let mut reauthenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = self.keystone.session().await?;
            let mut rb = self
                .http
                .request(method.clone(), service.url(&session, path))
                .header("X-Auth-Token", session.token.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(self.request_timeout());
            if let Some(j) = json {
                rb = rb.json(j);
            }
            let lost = |e: &reqwest::Error| OsError::unanswered(label, method.as_str(), &shown, e);
            let r = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if attempt < max && !certificate_rejected(&e) {
                        tracing::warn!(
                            "{label} {method} {shown}: {} (try {attempt}/{max})",
                            describe(&e)
                        );
                        backoff(&self.cfg, attempt).await;
                        continue;
                    }
                    return Err(lost(&e));
                }
            };
            let status = r.status();
            let text = match crate::bounded_body::text(r, crate::bounded_body::API_BODY_LIMIT).await
            {
                Ok(t) => t,
                Err(crate::bounded_body::BodyError::TooLarge { limit }) => {
                    return Err(OsError::other(format!(
                        "{label} {method} {shown}: the answer is larger than {limit} bytes; refused"
                    )))
                }
                Err(crate::bounded_body::BodyError::Transport(e)) => {
                    if attempt < max {
                        tracing::warn!(
                            "{label} {method} {shown}: answer lost: {} (try {attempt}/{max})",
                            describe(&e)
                        );
                        backoff(&self.cfg, attempt).await;
                        continue;
                    }
                    return Err(lost(&e));
                }
            };
            if status.is_success() {
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                return Ok(Answer { body });
            }
            let message = error_message(&text);
            if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                // The token expired or was revoked under us: one new token, same try.
                tracing::info!("{label} {method} {shown}: 401 ({message}); authenticating again");
                reauthenticated = true;
                attempt -= 1;
                self.keystone.invalidate(session.generation).await;
                continue;
            }
            let again = status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || (status == StatusCode::CONFLICT && conflict_retry);
            if again && attempt < max {
                tracing::warn!(
                    "{label} {method} {shown}: HTTP {status}: {message} (try {attempt}/{max})"
                );
                backoff(&self.cfg, attempt).await;
                continue;
            }
            return Err(OsError::Http {
                service: label,
                method: method.to_string(),
                path: shown,
                status: status.as_u16(),
                message,
            });
        }
    }
}
