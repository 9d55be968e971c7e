//! [`RemoteShell`] over SSH (russh): key login with a password fallback, the
//! host key trusted on first use within a job, commands with streamed output,
//! uploads over SFTP or `cat` when the server has no SFTP subsystem.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Sig};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{OpenFlags, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::keys::{self, SshKey};
use super::lines::{CappedBuf, LineSplitter, PidFilter, PID_MARKER};
use super::{quote, CommandOutput, OnLine, RemoteError, RemoteShell, Stream};

/// How much stdout and stderr of one command is kept (lines still stream).
pub const OUTPUT_CAP: usize = 1024 * 1024;
/// Read buffer for uploads: big enough to keep the SFTP pipeline full.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// How long cleanup messages (close, kill, disconnect) may take.
const CLEANUP: Duration = Duration::from_secs(2);

/// Where and how to log in. `Debug` never shows the key or password.
#[derive(Clone, Debug)]
pub struct SshOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Tried first.
    pub key: Option<SshKey>,
    /// Tried when there is no key or the server refused it.
    pub password: Option<SecretString>,
    /// The host key fingerprint recorded earlier in this job (`SHA256:…`).
    /// `None` trusts the key seen now; the caller records
    /// [`SshShell::host_key_fingerprint`].
    pub host_key: Option<String>,
    /// More accepted host keys (pinned SFTP servers). Like `host_key`, checked
    /// during the handshake, before any key or password is offered.
    pub host_keys: Vec<String>,
    /// TCP connect.
    pub connect_timeout: Duration,
    /// SSH handshake and authentication.
    pub login_timeout: Duration,
    /// Keepalive probe interval; the connection is dropped after 3 unanswered.
    pub keepalive_interval: Duration,
}

impl SshOptions {
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> Self {
        SshOptions {
            host: host.into(),
            port,
            user: user.into(),
            key: None,
            password: None,
            host_key: None,
            host_keys: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
        }
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One authenticated SSH connection; every call opens its own channel on it,
/// so calls may run concurrently.
pub struct SshShell {
    addr: String,
    host_key: String,
    handle: Mutex<Option<Arc<Handle<Client>>>>,
}

impl std::fmt::Debug for SshShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshShell")
            .field("addr", &self.addr)
            .field("host_key", &self.host_key)
            .finish_non_exhaustive()
    }
}

impl SshShell {
    /// Connects, checks the host key against `opts.host_key` and logs in.
    pub async fn connect(opts: &SshOptions) -> Result<SshShell, RemoteError> {
        let addr = opts.addr();
        let tcp = match tokio::time::timeout(
            opts.connect_timeout,
            TcpStream::connect((opts.host.as_str(), opts.port)),
        )
        .await
        {
            Err(_) => {
                return Err(RemoteError::Connect {
                    addr,
                    reason: format!("no answer within {} s", secs(opts.connect_timeout)),
                })
            }
            Ok(Err(e)) => {
                return Err(RemoteError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);

        let config = Arc::new(client::Config {
            keepalive_interval: Some(opts.keepalive_interval),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..client::Config::default()
        });
        let seen = Arc::new(Mutex::new(None));
        let handler = Client {
            expected: opts
                .host_key
                .iter()
                .chain(&opts.host_keys)
                .cloned()
                .collect(),
            seen: Arc::clone(&seen),
        };

        let login = async {
            let mut handle =
                client::connect_stream(config, tcp, handler)
                    .await
                    .map_err(|e| match e {
                        ClientError::HostKeyMismatch { recorded, seen } => {
                            RemoteError::HostKeyMismatch {
                                addr: addr.clone(),
                                recorded,
                                seen,
                            }
                        }
                        ClientError::Ssh(e) => RemoteError::Connect {
                            addr: addr.clone(),
                            reason: format!("SSH handshake failed: {e}"),
                        },
                    })?;
            authenticate(&mut handle, opts).await?;
            Ok::<_, RemoteError>(handle)
        };
        let handle = tokio::time::timeout(opts.login_timeout, login)
            .await
            .map_err(|_| RemoteError::Timeout {
                what: format!("SSH login to {addr} as {}", opts.user),
                secs: secs(opts.login_timeout),
            })??;

        let host_key = lock(&seen).clone().ok_or_else(|| {
            RemoteError::Protocol(format!(
                "SSH server {addr} finished the handshake without a host key"
            ))
        })?;
        tracing::debug!(%addr, user = %opts.user, %host_key, "ssh: logged in");
        Ok(SshShell {
            addr,
            host_key,
            handle: Mutex::new(Some(Arc::new(handle))),
        })
    }

    /// The server's host key, `SHA256:…`; record it on the job after the first connect.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn session(&self) -> Result<Arc<Handle<Client>>, RemoteError> {
        match &*lock(&self.handle) {
            Some(h) if !h.is_closed() => Ok(Arc::clone(h)),
            Some(_) => Err(RemoteError::Protocol(format!(
                "SSH connection to {} was lost",
                self.addr
            ))),
            None => Err(RemoteError::Protocol(format!(
                "SSH connection to {} is closed",
                self.addr
            ))),
        }
    }

    /// Runs `command` on a fresh channel, feeding `stdin` to it if given.
    /// The whole call ends by `deadline`; `what` names it in a timeout error.
    async fn exec(
        &self,
        command: &str,
        stdin: Option<tokio::fs::File>,
        limits: ExecLimits<'_>,
    ) -> Result<ExecOutput, RemoteError> {
        let ExecLimits {
            deadline,
            started,
            what,
            stdout_cap,
            on_line,
            kill_on_timeout,
        } = limits;
        let timed_out = || RemoteError::Timeout {
            what: what.to_string(),
            secs: secs_until(deadline, started),
        };
        let handle = self.session()?;
        let mut channel = timeout_at(deadline, handle.channel_open_session())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| {
                RemoteError::Protocol(format!("cannot open an SSH channel on {}: {e}", self.addr))
            })?;

        // The wrapper reports the shell's pid (which sshd made a process group
        // leader), because OpenSSH ignores signal requests in root sessions.
        let wrapped;
        let command = if kill_on_timeout {
            wrapped = format!(
                "echo {}$$ >&2\n{command}",
                String::from_utf8_lossy(PID_MARKER)
            );
            wrapped.as_str()
        } else {
            command
        };
        let pid = AtomicU32::new(0);
        let drive = async {
            channel.exec(true, command).await.map_err(|e| {
                RemoteError::Protocol(format!("cannot start a command on {}: {e}", self.addr))
            })?;
            let writer = channel.make_writer();
            let feed = async move {
                let Some(file) = stdin else { return Ok(()) };
                let mut writer = writer;
                let mut reader = BufReader::with_capacity(UPLOAD_CHUNK, file);
                tokio::io::copy_buf(&mut reader, &mut writer).await?;
                writer.shutdown().await // sends EOF
            };
            tokio::pin!(feed);
            let mut feeding = true;
            let mut feed_error = None;
            let mut out = ExecOutput::new(stdout_cap);
            let mut lines = [LineSplitter::default(), LineSplitter::default()];
            let mut pid_filter = PidFilter::new(kill_on_timeout);
            loop {
                let msg = tokio::select! {
                    r = &mut feed, if feeding => {
                        feeding = false;
                        feed_error = r.err();
                        continue;
                    }
                    msg = channel.wait() => msg,
                };
                match msg {
                    None | Some(ChannelMsg::Close) => break,
                    Some(ChannelMsg::Failure) if !out.started => {
                        return Err(RemoteError::Protocol(format!(
                            "SSH server {} refused to run the command",
                            self.addr
                        )));
                    }
                    Some(ChannelMsg::Success) => out.started = true,
                    Some(ChannelMsg::Data { data }) => {
                        out.stdout.push(&data);
                        if let Some(f) = on_line {
                            lines[0].push(&data, |l| f(Stream::Stdout, l));
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        let data = pid_filter.push(&data);
                        if let Some(p) = pid_filter.pid() {
                            pid.store(p, Ordering::Relaxed);
                        }
                        out.stderr.push(&data);
                        if let Some(f) = on_line {
                            lines[1].push(&data, |l| f(Stream::Stderr, l));
                        }
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        out.status = Some(i32::try_from(exit_status).unwrap_or(i32::MAX));
                    }
                    Some(ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        ..
                    }) => {
                        let text = describe_signal(&signal_name, core_dumped, &error_message);
                        out.signal = Some((text, signal_number(&signal_name)));
                    }
                    Some(_) => {}
                }
            }
            let held = pid_filter.finish();
            out.stderr.push(&held);
            if let Some(f) = on_line {
                lines[1].push(&held, |l| f(Stream::Stderr, l));
                lines[0].finish(|l| f(Stream::Stdout, l));
                lines[1].finish(|l| f(Stream::Stderr, l));
                if let Some((sig, _)) = &out.signal {
                    f(Stream::Stderr, sig);
                }
            }
            if feeding {
                feed_error = Some(std::io::Error::other(
                    "the command ended before reading all its input",
                ));
            }
            out.feed_error = feed_error;
            Ok(out)
        };
        let result = timeout_at(deadline, drive).await;
        match result {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                let _ = tokio::time::timeout(CLEANUP, channel.close()).await;
                Err(e)
            }
            Err(_) => {
                // Stop the command too, not just our end: a `sleep` would outlive the channel.
                let _ = tokio::time::timeout(CLEANUP, async {
                    let _ = channel.signal(Sig::KILL).await;
                    let _ = channel.close().await;
                })
                .await;
                let pid = pid.load(Ordering::Relaxed);
                if pid > 1 {
                    let kill = format!("kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid}");
                    let _ = tokio::time::timeout(CLEANUP, fire(&handle, &kill)).await;
                }
                Err(timed_out())
            }
        }
    }

    /// An SFTP session, or `None` when the server offers no SFTP subsystem.
    async fn sftp(&self, deadline: Instant) -> Result<Option<SftpSession>, RemoteError> {
        let handle = self.session()?;
        let mut channel = handle.channel_open_session().await.map_err(|e| {
            RemoteError::Protocol(format!("cannot open an SSH channel on {}: {e}", self.addr))
        })?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| {
            RemoteError::Protocol(format!("cannot ask {} for SFTP: {e}", self.addr))
        })?;
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => {
                    let _ = channel.close().await;
                    tracing::debug!(addr = %self.addr, "ssh: server refused the sftp subsystem");
                    return Ok(None);
                }
                Some(_) => {}
            }
        }
        let config = russh_sftp::client::Config {
            // Our own deadline should fire first, with the better message.
            request_timeout_secs: deadline.saturating_duration_since(Instant::now()).as_secs() + 5,
            ..Default::default()
        };
        match SftpSession::new_with_config(channel.into_stream(), config).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                // Accepted but broken, e.g. the sftp-server binary is missing.
                tracing::debug!(addr = %self.addr, error = %e, "ssh: sftp subsystem did not start");
                Ok(None)
            }
        }
    }

    async fn upload_sftp(
        &self,
        sftp: &SftpSession,
        local: tokio::fs::File,
        len: u64,
        remote: &str,
    ) -> Result<(), RemoteError> {
        let mut file = sftp
            .open_with_flags(
                remote,
                OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
            )
            .await
            .map_err(|e| sftp_error(remote, e))?;
        let mut reader = BufReader::with_capacity(UPLOAD_CHUNK, local);
        tokio::io::copy_buf(&mut reader, &mut file)
            .await
            .map_err(|e| io_error(remote, "write", &e))?;
        file.shutdown()
            .await
            .map_err(|e| io_error(remote, "close", &e))?;
        let size = sftp
            .metadata(remote)
            .await
            .map_err(|e| sftp_error(remote, e))?
            .size;
        if size != Some(len) {
            return Err(RemoteError::File {
                path: remote.to_string(),
                reason: format!(
                    "upload incomplete: sent {len} bytes, the file has {}",
                    show_size(size)
                ),
            });
        }
        Ok(())
    }

    /// One try of an upload through `cat`, checked with `wc -c`.
    async fn upload_exec(
        &self,
        local: tokio::fs::File,
        len: u64,
        remote: &str,
        deadline: Instant,
        what: &str,
        started: Instant,
    ) -> Result<(), ExecUpload> {
        let limits = ExecLimits {
            deadline,
            started,
            what,
            stdout_cap: 64 * 1024,
            on_line: None,
            kill_on_timeout: false,
        };
        let out = self
            .exec(&format!("cat > {}", quote(remote)), Some(local), limits)
            .await?;
        match (out.status, &out.feed_error) {
            (Some(0), None) => {}
            (None, None) if out.signal.is_none() => {
                return Err(ExecUpload::Lost(format!("`cat` {}", out.ended(None))));
            }
            (status, feed) => {
                let mut reason = format!("`cat` {}", out.ended(status));
                if let Some(e) = feed {
                    let _ = write!(reason, "; sending stopped: {e}");
                }
                return Err(RemoteError::File {
                    path: remote.to_string(),
                    reason,
                }
                .into());
            }
        }
        let limits = ExecLimits {
            deadline,
            started,
            what,
            stdout_cap: 1024,
            on_line: None,
            kill_on_timeout: false,
        };
        let out = self
            .exec(&format!("wc -c < {}", quote(remote)), None, limits)
            .await?;
        let size = String::from_utf8_lossy(&out.stdout.into_bytes())
            .trim()
            .parse::<u64>()
            .ok();
        let incomplete = || {
            format!(
                "upload incomplete: sent {len} bytes, the file has {}",
                show_size(size)
            )
        };
        match (out.status, size) {
            (Some(0), Some(n)) if n == len => Ok(()),
            // No exit status, or no number from a `wc` that succeeded: the
            // answer was lost (seen from a busy guest's dropbear), not the file.
            (None, _) | (Some(0), None) if out.signal.is_none() => {
                Err(ExecUpload::Lost(incomplete()))
            }
            _ => Err(RemoteError::File {
                path: remote.to_string(),
                reason: incomplete(),
            }
            .into()),
        }
    }
}

impl SshShell {
    /// Opens `remote` for a streaming download over SFTP: read it chunk by
    /// chunk with [`SftpDownload::read`]; its size comes from an SFTP stat.
    /// Each SFTP request may take up to `request_timeout`.
    pub async fn download(
        &self,
        remote: &str,
        request_timeout: Duration,
    ) -> Result<SftpDownload, RemoteError> {
        let deadline = Instant::now() + request_timeout;
        let timed_out = || RemoteError::Timeout {
            what: format!("opening {remote} on {} over SFTP", self.addr),
            secs: secs(request_timeout),
        };
        let sftp = timeout_at(deadline, self.sftp(deadline))
            .await
            .map_err(|_| timed_out())??
            .ok_or_else(|| {
                RemoteError::Protocol(format!("SSH server {} offers no SFTP subsystem", self.addr))
            })?;
        let open = async {
            let meta = sftp
                .metadata(remote)
                .await
                .map_err(|e| sftp_error(remote, e))?;
            if meta.is_dir() {
                return Err(RemoteError::File {
                    path: remote.to_string(),
                    reason: "is a directory".to_string(),
                });
            }
            let file = sftp.open(remote).await.map_err(|e| sftp_error(remote, e))?;
            Ok::<_, RemoteError>((file, meta.size))
        };
        match timeout_at(deadline, open).await {
            Ok(Ok((file, size))) => Ok(SftpDownload {
                sftp,
                file,
                size,
                path: remote.to_string(),
            }),
            Ok(Err(e)) => {
                let _ = tokio::time::timeout(CLEANUP, sftp.close()).await;
                Err(e)
            }
            Err(_) => {
                let _ = tokio::time::timeout(CLEANUP, sftp.close()).await;
                Err(timed_out())
            }
        }
    }
}

/// A remote file being read over SFTP (see [`SshShell::download`]).
pub struct SftpDownload {
    sftp: SftpSession,
    file: russh_sftp::client::fs::File,
    size: Option<u64>,
    path: String,
}

impl SftpDownload {
    /// The file's size as the server stated it.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Reads the next bytes into `buf`; 0 at the end of the file.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, RemoteError> {
        self.file
            .read(buf)
            .await
            .map_err(|e| io_error(&self.path, "read", &e))
    }

    /// Closes the file and the SFTP session.
    pub async fn close(self) {
        let SftpDownload { sftp, file, .. } = self;
        let _ = tokio::time::timeout(CLEANUP, async {
            drop(file);
            let _ = sftp.close().await;
        })
        .await;
    }
}

#[async_trait]
impl RemoteShell for SshShell {
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Result<CommandOutput, RemoteError> {
        let started = Instant::now();
        let what = format!("`{}` on {}", shorten(command, 80), self.addr);
        let limits = ExecLimits {
            deadline: started + timeout,
            started,
            what: &what,
            stdout_cap: OUTPUT_CAP,
            on_line: Some(on_line),
            kill_on_timeout: true,
        };
        let out = self.exec(command, None, limits).await?;
        let exit_status = match (out.status, &out.signal) {
            (Some(s), _) => s,
            (None, Some((_, n))) => 128 + n,
            (None, None) => {
                return Err(RemoteError::Protocol(format!(
                    "{what} ended without an exit status (connection lost?)"
                )));
            }
        };
        let mut stderr = out.stderr.into_text();
        if let Some((sig, _)) = &out.signal {
            stderr.push_str(sig);
            stderr.push('\n');
        }
        Ok(CommandOutput {
            exit_status,
            stdout: out.stdout.into_text(),
            stderr,
        })
    }

    async fn upload(
        &self,
        local: &Path,
        remote: &str,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let what = format!("upload of {} to {remote} on {}", local.display(), self.addr);
        let open_local = || async {
            let file = tokio::fs::File::open(local).await.map_err(|e| {
                RemoteError::Protocol(format!("cannot read local file {}: {e}", local.display()))
            })?;
            let len = file
                .metadata()
                .await
                .map_err(|e| {
                    RemoteError::Protocol(format!(
                        "cannot stat local file {}: {e}",
                        local.display()
                    ))
                })?
                .len();
            Ok::<_, RemoteError>((file, len))
        };
        let (file, len) = open_local().await?;
        let timed_out = || RemoteError::Timeout {
            what: what.clone(),
            secs: secs(timeout),
        };

        let sftp = timeout_at(deadline, self.sftp(deadline))
            .await
            .map_err(|_| timed_out())??;
        if let Some(sftp) = sftp {
            let r = timeout_at(deadline, self.upload_sftp(&sftp, file, len, remote)).await;
            let _ = tokio::time::timeout(CLEANUP, sftp.close()).await;
            return r.map_err(|_| timed_out())?;
        }
        tracing::debug!(addr = %self.addr, remote, "ssh: no SFTP, uploading through `cat`");
        let mut file = Some(file);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let local = match file.take() {
                Some(f) => f,
                None => open_local().await?.0,
            };
            match self
                .upload_exec(local, len, remote, deadline, &what, started)
                .await
            {
                Ok(()) => return Ok(()),
                Err(ExecUpload::Failed(e)) => return Err(e),
                Err(ExecUpload::Lost(reason)) if attempt < EXEC_UPLOAD_TRIES => {
                    tracing::warn!(addr = %self.addr, remote, attempt, %reason, "ssh: upload answer lost; uploading again");
                }
                Err(ExecUpload::Lost(reason)) => {
                    return Err(RemoteError::File {
                        path: remote.to_string(),
                        reason: format!("{reason} ({EXEC_UPLOAD_TRIES} tries)"),
                    })
                }
            }
        }
    }

    async fn read_file(
        &self,
        remote: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let what = format!("reading {remote} on {}", self.addr);
        let timed_out = || RemoteError::Timeout {
            what: what.clone(),
            secs: secs(timeout),
        };

        let sftp = timeout_at(deadline, self.sftp(deadline))
            .await
            .map_err(|_| timed_out())??;
        if let Some(sftp) = sftp {
            let read = async {
                let file = sftp.open(remote).await.map_err(|e| sftp_error(remote, e))?;
                let mut buf = Vec::new();
                file.take(max_bytes as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| io_error(remote, "read", &e))?;
                Ok::<_, RemoteError>(buf)
            };
            let r = timeout_at(deadline, read).await;
            let _ = tokio::time::timeout(CLEANUP, sftp.close()).await;
            return r.map_err(|_| timed_out())?;
        }

        let command = format!("head -c {max_bytes} -- {}", quote(remote));
        let limits = ExecLimits {
            deadline,
            started,
            what: &what,
            stdout_cap: max_bytes,
            on_line: None,
            kill_on_timeout: false,
        };
        let out = self.exec(&command, None, limits).await?;
        if out.status != Some(0) {
            let stderr = out.stderr.into_text();
            let reason = match stderr.trim() {
                "" => format!(
                    "`head` {}",
                    ExecOutput::describe_end(out.status, &out.signal)
                ),
                msg if msg.contains("No such file") => "no such file or directory".to_string(),
                msg => shorten(msg, 300),
            };
            return Err(RemoteError::File {
                path: remote.to_string(),
                reason,
            });
        }
        Ok(out.stdout.into_bytes())
    }

    async fn close(&self) {
        let handle = lock(&self.handle).take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(
                CLEANUP,
                h.disconnect(Disconnect::ByApplication, "vmscan is done", "en"),
            )
            .await;
        }
    }
}

struct ExecLimits<'a> {
    deadline: Instant,
    started: Instant,
    what: &'a str,
    stdout_cap: usize,
    on_line: Option<OnLine<'a>>,
    /// Wrap the command so that a timeout can kill it (for `run`).
    kill_on_timeout: bool,
}

/// Runs a cleanup command and waits for it to end, ignoring the outcome.
async fn fire(handle: &Handle<Client>, command: &str) {
    if let Ok(mut channel) = handle.channel_open_session().await {
        if channel.exec(false, command).await.is_ok() {
            while channel.wait().await.is_some() {}
        }
    }
}

struct ExecOutput {
    started: bool,
    status: Option<i32>,
    /// How the command was killed, and the signal number.
    signal: Option<(String, i32)>,
    stdout: CappedBuf,
    stderr: CappedBuf,
    feed_error: Option<std::io::Error>,
}

impl ExecOutput {
    fn new(stdout_cap: usize) -> Self {
        ExecOutput {
            started: false,
            status: None,
            signal: None,
            stdout: CappedBuf::new(stdout_cap),
            stderr: CappedBuf::new(OUTPUT_CAP),
            feed_error: None,
        }
    }

    /// "exited with status 1: <stderr>" for error messages.
    fn ended(&self, status: Option<i32>) -> String {
        let mut s = Self::describe_end(status, &self.signal);
        let stderr = String::from_utf8_lossy(self.stderr_bytes());
        if !stderr.trim().is_empty() {
            let _ = write!(s, ": {}", shorten(stderr.trim(), 300));
        }
        s
    }

    fn stderr_bytes(&self) -> &[u8] {
        self.stderr.as_bytes()
    }

    fn describe_end(status: Option<i32>, signal: &Option<(String, i32)>) -> String {
        match (status, signal) {
            (Some(s), _) => format!("exited with status {s}"),
            (None, Some((sig, _))) => sig.clone(),
            (None, None) => "ended without an exit status".to_string(),
        }
    }
}

/// Host key policy for one connection: trust on first use (none expected), or
/// require one of the expected fingerprints.
struct Client {
    expected: Vec<String>,
    seen: Arc<Mutex<Option<String>>>,
}

#[derive(Debug)]
enum ClientError {
    Ssh(russh::Error),
    HostKeyMismatch { recorded: String, seen: String },
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Ssh(e)
    }
}

impl client::Handler for Client {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A certificate is judged by the key it certifies: we trust no CA.
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => keys::fingerprint(key),
            PublicKeyOrCertificate::Certificate(cert) => {
                keys::fingerprint(&PublicKey::from(cert.public_key().clone()))
            }
        };
        *lock(&self.seen) = Some(fp.clone());
        if self.expected.is_empty() || self.expected.iter().any(|k| keys::same_fingerprint(k, &fp))
        {
            return Ok(true);
        }
        Err(ClientError::HostKeyMismatch {
            recorded: self.expected.join(", "),
            seen: fp,
        })
    }
}

async fn authenticate(handle: &mut Handle<Client>, opts: &SshOptions) -> Result<(), RemoteError> {
    let auth_err = |reason: String| RemoteError::Auth {
        user: opts.user.clone(),
        reason,
    };
    let mut refused = Vec::new();
    let mut offered = None;
    if let Some(key) = &opts.key {
        let private = key.private();
        let hash = if private.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| auth_err(e.to_string()))?
                .flatten()
        } else {
            None
        };
        let r = handle
            .authenticate_publickey(&opts.user, PrivateKeyWithHashAlg::new(private, hash))
            .await
            .map_err(|e| auth_err(format!("key login failed: {e}")))?;
        match r {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                refused.push(format!("key {}", key.fingerprint()));
                offered = Some(remaining_methods);
            }
        }
    }
    if let Some(password) = &opts.password {
        let r = handle
            .authenticate_password(&opts.user, password.expose_secret())
            .await
            .map_err(|e| auth_err(format!("password login failed: {e}")))?;
        match r {
            AuthResult::Success => return Ok(()),
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                refused.push("password".to_string());
                offered = Some(remaining_methods);
            }
        }
    }
    if refused.is_empty() {
        return Err(auth_err("no SSH key or password is configured".to_string()));
    }
    let methods = offered
        .map(|m| {
            m.iter()
                .map(<&'static str>::from)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "none".to_string());
    Err(auth_err(format!(
        "server refused {}; it accepts: {methods}",
        refused.join(" and ")
    )))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sftp_error(path: &str, e: SftpError) -> RemoteError {
    let reason = match &e {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => "no such file or directory".to_string(),
            StatusCode::PermissionDenied => "permission denied".to_string(),
            code if s.error_message.is_empty() => code.to_string(),
            code => format!("{code}: {}", s.error_message),
        },
        SftpError::Timeout => "SFTP request timed out".to_string(),
        other => format!("SFTP: {other}"),
    };
    RemoteError::File {
        path: path.to_string(),
        reason,
    }
}

fn io_error(path: &str, doing: &str, e: &std::io::Error) -> RemoteError {
    RemoteError::File {
        path: path.to_string(),
        reason: format!("{doing} failed: {e}"),
    }
}

/// Uploads through `cat` whose answer was lost are tried this often; the
/// write truncates, so a repeat is harmless.
const EXEC_UPLOAD_TRIES: u32 = 3;

/// How one upload through `cat` went wrong.
enum ExecUpload {
    /// The command's answer never came: try again.
    Lost(String),
    Failed(RemoteError),
}

impl From<RemoteError> for ExecUpload {
    fn from(e: RemoteError) -> Self {
        ExecUpload::Failed(e)
    }
}

fn show_size(size: Option<u64>) -> String {
    size.map_or_else(|| "an unknown size".to_string(), |s| format!("{s} bytes"))
}

fn describe_signal(sig: &Sig, core_dumped: bool, message: &str) -> String {
    let mut s = format!("[remote command killed by signal {}", signal_name(sig));
    if core_dumped {
        s.push_str(", core dumped");
    }
    if !message.trim().is_empty() {
        let _ = write!(s, ": {}", message.trim());
    }
    s.push(']');
    s
}

fn signal_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => return name.clone(),
    }
    .to_string()
}

/// The POSIX (Linux) number of a signal; 127 when unknown, so the status is
/// 255 like ssh(1) reports a lost command.
fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}

/// At most `max` characters, marked with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil() as u64
}

fn secs_until(deadline: Instant, started: Instant) -> u64 {
    secs(deadline.saturating_duration_since(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_commands_are_shortened_on_a_char_boundary() {
        assert_eq!(shorten("sleep 30", 80), "sleep 30");
        assert_eq!(shorten("äöüäöü", 3), "äöü…");
    }

    #[test]
    fn signals_map_to_shell_style_statuses() {
        assert_eq!(
            describe_signal(&Sig::KILL, false, ""),
            "[remote command killed by signal KILL]"
        );
        assert_eq!(128 + signal_number(&Sig::KILL), 137);
        let segv = describe_signal(&Sig::SEGV, true, "oops");
        assert_eq!(
            segv,
            "[remote command killed by signal SEGV, core dumped: oops]"
        );
        assert_eq!(signal_number(&Sig::SEGV), 11);
        assert_eq!(signal_number(&Sig::Custom("WINCH".into())), 127);
    }

    #[test]
    fn options_debug_hides_the_password() {
        let mut o = SshOptions::new("10.0.0.5", 22, "root");
        o.password = Some(SecretString::from("hunter2"));
        assert!(!format!("{o:?}").contains("hunter2"));
        assert_eq!(o.addr(), "10.0.0.5:22");
        assert_eq!(SshOptions::new("::1", 2222, "root").addr(), "[::1]:2222");
    }
}
