//! HTTP(S) transport of WS-Management: Basic or NTLM authentication, and
//! NTLM sealing of each message (multipart/encrypted) on plain HTTP.

use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::ntlm;
use super::soap;
use super::{WinRmAuth, WinRmOptions, WinRmScheme};
use crate::remote::RemoteError;

const SOAP_TYPE: &str = "application/soap+xml;charset=UTF-8";
const BOUNDARY: &str = "Encrypted Boundary";
const SPNEGO_ENCRYPTED: &str = "application/HTTP-SPNEGO-session-encrypted";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// One authenticated channel to the endpoint; requests go one at a time,
/// since an NTLM context and its sequence numbers belong to one connection.
pub struct Transport {
    http: reqwest::Client,
    pub endpoint: String,
    pub addr: String,
    user: String,
    password: SecretString,
    auth: WinRmAuth,
    request_secs: u64,
    seal: bool,
    ntlm: Mutex<Option<ntlm::Session>>,
    /// Held for the whole exchange when NTLM authenticates the connection.
    exchange: Mutex<()>,
}

impl Transport {
    pub fn new(o: &WinRmOptions) -> Result<Self, RemoteError> {
        let addr = format!("{}:{}", o.host, o.port);
        let host = if o.host.contains(':') {
            format!("[{}]", o.host)
        } else {
            o.host.clone()
        };
        let endpoint = format!("{}://{host}:{}/wsman", o.scheme.as_str(), o.port);
        let mut b = reqwest::Client::builder()
            .connect_timeout(o.connect_timeout)
            // The read timeout must outlast the operation timeout a Receive may wait.
            .read_timeout(Duration::from_secs(o.operation_timeout_secs + 15))
            .pool_max_idle_per_host(1)
            .http1_only()
            .user_agent("vmscan WinRM client");
        if o.scheme == WinRmScheme::Https {
            if let Some(ca) = &o.ca_bundle {
                let pem = std::fs::read(ca).map_err(|e| RemoteError::Connect {
                    addr: addr.clone(),
                    reason: format!("cannot read the CA bundle {}: {e}", ca.display()),
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    RemoteError::Connect {
                        addr: addr.clone(),
                        reason: format!("the CA bundle {} is not PEM: {e}", ca.display()),
                    }
                })?;
                b = b.tls_certs_only(certs);
            }
            if !o.verify_tls {
                b = b.tls_danger_accept_invalid_certs(true);
            }
        }
        let http = b.build().map_err(|e| RemoteError::Connect {
            addr: addr.clone(),
            reason: format!("HTTP client: {e}"),
        })?;
        Ok(Transport {
            http,
            endpoint,
            addr,
            user: o.user.clone(),
            password: o.password.clone(),
            auth: o.auth,
            request_secs: o.operation_timeout_secs + 15,
            seal: o.auth == WinRmAuth::Ntlm && o.scheme == WinRmScheme::Http,
            ntlm: Mutex::new(None),
            exchange: Mutex::new(()),
        })
    }

    fn http_error(&self, e: reqwest::Error, what: &str) -> RemoteError {
        if e.is_timeout() {
            RemoteError::Timeout {
                what: format!("{what} at {}", self.endpoint),
                secs: self.request_secs,
            }
        } else if e.is_connect() {
            RemoteError::Connect {
                addr: self.addr.clone(),
                reason: error_chain(&e),
            }
        } else {
            RemoteError::Protocol(format!("{what} at {}: {}", self.endpoint, error_chain(&e)))
        }
    }

    fn unauthorized(&self, detail: &str) -> RemoteError {
        RemoteError::Auth {
            user: self.user.clone(),
            reason: format!(
                "{} answered 401 Unauthorized to {} authentication{detail}; check the user, the password and that the WinRM service allows it",
                self.endpoint,
                self.auth.as_str()
            ),
        }
    }

    /// Sends one SOAP envelope and returns the answer's XML; a SOAP fault
    /// comes back as [`RemoteError::Fault`].
    pub async fn send(&self, what: &str, envelope: String) -> Result<String, RemoteError> {
        let _one_at_a_time = self.exchange.lock().await;
        let (status, body) = match self.auth {
            WinRmAuth::Basic => self.send_basic(what, envelope).await?,
            WinRmAuth::Ntlm => {
                let mut again = false;
                loop {
                    self.ensure_ntlm(what).await?;
                    match self.send_ntlm(what, &envelope).await? {
                        // The server forgot the context (a new connection): log in again, once.
                        (StatusCode::UNAUTHORIZED, _) if !again => {
                            *self.ntlm.lock().await = None;
                            again = true;
                        }
                        (StatusCode::UNAUTHORIZED, _) => return Err(self.unauthorized("")),
                        other => break other,
                    }
                }
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(""));
        }
        if let Some(f) = soap::fault(&body) {
            return Err(RemoteError::Fault {
                what: what.to_string(),
                fault: f.to_string(),
                timed_out: f.is_timed_out(),
            });
        }
        if !status.is_success() {
            let snippet: String = body.chars().take(300).collect();
            return Err(RemoteError::Protocol(format!(
                "{what}: {} answered HTTP {status}{}",
                self.endpoint,
                if snippet.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", snippet.trim())
                }
            )));
        }
        Ok(body)
    }

    async fn send_basic(
        &self,
        what: &str,
        envelope: String,
    ) -> Result<(StatusCode, String), RemoteError> {
        let resp = self
            .http
            .post(&self.endpoint)
            .basic_auth(&self.user, Some(self.password.expose_secret()))
            .header(CONTENT_TYPE, SOAP_TYPE)
            .body(envelope)
            .send()
            .await
            .map_err(|e| self.http_error(e, what))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.http_error(e, what))?;
        Ok((status, body))
    }

    /// NEGOTIATE, CHALLENGE, AUTHENTICATE on an empty POST, as pywinrm does
    /// before its first sealed message.
    async fn ensure_ntlm(&self, what: &str) -> Result<(), RemoteError> {
        let mut slot = self.ntlm.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let mut client = ntlm::Client::new(&self.user, self.password.expose_secret());
        let negotiate = client.negotiate();
        let resp = self
            .http
            .post(&self.endpoint)
            .header(
                AUTHORIZATION,
                format!("Negotiate {}", b64().encode(&negotiate)),
            )
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| self.http_error(e, what))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Err(RemoteError::Protocol(format!(
                "{} answered HTTP {} to an NTLM NEGOTIATE instead of a challenge",
                self.endpoint,
                resp.status()
            )));
        }
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.strip_prefix("Negotiate ")
                    .or_else(|| v.strip_prefix("NTLM "))
            })
            .map(str::trim)
            .and_then(|t| b64().decode(t).ok())
            .ok_or_else(|| {
                self.unauthorized(" without an NTLM challenge (is Negotiate auth enabled?)")
            })?;
        let _ = resp.bytes().await;
        let auth = client
            .authenticate(&challenge)
            .map_err(|e| RemoteError::Protocol(format!("NTLM with {}: {e}", self.endpoint)))?;
        let resp = self
            .http
            .post(&self.endpoint)
            .header(
                AUTHORIZATION,
                format!("Negotiate {}", b64().encode(&auth.message)),
            )
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| self.http_error(e, what))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(""));
        }
        let _ = resp.bytes().await;
        *slot = Some(ntlm::Session::client(&auth.exported_session_key));
        Ok(())
    }

    async fn send_ntlm(
        &self,
        what: &str,
        envelope: &str,
    ) -> Result<(StatusCode, String), RemoteError> {
        let mut slot = self.ntlm.lock().await;
        let session = slot
            .as_mut()
            .ok_or_else(|| RemoteError::Protocol("NTLM context lost".into()))?;
        let req = self.http.post(&self.endpoint);
        let req = if self.seal {
            let (sig, sealed) = session.seal(envelope.as_bytes());
            req.header(
                CONTENT_TYPE,
                HeaderValue::from_str(&format!(
                    "multipart/encrypted;protocol=\"{SPNEGO_ENCRYPTED}\";boundary=\"{BOUNDARY}\""
                ))
                .expect("a valid header"),
            )
            .body(encrypted_body(envelope.len(), &sig, &sealed))
        } else {
            req.header(CONTENT_TYPE, SOAP_TYPE)
                .body(envelope.to_string())
        };
        let resp = req.send().await.map_err(|e| self.http_error(e, what))?;
        let status = resp.status();
        let sealed_answer = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/encrypted"));
        let body = resp.bytes().await.map_err(|e| self.http_error(e, what))?;
        if status == StatusCode::UNAUTHORIZED {
            return Ok((status, String::new()));
        }
        let text = if sealed_answer {
            let (sig, sealed) = parse_encrypted(&body).map_err(|e| {
                RemoteError::Protocol(format!("{what}: sealed answer from {}: {e}", self.endpoint))
            })?;
            let plain = session.unseal(&sig, &sealed).map_err(|e| {
                RemoteError::Protocol(format!("{what}: answer from {}: {e}", self.endpoint))
            })?;
            String::from_utf8_lossy(&plain).into_owned()
        } else if self.seal && status.is_success() {
            return Err(RemoteError::Protocol(format!(
                "{what}: {} answered in clear text on a sealed NTLM channel",
                self.endpoint
            )));
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        Ok((status, text))
    }
}

/// The body of a sealed message, as pywinrm and Windows frame it.
pub fn encrypted_body(plain_len: usize, sig: &[u8; 16], sealed: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{BOUNDARY}\r\n\tContent-Type: {SPNEGO_ENCRYPTED}\r\n\tOriginalContent: type={SOAP_TYPE};Length={plain_len}\r\n--{BOUNDARY}\r\n\tContent-Type: application/octet-stream\r\n"
    )
    .into_bytes();
    b.extend_from_slice(&(sig.len() as u32).to_le_bytes());
    b.extend_from_slice(sig);
    b.extend_from_slice(sealed);
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// Splits a sealed body into (signature, sealed bytes).
pub fn parse_encrypted(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let text_end = body.len().min(1024);
    let head = String::from_utf8_lossy(&body[..text_end]);
    let len: usize = head
        .split("Length=")
        .nth(1)
        .and_then(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .ok_or("no OriginalContent length")?;
    let marker = b"application/octet-stream\r\n";
    let at = body
        .windows(marker.len())
        .position(|w| w == marker)
        .ok_or("no octet-stream part")?
        + marker.len();
    let rest = &body[at..];
    if rest.len() < 4 {
        return Err("truncated".into());
    }
    let sig_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    let sig = rest.get(4..4 + sig_len).ok_or("truncated signature")?;
    let data = rest
        .get(4 + sig_len..4 + sig_len + len)
        .ok_or("truncated data")?;
    Ok((sig.to_vec(), data.to_vec()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_unframes_a_sealed_message() {
        let body = encrypted_body(5, &[7; 16], b"abcde");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=5\r\n"));
        assert!(text.ends_with("abcde--Encrypted Boundary--\r\n"));
        assert_eq!(
            parse_encrypted(&body).unwrap(),
            (vec![7; 16], b"abcde".to_vec())
        );
    }
}
