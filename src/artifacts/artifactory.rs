//! JFrog Artifactory over REST: streamed deploy with checksum headers (a
//! checksum deploy first, so known bytes are not sent twice), item
//! properties, move and delete. 5xx and dropped connections are retried with
//! back-off; 4xx answers are reported with Artifactory's own message.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{
    join_url, ArtifactError, ArtifactStore, Checksums, DeployRequest, Deployed, Properties,
};
use crate::config::ArtifactoryConfig;

const STORE: &str = "Artifactory";

pub struct ArtifactoryStore {
    cfg: ArtifactoryConfig,
    client: reqwest::Client,
    base: String,
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
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

/// A repository path with each segment encoded (slashes kept).
fn encode_path(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .map(pct)
        .collect::<Vec<_>>()
        .join("/")
}

/// Matrix parameters for a deploy URL: `;k=v;k2=v2`, keys and values URL-escaped.
pub fn matrix_params(props: &Properties) -> String {
    props
        .iter()
        .map(|(k, v)| format!(";{}={}", pct(k), pct(v)))
        .collect()
}

/// The `properties=` value of the storage API: `k=v;k2=v2`. JFrog's Set
/// Item Properties docs: `, \ | =` inside a key or value take a backslash
/// (sent as `%5C`). A `;` must not: `%5C;` separates *values* there, so it
/// is only percent-encoded (`%3B`), as jfrog-client-go's
/// `ToEncodedString` sends a parsed `\;`.
pub fn properties_param(props: &Properties) -> String {
    fn esc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if "\\,|=".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        pct(&out)
    }
    props
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(";")
}

/// Artifactory's error body: `{"errors":[{"status":404,"message":"…"}]}`.
#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    message: String,
}

#[derive(Deserialize)]
struct ItemCreated {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default, rename = "downloadUri")]
    download_uri: Option<String>,
    #[serde(default)]
    checksums: Option<ResponseChecksums>,
}

#[derive(Deserialize)]
struct ResponseChecksums {
    sha1: Option<String>,
    md5: Option<String>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct PropertiesBody {
    properties: std::collections::BTreeMap<String, Vec<String>>,
}

/// The message of an error answer: Artifactory's messages, else the body's start.
async fn error_message(resp: Response) -> String {
    let status = resp.status();
    let text = crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT)
        .await
        .unwrap_or_else(|e| e.to_string());
    if let Ok(b) = serde_json::from_str::<ErrorBody>(&text) {
        let msgs: Vec<_> = b.errors.into_iter().map(|e| e.message).collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    let t = text.trim();
    if t.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        t.chars().take(500).collect()
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

impl ArtifactoryStore {
    pub fn new(cfg: ArtifactoryConfig) -> Result<Self, ArtifactError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .read_timeout(Duration::from_secs(cfg.read_timeout_secs))
            .default_headers(auth_headers(&cfg)?)
            .build()
            .map_err(|e| ArtifactError::Config(format!("HTTP client: {}", chain(&e))))?;
        let base = cfg.url.trim_end_matches('/').to_string();
        Ok(ArtifactoryStore { cfg, client, base })
    }

    /// Sends a request, retrying 5xx and transport errors with back-off.
    /// 4xx comes back as [`ArtifactError::Refused`] at once.
    async fn send(
        &self,
        method: &'static str,
        what: &str,
        build: impl Fn() -> futures::future::BoxFuture<'static, Result<RequestBuilder, ArtifactError>>,
    ) -> Result<Response, ArtifactError> {
        let attempts = self.cfg.attempts.max(1);
        let mut delay = Duration::from_millis(self.cfg.backoff_ms);
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tracing::warn!(%what, attempt, error = %last, "Artifactory request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            let req = build().await?;
            match req.send().await {
                Err(e) => last = chain(&e),
                Ok(resp) if resp.status().is_server_error() => {
                    let status = resp.status().as_u16();
                    last = format!("{status} {}", error_message(resp).await);
                }
                Ok(resp) if resp.status().is_client_error() => {
                    let status = resp.status().as_u16();
                    return Err(ArtifactError::Refused {
                        store: STORE,
                        status,
                        method,
                        what: what.to_string(),
                        message: error_message(resp).await,
                    });
                }
                Ok(resp) => return Ok(resp),
            }
        }
        Err(ArtifactError::Unavailable {
            store: STORE,
            method,
            what: what.to_string(),
            attempts,
            message: last,
        })
    }

    fn deploy_request(
        &self,
        url: &str,
        req: &DeployRequest,
        checksum_only: bool,
    ) -> futures::future::BoxFuture<'static, Result<RequestBuilder, ArtifactError>> {
        let mut b = self
            .client
            .put(url)
            .header("X-Checksum-Sha1", &req.checksums.sha1)
            .header("X-Checksum-Sha256", &req.checksums.sha256)
            .header("X-Checksum-Md5", &req.checksums.md5);
        let file = req.file.clone();
        let size = req.size;
        Box::pin(async move {
            if checksum_only {
                b = b
                    .header("X-Checksum-Deploy", "true")
                    .header(CONTENT_LENGTH, 0);
                return Ok(b);
            }
            // Reopened for every attempt: the body streams from disk, never whole in memory.
            let f = tokio::fs::File::open(&file)
                .await
                .map_err(|e| ArtifactError::io(format!("cannot open {}", file.display()), e))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
            Ok(b.header(CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(stream)))
        })
    }

    /// Checks the checksums Artifactory reports against the ones sent.
    fn verify(path: &str, sent: &Checksums, got: &ResponseChecksums) -> Result<(), ArtifactError> {
        let pairs = [
            ("sha1", &sent.sha1, &got.sha1),
            ("sha256", &sent.sha256, &got.sha256),
            ("md5", &sent.md5, &got.md5),
        ];
        let mut checked = 0;
        for (algo, sent, stored) in pairs {
            if let Some(stored) = stored {
                if !stored.eq_ignore_ascii_case(sent) {
                    return Err(ArtifactError::ChecksumMismatch {
                        path: path.to_string(),
                        algo,
                        sent: sent.clone(),
                        stored: stored.clone(),
                    });
                }
                checked += 1;
            }
        }
        if checked == 0 {
            return Err(ArtifactError::Protocol(format!(
                "the deploy answer for {path} has no checksums"
            )));
        }
        Ok(())
    }
}

fn auth_headers(cfg: &ArtifactoryConfig) -> Result<HeaderMap, ArtifactError> {
    use base64_basic as b64;
    let mut h = HeaderMap::new();
    let secret = |v: String| {
        let mut v = HeaderValue::from_str(&v).map_err(|_| {
            ArtifactError::Config(
                "Artifactory credentials contain characters not allowed in a header".into(),
            )
        })?;
        v.set_sensitive(true);
        Ok::<_, ArtifactError>(v)
    };
    let user = cfg.user.as_deref().filter(|u| !u.is_empty());
    let nonempty = |s: &Option<secrecy::SecretString>| {
        s.as_ref()
            .map(|s| s.expose_secret().to_string())
            .filter(|s| !s.is_empty())
    };
    // The order jfrog-client-go uses: API key, then access token, then password.
    if let Some(key) = nonempty(&cfg.api_key) {
        match user {
            Some(u) => h.insert(
                AUTHORIZATION,
                secret(format!("Basic {}", b64::encode(&format!("{u}:{key}"))))?,
            ),
            None => h.insert("X-JFrog-Art-Api", secret(key)?),
        };
    } else if let Some(token) = nonempty(&cfg.token) {
        h.insert(AUTHORIZATION, secret(format!("Bearer {token}"))?);
    } else if let (Some(u), Some(pw)) = (user, nonempty(&cfg.password)) {
        h.insert(
            AUTHORIZATION,
            secret(format!("Basic {}", b64::encode(&format!("{u}:{pw}"))))?,
        );
    }
    Ok(h)
}

/// Standard base64 (for Basic auth), small enough not to need a crate.
mod base64_basic {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[async_trait]
impl ArtifactStore for ArtifactoryStore {
    fn kind(&self) -> &'static str {
        "artifactory"
    }

    fn repo(&self) -> &str {
        &self.cfg.repo
    }

    async fn deploy(&self, req: &DeployRequest) -> Result<Deployed, ArtifactError> {
        let repo = self.cfg.repo.clone();
        let what = format!("{repo}/{}", req.path);
        let url = format!(
            "{}{}",
            join_url(&self.base, &repo, &encode_path(&req.path)),
            matrix_params(&req.properties)
        );
        let mut reused = false;
        let mut resp = None;
        if req.size >= self.cfg.min_checksum_deploy_bytes {
            match self
                .send("PUT", &what, || self.deploy_request(&url, req, true))
                .await
            {
                Ok(r) => {
                    reused = true;
                    resp = Some(r);
                }
                // Unknown checksum: upload the bytes.
                Err(ArtifactError::Refused { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let resp = match resp {
            Some(r) => r,
            None => {
                self.send("PUT", &what, || self.deploy_request(&url, req, false))
                    .await?
            }
        };
        let status = resp.status();
        let text = crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT)
            .await
            .map_err(|e| ArtifactError::Unavailable {
                store: STORE,
                method: "PUT",
                what: what.clone(),
                attempts: 1,
                message: format!(
                    "reading the answer: {}",
                    match &e {
                        crate::bounded_body::BodyError::Transport(t) => chain(t),
                        other => other.to_string(),
                    }
                ),
            })?;
        let created: ItemCreated = serde_json::from_str(&text).map_err(|e| {
            ArtifactError::Protocol(format!(
                "deploy of {what} answered {status} with unreadable JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        let sums = created.checksums.ok_or_else(|| {
            ArtifactError::Protocol(format!("the deploy answer for {what} has no checksums"))
        })?;
        Self::verify(&what, &req.checksums, &sums)?;
        // The storage API sets properties exactly (matrix parameters are best effort).
        self.set_properties(&repo, &req.path, &req.properties)
            .await?;
        let url = created
            .download_uri
            .unwrap_or_else(|| join_url(&self.base, &repo, &encode_path(&req.path)));
        Ok(Deployed {
            repo: created.repo.unwrap_or(repo),
            path: created
                .path
                .map(|p| p.trim_start_matches('/').to_string())
                .unwrap_or_else(|| req.path.clone()),
            url,
            reused,
        })
    }

    async fn set_properties(
        &self,
        repo: &str,
        path: &str,
        props: &Properties,
    ) -> Result<(), ArtifactError> {
        if props.is_empty() {
            return Ok(());
        }
        let url = format!(
            "{}?properties={}&recursive=0",
            join_url(
                &format!("{}/api/storage", self.base),
                repo,
                &encode_path(path)
            ),
            properties_param(props)
        );
        let what = format!("properties of {repo}/{path}");
        let resp = self
            .send("PUT", &what, || {
                let b = self.client.request(Method::PUT, &url);
                Box::pin(async move { Ok(b) })
            })
            .await?;
        if resp.status() != StatusCode::NO_CONTENT && !resp.status().is_success() {
            return Err(ArtifactError::Protocol(format!(
                "setting {what} answered {}",
                resp.status()
            )));
        }
        Ok(())
    }

    async fn properties(&self, repo: &str, path: &str) -> Result<Properties, ArtifactError> {
        let url = format!(
            "{}?properties",
            join_url(
                &format!("{}/api/storage", self.base),
                repo,
                &encode_path(path)
            )
        );
        let what = format!("properties of {repo}/{path}");
        let resp = match self
            .send("GET", &what, || {
                let b = self.client.get(&url);
                Box::pin(async move { Ok(b) })
            })
            .await
        {
            Ok(r) => r,
            Err(ArtifactError::Refused {
                status: 404,
                message,
                ..
            }) if message.contains("No properties") => return Ok(Properties::new()),
            Err(e) => return Err(e),
        };
        let text = crate::bounded_body::text(resp, crate::bounded_body::API_BODY_LIMIT)
            .await
            .map_err(|e| ArtifactError::Protocol(format!("{what}: {e}")))?;
        let body: PropertiesBody = serde_json::from_str(&text)
            .map_err(|e| ArtifactError::Protocol(format!("{what}: {e}")))?;
        Ok(body
            .properties
            .into_iter()
            .map(|(k, v)| (k, v.join(",")))
            .collect())
    }

    async fn move_to(
        &self,
        repo: &str,
        path: &str,
        to_repo: &str,
    ) -> Result<String, ArtifactError> {
        let enc = encode_path(path);
        let url = format!(
            "{}?to=/{to_repo}/{enc}",
            join_url(&format!("{}/api/move", self.base), repo, &enc)
        );
        let what = format!("{repo}/{path} to {to_repo}");
        self.send("POST", &what, || {
            let b = self.client.post(&url);
            Box::pin(async move { Ok(b) })
        })
        .await?;
        Ok(join_url(&self.base, to_repo, &enc))
    }

    async fn delete(&self, repo: &str, path: &str) -> Result<(), ArtifactError> {
        let url = join_url(&self.base, repo, &encode_path(path));
        let what = format!("{repo}/{path}");
        match self
            .send("DELETE", &what, || {
                let b = self.client.delete(&url);
                Box::pin(async move { Ok(b) })
            })
            .await
        {
            Ok(_) | Err(ArtifactError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_property_values() {
        let mut p = Properties::new();
        p.insert("vmscan.description".into(), "a,b|c=d;e\\f g".into());
        p.insert("vmscan.name".into(), "rocky".into());
        assert_eq!(
            properties_param(&p),
            "vmscan.description=a%5C%2Cb%5C%7Cc%5C%3Dd%3Be%5C%5Cf%20g;vmscan.name=rocky"
        );
        assert_eq!(
            matrix_params(&p),
            ";vmscan.description=a%2Cb%7Cc%3Dd%3Be%5Cf%20g;vmscan.name=rocky"
        );
    }

    #[test]
    fn encodes_basic_auth() {
        assert_eq!(base64_basic::encode("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_basic::encode("a"), "YQ==");
        assert_eq!(base64_basic::encode("ab"), "YWI=");
    }
}
