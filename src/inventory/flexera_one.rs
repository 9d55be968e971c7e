//! Flexera One: an OAuth access token (a user's refresh token, or a service
//! account's client credentials), then the report-execute API searched by
//! hostname, following `nextPage` links with their `skipToken` normalised as
//! Flexera's own report client does.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{InventoryClient, InventoryError, InventoryHit};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlexeraOneConfig {
    /// `https://login.flexera.com/oidc/token` (EU: login.flexera.eu).
    pub token_url: String,
    /// `https://api.flexera.com` (EU: api.flexera.eu).
    pub api_base: String,
    #[serde(deserialize_with = "string_or_number")]
    pub org_id: String,
    #[serde(deserialize_with = "string_or_number")]
    pub report_id: String,
    /// The report column holding the computer name.
    pub computer_column: String,
    /// A user's refresh token (secret; set it from the environment:
    /// VMSCAN_INVENTORY__FLEXERA_ONE__REFRESH_TOKEN).
    #[serde(skip_serializing)]
    pub refresh_token: Option<SecretString>,
    /// A service account instead (grant_type=client_credentials): its
    /// client id, and its secret (VMSCAN_INVENTORY__FLEXERA_ONE__CLIENT_SECRET).
    pub client_id: String,
    #[serde(skip_serializing)]
    pub client_secret: Option<SecretString>,
    pub timeout_secs: u64,
    /// Pages followed at most per lookup.
    pub max_pages: usize,
}

impl Default for FlexeraOneConfig {
    fn default() -> Self {
        FlexeraOneConfig {
            token_url: "https://login.flexera.com/oidc/token".into(),
            api_base: "https://api.flexera.com".into(),
            org_id: String::new(),
            report_id: String::new(),
            computer_column: "ComputerName".into(),
            refresh_token: None,
            client_id: String::new(),
            client_secret: None,
            timeout_secs: 60,
            max_pages: 50,
        }
    }
}

/// Ids are numbers in Flexera; accept `35715` as well as `"35715"` (environment
/// variables arrive as numbers when they look like one).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

pub struct FlexeraOne {
    cfg: FlexeraOneConfig,
    http: reqwest::Client,
    token: Mutex<Option<(SecretString, Instant)>>,
}

const SYSTEM: &str = "Flexera One";

/// Access tokens last an hour; renew a little early.
const TOKEN_LIFETIME: Duration = Duration::from_secs(55 * 60);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

/// `expires_in` as a number or a string of digits (OAuth servers send both).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        N(u64),
        F(f64),
        S(String),
    }
    Ok(match Option::<Secs>::deserialize(d)? {
        None => None,
        Some(Secs::N(n)) => Some(n),
        Some(Secs::F(f)) if f >= 0.0 => Some(f as u64),
        Some(Secs::F(_)) => None,
        Some(Secs::S(s)) => s.trim().parse().ok(),
    })
}

/// Which OAuth grant the configuration asks for.
fn grant(cfg: &FlexeraOneConfig) -> Result<Vec<(&'static str, String)>, String> {
    match (&cfg.client_secret, &cfg.refresh_token) {
        (Some(secret), _) if !cfg.client_id.is_empty() => Ok(vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", cfg.client_id.clone()),
            ("client_secret", secret.expose_secret().to_string()),
        ]),
        (Some(_), _) => Err("a client_secret is configured without its client_id (inventory.flexera_one.client_id)".into()),
        (None, Some(rt)) => Ok(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", rt.expose_secret().to_string()),
        ]),
        (None, None) => Err("no credentials configured: a refresh_token, or a service account's client_id and client_secret (inventory.flexera_one)".into()),
    }
}

/// A `nextPage` link with its skipToken decoded to the token itself and
/// encoded once. Flexera's service double-encodes it (`%253D`); Flexera's
/// own report client (policy_templates schedule_itam_report.pt) decodes
/// `%3D` and `%253D` back to `=` before sending it as `skipToken`.
pub fn normalise_next_page(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_string();
    };
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let mut v = v.into_owned();
            if k == "skipToken" {
                // At most a few rounds: a token is never encoded deeper.
                for _ in 0..3 {
                    let once = url::form_urlencoded::parse(format!("x={v}").as_bytes())
                        .next()
                        .map(|(_, d)| d.into_owned())
                        .unwrap_or_default();
                    if once == v || !v.contains('%') {
                        break;
                    }
                    v = once;
                }
            }
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

#[derive(Deserialize)]
struct ReportPage {
    #[serde(default)]
    values: Vec<serde_json::Value>,
    #[serde(default, rename = "nextPage")]
    next_page: Option<String>,
}

fn err_connect(url: &str, e: reqwest::Error) -> InventoryError {
    InventoryError::Connect {
        system: SYSTEM.into(),
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// Error bodies are shown to people: keep them short.
fn short(body: &str) -> String {
    let b = body.trim();
    if b.chars().count() > 500 {
        format!("{}…", b.chars().take(500).collect::<String>())
    } else {
        b.to_string()
    }
}

impl FlexeraOne {
    pub fn new(cfg: FlexeraOneConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .build()
            .expect("HTTP client configuration is valid");
        FlexeraOne {
            cfg,
            http,
            token: Mutex::new(None),
        }
    }

    async fn access_token(&self) -> Result<SecretString, InventoryError> {
        let mut guard = self.token.lock().await;
        if let Some((t, until)) = guard.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let form = grant(&self.cfg).map_err(|reason| InventoryError::Token {
            system: SYSTEM.into(),
            reason,
        })?;
        let resp = self
            .http
            .post(&self.cfg.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| err_connect(&self.cfg.token_url, e))?;
        let status = resp.status();
        let body = crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT)
            .await
            .unwrap_or_else(|e| format!("(unreadable answer: {e})"));
        if !status.is_success() {
            return Err(InventoryError::Token {
                system: SYSTEM.into(),
                reason: format!("{status}: {}", short(&body)),
            });
        }
        let parsed: TokenResponse =
            serde_json::from_str(&body).map_err(|e| InventoryError::Token {
                system: SYSTEM.into(),
                reason: format!("token response is not JSON: {e}"),
            })?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| InventoryError::Token {
                system: SYSTEM.into(),
                reason: "token response has no access_token".into(),
            })?;
        let life = parsed
            .expires_in
            .map(|s| Duration::from_secs(s.saturating_sub(60)))
            .unwrap_or(TOKEN_LIFETIME);
        let token = SecretString::from(token);
        *guard = Some((token.clone(), Instant::now() + life.min(TOKEN_LIFETIME)));
        Ok(token)
    }

    fn first_url(&self, hostname: &str) -> String {
        let base = self.cfg.api_base.trim_end_matches('/');
        let q: String = url::form_urlencoded::byte_serialize(hostname.as_bytes()).collect();
        format!(
            "{base}/fnms/v1/orgs/{}/reports/{}/execute?searchText={q}",
            self.cfg.org_id, self.cfg.report_id
        )
    }

    /// `nextPage` is a path on the API host.
    fn next_url(&self, next: &str) -> String {
        let url = if next.starts_with("http://") || next.starts_with("https://") {
            next.to_string()
        } else {
            format!(
                "{}/{}",
                self.cfg.api_base.trim_end_matches('/'),
                next.trim_start_matches('/')
            )
        };
        normalise_next_page(&url)
    }
}

#[async_trait]
impl InventoryClient for FlexeraOne {
    fn name(&self) -> String {
        format!(
            "{SYSTEM} (org {}, report {})",
            self.cfg.org_id, self.cfg.report_id
        )
    }

    async fn find_computer(&self, hostname: &str) -> Result<Vec<InventoryHit>, InventoryError> {
        let mut url = self.first_url(hostname);
        let mut hits = Vec::new();
        let mut retried_auth = false;
        let mut pages = 0;
        loop {
            let token = self.access_token().await?;
            let resp = self
                .http
                .get(&url)
                .bearer_auth(token.expose_secret())
                .header("Accept", "application/json")
                .send()
                .await
                .map_err(|e| err_connect(&url, e))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !retried_auth {
                // The cached token may have been revoked: fetch a new one once.
                retried_auth = true;
                *self.token.lock().await = None;
                continue;
            }
            let body = crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT)
                .await
                .unwrap_or_else(|e| format!("(unreadable answer: {e})"));
            if !status.is_success() {
                return Err(InventoryError::Status {
                    system: SYSTEM.into(),
                    status: status.as_u16(),
                    url,
                    body: short(&body),
                });
            }
            let page: ReportPage =
                serde_json::from_str(&body).map_err(|e| InventoryError::Shape {
                    system: SYSTEM.into(),
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            for row in page.values {
                let name = row
                    .get(&self.cfg.computer_column)
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                // searchText is a substring search: keep exact (case-insensitive) matches,
                // also when the report holds a fully qualified name.
                let short_name = name.split('.').next().unwrap_or("");
                if name.eq_ignore_ascii_case(hostname) || short_name.eq_ignore_ascii_case(hostname)
                {
                    hits.push(InventoryHit {
                        computer_name: name.to_string(),
                        row,
                    });
                }
            }
            pages += 1;
            match page.next_page.filter(|n| !n.is_empty()) {
                Some(next) if pages < self.cfg.max_pages => url = self.next_url(&next),
                _ => return Ok(hits),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_is_a_number_or_a_string() {
        for body in [
            r#"{"access_token":"a","expires_in":3600}"#,
            r#"{"access_token":"a","expires_in":"3600"}"#,
            r#"{"access_token":"a","expires_in":3600.0}"#,
        ] {
            let t: TokenResponse = serde_json::from_str(body).unwrap();
            assert_eq!(t.expires_in, Some(3600), "{body}");
        }
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(t.expires_in, None);
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"soon"}"#).unwrap();
        assert_eq!(t.expires_in, None);
    }

    #[test]
    fn service_accounts_use_client_credentials() {
        let mut c = FlexeraOneConfig {
            client_id: "svc-1".into(),
            client_secret: Some(SecretString::from("s3".to_string())),
            refresh_token: Some(SecretString::from("rt".to_string())),
            ..FlexeraOneConfig::default()
        };
        let g = grant(&c).unwrap();
        assert_eq!(g[0], ("grant_type", "client_credentials".to_string()));
        assert_eq!(g[1], ("client_id", "svc-1".to_string()));
        c.client_secret = None;
        assert_eq!(grant(&c).unwrap()[0].1, "refresh_token");
        c.refresh_token = None;
        assert!(grant(&c).unwrap_err().contains("no credentials"));
    }

    #[test]
    fn the_skip_token_is_sent_decoded_once() {
        let u = normalise_next_page(
            "https://api.flexera.com/fnms/v1/orgs/1/reports/2/execute?searchText=vm&skipToken=eyJhIjoxfQ%253D%253D",
        );
        assert_eq!(
            u,
            "https://api.flexera.com/fnms/v1/orgs/1/reports/2/execute?searchText=vm&skipToken=eyJhIjoxfQ%3D%3D"
        );
        let plain = "https://h/x?skipToken=abc%3D";
        assert_eq!(normalise_next_page(plain), plain);
    }
}
