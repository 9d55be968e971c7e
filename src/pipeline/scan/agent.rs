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

use super::dhcp;
use super::shell::{connect_vm, connect_winrm, run_logged, run_ps_logged};
use super::vm::{job_os, recorded_guest_network, IP_CONFIGURATION_SCRIPT};
use super::ScanEnv;
use crate::cluster::guest_hostname;
use crate::config::{installer_is_url, AgentProfile};
use crate::domain::{fmt_bytes, OsFamily, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::remote::winrm::{decode_text, ps_quote, WinRmShell};
use crate::remote::{quote, RemoteShell};

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
    async fn installer(
        &self,
        ctx: &StageCtx,
        profile: &AgentProfile,
    ) -> Result<PathBuf, AgentError> {
        let what = profile.installer.clone();
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
        ("hostname", guest_hostname(ctx.job.id)),
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
    async fn run_linux(
        &self,
        ctx: &StageCtx,
        profile: AgentProfile,
    ) -> Result<StageOutcome, StageError> {
        let started = Instant::now();
        let timeout = Duration::from_secs(self.env.vm.command_secs);
        let shell = connect_vm(ctx, &self.env).await?;
        let shell: &dyn RemoteShell = &shell;

        for step in &profile.pre_install {
            let out = run_logged(ctx, shell, step, timeout).await?;
            if out.exit_status != 0 {
                return Err(AgentError::PreInstall {
                    step: step.clone(),
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
        }

        // The upload targets' directories may not exist on a minimal image.
        let mut dirs = vec![profile.upload_dir.clone()];
        if let Some((dir, _)) = profile
            .response_file
            .rsplit_once('/')
            .filter(|(d, _)| !d.is_empty())
        {
            dirs.push(dir.to_string());
        }
        let mkdir = format!(
            "mkdir -p {}",
            dirs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(" ")
        );
        let out = run_logged(ctx, shell, &mkdir, timeout).await?;
        if out.exit_status != 0 {
            return Err(AgentError::Upload {
                what: dirs.join(", "),
                reason: format!(
                    "mkdir exited with status {}: {}",
                    out.exit_status,
                    out.stderr.trim()
                ),
            }
            .into());
        }

        let local = self.installer(ctx, &profile).await?;
        let remote = remote_path(&profile.upload_dir, &local);
        let size = upload_installer(ctx, shell, &local, &remote, timeout).await?;

        let owned = template_vars(ctx, &profile);
        let vars = borrowed(&owned);
        if !profile.response_file.is_empty() {
            let text = render(&profile.response_template, &vars);
            let local_resp = ctx.work_dir.join("agent").join("response");
            tokio::fs::create_dir_all(ctx.work_dir.join("agent"))
                .await
                .ok();
            tokio::fs::write(&local_resp, &text)
                .await
                .map_err(|e| AgentError::Upload {
                    what: "the response file".into(),
                    reason: e.to_string(),
                })?;
            shell
                .upload(&local_resp, &profile.response_file, timeout)
                .await
                .map_err(|e| AgentError::Upload {
                    what: profile.response_file.clone(),
                    reason: e.to_string(),
                })?;
            ctx.info(format!(
                "wrote {} ({} lines)",
                profile.response_file,
                text.lines().count()
            ))
            .await?;
        }

        let command =
            render(&profile.install_command, &vars).replace("{installer}", &quote(&remote));
        let out = run_logged(ctx, shell, &command, timeout).await?;
        ctx.set_detail(json!({"installer": profile.installer, "installer_size": size, "install_command": command, "exit_status": out.exit_status}), true)
            .await?;
        if out.exit_status != 0 {
            return Err(AgentError::Install {
                command,
                status: out.exit_status,
                stderr: out.stderr,
            }
            .into());
        }
        if !profile.service_check.is_empty() {
            let out = run_logged(ctx, shell, &profile.service_check, timeout).await?;
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
        shell.close().await;
        ctx.info(format!(
            "agent installed in {:.1} s",
            started.elapsed().as_secs_f64()
        ))
        .await?;
        Ok(StageOutcome::Done)
    }
}

/// `"value"` for an msiexec command line (quotes doubled inside).
fn msi_value(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// The msiexec argument string: install quietly, verbose log, properties.
pub fn msiexec_args(msi: &str, log: &str, props: &[(String, String)]) -> String {
    let mut a = format!("/i {} /qn /l*v {}", msi_value(msi), msi_value(log));
    for (k, v) in props {
        a.push_str(&format!(" {k}={}", msi_value(v)));
    }
    a
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
        let local = self.installer(ctx, profile).await?;
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "agent.msi".into());
        let remote = win_join(&profile.upload_dir, &name);
        let size = upload_installer(ctx, shell, &local, &remote, timeout).await?;

        let owned = template_vars(ctx, profile);
        let vars = borrowed(&owned);
        let props: Vec<(String, String)> = profile
            .msi_properties
            .iter()
            .map(|(k, v)| (k.clone(), render(v, &vars)))
            .collect();
        let log_path = win_join(&profile.upload_dir, "msiexec.log");
        let args = msiexec_args(&remote, &log_path, &props);
        let script = format!(
            "$p = Start-Process -FilePath 'msiexec.exe' -ArgumentList {} -Wait -PassThru\nexit $p.ExitCode",
            ps_quote(&args)
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
                return Err(AgentError::Services {
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
                .into());
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
    fn builds_a_quiet_logged_msiexec_line() {
        let a = msiexec_args(
            r"C:\Temp\agent.msi",
            r"C:\Temp\msiexec.log",
            &[("MGSFT_BOOTSTRAP_UPLOAD".into(), "http://b/RL \"x\"".into())],
        );
        assert_eq!(
            a,
            r#"/i "C:\Temp\agent.msi" /qn /l*v "C:\Temp\msiexec.log" MGSFT_BOOTSTRAP_UPLOAD="http://b/RL ""x""""#
        );
        assert_eq!(msi_meaning(1603), "fatal error during installation");
        assert_eq!(win_join(r"C:\Temp\", "a.msi"), r"C:\Temp\a.msi");
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
