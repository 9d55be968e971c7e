//! HTTP(S) transport of WS-Management on one kept-alive connection: Basic or
//! NTLM authentication (NTLM authenticates the connection, as on Windows),
//! and NTLM sealing of each message (multipart/encrypted) on plain HTTP.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::soap;
use super::{cbt, ntlm};
use super::{WinRmAuth, WinRmOptions, WinRmScheme};
use crate::remote::RemoteError;

const SOAP_TYPE: &str = "application/soap+xml;charset=UTF-8";
const BOUNDARY: &str = "Encrypted Boundary";
const SPNEGO_ENCRYPTED: &str = "application/HTTP-SPNEGO-session-encrypted";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    /// The NTLM context of this connection, once authenticated.
    ntlm: Option<ntlm::Session>,
    /// Over HTTPS: the TLS channel's bindings, which NTLM's proof covers.
    channel_bindings: Option<[u8; 16]>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

/// One authenticated channel to the endpoint; requests go one at a time.
pub struct Transport {
    pub endpoint: String,
    pub addr: String,
    host: String,
    port: u16,
    host_header: String,
    tls: Option<tokio_rustls::TlsConnector>,
    user: String,
    password: SecretString,
    auth: WinRmAuth,
    connect_timeout: Duration,
    request_secs: u64,
    seal: bool,
    conn: Mutex<Option<Conn>>,
}

/// Largest WS-Management answer accepted (a Receive holds at most
/// MaxEnvelopeSize, 150 KiB on Windows by default, or a little more).
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

impl Transport {
    pub fn new(o: &WinRmOptions) -> Result<Self, RemoteError> {
        let addr = format!("{}:{}", o.host, o.port);
        // A hostile guest would simply read a Basic password sent in the clear.
        if o.auth == WinRmAuth::Basic && o.scheme == WinRmScheme::Http {
            return Err(RemoteError::Auth {
                user: o.user.clone(),
                reason: "Basic authentication is used only over HTTPS (it sends the password in the clear); use NTLM or https".into(),
            });
        }
        let host = if o.host.contains(':') {
            format!("[{}]", o.host)
        } else {
            o.host.clone()
        };
        let endpoint = format!("{}://{host}:{}/wsman", o.scheme.as_str(), o.port);
        let tls = match o.scheme {
            WinRmScheme::Http => None,
            WinRmScheme::Https => {
                Some(tls_connector(o).map_err(|reason| RemoteError::Connect {
                    addr: addr.clone(),
                    reason,
                })?)
            }
        };
        Ok(Transport {
            endpoint,
            addr,
            host: o.host.clone(),
            port: o.port,
            host_header: format!("{host}:{}", o.port),
            tls,
            user: o.user.clone(),
            password: o.password.clone(),
            auth: o.auth,
            connect_timeout: o.connect_timeout,
            // A Receive may wait OperationTimeout for output: allow more than that.
            request_secs: o.operation_timeout_secs + 15,
            seal: o.auth == WinRmAuth::Ntlm && o.scheme == WinRmScheme::Http,
            conn: Mutex::new(None),
        })
    }

    fn connect_error(&self, reason: String) -> RemoteError {
        RemoteError::Connect {
            addr: self.addr.clone(),
            reason,
        }
    }

    async fn connect(&self) -> Result<Conn, RemoteError> {
        let dial = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.connect_error(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let (io, channel_bindings): (Box<dyn Io>, _) = match &self.tls {
                None => (Box::new(tcp), None),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                        .map_err(|e| self.connect_error(format!("TLS server name: {e}")))?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .map_err(|e| self.connect_error(format!("TLS: {e}")))?;
                    let bindings = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| cbt::tls_channel_bindings(c));
                    (Box::new(stream), bindings)
                }
            };
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.connect_error(format!("HTTP: {e}")))?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn {
                sender,
                task,
                ntlm: None,
                channel_bindings,
            })
        };
        tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| RemoteError::Timeout {
                what: format!("connecting to {}", self.endpoint),
                secs: self.connect_timeout.as_secs(),
            })?
    }

    /// One HTTP exchange on the connection.
    async fn post(
        &self,
        conn: &mut Conn,
        what: &str,
        headers: Vec<(hyper::header::HeaderName, String)>,
        body: Vec<u8>,
    ) -> Result<Answer, RemoteError> {
        let mut req = hyper::Request::post("/wsman")
            .header(HOST, &self.host_header)
            .header(USER_AGENT, "vmscan WinRM client")
            .header(CONTENT_LENGTH, body.len().to_string());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RemoteError::Protocol(format!("{what}: {e}")))?;
        let exchange = async {
            conn.sender
                .ready()
                .await
                .map_err(|e| RemoteError::Protocol(format!("{what}: {e}")))?;
            let resp = conn.sender.send_request(req).await.map_err(|e| {
                RemoteError::Protocol(format!("{what} at {}: {}", self.endpoint, error_chain(&e)))
            })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            // A hostile guest could answer endlessly: cap what is held.
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    RemoteError::Protocol(format!(
                        "{what} at {}: {}",
                        self.endpoint,
                        if e.is::<http_body_util::LengthLimitError>() {
                            format!("the answer is larger than {MAX_ANSWER_BYTES} bytes; refused")
                        } else {
                            e.to_string()
                        }
                    ))
                })?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(self.request_secs), exchange)
            .await
            .map_err(|_| RemoteError::Timeout {
                what: format!("{what} at {}", self.endpoint),
                secs: self.request_secs,
            })?
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
        let mut slot = self.conn.lock().await;
        let mut relogin = false;
        let (status, body) = loop {
            // A connection the server closed (idle keep-alive) is replaced,
            // and with it the NTLM context that belonged to it.
            if slot.as_ref().is_none_or(|c| c.sender.is_closed()) {
                *slot = Some(self.connect().await?);
            }
            let conn = slot.as_mut().expect("connected above");
            let answer = match self.auth {
                WinRmAuth::Basic => {
                    let cred =
                        b64().encode(format!("{}:{}", self.user, self.password.expose_secret()));
                    let a = self
                        .post(
                            conn,
                            what,
                            vec![
                                (AUTHORIZATION, format!("Basic {cred}")),
                                (CONTENT_TYPE, SOAP_TYPE.to_string()),
                            ],
                            envelope.clone().into_bytes(),
                        )
                        .await;
                    a.map(|a| (a.status, String::from_utf8_lossy(&a.body).into_owned()))
                }
                WinRmAuth::Ntlm => {
                    if conn.ntlm.is_none() {
                        let session = self.login_ntlm(conn, what).await;
                        match session {
                            Ok(s) => conn.ntlm = Some(s),
                            Err(e) => {
                                *slot = None;
                                return Err(e);
                            }
                        }
                    }
                    self.send_ntlm(conn, what, &envelope).await
                }
            };
            match answer {
                // The server forgot the context: log in again, once.
                Ok((StatusCode::UNAUTHORIZED, _)) if self.auth == WinRmAuth::Ntlm && !relogin => {
                    relogin = true;
                    *slot = None;
                }
                Ok(a) => break a,
                Err(e) => {
                    // The connection is in an unknown state after a failed exchange.
                    *slot = None;
                    return Err(e);
                }
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            *slot = None;
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

    /// NEGOTIATE, CHALLENGE, AUTHENTICATE on empty POSTs, as pywinrm does
    /// before its first sealed message.
    async fn login_ntlm(&self, conn: &mut Conn, what: &str) -> Result<ntlm::Session, RemoteError> {
        let mut client = ntlm::Client::new(&self.user, self.password.expose_secret())
            .with_target_name(&format!("HTTP/{}", self.host));
        let negotiate = client.negotiate();
        let a = self
            .post(
                conn,
                what,
                vec![(
                    AUTHORIZATION,
                    format!("Negotiate {}", b64().encode(&negotiate)),
                )],
                Vec::new(),
            )
            .await?;
        if a.status != StatusCode::UNAUTHORIZED {
            return Err(RemoteError::Protocol(format!(
                "{} answered HTTP {} to an NTLM NEGOTIATE instead of a challenge",
                self.endpoint, a.status
            )));
        }
        let challenge = a
            .headers
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
        let auth = client
            .authenticate(&challenge, conn.channel_bindings)
            .map_err(|e| RemoteError::Protocol(format!("NTLM with {}: {e}", self.endpoint)))?;
        let a = self
            .post(
                conn,
                what,
                vec![(
                    AUTHORIZATION,
                    format!("Negotiate {}", b64().encode(&auth.message)),
                )],
                Vec::new(),
            )
            .await?;
        if a.status == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(""));
        }
        Ok(ntlm::Session::client(&auth.exported_session_key))
    }

    async fn send_ntlm(
        &self,
        conn: &mut Conn,
        what: &str,
        envelope: &str,
    ) -> Result<(StatusCode, String), RemoteError> {
        let seal = self.seal;
        let (headers, body) = if seal {
            let session = conn.ntlm.as_mut().expect("logged in");
            let (sig, sealed) = session.seal(envelope.as_bytes());
            (
                vec![(
                    CONTENT_TYPE,
                    format!(
                        "multipart/encrypted;protocol=\"{SPNEGO_ENCRYPTED}\";boundary=\"{BOUNDARY}\""
                    ),
                )],
                encrypted_body(envelope.len(), &sig, &sealed),
            )
        } else {
            (
                vec![(CONTENT_TYPE, SOAP_TYPE.to_string())],
                envelope.as_bytes().to_vec(),
            )
        };
        let a = self.post(conn, what, headers, body).await?;
        if a.status == StatusCode::UNAUTHORIZED {
            return Ok((a.status, String::new()));
        }
        let sealed_answer = a
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/encrypted"));
        let text = if sealed_answer {
            let session = conn.ntlm.as_mut().expect("logged in");
            let (sig, sealed) = parse_encrypted(&a.body).map_err(|e| {
                RemoteError::Protocol(format!("{what}: sealed answer from {}: {e}", self.endpoint))
            })?;
            let plain = session.unseal(&sig, &sealed).map_err(|e| {
                RemoteError::Protocol(format!("{what}: answer from {}: {e}", self.endpoint))
            })?;
            String::from_utf8_lossy(&plain).into_owned()
        } else if seal && a.status.is_success() {
            return Err(RemoteError::Protocol(format!(
                "{what}: {} answered in clear text on a sealed NTLM channel",
                self.endpoint
            )));
        } else {
            String::from_utf8_lossy(&a.body).into_owned()
        };
        Ok((a.status, text))
    }
}

fn tls_connector(o: &WinRmOptions) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let cfg = if !o.verify_tls {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &o.ca_bundle {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert
                        .map_err(|e| format!("the CA bundle {} is not PEM: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("the CA bundle {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "the CA bundle {} holds no certificate",
                        path.display()
                    ));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
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
    crate::domain::with_causes(e.to_string(), e)
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
