//! agent-install: pre-install steps, the installer and its bootstrap file
//! uploaded to the VM, the install command, and the service check; on
//! Windows, over WinRM: the optional DHCP switch, the MSI installed with
//! msiexec (its log copied into the job log), and the services checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::bundle::{self, BundleError};
use super::dhcp;
use super::os_release::{choose_package, NoPackage, OsRelease};
use super::shell::{as_root, connect_vm, connect_winrm, run_logged, run_ps_logged};
use super::vm::{job_hostname, job_os, recorded_guest_network, IP_CONFIGURATION_SCRIPT};
use super::ScanEnv;
use crate::config::{installer_is_url, AgentProfile};
use crate::domain::{fmt_bytes, OsFamily, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::remote::winrm::{decode_text, ps_quote, WinRmShell};
use crate::remote::{quote, CommandOutput, RemoteShell};

/// Lines of the msiexec log copied into the job log (the end matters most).
const MSI_LOG_LINES: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no agent profile is configured for {0} guests ([agent.profiles.{0}])")]
    NoProfile(OsFamily),
    #[error("cannot get the installer {what}: {reason}")]
    Installer {
        what: String,
        reason: String,
        retryable: bool,
    },
    #[error(
        "pre-install step `{step}` exited with status {status}{}",
        tail(stderr)
    )]
    PreInstall {
        step: String,
        status: i32,
        stderr: String,
    },
    #[error(
        "install command `{command}` exited with status {status}{}",
        tail(stderr)
    )]
    Install {
        command: String,
        status: i32,
        stderr: String,
    },
    #[error(
        "service check `{command}` exited with status {status}: the agent is not running{}",
        tail(stderr)
    )]
    Service {
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("the login user {user} cannot run commands as root without a password (`sudo -n true` failed{}); the seed gives the job's user passwordless sudo, or set vm.ssh_user = \"root\"", tail(stderr))]
    NoSudo { user: String, stderr: String },
    #[error(transparent)]
    NoPackage(#[from] NoPackage),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(
        "inventory command `{command}` exited with status {status}{}",
        tail(stderr)
    )]
    Inventory {
        command: String,
        status: i32,
        stderr: String,
    },
    #[error("cannot unpack the agent bundle on the guest: {0}")]
    Unpack(String),
    #[error("cannot upload {what}: {reason}")]
    Upload { what: String, reason: String },
    #[error("msiexec exited with status {status} ({}){}", msi_meaning(*status), tail(log))]
    Msiexec { status: i32, log: String },
    #[error("agent services not running: {}", not_running.join(", "))]
    Services { not_running: Vec<String> },
}

/// What the common msiexec exit codes mean.
pub fn msi_meaning(status: i32) -> &'static str {
    match status {
        0 => "success",
        1602 => "cancelled by the user",
        1603 => "fatal error during installation",
        1618 => "another installation is in progress",
        1619 => "the installation package could not be opened",
        1620 => "the installation package is invalid",
        1633 => "the package does not support this platform",
        1638 => "another version of the product is already installed",
        1639 => "invalid command line argument",
        1641 => "success, a reboot was started",
        3010 => "success, a reboot is required",
        _ => "see the msiexec log",
    }
}

/// The last lines of a command's stderr, for an error message.
pub(super) fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().rev().take(5).collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            ": {}",
            lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )
    }
}

impl StageFailure for AgentError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            AgentError::Installer {
                retryable: true,
                ..
            }
        )
    }
}

pub struct AgentInstallStage {
    env: Arc<ScanEnv>,
    http: reqwest::Client,
}

impl AgentInstallStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client configuration is valid");
        AgentInstallStage { env, http }
    }

    /// A local installer is used as it is; a URL is downloaded (streamed) into the work dir.
    async fn installer(&self, ctx: &StageCtx, installer: &str) -> Result<PathBuf, AgentError> {
        let what = installer.to_string();
        if !installer_is_url(&what) {
            let p = PathBuf::from(&what);
            return match tokio::fs::metadata(&p).await {
                Ok(m) if m.is_file() => Ok(p),
                Ok(_) => Err(AgentError::Installer {
                    what,
                    reason: "not a regular file".into(),
                    retryable: false,
                }),
                Err(e) => Err(AgentError::Installer {
                    what,
                    reason: e.to_string(),
                    retryable: false,
                }),
            };
        }
        let name = what
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("agent-installer");
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = ctx.work_dir.join("agent");
        let dest = dir.join(name.trim_start_matches('.'));
        let err = |reason: String, retryable: bool| AgentError::Installer {
            what: what.clone(),
            reason,
            retryable,
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(e.to_string(), false))?;
        let resp = self
            .http
            .get(&what)
            .send()
            .await
            .map_err(|e| err(e.to_string(), true))?;
        if !resp.status().is_success() {
            let s = resp.status();
            return Err(err(format!("the server answered {s}"), s.is_server_error()));
        }
        let mut f = tokio::fs::File::create(&dest)
            .await
            .map_err(|e| err(e.to_string(), false))?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| err(e.to_string(), true))?;
            f.write_all(&chunk)
                .await
                .map_err(|e| err(e.to_string(), false))?;
        }
        f.flush().await.map_err(|e| err(e.to_string(), false))?;
        Ok(dest)
    }
}

/// The placeholders response files, install commands and MSI properties may
/// use; the URLs as the guest must use them on a restricted guest network.
fn template_vars(ctx: &StageCtx, profile: &AgentProfile) -> [(&'static str, String); 4] {
    let net = recorded_guest_network(ctx);
    [
        ("upload_url", net.rewrite_url(&profile.upload_url)),
        ("download_url", net.rewrite_url(&profile.download_url)),
        ("hostname", job_hostname(ctx)),
        ("job_id", ctx.job.id.to_string()),
    ]
}

fn borrowed<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Uploads the installer to `remote`, saying what and how big in the job
/// log; returns its size.
async fn upload_installer(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
    local: &Path,
    remote: &str,
    timeout: Duration,
) -> Result<u64, StageError> {
    let size = tokio::fs::metadata(local)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    ctx.info(format!(
        "uploading installer {} ({}) to {remote}",
        local.display(),
        fmt_bytes(size)
    ))
    .await?;
    shell
        .upload(local, remote, timeout)
        .await
        .map_err(|e| AgentError::Upload {
            what: "the installer".into(),
            reason: e.to_string(),
        })?;
    Ok(size)
}

pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

fn remote_path(dir: &str, local: &Path) -> String {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent-installer".into());
    format!("{}/{}", dir.trim_end_matches('/'), name)
}

#[async_trait]
impl Stage for AgentInstallStage {
    fn name(&self) -> StageName {
        StageName::AgentInstall
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let os = job_os(ctx);
        let profile = self
            .env
            .agent_for(os)
            .cloned()
            .ok_or(AgentError::NoProfile(os))?;
        match os {
            OsFamily::Linux => self.run_linux(ctx, profile).await,
            OsFamily::Windows => self.run_windows(ctx, profile).await,
        }
    }
}

impl AgentInstallStage {
    /// Runs `command` as root (through sudo for the job's user); fails with
    /// `fail` when it exits non-zero.
    async fn root_step(
        &self,
        ctx: &StageCtx,
        shell: &dyn RemoteShell,
        user: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, StageError> {
        run_logged(ctx, shell, &as_root(user, command), timeout).await
    }

    async fn run_linux(
        &self,
        ctx: &StageCtx,
        profile: AgentProfile,
    ) -> Result<StageOutcome, StageError> {
        let shell = connect_vm(ctx, &self.env).await?;
        let r = self.install_linux(ctx, &profile, &shell).await;
        shell.close().await;
        r
    }

    async fn install_linux(
        &self,
        ctx: &StageCtx,
        profile: &AgentProfile,
        shell: &dyn RemoteShell,
    ) -> Result<StageOutcome, StageError> {
        let started = Instant::now();
        let timeout = Duration::from_secs(self.env.vm.command_secs);
        let user = self.env.vm.login_user(ctx.job.id);

        if user != "root" {
            let out = run_logged(ctx, shell, "sudo -n true", timeout).await?;
            if out.exit_status != 0 {
                return Err(AgentError::NoSudo {
                    user,
                    stderr: out.stderr,
                }
                .into());
            }
        }

        let os = guest_os_release(ctx, shell).await?;
        let package = choose_package(profile, &os).map_err(AgentError::from)?;
        ctx.info(format!(
            "guest {} ({}): {}; installer {}",
            os.pretty_name(),
            os.ids_line(),
            package.reason,
            package.installer
        ))
        .await?;

        for step in &package.pre_install {
            let out = self.root_step(ctx, shell, &user, step, timeout).await?;
            if out.exit_status != 0 {
                return Err(AgentError::PreInstall {
                    step: step.clone(),
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
        }

        // The upload directory may not exist on a minimal image; the job's
        // user must be able to write to it.
        let dir = quote(&profile.upload_dir);
        let mkdir = if user == "root" {
            format!("mkdir -p {dir}")
        } else {
            format!(
                "[ -d {dir} ] || {{ mkdir -p {dir} && chown {} {dir}; }}",
                quote(&user)
            )
        };
        let out = self.root_step(ctx, shell, &user, &mkdir, timeout).await?;
        if out.exit_status != 0 {
            return Err(AgentError::Upload {
                what: profile.upload_dir.clone(),
                reason: format!(
                    "mkdir exited with status {}: {}",
                    out.exit_status,
                    out.stderr.trim()
                ),
            }
            .into());
        }

        let local = self.installer(ctx, &package.installer).await?;
        let remote = remote_path(&profile.upload_dir, &local);
        let size = upload_installer(ctx, shell, &local, &remote, timeout).await?;

        let owned = template_vars(ctx, profile);
        let vars = borrowed(&owned);
        if !profile.response_file.is_empty() {
            self.write_response_file(ctx, shell, profile, &user, &vars, timeout)
                .await?;
        }

        let command =
            render(&package.install_command, &vars).replace("{installer}", &quote(&remote));
        let out = self.root_step(ctx, shell, &user, &command, timeout).await?;
        ctx.set_detail(
            json!({
                "os": os.pretty_name(),
                "os_ids": os.ids_line(),
                "package": package.key,
                "package_reason": package.reason,
                "installer": package.installer,
                "installer_size": size,
                "install_command": command,
                "login_user": user,
                "exit_status": out.exit_status,
            }),
            true,
        )
        .await?;
        if out.exit_status != 0 {
            return Err(AgentError::Install {
                command,
                status: out.exit_status,
                stderr: out.stderr,
            }
            .into());
        }
        self.record_version(ctx, shell, profile, timeout).await?;

        if !profile.services.is_empty() {
            self.check_linux_services(ctx, shell, profile, timeout)
                .await?;
        }
        if !profile.service_check.is_empty() {
            let out = self
                .root_step(ctx, shell, &user, &profile.service_check, timeout)
                .await?;
            if out.exit_status != 0 {
                return Err(AgentError::Service {
                    command: profile.service_check.clone(),
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
            ctx.set_detail(json!({"service_check": "passed"}), true)
                .await?;
        }

        // The agent would inventory at a random time of its schedule: make
        // it inventory and upload now, as Flexera's install script does.
        if !profile.inventory_command.is_empty() {
            let cmd = render(&profile.inventory_command, &vars);
            let t = Instant::now();
            let out = self.root_step(ctx, shell, &user, &cmd, timeout).await?;
            ctx.set_detail(
                json!({"inventory_command": cmd, "inventory_exit_status": out.exit_status, "inventory_secs": t.elapsed().as_secs_f64()}),
                true,
            )
            .await?;
            if out.exit_status != 0 {
                return Err(AgentError::Inventory {
                    command: cmd,
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
        }
        ctx.info(format!(
            "agent installed in {:.1} s",
            started.elapsed().as_secs_f64()
        ))
        .await?;
        Ok(StageOutcome::Done)
    }

    /// Asks the guest's package manager which agent version is installed,
    /// for the scan report. Not knowing it fails nothing: the report says why.
    async fn record_version(
        &self,
        ctx: &StageCtx,
        shell: &dyn RemoteShell,
        profile: &AgentProfile,
        timeout: Duration,
    ) -> Result<(), StageError> {
        if profile.version_command.is_empty() {
            ctx.set_detail(
                json!({"agent_version_note": "not asked (agent.profiles.linux.version_command is empty)"}),
                true,
            )
            .await?;
            return Ok(());
        }
        let out = run_logged(ctx, shell, &profile.version_command, timeout).await?;
        let version = out.stdout.trim();
        if out.exit_status == 0 && !version.is_empty() && !version.contains('\n') {
            ctx.info(format!("agent version: {version}")).await?;
            ctx.set_detail(json!({"agent_version": version}), true)
                .await?;
        } else {
            let note = format!(
                "{:?} exited {}{}",
                profile.version_command,
                out.exit_status,
                Some(out.stderr.trim())
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(": {}", e.lines().next().unwrap_or(e)))
                    .unwrap_or_default()
            );
            ctx.warn(format!("agent version not known: {note}")).await?;
            ctx.set_detail(json!({"agent_version_note": note}), true)
                .await?;
        }
        Ok(())
    }

    /// Renders the rollout response file and puts it in place as root
    /// (staged in the upload directory, which the job's user may write).
    async fn write_response_file(
        &self,
        ctx: &StageCtx,
        shell: &dyn RemoteShell,
        profile: &AgentProfile,
        user: &str,
        vars: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(), StageError> {
        let text = response_text(profile, vars);
        let dir = ctx.work_dir.join("agent");
        tokio::fs::create_dir_all(&dir).await.ok();
        let local_resp = dir.join("response");
        let upload_err = |reason: String| AgentError::Upload {
            what: profile.response_file.clone(),
            reason,
        };
        tokio::fs::write(&local_resp, &text)
            .await
            .map_err(|e| upload_err(e.to_string()))?;
        let staged = format!(
            "{}/vmscan-response-{}",
            profile.upload_dir.trim_end_matches('/'),
            ctx.job.id.short()
        );
        shell
            .upload(&local_resp, &staged, timeout)
            .await
            .map_err(|e| upload_err(e.to_string()))?;
        let target = quote(&profile.response_file);
        let parent = profile
            .response_file
            .rsplit_once('/')
            .map(|(d, _)| d)
            .filter(|d| !d.is_empty())
            .unwrap_or("/");
        let place = format!(
            "mkdir -p {} && cp {} {target} && chmod 0644 {target} && rm -f {}",
            quote(parent),
            quote(&staged),
            quote(&staged)
        );
        let out = self.root_step(ctx, shell, user, &place, timeout).await?;
        if out.exit_status != 0 {
            return Err(upload_err(format!(
                "exited with status {}: {}",
                out.exit_status,
                out.stderr.trim()
            ))
            .into());
        }
        ctx.info(format!(
            "wrote {} ({} lines)",
            profile.response_file,
            text.lines().count()
        ))
        .await?;
        Ok(())
    }

    /// Every agent service active: systemd units where systemd runs, else
    /// processes of that name. Waits a little for units still activating.
    async fn check_linux_services(
        &self,
        ctx: &StageCtx,
        shell: &dyn RemoteShell,
        profile: &AgentProfile,
        timeout: Duration,
    ) -> Result<(), StageError> {
        let script = linux_services_script(&profile.services);
        let deadline = Instant::now() + SERVICE_SETTLE;
        loop {
            let out = shell
                .run(&script, timeout, &|_, _| {})
                .await
                .map_err(super::shell::ShellError::from)?;
            let states = parse_service_lines(&out.stdout);
            if out.exit_status == 0 || Instant::now() >= deadline {
                for (name, state) in &states {
                    ctx.info(format!("service {name}: {state}")).await?;
                }
                let manager = if out.stdout.contains("(systemd)") {
                    "systemd"
                } else {
                    "none (process check)"
                };
                ctx.set_detail(
                    json!({
                        "service_manager": manager,
                        "services": states.iter().map(|(n, s)| json!({"name": n, "state": s})).collect::<Vec<_>>(),
                    }),
                    true,
                )
                .await?;
                if out.exit_status == 0 {
                    return Ok(());
                }
                let not_running: Vec<String> = states
                    .iter()
                    .filter(|(_, s)| !s.starts_with("active") && !s.starts_with("running"))
                    .map(|(n, s)| format!("{n}: {s}"))
                    .collect();
                return Err(services_error(not_running, &out).into());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            }
        }
    }
}

/// The services not running, or when the check named none, how it ended.
fn services_error(not_running: Vec<String>, out: &CommandOutput) -> AgentError {
    AgentError::Services {
        not_running: if not_running.is_empty() {
            vec![format!(
                "the check exited with status {}{}",
                out.exit_status,
                tail(&out.stderr)
            )]
        } else {
            not_running
        },
    }
}

/// How long services may take to become active after the install.
const SERVICE_SETTLE: Duration = Duration::from_secs(30);

/// One `name: state (how)` line per service; the exit status counts those
/// not active. `systemctl is-active` where systemd is PID 1 (the test
/// sd_booted(3) uses), else a process of that name.
pub fn linux_services_script(services: &[String]) -> String {
    let names: Vec<String> = services.iter().map(|s| quote(s)).collect();
    format!(
        "bad=0\nif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then\n  for s in {n}; do st=$(systemctl is-active \"$s\" 2>/dev/null); echo \"$s: ${{st:-unknown}} (systemd)\"; [ \"$st\" = active ] || bad=$((bad+1)); done\nelse\n  for s in {n}; do if pidof \"$s\" >/dev/null 2>&1 || pgrep -x \"$s\" >/dev/null 2>&1; then echo \"$s: running (process; no systemd)\"; else echo \"$s: not running (process; no systemd)\"; bad=$((bad+1)); fi; done\nfi\nexit $bad",
        n = names.join(" ")
    )
}

fn parse_service_lines(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

/// The rollout response file: the configured template rendered, or by
/// default Flexera's keys from the profile's settings.
pub fn response_text(profile: &AgentProfile, vars: &[(&str, &str)]) -> String {
    let tf = |b: bool| if b { "true" } else { "false" };
    let mut all: Vec<(&str, &str)> = vars.to_vec();
    all.push((
        "check_server_certificate",
        tf(profile.check_server_certificate),
    ));
    all.push((
        "check_certificate_revocation",
        tf(profile.check_certificate_revocation),
    ));
    if !profile.response_template.is_empty() {
        return render(&profile.response_template, &all);
    }
    let mut t = String::from(
        "MGSFT_BOOTSTRAP_DOWNLOAD={download_url}\nMGSFT_BOOTSTRAP_UPLOAD={upload_url}\n\
         MGSFT_HTTPS_CHECKSERVERCERTIFICATE={check_server_certificate}\n\
         MGSFT_HTTPS_CHECKCERTIFICATEREVOCATION={check_certificate_revocation}\n\
         MGSFT_RUNPOLICY=1\n",
    );
    for (key, v) in [
        ("MGSFT_HTTP_PROXY", &profile.http_proxy),
        ("MGSFT_HTTPS_PROXY", &profile.https_proxy),
        ("MGSFT_PROXY", &profile.proxy),
        ("MGSFT_NO_PROXY", &profile.no_proxy),
    ] {
        if !v.is_empty() {
            t.push_str(&format!("{key}={v}\n"));
        }
    }
    render(&t, &all)
}

/// The guest's os-release as vm-create recorded it, else read now.
async fn guest_os_release(
    ctx: &StageCtx,
    shell: &dyn RemoteShell,
) -> Result<OsRelease, StageError> {
    if let Some(os) = ctx
        .output_of(StageName::VmCreate)
        .and_then(|d| d.get("os_release"))
        .and_then(OsRelease::from_json)
        .filter(|o| !o.fields.is_empty())
    {
        return Ok(os);
    }
    let t = Duration::from_secs(60);
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Ok(b) = shell.read_file(path, 64 * 1024, t).await {
            return Ok(OsRelease::parse(&String::from_utf8_lossy(&b)));
        }
    }
    ctx.warn("the guest has no /etc/os-release: its family is unknown")
        .await?;
    Ok(OsRelease::default())
}

/// The service check: one `name: Status` line each; the exit status counts
/// the services not running.
pub fn services_script(services: &[String]) -> String {
    let names: Vec<String> = services.iter().map(|s| ps_quote(s)).collect();
    format!(
        "$names = @({})\n$bad = 0\nforeach ($n in $names) {{\n    $s = Get-Service -Name $n -ErrorAction SilentlyContinue\n    if (-not $s) {{ Write-Output \"${{n}}: not installed\"; $bad++ }}\n    elseif ($s.Status -ne 'Running') {{ Write-Output \"${{n}}: $($s.Status)\"; $bad++ }}\n    else {{ Write-Output \"${{n}}: Running\" }}\n}}\nexit $bad",
        names.join(", ")
    )
}

fn win_join(dir: &str, name: &str) -> String {
    format!("{}\\{name}", dir.trim_end_matches(['\\', '/']))
}

impl AgentInstallStage {
    async fn run_windows(
        &self,
        ctx: &StageCtx,
        profile: AgentProfile,
    ) -> Result<StageOutcome, StageError> {
        let started = Instant::now();
        let timeout = Duration::from_secs(self.env.vm.command_secs);
        let shell = match connect_winrm(ctx, &self.env).await {
            Ok(s) => s,
            // An earlier attempt may have switched the VM to DHCP and moved it.
            Err(e) if profile.switch_to_dhcp => {
                ctx.warn(format!(
                    "cannot reach the VM where vm-create found it ({e}); asking the cluster where it is now"
                ))
                .await?;
                dhcp::relocate(ctx, &self.env).await?
            }
            Err(e) => return Err(e),
        };
        let shell = match self.prepare_windows(ctx, &profile, shell, timeout).await {
            Ok(s) => s,
            Err(e) => return Err(e),
        };
        let r = self.install_windows(ctx, &profile, &shell, timeout).await;
        shell.close().await;
        r?;
        ctx.info(format!(
            "agent installed in {:.1} s",
            started.elapsed().as_secs_f64()
        ))
        .await?;
        Ok(StageOutcome::Done)
    }

    /// Pre-install steps, then the optional DHCP switch, which may leave the
    /// job on a new shell at a new address. Closes `shell` on failure.
    async fn prepare_windows(
        &self,
        ctx: &StageCtx,
        profile: &AgentProfile,
        shell: WinRmShell,
        timeout: Duration,
    ) -> Result<WinRmShell, StageError> {
        for step in &profile.pre_install {
            let out = match run_logged(ctx, &shell, step, timeout).await {
                Ok(out) => out,
                Err(e) => {
                    shell.close().await;
                    return Err(e);
                }
            };
            if out.exit_status != 0 {
                shell.close().await;
                return Err(AgentError::PreInstall {
                    step: step.clone(),
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
        }
        if !profile.switch_to_dhcp {
            return Ok(shell);
        }
        let shell = dhcp::switch_to_dhcp(ctx, &self.env, profile, shell, timeout).await?;
        match run_ps_logged(ctx, &shell, IP_CONFIGURATION_SCRIPT, timeout).await {
            Ok(ip) => {
                ctx.set_detail(
                    json!({"dhcp": {"interface": profile.interface_alias, "ip_configuration": ip.stdout.trim()}}),
                    true,
                )
                .await?;
                Ok(shell)
            }
            Err(e) => {
                shell.close().await;
                Err(e)
            }
        }
    }

    async fn install_windows(
        &self,
        ctx: &StageCtx,
        profile: &AgentProfile,
        shell: &dyn RemoteShell,
        timeout: Duration,
    ) -> Result<(), StageError> {
        let local = self.installer(ctx, &profile.installer).await?;
        let owned = template_vars(ctx, profile);
        let vars = borrowed(&owned);
        let deploy_url = render(&profile.download_url, &vars);
        let bundle = {
            let local = local.clone();
            let has_url = !deploy_url.is_empty();
            tokio::task::spawn_blocking(move || bundle::inspect(&local, has_url))
                .await
                .map_err(|e| AgentError::Unpack(e.to_string()))?
                .map_err(AgentError::from)?
        };
        ctx.info(format!(
            "agent bundle: {} ({}{})",
            bundle.files.join(", "),
            match (&bundle.transform, bundle.setup_ini) {
                (Some(t), true) => format!("beacon settings in {t} and mgssetup.ini"),
                (Some(t), false) => format!("beacon settings in {t}"),
                (None, true) => "beacon settings in mgssetup.ini".to_string(),
                (None, false) => format!("beacon from download_url {deploy_url}"),
            },
            if bundle.schedule.is_some() {
                ", bootstrap schedule"
            } else {
                ""
            }
        ))
        .await?;
        let remote_zip = win_join(&profile.upload_dir, "flexera-agent.zip");
        let size = upload_installer(ctx, shell, &local, &remote_zip, timeout).await?;
        let dest = win_join(&profile.upload_dir, "agent");
        let out = run_ps_logged(
            ctx,
            shell,
            &bundle::expand_script(&remote_zip, &dest, &bundle.folder),
            timeout,
        )
        .await?;
        if out.exit_status != 0 {
            return Err(AgentError::Unpack(format!(
                "Expand-Archive exited with status {}{}",
                out.exit_status,
                tail(&decode_text(out.stderr.as_bytes()))
            ))
            .into());
        }
        let dir = if bundle.folder.is_empty() {
            dest.clone()
        } else {
            win_join(&dest, &bundle.folder.replace('/', "\\"))
        };

        let props: Vec<(String, String)> = profile
            .msi_properties
            .iter()
            .map(|(k, v)| (k.clone(), render(v, &vars)))
            .collect();
        let log_path = win_join(&profile.upload_dir, "msiexec.log");
        let args = bundle::msiexec_args(&bundle, &dir, &log_path, &deploy_url, &props);
        let script = format!(
            "$p = Start-Process -FilePath 'msiexec.exe' -ArgumentList {} -WorkingDirectory {} -Wait -PassThru\nexit $p.ExitCode",
            ps_quote(&args),
            ps_quote(&dir)
        );
        let out = run_ps_logged(ctx, shell, &script, timeout).await?;
        let status = out.exit_status;

        // The verbose log says why an install failed: copy it into the job log.
        let log = match shell.read_file(&log_path, 8 << 20, timeout).await {
            Ok(bytes) => decode_text(&bytes),
            Err(e) => {
                ctx.warn(format!("cannot read the msiexec log {log_path}: {e}"))
                    .await?;
                String::new()
            }
        };
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let skip = lines.len().saturating_sub(MSI_LOG_LINES);
        ctx.info(format!(
            "msiexec exited with status {status} ({}); its log {log_path} has {} lines{}",
            msi_meaning(status),
            lines.len(),
            if skip > 0 {
                format!(", the last {MSI_LOG_LINES} follow")
            } else {
                String::new()
            }
        ))
        .await?;
        for l in &lines[skip..] {
            ctx.info(format!("  msiexec: {}", l.trim_end())).await?;
        }
        ctx.set_detail(
            json!({
                "installer": profile.installer,
                "installer_size": size,
                "msiexec_args": args,
                "msiexec_log": log_path,
                "exit_status": status,
                "msiexec_result": msi_meaning(status),
                "agent_version_note": "not asked: vmscan reads the installed agent version on Linux guests only",
            }),
            true,
        )
        .await?;
        if !matches!(status, 0 | 1641 | 3010) {
            let key: Vec<&str> = lines
                .iter()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains("return value 3")
                        || l.contains("installation failed")
                        || l.contains("error")
                })
                .copied()
                .collect();
            return Err(AgentError::Msiexec {
                status,
                log: key.join("\n"),
            }
            .into());
        }
        if status != 0 {
            ctx.warn(format!("msiexec: {}", msi_meaning(status)))
                .await?;
        }

        if !profile.services.is_empty() {
            let out =
                run_ps_logged(ctx, shell, &services_script(&profile.services), timeout).await?;
            if out.exit_status != 0 {
                let not_running: Vec<String> = out
                    .stdout
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.ends_with(": Running"))
                    .map(str::to_string)
                    .collect();
                return Err(services_error(not_running, &out).into());
            }
            ctx.set_detail(
                json!({"service_check": "passed", "services": profile.services}),
                true,
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msiexec_meanings_and_windows_paths() {
        assert_eq!(msi_meaning(1603), "fatal error during installation");
        assert_eq!(win_join(r"C:\Temp\", "a.msi"), r"C:\Temp\a.msi");
    }

    #[test]
    fn the_default_response_file_keeps_tls_checks_on() {
        let mut p = AgentProfile::default();
        let vars = [
            ("upload_url", "https://b/ManageSoftRL/"),
            ("download_url", "https://b/ManageSoftDL/"),
        ];
        let t = response_text(&p, &vars);
        assert_eq!(
            t,
            "MGSFT_BOOTSTRAP_DOWNLOAD=https://b/ManageSoftDL/\nMGSFT_BOOTSTRAP_UPLOAD=https://b/ManageSoftRL/\n\
             MGSFT_HTTPS_CHECKSERVERCERTIFICATE=true\nMGSFT_HTTPS_CHECKCERTIFICATEREVOCATION=true\nMGSFT_RUNPOLICY=1\n"
        );
        p.check_certificate_revocation = false;
        p.https_proxy = "http://proxy:3128".into();
        let t = response_text(&p, &vars);
        assert!(t.contains("MGSFT_HTTPS_CHECKCERTIFICATEREVOCATION=false\n"));
        assert!(t.ends_with("MGSFT_HTTPS_PROXY=http://proxy:3128\n"), "{t}");
        p.response_template = "X={check_server_certificate} {upload_url}".into();
        assert_eq!(response_text(&p, &vars), "X=true https://b/ManageSoftRL/");
    }

    #[test]
    fn the_service_check_names_each_unit() {
        let s = linux_services_script(&["ndtask".into(), "mgsusageag".into()]);
        assert!(s.contains("systemctl is-active \"$s\""), "{s}");
        assert!(s.contains("for s in ndtask mgsusageag;"), "{s}");
        assert_eq!(
            parse_service_lines("ndtask: active (systemd)\nmgsusageag: failed (systemd)\n"),
            [
                ("ndtask".to_string(), "active (systemd)".to_string()),
                ("mgsusageag".to_string(), "failed (systemd)".to_string())
            ]
        );
    }

    #[test]
    fn renders_placeholders() {
        let t = "UP={upload_url}\nHOST={hostname}\nKEEP={unknown}";
        assert_eq!(
            render(t, &[("upload_url", "http://b/RL/"), ("hostname", "h1")]),
            "UP=http://b/RL/\nHOST=h1\nKEEP={unknown}"
        );
    }
}
