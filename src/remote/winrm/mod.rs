//! WinRM (WS-Management) remote shell into Windows guests: one cmd shell per
//! connection, commands and PowerShell scripts with streamed output, files
//! uploaded in chunks over stdin and read back as base64.

mod cbt;
mod ntlm;
pub mod soap;
mod transport;

/// NTLM's parsers of the server's bytes, for the property tests. Not an API.
#[doc(hidden)]
pub mod untrusted {
    pub use super::ntlm::{av_pairs, Client, NtlmError};
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::lines::{CappedBuf, LineSplitter};
use super::{CommandOutput, OnLine, RemoteError, RemoteShell, Stream};
use transport::Transport;

/// Output kept per stream of one command (the job log gets every line anyway).
const MAX_OUTPUT: usize = 1 << 20;
/// Raw bytes per stdin chunk of an upload: base64 twice over, it stays well
/// under the 150 KiB MaxEnvelopeSize.
const UPLOAD_CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WinRmScheme {
    #[default]
    Http,
    Https,
}

impl WinRmScheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            WinRmScheme::Http => "http",
            WinRmScheme::Https => "https",
        }
    }

    pub fn default_port(&self) -> u16 {
        match self {
            WinRmScheme::Http => 5985,
            WinRmScheme::Https => 5986,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WinRmAuth {
    /// HTTP Basic: needs `AllowUnencrypted` on plain HTTP; fine over HTTPS.
    Basic,
    /// NTLMv2; messages are sealed on plain HTTP, as Windows requires by default.
    #[default]
    Ntlm,
}

impl WinRmAuth {
    pub fn as_str(&self) -> &'static str {
        match self {
            WinRmAuth::Basic => "Basic",
            WinRmAuth::Ntlm => "NTLM",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WinRmOptions {
    pub host: String,
    pub port: u16,
    pub scheme: WinRmScheme,
    pub auth: WinRmAuth,
    /// `user`, `DOMAIN\user` or `user@domain`.
    pub user: String,
    pub password: SecretString,
    /// PEM CA bundle trusted for HTTPS instead of the built-in roots.
    pub ca_bundle: Option<PathBuf>,
    pub verify_tls: bool,
    pub connect_timeout: Duration,
    /// OperationTimeout of each WS-Management call (a Receive waits this long for output).
    pub operation_timeout_secs: u64,
}

impl WinRmOptions {
    pub fn new(host: &str, port: u16, user: &str, password: SecretString) -> Self {
        WinRmOptions {
            host: host.to_string(),
            port,
            scheme: WinRmScheme::Http,
            auth: WinRmAuth::Ntlm,
            user: user.to_string(),
            password,
            ca_bundle: None,
            verify_tls: true,
            connect_timeout: Duration::from_secs(10),
            operation_timeout_secs: 20,
        }
    }
}

/// Quotes a string as a PowerShell single-quoted literal.
pub fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The cmd command line running a PowerShell script (`-EncodedCommand`,
/// base64 of UTF-16LE), so no quoting of the script is needed.
pub fn powershell_command(script: &str) -> String {
    let script = format!("$ProgressPreference = 'SilentlyContinue'\n{script}");
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    format!(
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {}",
        base64::engine::general_purpose::STANDARD.encode(utf16)
    )
}

/// Text of a Windows file: UTF-16LE or UTF-8 by its byte-order mark, else UTF-8.
pub fn decode_text(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    let bytes = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Raw result of one command.
struct Raw {
    exit: i32,
    stdout: Vec<u8>,
    stderr: String,
}

pub struct WinRmShell {
    t: Transport,
    user: String,
    op_secs: u64,
    shell: Mutex<Option<String>>,
}

impl WinRmShell {
    /// Connects and opens a shell, so that a wrong password or an
    /// unreachable host shows here rather than at the first command.
    pub async fn connect(o: &WinRmOptions) -> Result<WinRmShell, RemoteError> {
        let shell = WinRmShell {
            t: Transport::new(o)?,
            user: o.user.clone(),
            op_secs: o.operation_timeout_secs.max(1),
            shell: Mutex::new(None),
        };
        let timeout = o.connect_timeout + Duration::from_secs(o.operation_timeout_secs);
        tokio::time::timeout(timeout, shell.shell_id())
            .await
            .map_err(|_| RemoteError::Timeout {
                what: format!("opening a WinRM shell at {}", shell.t.endpoint),
                secs: timeout.as_secs(),
            })??;
        Ok(shell)
    }

    pub fn endpoint(&self) -> &str {
        &self.t.endpoint
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    fn header<'a>(
        &'a self,
        action: &'a str,
        shell_id: Option<&'a str>,
        options: &'a [(&'a str, &'a str)],
        op_secs: u64,
    ) -> soap::Header<'a> {
        soap::Header {
            to: &self.t.endpoint,
            action,
            shell_id,
            options,
            operation_timeout_secs: op_secs,
        }
    }

    async fn shell_id(&self) -> Result<String, RemoteError> {
        let mut slot = self.shell.lock().await;
        if let Some(id) = slot.as_ref() {
            return Ok(id.clone());
        }
        let opts = [("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "65001")];
        let env = soap::envelope(
            &self.header(soap::ACTION_CREATE, None, &opts, self.op_secs),
            soap::CREATE_BODY,
        );
        let xml = self.t.send("creating a shell", env).await?;
        let id = soap::shell_id(&xml).map_err(|e| RemoteError::Protocol(e.to_string()))?;
        *slot = Some(id.clone());
        Ok(id)
    }

    async fn start(&self, command: &str) -> Result<(String, String), RemoteError> {
        let opts = [
            ("WINRS_CONSOLEMODE_STDIN", "TRUE"),
            ("WINRS_SKIP_CMD_SHELL", "FALSE"),
        ];
        let mut retried = false;
        loop {
            let shell = self.shell_id().await?;
            let env = soap::envelope(
                &self.header(soap::ACTION_COMMAND, Some(&shell), &opts, self.op_secs),
                &soap::command_body(command),
            );
            match self.t.send("starting a command", env).await {
                Ok(xml) => {
                    let id =
                        soap::command_id(&xml).map_err(|e| RemoteError::Protocol(e.to_string()))?;
                    return Ok((shell, id));
                }
                // The shell timed out on the server (idle) or was closed: open another, once.
                Err(RemoteError::Fault { ref fault, .. })
                    if !retried && fault.contains("InvalidSelectors") =>
                {
                    retried = true;
                    *self.shell.lock().await = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_stdin(
        &self,
        shell: &str,
        cmd: &str,
        data: &[u8],
        end: bool,
    ) -> Result<(), RemoteError> {
        let env = soap::envelope(
            &self.header(soap::ACTION_SEND, Some(shell), &[], self.op_secs),
            &soap::send_body(cmd, data, end),
        );
        self.t.send("sending input", env).await.map(|_| ())
    }

    async fn terminate(&self, shell: &str, cmd: &str) {
        let env = soap::envelope(
            &self.header(soap::ACTION_SIGNAL, Some(shell), &[], self.op_secs),
            &soap::signal_body(cmd),
        );
        if let Err(e) = self.t.send("ending a command", env).await {
            tracing::debug!(endpoint = %self.t.endpoint, "signal terminate failed: {e}");
        }
    }

    /// Receives until the command is done, passing lines to `on_line`.
    async fn receive(
        &self,
        shell: &str,
        cmd: &str,
        deadline: Instant,
        stdout_cap: usize,
        on_line: OnLine<'_>,
    ) -> Result<Raw, RemoteError> {
        let mut out = CappedBuf::new(stdout_cap);
        let mut err = CappedBuf::new(MAX_OUTPUT);
        let mut out_lines = LineSplitter::default();
        let mut err_lines = LineSplitter::default();
        let mut clixml: Option<bool> = None;
        let mut err_head = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let op = self.op_secs.min(left.max(1));
            let env = soap::envelope(
                &self.header(soap::ACTION_RECEIVE, Some(shell), &[], op),
                &soap::receive_body(cmd),
            );
            let r = match self.t.send("receiving output", env).await {
                Ok(xml) => {
                    soap::received(&xml).map_err(|e| RemoteError::Protocol(e.to_string()))?
                }
                // No output within OperationTimeout: the command is still running.
                Err(RemoteError::Fault {
                    timed_out: true, ..
                }) => {
                    if Instant::now() >= deadline {
                        return Err(RemoteError::Timeout {
                            what: "command".into(),
                            secs: 0,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !r.stdout.is_empty() {
                out.push(&r.stdout);
                out_lines.push(&r.stdout, |l| on_line(Stream::Stdout, l));
            }
            if !r.stderr.is_empty() {
                // PowerShell's error stream comes as CLIXML: decode it whole at the end.
                if clixml.is_none() {
                    err_head.extend_from_slice(&r.stderr);
                    if err_head.len() >= 9 || r.done {
                        clixml = Some(err_head.starts_with(b"#< CLIXML"));
                    }
                }
                err.push(&r.stderr);
                if clixml == Some(false) {
                    let chunk = std::mem::take(&mut err_head);
                    let chunk = if chunk.is_empty() { r.stderr } else { chunk };
                    err_lines.push(&chunk, |l| on_line(Stream::Stderr, l));
                }
            }
            if r.done {
                out_lines.finish(|l| on_line(Stream::Stdout, l));
                let mut stderr = err.into_text();
                if clixml == Some(true) || (clixml.is_none() && stderr.starts_with("#< CLIXML")) {
                    stderr = soap::decode_clixml(&stderr);
                    let mut s = LineSplitter::default();
                    s.push(stderr.as_bytes(), |l| on_line(Stream::Stderr, l));
                    s.finish(|l| on_line(Stream::Stderr, l));
                } else {
                    if !err_head.is_empty() {
                        err_lines.push(&std::mem::take(&mut err_head), |l| {
                            on_line(Stream::Stderr, l)
                        });
                    }
                    err_lines.finish(|l| on_line(Stream::Stderr, l));
                }
                return Ok(Raw {
                    exit: r.exit_code.unwrap_or(-1),
                    stdout: out.into_bytes(),
                    stderr,
                });
            }
            if Instant::now() >= deadline {
                return Err(RemoteError::Timeout {
                    what: "command".into(),
                    secs: 0,
                });
            }
        }
    }

    /// Starts `command`, feeds it `stdin` chunks, and collects its output.
    async fn exec(
        &self,
        command: &str,
        stdin: Option<&mut Feed>,
        timeout: Duration,
        stdout_cap: usize,
        on_line: OnLine<'_>,
        what: &str,
    ) -> Result<Raw, RemoteError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || RemoteError::Timeout {
            what: format!("{what} on {}", self.t.addr),
            secs: timeout.as_secs(),
        };
        let (shell, cmd) = tokio::time::timeout_at(deadline, self.start(command))
            .await
            .map_err(|_| timed_out())??;
        let work = async {
            if let Some(feed) = stdin {
                // An empty file still needs one Send to carry End.
                let mut chunk = Some(feed.next().await?.unwrap_or_else(|| b"\r\n".to_vec()));
                while let Some(data) = chunk {
                    let following = feed.next().await?;
                    self.send_stdin(&shell, &cmd, &data, following.is_none())
                        .await?;
                    chunk = following;
                }
            }
            self.receive(&shell, &cmd, deadline, stdout_cap, on_line)
                .await
        };
        let r = tokio::time::timeout_at(deadline, work).await;
        // Windows keeps a finished command's resources until it is signalled.
        let cleanup = Duration::from_secs(10);
        let _ = tokio::time::timeout(cleanup, self.terminate(&shell, &cmd)).await;
        match r {
            Ok(Ok(raw)) => Ok(raw),
            Ok(Err(RemoteError::Timeout { .. })) | Err(_) => Err(timed_out()),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// An upload's source, read chunk by chunk and hashed while it is sent.
struct Feed {
    file: tokio::fs::File,
    path: String,
    hasher: Sha256,
    size: u64,
}

impl Feed {
    /// The next chunk as one base64 line, or None at the end of the file.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, RemoteError> {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            let n = self
                .file
                .read(&mut buf[filled..])
                .await
                .map_err(|e| RemoteError::File {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        self.hasher.update(&buf);
        self.size += filled as u64;
        let mut line = base64::engine::general_purpose::STANDARD
            .encode(&buf)
            .into_bytes();
        line.extend_from_slice(b"\r\n");
        Ok(Some(line))
    }
}

fn upload_script(remote: &str) -> String {
    format!(
        r#"begin {{
    $ErrorActionPreference = 'Stop'
    $path = {path}
    $dir = Split-Path -Parent $path
    if ($dir -and -not (Test-Path -LiteralPath $dir)) {{ New-Item -ItemType Directory -Force -Path $dir | Out-Null }}
    $fd = [System.IO.File]::Create($path)
}}
process {{
    $bytes = [System.Convert]::FromBase64String($input)
    $fd.Write($bytes, 0, $bytes.Length)
}}
end {{
    $fd.Close()
    $hash = (Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant()
    Write-Output ("{{0}} {{1}}" -f (Get-Item -LiteralPath $path).Length, $hash)
}}"#,
        path = ps_quote(remote)
    )
}

fn read_script(remote: &str, max_bytes: usize) -> String {
    format!(
        r#"$path = {path}
if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {{ [Console]::Error.WriteLine("no such file: $path"); exit 2 }}
$fs = [System.IO.File]::Open($path, 'Open', 'Read', 'ReadWrite')
try {{
    $n = [Math]::Min($fs.Length, {max_bytes})
    $buf = New-Object byte[] $n
    $read = 0
    while ($read -lt $n) {{ $r = $fs.Read($buf, $read, $n - $read); if ($r -le 0) {{ break }}; $read += $r }}
    [Console]::Out.Write([Convert]::ToBase64String($buf, 0, $read))
}} finally {{ $fs.Close() }}"#,
        path = ps_quote(remote)
    )
}

#[async_trait]
impl RemoteShell for WinRmShell {
    /// `command` is a cmd.exe command line; see [`powershell_command`].
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Result<CommandOutput, RemoteError> {
        let raw = self
            .exec(command, None, timeout, MAX_OUTPUT, on_line, "command")
            .await?;
        Ok(CommandOutput {
            exit_status: raw.exit,
            stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
            stderr: raw.stderr,
        })
    }

    async fn upload(
        &self,
        local: &Path,
        remote: &str,
        timeout: Duration,
    ) -> Result<(), RemoteError> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| RemoteError::File {
                path: local.display().to_string(),
                reason: e.to_string(),
            })?;
        let mut feed = Feed {
            file,
            path: local.display().to_string(),
            hasher: Sha256::new(),
            size: 0,
        };
        let quiet = |_: Stream, _: &str| {};
        let raw = self
            .exec(
                &powershell_command(&upload_script(remote)),
                Some(&mut feed),
                timeout,
                MAX_OUTPUT,
                &quiet,
                &format!("uploading {remote}"),
            )
            .await?;
        let size = feed.size;
        let expected = hex::encode(feed.hasher.finalize());
        let remote_err = |reason: String| RemoteError::File {
            path: remote.to_string(),
            reason,
        };
        if raw.exit != 0 {
            return Err(remote_err(format!(
                "the upload script exited with status {}: {}",
                raw.exit,
                raw.stderr.trim()
            )));
        }
        let answer = String::from_utf8_lossy(&raw.stdout).trim().to_string();
        let want = format!("{size} {expected}");
        if answer != want {
            return Err(remote_err(format!(
                "uploaded copy differs: expected size and sha256 {want}, the guest has {answer:?}"
            )));
        }
        Ok(())
    }

    async fn read_file(
        &self,
        remote: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        let quiet = |_: Stream, _: &str| {};
        let cap = max_bytes.div_ceil(3) * 4 + 16;
        let raw = self
            .exec(
                &powershell_command(&read_script(remote, max_bytes)),
                None,
                timeout,
                cap,
                &quiet,
                &format!("reading {remote}"),
            )
            .await?;
        if raw.exit != 0 {
            return Err(RemoteError::File {
                path: remote.to_string(),
                reason: if raw.stderr.trim().is_empty() {
                    format!("the read script exited with status {}", raw.exit)
                } else {
                    raw.stderr.trim().to_string()
                },
            });
        }
        let text: String = String::from_utf8_lossy(&raw.stdout)
            .split_whitespace()
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| RemoteError::File {
                path: remote.to_string(),
                reason: format!("the guest sent no base64: {e}"),
            })
    }

    async fn close(&self) {
        let Some(shell) = self.shell.lock().await.take() else {
            return;
        };
        let env = soap::envelope(
            &self.header(soap::ACTION_DELETE, Some(&shell), &[], self.op_secs),
            "",
        );
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            self.t.send("deleting the shell", env),
        )
        .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::debug!(endpoint = %self.t.endpoint, "deleting shell {shell} failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_powershell_as_utf16_base64() {
        let c = powershell_command("Write-Output 'hi'");
        let b64 = c.rsplit(' ').next().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert!(String::from_utf16(&units)
            .unwrap()
            .ends_with("\nWrite-Output 'hi'"));
        assert!(c.starts_with("powershell.exe -NoProfile -NonInteractive"));
    }

    #[test]
    fn quotes_and_decodes_windows_text() {
        assert_eq!(ps_quote("C:\\it's"), "'C:\\it''s'");
        assert_eq!(decode_text(&[0xff, 0xfe, b'o', 0, b'k', 0]), "ok");
        assert_eq!(decode_text(&[0xef, 0xbb, 0xbf, b'o', b'k']), "ok");
    }
}
