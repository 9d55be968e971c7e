//! A fake Windows guest behind WinRM: HTTP/1.1 on 127.0.0.1, Basic auth and a
//! real NTLMv2 handshake bound to the TCP connection (as Windows does), NTLM
//! sealing (multipart/encrypted) on plain HTTP, the WS-Management shell
//! operations (Create, Command, Send, Receive, Signal, Delete) with Windows'
//! answer shapes, and SOAP faults on demand.
//!
//! Commands are "run" by recognising the few scripts a scan sends: uploads
//! over stdin, file reads, Get-NetIPConfiguration, the DHCP switch,
//! Expand-Archive, msiexec, Get-Service, the computer name, Rename-Computer
//! with Restart-Computer, the OS caption, and a handful of cmd built-ins. Envelope
//! shapes follow MS-WSMV and pywinrm's recorded fixtures (pywinrm: MIT
//! licence, (c) pywinrm contributors).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use md5::{Digest, Md5};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::tls::tls_acceptor;

const NS_ENV: &str = "http://www.w3.org/2003/05/soap-envelope";
const NS_ADDR: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
const RESOURCE_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
const T: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
const SH: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Who may log in, and how.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub user: String,
    pub password: String,
    pub basic: bool,
    pub ntlm: bool,
    /// Serve HTTPS with this (certificate chain PEM, private key PEM).
    pub tls: Option<(String, String)>,
    /// Over HTTPS, NTLM logins must carry the TLS channel bindings
    /// (`CbtHardeningLevel = Strict`); wrong ones are refused at any level.
    pub strict_channel_binding: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            user: "Administrator".into(),
            password: "S3cret!pass".into(),
            basic: true,
            ntlm: true,
            tls: None,
            strict_channel_binding: false,
        }
    }
}

/// A fault to answer instead of the next request with this action.
#[derive(Clone, Debug)]
pub struct FaultSpec {
    /// Action suffix: "Create", "Command", "Receive", "Send", "Signal", "Delete".
    pub action: String,
    pub subcode: String,
    pub reason: String,
    pub wsman_code: String,
}

/// A Windows service as Get-Service reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Stopped,
}

/// The guest the fake models.
#[derive(Debug)]
pub struct Guest {
    pub hostname: String,
    pub caption: String,
    /// Files by lower-case path with backslashes.
    pub files: BTreeMap<String, Vec<u8>>,
    pub services: BTreeMap<String, ServiceState>,
    pub interface_alias: String,
    pub dhcp: bool,
    /// The switch to DHCP changes the address under the WinRM connection:
    /// its Receive is never answered and the connection drops, as on Windows.
    pub dhcp_drops_connection: bool,
    /// What ran, decoded: cmd lines, PowerShell scripts as text.
    pub ran: Vec<String>,
    /// msiexec's exit code (1603: fatal error during installation).
    pub msi_exit: u32,
    /// State the agent's services reach after a successful install.
    pub services_after_install: ServiceState,
    /// Appended to tracker.log by the install (e.g. an ERROR line).
    pub tracker_extra: String,
    /// Services the agent installs.
    pub agent_services: Vec<String>,
    /// Set by Rename-Computer; Windows takes it on at the next restart.
    pub pending_name: Option<String>,
    pub restarts: u32,
    /// The beacon the installed agent uploaded its first inventory to, and
    /// the computer name it reported (GENERATEINVENTORY=YES).
    pub inventory_uploads: Vec<(String, String)>,
    /// msiexec command lines, as parsed.
    pub msiexec_runs: Vec<Vec<String>>,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            hostname: "WIN-VMSCAN01".into(),
            caption: "Microsoft Windows Server 2022 Standard".into(),
            files: BTreeMap::new(),
            services: BTreeMap::from([
                ("WinRM".to_string(), ServiceState::Running),
                ("Spooler".to_string(), ServiceState::Stopped),
            ]),
            interface_alias: "Ethernet".into(),
            dhcp: false,
            dhcp_drops_connection: false,
            ran: Vec::new(),
            msi_exit: 0,
            services_after_install: ServiceState::Running,
            tracker_extra: String::new(),
            agent_services: vec!["ndinit".into(), "mgssecsvc".into()],
            pending_name: None,
            restarts: 0,
            inventory_uploads: Vec::new(),
            msiexec_runs: Vec::new(),
        }
    }
}

pub fn norm_path(p: &str) -> String {
    p.replace('/', "\\").to_lowercase()
}

impl Guest {
    pub fn file(&self, path: &str) -> Option<&Vec<u8>> {
        self.files.get(&norm_path(path))
    }

    pub fn put(&mut self, path: &str, data: impl Into<Vec<u8>>) {
        self.files.insert(norm_path(path), data.into());
    }
}

#[derive(Default)]
struct Knobs {
    faults: VecDeque<FaultSpec>,
    /// TimedOut faults answered to Receives before any output.
    receive_timeouts: u32,
    /// Lines of stdout per Receive answer.
    lines_per_receive: usize,
    /// Close each connection after this many SOAP answers (`Connection: close`).
    answers_per_connection: Option<u32>,
}

/// Requests seen, for assertions.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub actions: Vec<String>,
    pub sealed_requests: u32,
    pub plain_requests: u32,
    pub ntlm_logins: u32,
    pub basic_logins: u32,
    pub unauthorized: u32,
    pub shells_open: usize,
    /// The `Host` header of each request: which address the client used.
    pub hosts: Vec<String>,
}

struct Cmd {
    stdout: VecDeque<Vec<u8>>,
    stderr: Vec<u8>,
    exit: i32,
    /// Waiting for stdin: the upload target.
    upload_to: Option<String>,
    stdin: Vec<u8>,
    /// Never finishes (a hung command).
    hung: bool,
    /// Its Receive drops the connection unanswered.
    drops_connection: bool,
}

struct Inner {
    cfg: FakeConfig,
    /// The Administrator password once "Windows setup" applied an answer
    /// file (`set_password`); else `cfg.password`.
    password: Mutex<Option<String>>,
    /// The bindings of our TLS certificate, as a client must send them.
    channel_bindings: Option<[u8; 16]>,
    guest: Mutex<Guest>,
    knobs: Mutex<Knobs>,
    stats: Mutex<Stats>,
    shells: Mutex<HashMap<String, HashMap<String, Cmd>>>,
    next_id: Mutex<u64>,
}

pub struct FakeWinRm {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWinRm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWinRm {
    /// What Windows setup does with the answer file's
    /// `Microsoft-Windows-Shell-Setup/UserAccounts/AdministratorPassword`
    /// (Microsoft's unattend reference: it sets the built-in Administrator's
    /// password in the oobeSystem pass): from now on only this password logs
    /// in. The test hands it over from the answer file the fake Prism Central
    /// received, so the fake never echoes what the client sent at login.
    pub fn set_password(&self, pw: &str) {
        *self.inner.password.lock().unwrap() = Some(pw.to_string());
    }

    pub async fn start(cfg: FakeConfig) -> FakeWinRm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = cfg.tls.as_ref().map(|(cert, key)| tls_acceptor(cert, key));
        let channel_bindings = cfg.tls.as_ref().map(|(cert, _)| channel_bindings(cert));
        let inner = Arc::new(Inner {
            channel_bindings,
            password: Mutex::new(None),
            cfg,
            guest: Mutex::new(Guest::default()),
            knobs: Mutex::new(Knobs {
                lines_per_receive: 3,
                ..Knobs::default()
            }),
            stats: Mutex::new(Stats::default()),
            shells: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0x1111_1111_1113),
        });
        let srv = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let srv = srv.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(sock).await {
                                serve_conn(s, srv, true).await;
                            }
                        }
                        None => serve_conn(sock, srv, false).await,
                    }
                });
            }
        });
        FakeWinRm { addr, inner, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn guest(&self) -> std::sync::MutexGuard<'_, Guest> {
        self.inner.guest.lock().unwrap()
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.inner.stats.lock().unwrap().clone();
        s.shells_open = self.inner.shells.lock().unwrap().len();
        s
    }

    /// The next request with this action gets this SOAP fault (HTTP 500).
    pub fn fail_next(&self, action: &str, subcode: &str, reason: &str) {
        self.inner
            .knobs
            .lock()
            .unwrap()
            .faults
            .push_back(FaultSpec {
                action: action.into(),
                subcode: subcode.into(),
                reason: reason.into(),
                wsman_code: "2150858843".into(),
            });
    }

    /// The next `n` Receives time out (w:TimedOut) before output comes.
    pub fn receive_timeouts(&self, n: u32) {
        self.inner.knobs.lock().unwrap().receive_timeouts = n;
    }

    /// Close each connection after `n` SOAP answers, as a server that
    /// recycles connections does; NTLM must then log in again.
    pub fn answers_per_connection(&self, n: u32) {
        self.inner.knobs.lock().unwrap().answers_per_connection = Some(n.max(1));
    }

    pub fn lines_per_receive(&self, n: usize) {
        self.inner.knobs.lock().unwrap().lines_per_receive = n.max(1);
    }
}

/// RFC 5929 tls-server-end-point (the test certificates sign with SHA-256)
/// in a GSS channel-bindings struct, MD5-hashed as NTLM carries it.
fn channel_bindings(cert_pem: &str) -> [u8; 16] {
    use rustls::pki_types::pem::PemObject;
    use sha2::Sha256;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let mut app = b"tls-server-end-point:".to_vec();
    app.extend_from_slice(&Sha256::digest(der.as_ref()));
    let mut gss = vec![0u8; 16];
    gss.extend_from_slice(&(app.len() as u32).to_le_bytes());
    gss.extend_from_slice(&app);
    Md5::digest(&gss).into()
}

// ---------------------------------------------------------------- HTTP/1.1

struct Request {
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// Not an HTTP status: the connection closes without an answer.
    const DROPPED: u16 = 0;

    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn dropped() -> Self {
        Response::new(Response::DROPPED)
    }
}

async fn read_request<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let method = line.split_whitespace().next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        headers,
        body,
    })
}

/// One TCP (or TLS) connection: NTLM state lives here, as on Windows.
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(stream: S, srv: Arc<Inner>, https: bool) {
    let mut r = BufReader::new(stream);
    let mut auth = ConnAuth::None;
    let mut answers = 0u32;
    while let Some(req) = read_request(&mut r).await {
        let mut resp = srv.handle(&mut auth, req, https).await;
        if resp.status == Response::DROPPED {
            return;
        }
        if resp.status != 401 && !resp.body.is_empty() {
            answers += 1;
        }
        let limit = srv.knobs.lock().unwrap().answers_per_connection;
        let closing = limit.is_some_and(|n| answers >= n);
        if closing {
            resp.headers.push(("Connection".into(), "close".into()));
        }
        let reason = match resp.status {
            200 => "OK",
            401 => "Unauthorized",
            500 => "Internal Server Error",
            _ => "Other",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nServer: Microsoft-HTTPAPI/2.0\r\n",
            resp.status
        );
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
        let w = r.get_mut();
        if w.write_all(head.as_bytes()).await.is_err()
            || w.write_all(&resp.body).await.is_err()
            || w.flush().await.is_err()
            || closing
        {
            let _ = w.shutdown().await;
            return;
        }
    }
}

// ---------------------------------------------------------------- NTLM (server side)

enum ConnAuth {
    None,
    Challenged {
        negotiate: Vec<u8>,
        challenge: Vec<u8>,
        server_challenge: [u8; 8],
    },
    Ntlm(Box<Sealing>),
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut v = vec![ipad.as_slice()];
    v.extend_from_slice(parts);
    let inner = md5(&v);
    md5(&[&opad, &inner])
}

struct Rc4 {
    s: Vec<u8>,
    i: usize,
    j: usize,
}

impl Rc4 {
    fn new(key: &[u8]) -> Rc4 {
        let mut s: Vec<u8> = (0..=255).collect();
        let mut j = 0usize;
        for i in 0..256 {
            j = (j + s[i] as usize + key[i % key.len()] as usize) % 256;
            s.swap(i, j);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    fn apply(&mut self, d: &mut [u8]) {
        for b in d {
            self.i = (self.i + 1) % 256;
            self.j = (self.j + self.s[self.i] as usize) % 256;
            self.s.swap(self.i, self.j);
            *b ^= self.s[(self.s[self.i] as usize + self.s[self.j] as usize) % 256];
        }
    }
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(b: &[u8]) -> String {
    let u: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&u)
}

fn sec_buf(msg: &[u8], at: usize) -> Option<Vec<u8>> {
    let len = u16::from_le_bytes(msg.get(at..at + 2)?.try_into().ok()?) as usize;
    let off = u32::from_le_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    msg.get(off..off + len).map(<[u8]>::to_vec)
}

/// The server's half of session security.
struct Sealing {
    recv_sign: [u8; 16],
    send_sign: [u8; 16],
    recv: Rc4,
    send: Rc4,
    recv_seq: u32,
    send_seq: u32,
}

impl Sealing {
    fn new(key: &[u8; 16]) -> Sealing {
        let k = |s: &str| {
            md5(&[
                key,
                format!("session key to {s} key magic constant\0").as_bytes(),
            ])
        };
        Sealing {
            recv_sign: k("client-to-server signing"),
            send_sign: k("server-to-client signing"),
            recv: Rc4::new(&k("client-to-server sealing")),
            send: Rc4::new(&k("server-to-client sealing")),
            recv_seq: 0,
            send_seq: 0,
        }
    }

    fn unseal(&mut self, sig: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        let mut plain = data.to_vec();
        self.recv.apply(&mut plain);
        let seq = self.recv_seq;
        self.recv_seq += 1;
        let mut cks = hmac_md5(&self.recv_sign, &[&seq.to_le_bytes(), &plain])[..8].to_vec();
        self.recv.apply(&mut cks);
        let ok = sig.len() == 16
            && sig[..4] == [1, 0, 0, 0]
            && sig[4..12] == cks[..]
            && sig[12..16] == seq.to_le_bytes();
        ok.then_some(plain)
    }

    fn seal(&mut self, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = plain.to_vec();
        self.send.apply(&mut data);
        let seq = self.send_seq;
        self.send_seq += 1;
        let mut cks = hmac_md5(&self.send_sign, &[&seq.to_le_bytes(), plain])[..8].to_vec();
        self.send.apply(&mut cks);
        let mut sig = vec![1, 0, 0, 0];
        sig.extend_from_slice(&cks);
        sig.extend_from_slice(&seq.to_le_bytes());
        (sig, data)
    }
}

fn filetime_now() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

fn build_challenge(negotiate: &[u8]) -> (Vec<u8>, [u8; 8]) {
    let client_flags = u32::from_le_bytes(negotiate[12..16].try_into().unwrap());
    // UNICODE, REQUEST_TARGET, SIGN, SEAL, NTLM, ALWAYS_SIGN, TARGET_TYPE_SERVER,
    // ESS, TARGET_INFO, VERSION, 128, KEY_EXCH, 56: what Windows Server offers.
    let offered: u32 = 0xe28a_8235 | 0x0002_0000;
    let flags = offered & (client_flags | 0x0082_0004);
    let sc: [u8; 8] = rand::random();
    let target = utf16("WIN-VMSCAN01");
    let mut info = Vec::new();
    for (id, v) in [
        (2u16, utf16("WIN-VMSCAN01")),
        (1u16, utf16("WIN-VMSCAN01")),
        (4u16, utf16("WIN-VMSCAN01")),
        (3u16, utf16("WIN-VMSCAN01")),
        (7u16, filetime_now().to_le_bytes().to_vec()),
    ] {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(v.len() as u16).to_le_bytes());
        info.extend_from_slice(&v);
    }
    info.extend_from_slice(&[0, 0, 0, 0]);
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&2u32.to_le_bytes());
    let target_off = 56u32;
    let info_off = target_off + target.len() as u32;
    m.extend_from_slice(&(target.len() as u16).to_le_bytes());
    m.extend_from_slice(&(target.len() as u16).to_le_bytes());
    m.extend_from_slice(&target_off.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&sc);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&info_off.to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x7c, 0x4f, 0, 0, 0, 15]);
    m.extend_from_slice(&target);
    m.extend_from_slice(&info);
    (m, sc)
}

/// Verifies an AUTHENTICATE message; returns the exported session key.
/// `bindings`: over HTTPS, what the client's channel bindings must be.
fn verify_authenticate(
    cfg: &FakeConfig,
    password: &str,
    bindings: Option<[u8; 16]>,
    negotiate: &[u8],
    challenge: &[u8],
    sc: &[u8; 8],
    auth: &[u8],
) -> Result<[u8; 16], String> {
    if auth.len() < 88 || &auth[..8] != b"NTLMSSP\0" || auth[8..12] != 3u32.to_le_bytes() {
        return Err("not an AUTHENTICATE message".into());
    }
    let nt = sec_buf(auth, 20).ok_or("bad NT response")?;
    let domain = from_utf16(&sec_buf(auth, 28).ok_or("bad domain")?);
    let user = from_utf16(&sec_buf(auth, 36).ok_or("bad user")?);
    let enc_key = sec_buf(auth, 52).ok_or("bad session key")?;
    if !user.eq_ignore_ascii_case(&cfg.user) {
        return Err(format!("unknown user {user}"));
    }
    if nt.len() < 48 {
        return Err("not an NTLMv2 response".into());
    }
    let nt_hash: [u8; 16] = md4::Md4::digest(utf16(password)).into();
    let key = hmac_md5(&nt_hash, &[&utf16(&(user.to_uppercase() + &domain))]);
    let blob = &nt[16..];
    let proof = hmac_md5(&key, &[sc, blob]);
    if proof[..] != nt[..16] {
        return Err("wrong password".into());
    }
    let base = hmac_md5(&key, &[&proof]);
    let mut exported = [0u8; 16];
    exported.copy_from_slice(enc_key.get(..16).ok_or("no key exchange")?);
    Rc4::new(&base).apply(&mut exported);
    // A client that says it sent a MIC must have sent a right one.
    let mut i = 28; // AV pairs in the blob start after its 28-byte header
    let mut mic_flag = false;
    let mut sent_bindings = None;
    while i + 4 <= blob.len() {
        let id = u16::from_le_bytes([blob[i], blob[i + 1]]);
        let len = u16::from_le_bytes([blob[i + 2], blob[i + 3]]) as usize;
        if id == 0 {
            break;
        }
        if id == 6 && len == 4 {
            mic_flag = u32::from_le_bytes(blob[i + 4..i + 8].try_into().unwrap()) & 2 != 0;
        }
        if id == 0x0a {
            sent_bindings = blob.get(i + 4..i + 4 + len).map(<[u8]>::to_vec);
        }
        i += 4 + len;
    }
    match (bindings, sent_bindings) {
        (Some(want), Some(got)) if got != want => {
            return Err("channel bindings do not match this TLS channel".into())
        }
        (Some(_), None) if cfg.strict_channel_binding => {
            return Err("no channel bindings (Extended Protection is strict)".into())
        }
        _ => {}
    }
    if mic_flag {
        let mut zeroed = auth.to_vec();
        zeroed[72..88].fill(0);
        if hmac_md5(&exported, &[negotiate, challenge, &zeroed])[..] != auth[72..88] {
            return Err("bad MIC".into());
        }
    }
    Ok(exported)
}

fn parse_encrypted(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let head = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
    let len: usize = head
        .split("Length=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let marker = b"\tContent-Type: application/octet-stream\r\n";
    let at = body.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let rest = &body[at..];
    let sig_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let sig = rest.get(4..4 + sig_len)?.to_vec();
    let data = rest.get(4 + sig_len..4 + sig_len + len)?.to_vec();
    let tail = &rest[4 + sig_len + len..];
    if tail != b"--Encrypted Boundary--\r\n" {
        return None;
    }
    Some((sig, data))
}

fn encrypted(sealing: &mut Sealing, plain: &[u8]) -> (Vec<u8>, String) {
    let (sig, data) = sealing.seal(plain);
    let mut b = format!(
        "--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={}\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n",
        plain.len()
    )
    .into_bytes();
    b.extend_from_slice(&(sig.len() as u32).to_le_bytes());
    b.extend_from_slice(&sig);
    b.extend_from_slice(&data);
    b.extend_from_slice(b"--Encrypted Boundary--\r\n");
    (
        b,
        "multipart/encrypted;protocol=\"application/HTTP-SPNEGO-session-encrypted\";boundary=\"Encrypted Boundary\"".into(),
    )
}

// ---------------------------------------------------------------- request handling

impl Inner {
    fn password(&self) -> String {
        self.password
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| self.cfg.password.clone())
    }

    fn unauthorized(&self) -> Response {
        self.stats.lock().unwrap().unauthorized += 1;
        let mut r = Response::new(401);
        if self.cfg.ntlm {
            r.headers
                .push(("WWW-Authenticate".into(), "Negotiate".into()));
        }
        if self.cfg.basic {
            r.headers
                .push(("WWW-Authenticate".into(), "Basic realm=\"WSMAN\"".into()));
        }
        r
    }

    async fn handle(&self, auth: &mut ConnAuth, req: Request, https: bool) -> Response {
        if req.method != "POST" {
            return Response::new(405);
        }
        if let Some(h) = req.header("Host") {
            self.stats.lock().unwrap().hosts.push(h.to_string());
        }
        let authz = req.header("Authorization").map(str::to_string);
        match authz.as_deref().and_then(|a| a.split_once(' ')) {
            Some(("Basic", cred)) if self.cfg.basic => {
                let ok = b64()
                    .decode(cred.trim())
                    .ok()
                    .map(|c| String::from_utf8_lossy(&c).into_owned())
                    == Some(format!("{}:{}", self.cfg.user, self.password()));
                if !ok {
                    return self.unauthorized();
                }
                self.stats.lock().unwrap().basic_logins += 1;
                return self.soap(req.body).await;
            }
            Some(("Negotiate", token)) if self.cfg.ntlm => {
                let Ok(msg) = b64().decode(token.trim()) else {
                    return self.unauthorized();
                };
                match msg.get(8..12) {
                    Some([1, 0, 0, 0]) => {
                        let (challenge, sc) = build_challenge(&msg);
                        let mut r = Response::new(401);
                        r.headers.push((
                            "WWW-Authenticate".into(),
                            format!("Negotiate {}", b64().encode(&challenge)),
                        ));
                        *auth = ConnAuth::Challenged {
                            negotiate: msg,
                            challenge,
                            server_challenge: sc,
                        };
                        return r;
                    }
                    Some([3, 0, 0, 0]) => {
                        let ConnAuth::Challenged {
                            negotiate,
                            challenge,
                            server_challenge,
                        } = &*auth
                        else {
                            return self.unauthorized();
                        };
                        let password = self.password();
                        match verify_authenticate(
                            &self.cfg,
                            &password,
                            self.channel_bindings.filter(|_| https),
                            negotiate,
                            challenge,
                            server_challenge,
                            &msg,
                        ) {
                            Ok(key) => {
                                self.stats.lock().unwrap().ntlm_logins += 1;
                                *auth = ConnAuth::Ntlm(Box::new(Sealing::new(&key)));
                            }
                            Err(why) => {
                                eprintln!("fake WinRM: NTLM login refused: {why}");
                                *auth = ConnAuth::None;
                                return self.unauthorized();
                            }
                        }
                    }
                    _ => return self.unauthorized(),
                }
            }
            Some(_) => return self.unauthorized(),
            None => {}
        }
        let ConnAuth::Ntlm(sealing) = auth else {
            return self.unauthorized();
        };
        // The empty POST that carried AUTHENTICATE.
        if req.body.is_empty() {
            return Response::new(200);
        }
        let sealed_req = req
            .header("Content-Type")
            .is_some_and(|c| c.starts_with("multipart/encrypted"));
        if sealed_req {
            let Some((sig, data)) = parse_encrypted(&req.body) else {
                return Response::new(400);
            };
            let Some(plain) = sealing.unseal(&sig, &data) else {
                eprintln!("fake WinRM: bad signature on a sealed request");
                return Response::new(400);
            };
            self.stats.lock().unwrap().sealed_requests += 1;
            let mut resp = self.soap(plain).await;
            let (body, ctype) = encrypted(sealing, &resp.body);
            resp.body = body;
            resp.headers.retain(|(k, _)| k != "Content-Type");
            resp.headers.push(("Content-Type".into(), ctype));
            resp
        } else if !https {
            // AllowUnencrypted=false: NTLM on HTTP must seal.
            let mut r = Response::new(400);
            r.body = b"unencrypted request refused".to_vec();
            r
        } else {
            self.soap(req.body).await
        }
    }

    fn new_id(&self) -> String {
        let mut n = self.next_id.lock().unwrap();
        *n += 1;
        format!("11111111-1111-1111-1111-{:012X}", *n)
    }

    async fn soap(&self, body: Vec<u8>) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        {
            let mut s = self.stats.lock().unwrap();
            s.plain_requests += 1;
        }
        let doc = match roxmltree::Document::parse(&text) {
            Ok(d) => d,
            Err(_) => {
                return fault_response("", "s:Sender", "w:SchemaValidationError", "The SOAP XML in the message does not match the corresponding XML schema definition.", "2150858817")
            }
        };
        let find = |ns: &str, name: &str| {
            doc.descendants().find(|n| {
                n.is_element()
                    && n.tag_name().name() == name
                    && n.tag_name().namespace() == Some(ns)
            })
        };
        let text_of = |n: Option<roxmltree::Node>| {
            n.and_then(|n| n.text())
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let action = text_of(find(NS_ADDR, "Action"));
        let msg_id = text_of(find(NS_ADDR, "MessageID"));
        let resource = text_of(find(NS_WSMAN, "ResourceURI"));
        let op_timeout = text_of(find(NS_WSMAN, "OperationTimeout"));
        let shell_id = doc
            .descendants()
            .find(|n| n.tag_name().name() == "Selector" && n.attribute("Name") == Some("ShellId"))
            .and_then(|n| n.text())
            .map(str::to_string);
        let short = action.rsplit('/').next().unwrap_or("").to_string();
        self.stats.lock().unwrap().actions.push(short.clone());

        let max_env = text_of(find(NS_WSMAN, "MaxEnvelopeSize"));
        if msg_id.is_empty()
            || max_env.is_empty()
            || !op_timeout.starts_with("PT")
            || !op_timeout.ends_with('S')
        {
            return fault_response(
                &msg_id,
                "s:Sender",
                "w:InvalidHeader",
                "The WS-Management service cannot process a SOAP header in the request.",
                "2150858754",
            );
        }
        if resource != RESOURCE_CMD {
            return fault_response(&msg_id, "s:Sender", "w:DestinationUnreachable", "The WS-Management service cannot process the request. The resource URI is not supported.", "2150858770");
        }
        let injected = {
            let mut k = self.knobs.lock().unwrap();
            k.faults
                .iter()
                .position(|f| f.action == short)
                .and_then(|i| k.faults.remove(i))
        };
        if let Some(f) = injected {
            return fault_response(&msg_id, "s:Sender", &f.subcode, &f.reason, &f.wsman_code);
        }
        let op_secs: f64 = op_timeout
            .trim_start_matches("PT")
            .trim_end_matches('S')
            .parse()
            .unwrap_or(20.0);

        let known_shell = |id: &Option<String>| -> Option<String> {
            let id = id.clone()?;
            self.shells.lock().unwrap().contains_key(&id).then_some(id)
        };
        let invalid_selectors = || {
            fault_response(&msg_id, "s:Sender", "w:InvalidSelectors", "The WS-Management service cannot process the request because the request contained invalid selectors for the resource.", "2150858843")
        };

        if action == format!("{T}Create") {
            let Some(streams) = find(NS_SHELL, "OutputStreams") else {
                return fault_response(
                    &msg_id,
                    "s:Sender",
                    "w:SchemaValidationError",
                    "The Shell element is missing its OutputStreams.",
                    "2150858817",
                );
            };
            let _ = streams;
            let id = self.new_id();
            self.shells
                .lock()
                .unwrap()
                .insert(id.clone(), HashMap::new());
            let body = format!(
                r#"<x:ResourceCreated><a:Address>http://windows-host:5985/wsman</a:Address><a:ReferenceParameters><w:ResourceURI>{RESOURCE_CMD}</w:ResourceURI><w:SelectorSet><w:Selector Name="ShellId">{id}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated><rsp:Shell xmlns:rsp="{NS_SHELL}"><rsp:ShellId>{id}</rsp:ShellId><rsp:ResourceUri>{RESOURCE_CMD}</rsp:ResourceUri><rsp:Owner>{}</rsp:Owner><rsp:ClientIP>127.0.0.1</rsp:ClientIP><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"#,
                self.cfg.user
            );
            return ok_response(&msg_id, &format!("{T}CreateResponse"), &body);
        }
        if action == format!("{T}Delete") {
            let Some(id) = known_shell(&shell_id) else {
                return invalid_selectors();
            };
            self.shells.lock().unwrap().remove(&id);
            return ok_response(&msg_id, &format!("{T}DeleteResponse"), "");
        }
        let Some(shell) = known_shell(&shell_id) else {
            return invalid_selectors();
        };
        if action == format!("{SH}Command") {
            let command = text_of(find(NS_SHELL, "Command"));
            let args = text_of(find(NS_SHELL, "Arguments"));
            let line = if args.is_empty() {
                command
            } else {
                format!("{command} {args}")
            };
            let cmd = self.start_command(&line);
            let id = self.new_id();
            self.shells
                .lock()
                .unwrap()
                .get_mut(&shell)
                .unwrap()
                .insert(id.clone(), cmd);
            return ok_response(
                &msg_id,
                &format!("{SH}CommandResponse"),
                &format!("<rsp:CommandResponse><rsp:CommandId>{id}</rsp:CommandId></rsp:CommandResponse>"),
            );
        }
        let cmd_id = find(NS_SHELL, "DesiredStream")
            .or_else(|| find(NS_SHELL, "Signal"))
            .or_else(|| find(NS_SHELL, "Stream"))
            .and_then(|n| n.attribute("CommandId"))
            .unwrap_or_default()
            .to_string();
        let exists = self
            .shells
            .lock()
            .unwrap()
            .get(&shell)
            .is_some_and(|s| s.contains_key(&cmd_id));
        if !exists {
            return invalid_selectors();
        }
        if action == format!("{SH}Send") {
            let stream = find(NS_SHELL, "Stream").unwrap();
            let data = b64()
                .decode(stream.text().unwrap_or_default().trim())
                .unwrap_or_default();
            let end = stream.attribute("End") == Some("true");
            let mut shells = self.shells.lock().unwrap();
            let cmd = shells.get_mut(&shell).unwrap().get_mut(&cmd_id).unwrap();
            cmd.stdin.extend_from_slice(&data);
            if end {
                if let Some(path) = cmd.upload_to.take() {
                    let mut guest = self.guest.lock().unwrap();
                    finish_upload(&mut guest, &path, cmd);
                }
            }
            return ok_response(&msg_id, &format!("{SH}SendResponse"), "<rsp:SendResponse/>");
        }
        if action == format!("{SH}Signal") {
            let code = text_of(find(NS_SHELL, "Code"));
            if !code.ends_with("/signal/terminate") && !code.ends_with("/signal/ctrl_c") {
                return fault_response(
                    &msg_id,
                    "s:Sender",
                    "w:InvalidParameter",
                    "The signal code is not supported.",
                    "2150858882",
                );
            }
            self.shells
                .lock()
                .unwrap()
                .get_mut(&shell)
                .unwrap()
                .remove(&cmd_id);
            return ok_response(
                &msg_id,
                &format!("{SH}SignalResponse"),
                "<rsp:SignalResponse/>",
            );
        }
        if action == format!("{SH}Receive") {
            let timed_out = {
                let mut k = self.knobs.lock().unwrap();
                let waiting = {
                    let shells = self.shells.lock().unwrap();
                    let c = &shells[&shell][&cmd_id];
                    c.hung || c.upload_to.is_some()
                };
                if k.receive_timeouts > 0 {
                    k.receive_timeouts -= 1;
                    true
                } else {
                    waiting
                }
            };
            if timed_out {
                // Windows holds a Receive for OperationTimeout when there is no output.
                tokio::time::sleep(Duration::from_secs_f64(op_secs.min(0.5))).await;
                return fault_response(&msg_id, "s:Receiver", "w:TimedOut", "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  ", "2150858793");
            }
            let drops = self.shells.lock().unwrap()[&shell][&cmd_id].drops_connection;
            if drops {
                return Response::dropped();
            }
            let lines = self.knobs.lock().unwrap().lines_per_receive;
            let mut shells = self.shells.lock().unwrap();
            let cmd = shells.get_mut(&shell).unwrap().get_mut(&cmd_id).unwrap();
            let mut body = String::from("<rsp:ReceiveResponse>");
            let mut chunk = Vec::new();
            for _ in 0..lines {
                match cmd.stdout.pop_front() {
                    Some(l) => chunk.extend_from_slice(&l),
                    None => break,
                }
            }
            let done = cmd.stdout.is_empty();
            if !chunk.is_empty() {
                body.push_str(&format!(
                    r#"<rsp:Stream Name="stdout" CommandId="{cmd_id}">{}</rsp:Stream>"#,
                    b64().encode(&chunk)
                ));
            }
            if done {
                if !cmd.stderr.is_empty() {
                    body.push_str(&format!(
                        r#"<rsp:Stream Name="stderr" CommandId="{cmd_id}">{}</rsp:Stream>"#,
                        b64().encode(&cmd.stderr)
                    ));
                }
                body.push_str(&format!(
                    r#"<rsp:Stream Name="stdout" CommandId="{cmd_id}" End="true"></rsp:Stream><rsp:Stream Name="stderr" CommandId="{cmd_id}" End="true"></rsp:Stream><rsp:CommandState CommandId="{cmd_id}" State="{SH}CommandState/Done"><rsp:ExitCode>{}</rsp:ExitCode></rsp:CommandState>"#,
                    cmd.exit as u32
                ));
            } else {
                body.push_str(&format!(r#"<rsp:CommandState CommandId="{cmd_id}" State="{SH}CommandState/Running"></rsp:CommandState>"#));
            }
            body.push_str("</rsp:ReceiveResponse>");
            return ok_response(&msg_id, &format!("{SH}ReceiveResponse"), &body);
        }
        fault_response(
            &msg_id,
            "s:Sender",
            "a:ActionNotSupported",
            "The action is not supported by the service.",
            "2150858757",
        )
    }

    fn start_command(&self, line: &str) -> Cmd {
        let mut guest = self.guest.lock().unwrap();
        let mut cmd = Cmd {
            stdout: VecDeque::new(),
            stderr: Vec::new(),
            exit: 0,
            upload_to: None,
            stdin: Vec::new(),
            hung: false,
            drops_connection: false,
        };
        let script = decode_powershell(line);
        guest
            .ran
            .push(script.clone().unwrap_or_else(|| line.to_string()));
        let (out, err, exit) = match script {
            Some(s) => run_script(&mut guest, &s, &mut cmd),
            None => run_cmd(&mut guest, line, &mut cmd),
        };
        for l in out.split_inclusive('\n') {
            cmd.stdout.push_back(l.as_bytes().to_vec());
        }
        cmd.stderr = err.into_bytes();
        cmd.exit = exit;
        cmd
    }
}

fn envelope(msg_id: &str, action: &str, body: &str) -> String {
    format!(
        r#"<s:Envelope xml:lang="en-US" xmlns:s="{NS_ENV}" xmlns:a="{NS_ADDR}" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="{NS_WSMAN}" xmlns:rsp="{NS_SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"><s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{}</a:MessageID><a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To><a:RelatesTo>{msg_id}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        uuid::Uuid::now_v7().hyphenated().to_string().to_uppercase()
    )
}

fn ok_response(msg_id: &str, action: &str, body: &str) -> Response {
    let mut r = Response::new(200);
    r.headers.push((
        "Content-Type".into(),
        "application/soap+xml;charset=UTF-8".into(),
    ));
    r.body = envelope(msg_id, action, body).into_bytes();
    r
}

fn fault_response(
    msg_id: &str,
    code: &str,
    subcode: &str,
    reason: &str,
    wsman_code: &str,
) -> Response {
    let body = format!(
        r#"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{reason}</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{wsman_code}" Machine="127.0.0.1"><f:Message>{reason}</f:Message></f:WSManFault></s:Detail></s:Fault>"#
    );
    let mut r = Response::new(500);
    r.headers.push((
        "Content-Type".into(),
        "application/soap+xml;charset=UTF-8".into(),
    ));
    r.body = envelope(
        msg_id,
        "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
        &body,
    )
    .into_bytes();
    r
}

// ---------------------------------------------------------------- the guest's commands

/// The script of a `powershell … -EncodedCommand <base64 UTF-16LE>` line.
fn decode_powershell(line: &str) -> Option<String> {
    let lower = line.to_lowercase();
    if !lower.starts_with("powershell") {
        return None;
    }
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("-EncodedCommand") || w.eq_ignore_ascii_case("-enc") {
            let bytes = b64().decode(words.next()?).ok()?;
            return Some(from_utf16(&bytes));
        }
    }
    None
}

/// PowerShell's error record on stderr, as CLIXML, the way WinRM delivers it.
fn clixml_error(text: &str) -> String {
    let esc = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "_x000A_")
        .replace('\r', "_x000D_");
    format!("#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">{esc}_x000D__x000A_</S></Objs>")
}

/// The value of `$name = '…'` in a script (a PowerShell single-quoted literal).
fn ps_var(script: &str, name: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r"\${name}\s*=\s*'((?:[^']|'')*)'")).unwrap();
    re.captures(script).map(|c| c[1].replace("''", "'"))
}

fn run_cmd(guest: &mut Guest, line: &str, cmd: &mut Cmd) -> (String, String, i32) {
    let word = line.split_whitespace().next().unwrap_or("").to_lowercase();
    match word.as_str() {
        "hostname" => (format!("{}\r\n", guest.hostname), String::new(), 0),
        "echo" => (format!("{}\r\n", line[4..].trim()), String::new(), 0),
        "exit" => {
            let code = line[4..].trim().trim_start_matches("/b").trim().parse().unwrap_or(0);
            (String::new(), String::new(), code)
        }
        "ping" => {
            // A long-running command: it never finishes within a test.
            cmd.hung = true;
            (String::new(), String::new(), 0)
        }
        "numbers" => {
            // Not a Windows command: a test helper printing many lines.
            let n: usize = line[7..].trim().parse().unwrap_or(10);
            ((1..=n).map(|i| format!("line {i}\r\n")).collect(), String::new(), 0)
        }
        _ => (
            String::new(),
            format!("'{word}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"),
            1,
        ),
    }
}

fn run_script(guest: &mut Guest, s: &str, cmd: &mut Cmd) -> (String, String, i32) {
    if s.contains("FromBase64String($input)") {
        let Some(path) = ps_var(s, "path") else {
            return (String::new(), clixml_error("no path"), 1);
        };
        cmd.upload_to = Some(path);
        return (String::new(), String::new(), 0);
    }
    if s.contains("[System.IO.File]::Open($path, 'Open', 'Read', 'ReadWrite')") {
        let path = ps_var(s, "path").unwrap_or_default();
        let max: usize = regex::Regex::new(r"\[Math\]::Min\(\$fs\.Length, (\d+)\)")
            .unwrap()
            .captures(s)
            .and_then(|c| c[1].parse().ok())
            .unwrap_or(usize::MAX);
        return match guest.file(&path) {
            Some(data) => {
                let data = &data[..data.len().min(max)];
                // Long output arrives in several Receive rounds.
                let text = b64().encode(data);
                let mut out = String::new();
                for c in text.as_bytes().chunks(4096) {
                    out.push_str(std::str::from_utf8(c).unwrap());
                    out.push('\n');
                }
                (out, String::new(), 0)
            }
            None => (String::new(), format!("no such file: {path}\r\n"), 2),
        };
    }
    if s.contains("Get-NetIPConfiguration") {
        return (ip_configuration(guest), String::new(), 0);
    }
    if s.contains("Set-NetIPInterface") || s.contains("Set-DnsClientServerAddress") {
        let alias = regex::Regex::new(r"-InterfaceAlias\s+'((?:[^']|'')*)'")
            .unwrap()
            .captures(s)
            .map(|c| c[1].replace("''", "'"))
            .unwrap_or_default();
        if alias != guest.interface_alias {
            return (
                String::new(),
                clixml_error(&format!("Set-NetIPInterface : No MSFT_NetIPInterface objects found with property 'InterfaceAlias' equal to '{alias}'.  Verify the value of the property and retry.")),
                1,
            );
        }
        if !(s.contains("-Dhcp Enabled") && s.contains("-ResetServerAddresses")) {
            return (String::new(), clixml_error("unexpected DHCP script"), 1);
        }
        guest.dhcp = true;
        cmd.drops_connection = guest.dhcp_drops_connection;
        return (String::new(), String::new(), 0);
    }
    if s.contains("Get-NetIPInterface") {
        let state = if guest.dhcp { "Enabled" } else { "Disabled" };
        return (format!("{state}\r\n"), String::new(), 0);
    }
    if s.lines().any(|l| l.trim() == "$env:COMPUTERNAME") {
        return (format!("{}\r\n", guest.hostname), String::new(), 0);
    }
    if s.contains("Rename-Computer") {
        return rename_computer(guest, s, cmd);
    }
    if s.contains("Expand-Archive") {
        return expand_archive(guest, s);
    }
    if s.contains("Win32_OperatingSystem") {
        return (format!("{}\r\n", guest.caption), String::new(), 0);
    }
    if s.contains("Start-Process") && s.to_lowercase().contains("msiexec") {
        return msiexec(guest, s);
    }
    if s.contains("Get-Service") {
        let names: Vec<String> = regex::Regex::new(r"'((?:[^']|'')*)'")
            .unwrap()
            .captures_iter(s.lines().find(|l| l.contains("$names")).unwrap_or(""))
            .map(|c| c[1].replace("''", "'"))
            .collect();
        let mut out = String::new();
        let mut bad = 0;
        for n in &names {
            match guest
                .services
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
            {
                Some((_, ServiceState::Running)) => out.push_str(&format!("{n}: Running\r\n")),
                Some((_, ServiceState::Stopped)) => {
                    out.push_str(&format!("{n}: Stopped\r\n"));
                    bad += 1;
                }
                None => {
                    out.push_str(&format!("{n}: not installed\r\n"));
                    bad += 1;
                }
            }
        }
        return (out, String::new(), bad);
    }
    let first = s
        .lines()
        .find(|l| !l.trim().is_empty() && !l.contains("$ProgressPreference"))
        .unwrap_or("");
    (
        String::new(),
        clixml_error(&format!(
            "The fake guest does not know this script: {first}"
        )),
        1,
    )
}

fn finish_upload(guest: &mut Guest, path: &str, cmd: &mut Cmd) {
    let text = String::from_utf8_lossy(&cmd.stdin).into_owned();
    let mut data = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        match b64().decode(line) {
            Ok(b) => data.extend_from_slice(&b),
            Err(_) => {
                cmd.stderr = clixml_error("Exception calling \"FromBase64String\" with \"1\" argument(s): \"The input is not a valid Base-64 string\"").into_bytes();
                cmd.exit = 1;
                return;
            }
        }
    }
    let hash = hex::encode(sha2::Sha256::digest(&data));
    cmd.stdout
        .push_back(format!("{} {hash}\r\n", data.len()).into_bytes());
    guest.put(path, data);
}

fn ip_configuration(g: &Guest) -> String {
    let (ip, gw, dns) = if g.dhcp {
        ("10.20.30.141", "10.20.30.1", "10.20.30.1")
    } else {
        ("10.20.30.40", "10.20.30.1", "10.20.0.53")
    };
    format!(
        "\r\n\r\nInterfaceAlias       : {}\r\nInterfaceIndex       : 4\r\nInterfaceDescription : Red Hat VirtIO Ethernet Adapter\r\nNetProfile.Name      : Network\r\nIPv4Address          : {ip}\r\nIPv6DefaultGateway   :\r\nIPv4DefaultGateway   : {gw}\r\nDNSServer            : {dns}\r\n\r\n\r\n",
        g.interface_alias
    )
}

/// Splits an msiexec argument string, honouring double quotes.
fn msi_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Rename-Computer sets the new name for the next start ("The new name
/// takes effect after restart", Microsoft's Rename-Computer reference);
/// Restart-Computer restarts: the connection drops and the name changes.
/// NetBIOS names longer than 15 characters are refused, as Windows does
/// (Microsoft: "Naming conventions in Active Directory", NetBIOS names).
fn rename_computer(g: &mut Guest, s: &str, cmd: &mut Cmd) -> (String, String, i32) {
    let name = regex::Regex::new(r"-NewName\s+'((?:[^']|'')*)'")
        .unwrap()
        .captures(s)
        .map(|c| c[1].replace("''", "'"))
        .unwrap_or_default();
    let valid = !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.chars().all(|c| c.is_ascii_digit());
    if !valid {
        return (
            String::new(),
            clixml_error(&format!("Rename-Computer : Skip computer '{}' with new name '{name}' because the new name is not valid. The new computer name might contain invalid characters or be too long.", g.hostname)),
            1,
        );
    }
    g.pending_name = Some(name.to_ascii_uppercase());
    if s.contains("Restart-Computer") {
        g.restarts += 1;
        if let Some(n) = g.pending_name.take() {
            g.hostname = n;
        }
        cmd.drops_connection = true;
    }
    (String::new(), String::new(), 0)
}

/// Expand-Archive -LiteralPath $zip -DestinationPath $dest: the zip's
/// entries under $dest, then the listing Get-ChildItem prints.
fn expand_archive(g: &mut Guest, s: &str) -> (String, String, i32) {
    let (Some(zip), Some(dest)) = (ps_var(s, "zip"), ps_var(s, "dest")) else {
        return (String::new(), clixml_error("no $zip/$dest"), 1);
    };
    let Some(data) = g.file(&zip).cloned() else {
        return (
            String::new(),
            clixml_error(&format!("Expand-Archive : The path '{zip}' either does not exist or is not a valid file system path.")),
            1,
        );
    };
    let mut archive = match zip::ZipArchive::new(std::io::Cursor::new(data)) {
        Ok(a) => a,
        Err(e) => {
            return (
                String::new(),
                clixml_error(&format!("Expand-Archive : {e}")),
                1,
            )
        }
    };
    let prefix = format!("{}\\", norm_path(&dest));
    g.files.retain(|k, _| !k.starts_with(&prefix));
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        if f.is_dir() {
            continue;
        }
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).unwrap();
        let path = format!("{dest}\\{}", f.name().unwrap().replace('/', "\\"));
        g.put(&path, buf);
    }
    // Get-ChildItem -LiteralPath <folder> -File: "name size" lines.
    let listed = regex::Regex::new(r"Get-ChildItem -LiteralPath '((?:[^']|'')*)'")
        .unwrap()
        .captures(s)
        .map(|c| norm_path(&c[1].replace("''", "'")))
        .unwrap_or_default();
    let mut out = String::new();
    for (k, v) in &g.files {
        if let Some(rest) = k.strip_prefix(&format!("{listed}\\")) {
            if !rest.contains('\\') {
                out.push_str(&format!("{rest} {}\r\n", v.len()));
            }
        }
    }
    (out, String::new(), 0)
}

/// Where the agent's beacon comes from, as the installed agent would find
/// it: DEPLOYSERVERURL (a documented MSI property), else the bootstrap
/// download location in the transform or mgssetup.ini beside the MSI (the
/// files Flexera ships for it; their exact key names are not confirmed,
/// so the fake takes the first `…/ManageSoftDL` URL in them). MGSFT_*
/// properties are not among them: they are the Linux response file's keys.
fn beacon(g: &Guest, props: &BTreeMap<String, String>, msi_dir: &str) -> Option<String> {
    if let Some(u) = props.get("DEPLOYSERVERURL") {
        return Some(u.clone());
    }
    let url = regex::Regex::new(r"https?://[^\s\x00]+/ManageSoftDL/?").unwrap();
    let mut files: Vec<String> = props
        .get("TRANSFORMS")
        .map(|t| t.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    files.push(format!("{msi_dir}\\mgssetup.ini"));
    files.iter().find_map(|f| {
        let data = g.file(f)?;
        url.find(&String::from_utf8_lossy(data))
            .map(|m| m.as_str().to_string())
    })
}

/// A timestamp as the agent writes it: `[Mon Nov 23 14:00:02 2026 (N, 0)]`.
fn agent_stamp(secs: u32) -> String {
    format!("[Mon Nov 23 14:00:{secs:02} 2026 (N, 0)]")
}

/// msiexec as Windows Installer behaves for Flexera's package:
/// - the package must open (else 1619, ERROR_INSTALL_PACKAGE_OPEN_FAILED);
/// - each TRANSFORMS file must exist (else 1624,
///   ERROR_INSTALL_TRANSFORM_FAILURE);
/// - the MSI's files are in Data1.cab beside it: without it, error 1311
///   "Source file not found" and 1603 (Microsoft's Windows Installer error
///   and MsiExec.exe exit-code references);
/// - without /qn it would wait for a click (the fake refuses with 1639);
/// - public properties it does not know (MGSFT_*) are accepted and ignored;
/// - GENERATEINVENTORY=YES makes the new agent inventory and upload at once,
///   to the beacon of [`beacon`] (Flexera's install template, flexera.md 1b);
///   without it no inventory runs until the agent's schedule arrives.
fn msiexec(g: &mut Guest, s: &str) -> (String, String, i32) {
    let Some(args) = regex::Regex::new(r"-ArgumentList\s+'((?:[^']|'')*)'")
        .unwrap()
        .captures(s)
        .map(|c| c[1].replace("''", "'"))
    else {
        return (
            String::new(),
            clixml_error("Start-Process : no -ArgumentList"),
            1,
        );
    };
    let args = msi_args(&args);
    g.msiexec_runs.push(args.clone());
    let mut msi = None;
    let mut log = None;
    let mut quiet = false;
    let mut props = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_lowercase();
        if a == "/i" {
            msi = args.get(i + 1).cloned();
            i += 1;
        } else if a.starts_with("/l") {
            log = args.get(i + 1).cloned();
            i += 1;
        } else if a == "/qn" || a == "/quiet" {
            quiet = true;
        } else if let Some((k, v)) = args[i].split_once('=') {
            props.insert(k.to_ascii_uppercase(), v.to_string());
        } else {
            return (String::new(), String::new(), 1639);
        }
        i += 1;
    }
    if !quiet {
        // Without /qn msiexec would wait for a click that never comes.
        return (String::new(), String::new(), 1639);
    }
    let mut lines = vec![
        "=== Verbose logging started: 11/23/2026  14:00:00  Build type: SHIP UNICODE 5.00.10011.00  Calling process: C:\\Windows\\system32\\msiexec.EXE ===".to_string(),
        format!("MSI (c) (A4:B8) [14:00:00:001]: Command Line: {}", args.join(" ")),
    ];
    let msi_dir = msi
        .as_deref()
        .and_then(|m| m.rsplit_once('\\'))
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let missing_transform = props.get("TRANSFORMS").and_then(|t| {
        t.split(';')
            .find(|f| g.file(f).is_none())
            .map(str::to_string)
    });
    let exit: u32 = if msi.as_deref().is_none_or(|m| g.file(m).is_none()) {
        1619
    } else if let Some(t) = &missing_transform {
        lines.push(format!(
            "MSI (c) (A4:B8) [14:00:00:040]: Note: 1: 2203 2: {t} 3: -2147287038"
        ));
        1624
    } else if g.file(&format!("{msi_dir}\\Data1.cab")).is_none() {
        lines.push(format!("MSI (s) (C0:D4) [14:00:04:000]: Product: FlexNet Inventory Agent -- Error 1311. Source file not found: {msi_dir}\\Data1.cab.  Verify that the file exists and that you can access it."));
        1603
    } else {
        g.msi_exit
    };
    for (k, v) in &props {
        lines.push(format!("MSI (s) (C0:D4) [14:00:01:100]: PROPERTY CHANGE: Adding {k} property. Its value is '{v}'."));
    }
    match exit {
        0 => {
            lines.push("MSI (s) (C0:D4) [14:00:09:000]: Product: FlexNet Inventory Agent -- Installation completed successfully.".into());
            lines.push("MSI (s) (C0:D4) [14:00:09:001]: Windows Installer installed the product. Product Name: FlexNet Inventory Agent. Product Version: 19.0.0. Installation success or error status: 0.".into());
            for svc in g.agent_services.clone() {
                g.services.insert(svc, g.services_after_install.clone());
            }
            let beacon = beacon(g, &props, &msi_dir);
            let mut install = format!("{} {{1234}} Installation started\r\n", agent_stamp(2));
            install.push_str(&format!(
                "{} {{1234}} Bootstrap download location: {}\r\n",
                agent_stamp(3),
                beacon.as_deref().unwrap_or("(none)")
            ));
            install.push_str(&format!("{} {{1234}} Program exited successfully\r\n", agent_stamp(8)));
            g.put(r"C:\Windows\Temp\ManageSoft\installation.log", install);
            if props.get("GENERATEINVENTORY").map(String::as_str) == Some("YES") {
                let name = g.hostname.clone();
                let mut tracker = format!("{} {{2345}} Tracker started\r\n", agent_stamp(10));
                match &beacon {
                    Some(b) => {
                        let up = b.replace("ManageSoftDL", "ManageSoftRL");
                        tracker.push_str(&format!("{} {{2345}} Uploading inventory to {up}\r\n", agent_stamp(20)));
                        tracker.push_str(&format!("{} {{2345}} Upload successful\r\n", agent_stamp(21)));
                        g.inventory_uploads.push((up, name));
                    }
                    None => tracker.push_str(&format!(
                        "{} {{2345}} No upload location is configured; the inventory stays queued\r\n",
                        agent_stamp(20)
                    )),
                }
                tracker.push_str(&g.tracker_extra);
                g.put(r"C:\Windows\Temp\ManageSoft\tracker.log", tracker);
            }
        }
        1619 => lines.push("MSI (c) (A4:B8) [14:00:00:050]: Note: 1: 1309 2: 5 3: the package. This installation package could not be opened.".into()),
        1624 => lines.push("MSI (c) (A4:B8) [14:00:00:051]: Error applying transforms.  Verify that the specified transform paths are valid.".into()),
        code => {
            lines.push("CustomAction InstallAgent returned actual error code 1603 (note this may not be 100% accurate if translation happened inside sandbox)".into());
            lines.push("Action ended 14:00:05: InstallFinalize. Return value 3.".into());
            lines.push("MSI (s) (C0:D4) [14:00:05:010]: Product: FlexNet Inventory Agent -- Installation failed.".into());
            lines.push(format!("MSI (s) (C0:D4) [14:00:05:011]: Windows Installer installed the product. Product Name: FlexNet Inventory Agent. Installation success or error status: {code}."));
        }
    }
    lines.push(format!(
        "MSI (c) (A4:B8) [14:00:10:000]: MainEngineThread is returning {exit}"
    ));
    lines.push("=== Verbose logging stopped: 11/23/2026  14:00:10 ===".into());
    if let Some(log) = log {
        // msiexec writes its verbose log in UTF-16LE with a byte-order mark.
        let text = lines.join("\r\n") + "\r\n";
        let mut bytes = vec![0xff, 0xfe];
        bytes.extend(utf16(&text));
        g.put(&log, bytes);
    }
    (String::new(), String::new(), exit as i32)
}
