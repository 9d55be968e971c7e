//! The job's SSH identity and sessions into its VM (SSH for Linux, WinRM
//! for Windows), and streaming command output into the job log.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::mpsc;

use super::ScanEnv;
use crate::domain::OsFamily;
use crate::domain::StageName;
use crate::pipeline::{StageCtx, StageError, StageFailure};
use crate::remote::ssh::{SshOptions, SshShell};
use crate::remote::winrm::{powershell_command, WinRmOptions, WinRmShell};
use crate::remote::{CommandOutput, RemoteError, RemoteShell, SshKey, Stream};
use crate::store::LogLevel;

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("SSH key: {0}")]
    Key(String),
    #[error("vm-create recorded no address for the VM; cannot reach it")]
    NoAddress,
    #[error("no WinRM password is configured for Windows guests (VMSCAN_VM__WINRM__PASSWORD)")]
    NoWinRmPassword,
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl StageFailure for ShellError {
    /// Connection trouble (refused, timed out, a session that vanished
    /// without an exit status) is worth another try; a bad key is not.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ShellError::Remote(
                RemoteError::Connect { .. }
                    | RemoteError::Timeout { .. }
                    | RemoteError::Protocol(_)
            )
        )
    }
}

fn password_path(ctx: &StageCtx) -> PathBuf {
    ctx.work_dir.join("winrm").join("administrator-password")
}

/// The job's own Windows Administrator password, set through the cluster's
/// sysprep customization: generated once, kept in the job's work directory
/// (mode 0600), never in the database or the log. A hostile guest learns
/// only this job's password, never the configured one.
pub async fn job_password(ctx: &StageCtx) -> Result<SecretString, ShellError> {
    let path = password_path(ctx);
    if let Ok(pw) = tokio::fs::read_to_string(&path).await {
        return Ok(SecretString::from(pw));
    }
    // Windows' default policy wants three of: upper, lower, digit, symbol.
    let pw = loop {
        let p = format!("{}!", crate::identity::password::generate());
        let classes = [
            p.chars().any(|c| c.is_ascii_uppercase()),
            p.chars().any(|c| c.is_ascii_lowercase()),
            p.chars().any(|c| c.is_ascii_digit()),
        ];
        if classes.iter().all(|c| *c) {
            break p;
        }
    };
    write_private(&path, &pw)
        .await
        .map_err(|e| ShellError::Key(format!("cannot store the job's Windows password: {e}")))?;
    Ok(SecretString::from(pw))
}

/// Whether vm-create logged in with the job's own password (the cluster set
/// it) rather than the configured one.
pub fn uses_job_password(ctx: &StageCtx) -> bool {
    ctx.output_of(StageName::VmCreate)
        .and_then(|v| v.get("winrm_credentials"))
        .and_then(Value::as_str)
        == Some("job")
}

fn key_path(ctx: &StageCtx) -> PathBuf {
    ctx.work_dir.join("ssh").join("id_ed25519")
}

/// The job's key: generated once, kept in the job's work directory (mode
/// 0600), never in the database or the log.
pub async fn job_key(ctx: &StageCtx) -> Result<SshKey, ShellError> {
    let path = key_path(ctx);
    if let Ok(pem) = tokio::fs::read_to_string(&path).await {
        return SshKey::from_openssh(&pem).map_err(|e| ShellError::Key(e.to_string()));
    }
    let key = SshKey::generate(&format!("vmscan-{}", ctx.job.id.short()))
        .map_err(|e| ShellError::Key(e.to_string()))?;
    let pem = key
        .to_openssh()
        .map_err(|e| ShellError::Key(e.to_string()))?;
    write_private(&path, secrecy::ExposeSecret::expose_secret(&pem))
        .await
        .map_err(|e| ShellError::Key(format!("cannot store the job key: {e}")))?;
    Ok(key)
}

async fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let path = path.to_path_buf();
    let text = text.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)?
}

pub fn ssh_options(
    env: &ScanEnv,
    user: String,
    host: &str,
    port: u16,
    key: SshKey,
    host_key: Option<String>,
) -> SshOptions {
    let mut o = SshOptions::new(host, port, user);
    o.key = Some(key);
    // The guest is untrusted: it only ever sees the job's own key, unless an
    // operator opted in to the legacy fixed password (vm-create flags it).
    o.password = env
        .vm
        .ssh_password
        .clone()
        .filter(|_| env.vm.legacy_password_login);
    o.host_key = host_key;
    o
}

/// Reconnects to the job's VM as vm-create recorded it (address and host key).
pub async fn connect_vm(ctx: &StageCtx, env: &ScanEnv) -> Result<SshShell, StageError> {
    let vm = ctx
        .output_of(StageName::VmCreate)
        .cloned()
        .unwrap_or(Value::Null);
    let host = vm
        .get("ssh_host")
        .and_then(Value::as_str)
        .ok_or(ShellError::NoAddress)?;
    let port = vm
        .get("ssh_port")
        .and_then(Value::as_u64)
        .ok_or(ShellError::NoAddress)? as u16;
    let host_key = vm
        .get("host_key")
        .and_then(Value::as_str)
        .map(str::to_string);
    let key = job_key(ctx).await?;
    let user = env.vm.login_user(ctx.job.id);
    let shell = SshShell::connect(&ssh_options(env, user, host, port, key, host_key))
        .await
        .map_err(ShellError::from)?;
    Ok(shell)
}

/// `command` as root: as it is for root, else through `sudo -n` (never
/// prompting: the seed gave the job's user passwordless sudo) and `sh -c`,
/// so that pipes, `&&` and variable assignments keep their meaning.
pub fn as_root(user: &str, command: &str) -> String {
    if user == "root" {
        command.to_string()
    } else {
        format!("sudo -n sh -c {}", crate::remote::quote(command))
    }
}

/// Reads at most `max` bytes of a file that may be root's only (agent
/// logs): over SFTP as root, else with `sudo -n head`. A missing file is
/// `RemoteError::File`, as from SFTP.
pub async fn read_as_root(
    shell: &dyn RemoteShell,
    user: &str,
    path: &str,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, RemoteError> {
    if user == "root" {
        return shell.read_file(path, max, timeout).await;
    }
    let p = crate::remote::quote(path);
    let cmd = as_root(user, &format!("[ -f {p} ] || exit 3; head -c {max} -- {p}"));
    let out = shell.run(&cmd, timeout, &|_, _| {}).await?;
    match out.exit_status {
        0 => Ok(out.stdout.into_bytes()),
        3 => Err(RemoteError::File {
            path: path.to_string(),
            reason: "no such file".into(),
        }),
        s => Err(RemoteError::File {
            path: path.to_string(),
            reason: format!("sudo -n head exited with status {s}: {}", out.stderr.trim()),
        }),
    }
}

/// WinRM options for a Windows guest at `host` (`port`: what the cluster reported).
/// `job_password`: the job's own password when the cluster set it; else the
/// configured `vm.winrm.password`.
pub fn winrm_options(
    env: &ScanEnv,
    host: &str,
    port: Option<u16>,
    job_password: Option<SecretString>,
) -> Result<WinRmOptions, ShellError> {
    let w = &env.vm.winrm;
    let password = match job_password {
        Some(p) => p,
        None => w.password.clone().ok_or(ShellError::NoWinRmPassword)?,
    };
    let port = match (w.port, port) {
        (0, Some(p)) => p,
        (0, None) => w.scheme.default_port(),
        (p, _) => p,
    };
    let mut o = WinRmOptions::new(host, port, &w.user, password);
    o.scheme = w.scheme;
    o.auth = w.auth;
    o.ca_bundle = w.ca_bundle.clone();
    o.verify_tls = w.verify_tls;
    o.operation_timeout_secs = w.operation_timeout_secs;
    Ok(o)
}

/// What a WinRM login meets while Windows is still booting (or its address
/// is moving): worth trying again until the deadline.
pub fn winrm_not_ready(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Auth { .. }
            | RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Protocol(_)
            | RemoteError::Fault { .. }
    )
}

/// Reconnects over WinRM to the job's Windows VM, where vm-create found it
/// or, after agent-install's DHCP switch moved it, where that found it.
pub async fn connect_winrm(ctx: &StageCtx, env: &ScanEnv) -> Result<WinRmShell, StageError> {
    let at = |s: StageName| ctx.output_of(s).filter(|d| d.get("winrm_host").is_some());
    let vm = at(StageName::AgentInstall)
        .or_else(|| at(StageName::VmCreate))
        .cloned()
        .unwrap_or(Value::Null);
    let host = vm
        .get("winrm_host")
        .and_then(Value::as_str)
        .ok_or(ShellError::NoAddress)?;
    let port = vm
        .get("winrm_port")
        .and_then(Value::as_u64)
        .ok_or(ShellError::NoAddress)? as u16;
    let pw = if uses_job_password(ctx) {
        Some(job_password(ctx).await?)
    } else {
        None
    };
    let mut o = winrm_options(env, host, Some(port), pw)?;
    o.port = port;
    let shell = WinRmShell::connect(&o).await.map_err(ShellError::from)?;
    Ok(shell)
}

/// The job's VM shell: SSH or WinRM by the job's OS family.
pub async fn connect_job_vm(
    ctx: &StageCtx,
    env: &ScanEnv,
) -> Result<Box<dyn RemoteShell>, StageError> {
    Ok(match super::vm::job_os(ctx) {
        OsFamily::Linux => Box::new(connect_vm(ctx, env).await?),
        OsFamily::Windows => Box::new(connect_winrm(ctx, env).await?),
    })
}

/// Runs a command, streaming its output lines into the job log as they come.
pub async fn run_logged(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    command: &str,
    timeout: Duration,
) -> Result<CommandOutput, StageError> {
    run_shown(ctx, shell, command, &format!("$ {command}"), timeout).await
}

/// Runs a PowerShell script on a Windows guest; the job log shows the script,
/// not its encoded command line.
pub async fn run_ps_logged(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    script: &str,
    timeout: Duration,
) -> Result<CommandOutput, StageError> {
    Ok(run_ps_answer(ctx, shell, script, timeout)
        .await?
        .map_err(ShellError::from)?)
}

/// As [`run_ps_logged`], but what went wrong on the guest's side (a lost
/// connection…) is the caller's to judge; `Err` is the job log failing.
pub async fn run_ps_answer(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    script: &str,
    timeout: Duration,
) -> Result<Result<CommandOutput, RemoteError>, StageError> {
    let shown: Vec<String> = script.lines().map(|l| format!("PS> {l}")).collect();
    run_answer(
        ctx,
        shell,
        &powershell_command(script),
        &shown.join("\n"),
        timeout,
    )
    .await
}

async fn run_shown(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    command: &str,
    shown: &str,
    timeout: Duration,
) -> Result<CommandOutput, StageError> {
    Ok(run_answer(ctx, shell, command, shown, timeout)
        .await?
        .map_err(ShellError::from)?)
}

async fn run_answer(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    command: &str,
    shown: &str,
    timeout: Duration,
) -> Result<Result<CommandOutput, RemoteError>, StageError> {
    ctx.info(shown.to_string()).await?;
    // Bounded: a guest printing faster than the log is written loses lines
    // (counted below), never the daemon's memory.
    let (tx, mut rx) = mpsc::channel::<(Stream, String)>(LINE_QUEUE);
    let dropped = std::sync::atomic::AtomicU64::new(0);
    let dropped_ref = &dropped;
    let run = async move {
        let on_line = move |s: Stream, l: &str| {
            if tx.try_send((s, l.to_string())).is_err() {
                dropped_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        shell.run(command, timeout, &on_line).await
    };
    let drain = async {
        while let Some((s, line)) = rx.recv().await {
            let level = if s == Stream::Stderr {
                LogLevel::Warn
            } else {
                LogLevel::Info
            };
            ctx.log(level, format!("  {line}")).await?;
        }
        Ok::<(), StageError>(())
    };
    let (out, drained) = tokio::join!(run, drain);
    drained?;
    let lost = dropped.load(std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        ctx.warn(format!(
            "{lost} lines of the command's output were dropped (it wrote faster than the log is stored)"
        ))
        .await?;
    }
    Ok(out)
}

/// Output lines waiting to be written to the job log.
const LINE_QUEUE: usize = 1024;
