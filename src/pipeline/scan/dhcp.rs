//! The Windows profile's switch to DHCP. Switching the interface that
//! carries the WinRM connection can change the guest's address under it, so
//! the answer may never come: vmscan then asks the cluster where the VM is
//! now, logs in there, and checks that the switch took effect.

use std::time::{Duration, Instant};

use serde_json::json;

use super::agent::tail;
use super::shell::{
    job_password, run_ps_answer, run_ps_logged, uses_job_password, winrm_not_ready, winrm_options,
    ShellError,
};
use super::ScanEnv;
use crate::cluster::{ClusterVm, Deadlines};
use crate::config::AgentProfile;
use crate::domain::StageName;
use crate::pipeline::{StageCtx, StageError, StageFailure};
use crate::remote::winrm::{ps_quote, WinRmShell};
use crate::remote::{RemoteError, RemoteShell};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "switching {alias} to DHCP failed with status {status}{}",
        tail(stderr)
    )]
    Switch {
        alias: String,
        status: i32,
        stderr: String,
    },
    #[error("after the switch, {alias} reports DHCP {state:?} for IPv4, not \"Enabled\"")]
    NotApplied { alias: String, state: String },
    #[error("vm-create recorded no VM for this job")]
    NoVm,
    #[error(
        "the VM was not reachable over WinRM within {secs} s after the switch to DHCP (last: {last})"
    )]
    Lost { secs: u64, last: String },
}

impl StageFailure for DhcpError {
    fn is_retryable(&self) -> bool {
        matches!(self, DhcpError::Lost { .. })
    }
}

/// Connection trouble: what an address change looks like from here.
fn connection_lost(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Connect { .. } | RemoteError::Timeout { .. } | RemoteError::Protocol(_)
    )
}

/// Runs the switch on `shell` (which it consumes) and returns a shell on the
/// VM at its address afterwards.
pub async fn switch_to_dhcp(
    ctx: &StageCtx,
    env: &ScanEnv,
    profile: &AgentProfile,
    shell: WinRmShell,
    timeout: Duration,
) -> Result<WinRmShell, StageError> {
    let alias = ps_quote(&profile.interface_alias);
    let script = format!(
        "$ErrorActionPreference = 'Stop'\nSet-NetIPInterface -InterfaceAlias {alias} -Dhcp Enabled\nSet-DnsClientServerAddress -InterfaceAlias {alias} -ResetServerAddresses"
    );
    match run_ps_answer(ctx, &shell, &script, timeout).await? {
        Ok(out) => {
            shell.close().await;
            if out.exit_status != 0 {
                return Err(DhcpError::Switch {
                    alias: profile.interface_alias.clone(),
                    status: out.exit_status,
                    stderr: out.stderr,
                }
                .into());
            }
        }
        // The shell went with the old address; Windows drops it when idle.
        Err(e) if connection_lost(&e) => {
            ctx.warn(format!(
                "the WinRM connection was lost during the switch ({e}), as when the address changes; asking the cluster where the VM is now"
            ))
            .await?;
        }
        Err(e) => {
            shell.close().await;
            return Err(ShellError::from(e).into());
        }
    }
    let shell = relocate(ctx, env).await?;
    let check = format!("(Get-NetIPInterface -InterfaceAlias {alias} -AddressFamily IPv4).Dhcp");
    let state = match run_ps_logged(ctx, &shell, &check, timeout).await {
        Ok(out) => out.stdout.trim().to_string(),
        Err(e) => {
            shell.close().await;
            return Err(e);
        }
    };
    if state != "Enabled" {
        shell.close().await;
        return Err(DhcpError::NotApplied {
            alias: profile.interface_alias.clone(),
            state,
        }
        .into());
    }
    ctx.info(format!(
        "{} now takes its address and DNS servers from DHCP",
        profile.interface_alias
    ))
    .await?;
    Ok(shell)
}

/// The VM as vm-create recorded it, for asking the cluster again.
fn recorded_vm(ctx: &StageCtx) -> Result<(ClusterVm, String), DhcpError> {
    let d = ctx.output_of(StageName::VmCreate).ok_or(DhcpError::NoVm)?;
    let id = d["vm"].as_str().ok_or(DhcpError::NoVm)?;
    let vm = ClusterVm {
        id: id.to_string(),
        name: d["vm_name"].as_str().unwrap_or_default().to_string(),
        host: None,
        port: None,
        detail: d["vm_detail"].clone(),
    };
    let before = format!(
        "{}:{}",
        d["winrm_host"].as_str().unwrap_or("?"),
        d["winrm_port"]
    );
    Ok((vm, before))
}

/// Asks the cluster for the VM's address until WinRM answers a login there;
/// records it so later stages connect there too.
pub async fn relocate(ctx: &StageCtx, env: &ScanEnv) -> Result<WinRmShell, StageError> {
    let provider = env.provider(ctx)?;
    let (vm, before) = recorded_vm(ctx)?;
    let deadlines = Deadlines {
        power_on: Duration::from_secs(env.vm.power_on_secs),
        address: Duration::from_secs(env.vm.address_secs),
        port_open: Duration::from_secs(env.vm.port_secs),
    };
    let secs = env.vm.address_secs + env.vm.login_secs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last: String;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        match provider.wait_ready(&vm, &deadlines).await {
            Ok(found) => {
                let host = found.host.unwrap_or_else(|| "127.0.0.1".into());
                let pw = if uses_job_password(ctx) {
                    Some(job_password(ctx).await?)
                } else {
                    None
                };
                let opts = winrm_options(env, &host, found.port, pw)?;
                match WinRmShell::connect(&opts).await {
                    Ok(shell) => {
                        let now = format!("{host}:{}", opts.port);
                        ctx.set_detail(
                            json!({"winrm_host": host, "winrm_port": opts.port, "readdressed": now != before}),
                            true,
                        )
                        .await?;
                        ctx.info(if now == before {
                            format!("the VM answers over WinRM at {now} again")
                        } else {
                            format!(
                                "the VM's address changed from {before} to {now}; logged in there"
                            )
                        })
                        .await?;
                        return Ok(shell);
                    }
                    Err(e) if winrm_not_ready(&e) => last = e.to_string(),
                    Err(e) => return Err(ShellError::from(e).into()),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(DhcpError::Lost { secs, last }.into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
