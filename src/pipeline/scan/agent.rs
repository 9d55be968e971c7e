//! agent-install: pre-install steps, the installer and its bootstrap file
//! uploaded to the VM, the install command, and the service check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::shell::{connect_vm, run_logged};
use super::ScanEnv;
use crate::cluster::guest_hostname;
use crate::config::{installer_is_url, AgentProfile};
use crate::domain::{fmt_bytes, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::remote::{quote, RemoteShell};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no agent profile is configured")]
    NoProfile,
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
}

fn tail(s: &str) -> String {
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

/// Replaces `{name}` placeholders.
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
        let profile = self.env.agent.clone().ok_or(AgentError::NoProfile)?;
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
        let size = tokio::fs::metadata(&local)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let remote = remote_path(&profile.upload_dir, &local);
        ctx.info(format!(
            "uploading installer {} ({}) to {remote}",
            local.display(),
            fmt_bytes(size)
        ))
        .await?;
        shell
            .upload(&local, &remote, timeout)
            .await
            .map_err(|e| AgentError::Upload {
                what: "the installer".into(),
                reason: e.to_string(),
            })?;

        let hostname = guest_hostname(ctx.job.id);
        let job_id = ctx.job.id.to_string();
        let vars = [
            ("upload_url", profile.upload_url.as_str()),
            ("download_url", profile.download_url.as_str()),
            ("hostname", hostname.as_str()),
            ("job_id", job_id.as_str()),
        ];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = "UP={upload_url}\nHOST={hostname}\nKEEP={unknown}";
        assert_eq!(
            render(t, &[("upload_url", "http://b/RL/"), ("hostname", "h1")]),
            "UP=http://b/RL/\nHOST=h1\nKEEP={unknown}"
        );
    }
}
