//! Keystone v3: a project-scoped token (password or application credential)
//! and the endpoints the service catalog gives for it, renewed before it
//! expires or when a service says it has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::error::{error_message, OsError};
use super::OpenStackConfig;
use crate::cluster::tls::certificate_rejected;

/// Renew the token when it has less than this left (or a quarter of its
/// lifetime, for short-lived tokens).
const RENEW_MARGIN: Duration = Duration::from_secs(120);

/// One token and the endpoints it came with.
pub struct Session {
    pub token: SecretString,
    /// When to get a new one, on our clock: the token's lifetime (Keystone's
    /// `expires_at - issued_at`, immune to clock skew) less a margin.
    pub renew_at: Option<DateTime<Utc>>,
    /// Nova, with `/v2.1[/{project}]`.
    pub compute: String,
    /// Glance and Neutron roots, without their version (`/v2`, `/v2.0` are added).
    pub image: String,
    pub network: String,
    /// Counts authentications: a 401 drops only the token it was given.
    pub generation: u64,
}

impl Session {
    fn fresh(&self) -> bool {
        self.renew_at.is_none_or(|at| Utc::now() < at)
    }
}

pub struct Keystone {
    cfg: Arc<OpenStackConfig>,
    http: reqwest::Client,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    generation: AtomicU64,
    auths: AtomicU64,
}

impl Keystone {
    pub fn new(cfg: Arc<OpenStackConfig>, http: reqwest::Client) -> Keystone {
        Keystone {
            cfg,
            http,
            session: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            auths: AtomicU64::new(0),
        }
    }

    /// The current session, authenticating first when there is none or it
    /// is about to expire.
    pub async fn session(&self) -> Result<Arc<Session>, OsError> {
        let mut held = self.session.lock().await;
        if let Some(s) = held.as_ref() {
            if s.fresh() {
                return Ok(s.clone());
            }
            tracing::info!(cloud = %self.who(), "Keystone token expires soon: renewing");
        }
        let s = Arc::new(self.authenticate().await?);
        *held = Some(s.clone());
        Ok(s)
    }

    /// A service answered 401 to the token of `generation`: forget it.
    pub async fn invalidate(&self, generation: u64) {
        let mut held = self.session.lock().await;
        if held.as_ref().map(|s| s.generation) == Some(generation) {
            *held = None;
        }
    }

    /// How many tokens were issued so far.
    pub fn authentications(&self) -> u64 {
        self.auths.load(Ordering::Relaxed)
    }

    fn who(&self) -> String {
        if self.uses_app_credential() {
            format!(
                "application credential {}",
                self.cfg.application_credential_id
            )
        } else {
            format!(
                "user {} (domain {}) on project {}",
                self.cfg.username, self.cfg.user_domain_name, self.cfg.project_name
            )
        }
    }

    fn uses_app_credential(&self) -> bool {
        !self.cfg.application_credential_id.is_empty()
            && self.cfg.application_credential_secret.is_some()
    }

    fn tokens_url(&self) -> String {
        let base = self.cfg.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        }
    }

    fn body(&self) -> Result<Value, OsError> {
        if self.uses_app_credential() {
            let secret = self.cfg.application_credential_secret.as_ref();
            return Ok(json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": self.cfg.application_credential_id,
                    "secret": secret.map(|s| s.expose_secret()).unwrap_or_default(),
                }
            }}}));
        }
        let Some(password) = self.cfg.password.as_ref() else {
            return Err(OsError::other(format!(
                "{}: no password and no application credential configured",
                self.who()
            )));
        };
        Ok(json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.cfg.username,
                "domain": {"name": self.cfg.user_domain_name},
                "password": password.expose_secret(),
            }}},
            "scope": {"project": {
                "name": self.cfg.project_name,
                "domain": {"name": self.cfg.project_domain_name},
            }}
        }}))
    }

    async fn authenticate(&self) -> Result<Session, OsError> {
        let url = self.tokens_url();
        let body = self.body()?;
        let max = self.cfg.max_attempts.max(1);
        let transport =
            |e: &reqwest::Error| OsError::unanswered("Keystone", "POST", "/v3/auth/tokens", e);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(&url)
                .timeout(Duration::from_secs(self.cfg.request_secs.max(1)))
                .json(&body)
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) if attempt < max && !certificate_rejected(&e) => {
                    tracing::warn!(cloud = %self.who(), "Keystone unreachable (try {attempt}/{max}): {e}");
                    super::http::backoff(&self.cfg, attempt).await;
                    continue;
                }
                Err(e) => return Err(transport(&e)),
            };
            let status = r.status().as_u16();
            let token = r
                .headers()
                .get("X-Subject-Token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = match r.text().await {
                Ok(t) => t,
                Err(e) if attempt < max => {
                    tracing::warn!(cloud = %self.who(), "Keystone answer lost (try {attempt}/{max}): {e}");
                    super::http::backoff(&self.cfg, attempt).await;
                    continue;
                }
                Err(e) => return Err(transport(&e)),
            };
            match status {
                200..=299 => {
                    let token = token.ok_or_else(|| {
                        OsError::other("Keystone issued a token without an X-Subject-Token header")
                    })?;
                    let body: Value = serde_json::from_str(&text).map_err(|e| {
                        OsError::other(format!("Keystone's token is not JSON: {e}"))
                    })?;
                    return self.session_of(token, &body);
                }
                401 | 403 => {
                    return Err(OsError::Auth {
                        who: self.who(),
                        message: format!("HTTP {status}: {}", error_message(&text)),
                    })
                }
                s if (s >= 500 || s == 429) && attempt < max => {
                    tracing::warn!(cloud = %self.who(), "Keystone answered {s} (try {attempt}/{max})");
                    super::http::backoff(&self.cfg, attempt).await;
                }
                _ => {
                    return Err(OsError::Http {
                        service: "Keystone",
                        method: "POST".into(),
                        path: "/v3/auth/tokens".into(),
                        status,
                        message: error_message(&text),
                    })
                }
            }
        }
    }

    fn session_of(&self, token: String, body: &Value) -> Result<Session, OsError> {
        let t = &body["token"];
        let time = |k: &str| {
            t[k].as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.with_timezone(&Utc))
        };
        let expires_at = time("expires_at");
        let renew_at = expires_at.map(|exp| {
            let lifetime =
                (exp - time("issued_at").unwrap_or_else(Utc::now)).max(chrono::Duration::zero());
            let margin = chrono::Duration::from_std(RENEW_MARGIN)
                .unwrap_or_default()
                .min(lifetime / 4);
            Utc::now() + lifetime - margin
        });
        let catalog = t["catalog"].as_array().cloned().unwrap_or_default();
        let compute = self.endpoint(&catalog, "compute")?;
        let image = strip_version(&self.endpoint(&catalog, "image")?, "/v2");
        let network = strip_version(&self.endpoint(&catalog, "network")?, "/v2.0");
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.auths.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cloud = %self.who(), %compute, %image, %network, ?expires_at, "Keystone token issued");
        Ok(Session {
            token: token.into(),
            renew_at,
            compute,
            image,
            network,
            generation,
        })
    }

    /// The catalog URL of service `kind` for the configured interface and region.
    fn endpoint(&self, catalog: &[Value], kind: &str) -> Result<String, OsError> {
        let region = self.cfg.region.as_deref().filter(|r| !r.is_empty());
        let found = catalog
            .iter()
            .filter(|s| s["type"] == kind)
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .find(|e| {
                e["interface"] == self.cfg.interface.as_str()
                    && region.is_none_or(|r| e["region"] == r || e["region_id"] == r)
            });
        found
            .and_then(|e| {
                e["url"]
                    .as_str()
                    .map(|u| u.trim_end_matches('/').to_string())
            })
            .ok_or_else(|| {
                OsError::other(format!(
                    "the service catalog has no {} endpoint for {kind}{}",
                    self.cfg.interface,
                    region
                        .map(|r| format!(" in region {r}"))
                        .unwrap_or_default()
                ))
            })
    }
}

fn strip_version(url: &str, version: &str) -> String {
    url.strip_suffix(version).unwrap_or(url).to_string()
}
