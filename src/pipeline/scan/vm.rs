//! vm-create: boots the job's VM with a NoCloud seed carrying the job's SSH
//! key, waits for it (each deadline reported by name), logs in (SSH, or WinRM
//! for Windows), records the host key or the network configuration, and
//! detects the guest OS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::os_release::OsRelease;
use super::shell::{
    job_key, job_password, run_ps_logged, ssh_options, winrm_not_ready, winrm_options, ShellError,
};
use super::ScanEnv;
use crate::cluster::egress::{Destination, EgressError, GuestNetwork};
use crate::cluster::{
    guest_name, vm_name, ClusterError, ClusterImage, ClusterVm, Deadlines, VmSpec,
};
use crate::domain::{OsFamily, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::remote::ssh::SshShell;
use crate::remote::winrm::WinRmShell;
use crate::remote::{RemoteError, RemoteShell};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cluster-upload recorded no image")]
    NoImage,
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("the VM did not accept {proto} login within {secs} s: {last}{}", console.as_deref().map(|c| format!("; serial console ends with:\n{c}")).unwrap_or_default())]
    Login {
        proto: &'static str,
        secs: u64,
        last: String,
        console: Option<String>,
    },
    #[error("guest network: {0}")]
    Egress(#[from] EgressError),
    #[error("the guest is still called {seen} after Rename-Computer to {wanted} and a restart (waited {secs} s)")]
    Rename {
        seen: String,
        wanted: String,
        secs: u64,
    },
}

impl StageFailure for VmError {
    fn is_retryable(&self) -> bool {
        matches!(self, VmError::Cluster(c) if c.is_retryable())
    }
}

pub struct VmCreateStage {
    env: Arc<ScanEnv>,
}

impl VmCreateStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        VmCreateStage { env }
    }
}

/// Where the job's guest may connect to: the agent profile's upload and
/// download servers and `vm.allowed_destinations`. The installer is not
/// among them: vmscan fetches it on the host and uploads it over the shell.
pub fn job_egress(env: &ScanEnv, os: OsFamily) -> Result<Vec<Destination>, EgressError> {
    let profile = match os {
        OsFamily::Linux => env.agent.as_ref(),
        OsFamily::Windows => env.windows_agent.as_ref(),
    };
    let urls = profile
        .into_iter()
        .flat_map(|p| [&p.upload_url, &p.download_url])
        .filter(|u| !u.is_empty());
    let mut dests = urls
        .map(|u| Destination::from_url(u))
        .collect::<Result<Vec<_>, _>>()?;
    for d in &env.vm.allowed_destinations {
        dests.push(d.parse()?);
    }
    dests.sort();
    dests.dedup();
    Ok(dests)
}

/// The guest network a provider recorded in a VM's detail (none: unrestricted).
fn guest_network_of(detail: &Value) -> GuestNetwork {
    detail
        .get("guest_network")
        .and_then(|n| serde_json::from_value(n.clone()).ok())
        .unwrap_or_default()
}

/// What the job page says the guest may reach: the restricted QEMU network,
/// an OpenStack per-job security group, or that the cluster must isolate it.
fn network_line(detail: &Value) -> String {
    let g = &detail["security_group"];
    let list = |k: &str| {
        g[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "nothing".into())
    };
    match g["name"].as_str() {
        Some(name) => format!(
            "guest network: security group {name}; in from {}; may reach {}",
            list("ingress"),
            list("egress")
        ),
        None => guest_network_of(detail).describe(),
    }
}

/// The job's guest network as vm-create recorded it: later stages rewrite
/// the URLs they hand to the guest through it.
pub fn recorded_guest_network(ctx: &StageCtx) -> GuestNetwork {
    ctx.output_of(StageName::VmCreate)
        .and_then(|o| o.get("vm_detail"))
        .map(guest_network_of)
        .unwrap_or_default()
}

/// cloud-init user-data: the hostname, and the job's key for the login
/// user: root (`disable_root: false`), else a user the seed creates with
/// passwordless sudo, a locked password and the job's key only.
pub fn user_data(user: &str, hostname: &str, public_key: &str, extra: &str) -> String {
    let mut s =
        format!("#cloud-config\nhostname: {hostname}\nfqdn: {hostname}\nmanage_etc_hosts: true\n");
    if user == "root" {
        s.push_str(&format!(
            "disable_root: false\nssh_authorized_keys:\n  - {public_key}\n"
        ));
    } else {
        s.push_str(&format!(
            "users:\n  - default\n  - name: {user}\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/sh\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {public_key}\n"
        ));
    }
    if !extra.trim().is_empty() {
        s.push_str(extra.trim_end());
        s.push('\n');
    }
    s
}

/// The name the job's guest has (and the inventory lists): as vm-create
/// recorded it, else the scheme for the job's OS family.
pub fn job_hostname(ctx: &StageCtx) -> String {
    ctx.output_of(StageName::VmCreate)
        .and_then(|d| d.get("hostname"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| guest_name(ctx.job.id, job_os(ctx)))
}

/// The OS family chosen on submit (Linux when the job predates the choice).
/// The submitter's choice, or for `auto` what inspect detected.
pub fn job_os(ctx: &StageCtx) -> crate::domain::OsFamily {
    use crate::domain::{detected_os, OsChoice, StageName};
    OsChoice::of_options(&ctx.job.options)
        .resolve(ctx.output_of(StageName::Inspect).and_then(detected_os))
}

impl VmCreateStage {
    async fn console(&self, ctx: &StageCtx, vm: &ClusterVm) -> Option<String> {
        self.env.provider(ctx).ok()?.console_tail(vm, 4096).await
    }

    async fn login(&self, ctx: &StageCtx, vm: &ClusterVm) -> Result<SshShell, StageError> {
        let host = vm.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let opts = ssh_options(
            &self.env,
            self.env.vm.login_user(ctx.job.id),
            &host,
            vm.port.unwrap_or(22),
            job_key(ctx).await?,
            None,
        );
        if opts.password.is_some() {
            ctx.warn(
                "legacy password login is on (vm.legacy_password_login): the configured vm.ssh_password \
                 is sent to this guest if it refuses the job's key; the guest can record it",
            )
            .await?;
        }
        // Keys may not be applied yet, or sshd not fully up: try again.
        let not_ready = |e: &RemoteError| {
            matches!(
                e,
                RemoteError::Auth { .. }
                    | RemoteError::Connect { .. }
                    | RemoteError::Timeout { .. }
                    | RemoteError::Protocol(_)
            )
        };
        self.login_until(ctx, vm, "an SSH", not_ready, || SshShell::connect(&opts))
            .await
    }

    /// `vm.login_secs`, scaled for a VM running under TCG.
    fn login_secs(&self, vm: &ClusterVm) -> u64 {
        self.env.vm.login_secs * tcg_factor(&self.env, vm) as u64
    }

    /// Tries `connect` every 2 s for `vm.login_secs` while its errors are
    /// `not_ready`; then fails naming the last error, with the console tail.
    async fn login_until<S, F, Fut>(
        &self,
        ctx: &StageCtx,
        vm: &ClusterVm,
        proto: &'static str,
        not_ready: impl Fn(&RemoteError) -> bool,
        connect: F,
    ) -> Result<S, StageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<S, RemoteError>>,
    {
        let secs = self.login_secs(vm);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            match connect().await {
                Ok(shell) => return Ok(shell),
                Err(e) if not_ready(&e) => last = e.to_string(),
                Err(e) => return Err(ShellError::from(e).into()),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Err(VmError::Login {
            proto,
            secs,
            last,
            console: self.console(ctx, vm).await,
        }
        .into())
    }
}

/// How much slower than KVM the VM boots: `vm.tcg_deadline_factor` when the
/// provider says it runs under TCG, else 1.
fn tcg_factor(env: &ScanEnv, vm: &ClusterVm) -> u32 {
    if vm.detail["accel"].as_str() == Some("tcg") {
        env.vm.tcg_deadline_factor.max(1)
    } else {
        1
    }
}

/// `Get-NetIPConfiguration` as the console shows it, wide enough for long names.
pub const IP_CONFIGURATION_SCRIPT: &str =
    "Get-NetIPConfiguration -Detailed | Format-List | Out-String -Width 200";

fn job_password_set(vm: &ClusterVm) -> bool {
    vm.detail
        .get("admin_password_set")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl VmCreateStage {
    /// The job's own password when the cluster set it; else the configured
    /// one, which then reaches a guest vmscan does not trust: say so.
    async fn winrm_password(
        &self,
        ctx: &StageCtx,
        vm: &ClusterVm,
    ) -> Result<Option<secrecy::SecretString>, StageError> {
        if job_password_set(vm) {
            ctx.info("WinRM login with this job's own Administrator password (set by sysprep)")
                .await?;
            return Ok(Some(job_password(ctx).await?));
        }
        ctx.warn(
            "WinRM login with the configured vm.winrm.password: this cluster could not set a per-job \
             password (add {admin_password} to the sysprep answer file), so the guest sees the configured one",
        )
        .await?;
        Ok(None)
    }

    /// WinRM answers before Windows finishes its first boot: retry until the login works.
    async fn login_winrm(&self, ctx: &StageCtx, vm: &ClusterVm) -> Result<WinRmShell, StageError> {
        let host = vm.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let opts = winrm_options(
            &self.env,
            &host,
            vm.port,
            self.winrm_password(ctx, vm).await?,
        )?;
        self.login_until(ctx, vm, "a WinRM", winrm_not_ready, || {
            WinRmShell::connect(&opts)
        })
        .await
    }

    /// The guest's computer name, as Windows reports it.
    async fn computer_name(
        &self,
        ctx: &StageCtx,
        shell: &WinRmShell,
    ) -> Result<String, StageError> {
        let out = run_ps_logged(ctx, shell, "$env:COMPUTERNAME", Duration::from_secs(60)).await?;
        Ok(out.stdout.trim().to_string())
    }

    /// Makes the guest carry the job's computer name: the sysprep answer
    /// file may have set it; else Rename-Computer and a restart (the new name
    /// takes effect only then), waited for until WinRM answers with it.
    async fn ensure_computer_name(
        &self,
        ctx: &StageCtx,
        vm: &ClusterVm,
        shell: WinRmShell,
    ) -> Result<WinRmShell, StageError> {
        let wanted = guest_name(ctx.job.id, OsFamily::Windows);
        let seen = match self.computer_name(ctx, &shell).await {
            Ok(n) => n,
            Err(e) => {
                shell.close().await;
                return Err(e);
            }
        };
        if seen.eq_ignore_ascii_case(&wanted) {
            ctx.info(format!("computer name {seen}")).await?;
            return Ok(shell);
        }
        ctx.info(format!(
            "computer name is {seen:?}, not the job's {wanted}: renaming and restarting"
        ))
        .await?;
        let script = format!(
            "Rename-Computer -NewName {} -Force -ErrorAction Stop\nRestart-Computer -Force",
            crate::remote::winrm::ps_quote(&wanted)
        );
        // The restart may cut the connection before the command's answer.
        let answer =
            super::shell::run_ps_answer(ctx, &shell, &script, Duration::from_secs(120)).await?;
        shell.close().await;
        match answer {
            Ok(out) if out.exit_status != 0 => {
                return Err(ShellError::from(RemoteError::Protocol(format!(
                    "Rename-Computer exited with status {}: {}",
                    out.exit_status,
                    crate::remote::winrm::decode_text(out.stderr.as_bytes()).trim()
                )))
                .into());
            }
            Ok(_) => {}
            Err(e) => {
                ctx.info(format!("the restart closed the connection ({e})"))
                    .await?
            }
        }
        // A restart is a shutdown and a boot: the port and login deadlines.
        let secs =
            (self.env.vm.port_secs + self.env.vm.login_secs) * tcg_factor(&self.env, vm) as u64;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let original = seen.clone();
        let mut seen = seen;
        while Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            }
            // Until Windows goes down it still answers with the old name.
            let shell = self.login_winrm(ctx, vm).await?;
            match self.computer_name(ctx, &shell).await {
                Ok(n) if n.eq_ignore_ascii_case(&wanted) => {
                    ctx.info(format!("computer name {n} after the restart"))
                        .await?;
                    ctx.set_detail(json!({"renamed_from": original}), true)
                        .await?;
                    return Ok(shell);
                }
                Ok(n) => seen = n,
                Err(_) => {}
            }
            shell.close().await;
        }
        Err(VmError::Rename { seen, wanted, secs }.into())
    }

    /// The Windows half of vm-create: log in over WinRM, record the guest's
    /// network configuration and its OS.
    async fn finish_windows(
        &self,
        ctx: &StageCtx,
        vm: &ClusterVm,
        started: Instant,
        ready_secs: f64,
    ) -> Result<StageOutcome, StageError> {
        let shell = match self.login_winrm(ctx, vm).await {
            Ok(s) => s,
            Err(e) => {
                ctx.set_detail(json!({"console_tail": self.console(ctx, vm).await}), true)
                    .await?;
                return Err(e);
            }
        };
        let shell = self.ensure_computer_name(ctx, vm, shell).await?;
        let endpoint = shell.endpoint().to_string();
        let host = vm.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let port = winrm_options(&self.env, &host, vm.port, None)
            .map(|o| o.port)
            .unwrap_or_else(|_| vm.port.unwrap_or(self.env.vm.winrm.scheme.default_port()));
        let credentials = if job_password_set(vm) {
            "job"
        } else {
            "configured"
        };
        ctx.info(format!(
            "logged in over WinRM at {endpoint} as {}",
            shell.user()
        ))
        .await?;
        let timeout = Duration::from_secs(120);
        let r = async {
            let ip = run_ps_logged(ctx, &shell, IP_CONFIGURATION_SCRIPT, timeout).await?;
            let os = run_ps_logged(
                ctx,
                &shell,
                "(Get-CimInstance Win32_OperatingSystem).Caption",
                timeout,
            )
            .await?;
            Ok::<_, StageError>((ip, os))
        }
        .await;
        shell.close().await;
        let (ip, os) = r?;
        let ip_configuration = if ip.exit_status == 0 {
            ip.stdout.trim().to_string()
        } else {
            ctx.warn(format!(
                "Get-NetIPConfiguration exited with status {}: {}",
                ip.exit_status,
                ip.stderr.trim()
            ))
            .await?;
            String::new()
        };
        let caption = Some(os.stdout.trim())
            .filter(|c| os.exit_status == 0 && !c.is_empty())
            .unwrap_or("unknown OS")
            .to_string();
        ctx.info(format!("guest OS: {caption}")).await?;
        ctx.record_boot(&caption, started.elapsed()).await?;
        ctx.set_detail(
            json!({
                "winrm_host": host,
                "winrm_port": port,
                "winrm_endpoint": endpoint,
                "winrm_credentials": credentials,
                "os": caption,
                "ip_configuration": ip_configuration,
                "ready_secs": ready_secs,
                "boot_secs": started.elapsed().as_secs_f64(),
                "console_tail": self.console(ctx, vm).await,
            }),
            true,
        )
        .await?;
        Ok(StageOutcome::Done)
    }
}

#[async_trait]
impl Stage for VmCreateStage {
    fn name(&self) -> StageName {
        StageName::VmCreate
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let image: ClusterImage = ctx
            .output_of(StageName::ClusterUpload)
            .and_then(|d| d.get("image"))
            .and_then(|i| serde_json::from_value(i.clone()).ok())
            .ok_or(VmError::NoImage)?;
        let key = job_key(ctx).await?;
        // Windows: a NetBIOS-sized computer name, set by the cluster's sysprep
        // answer file ({hostname}) or renamed below.
        let hostname = guest_name(ctx.job.id, job_os(ctx));
        let login_user = self.env.vm.login_user(ctx.job.id);
        let spec = VmSpec {
            job: ctx.job.id,
            name: vm_name(ctx.job.id),
            image,
            cpus: self.env.vm.cpus,
            memory_mib: self.env.vm.memory_mib,
            user_data: user_data(
                &login_user,
                &hostname,
                &key.public_line(),
                &self.env.vm.extra_user_data,
            ),
            hostname: hostname.clone(),
            os: job_os(ctx),
            admin_password: match job_os(ctx) {
                OsFamily::Windows => Some(job_password(ctx).await?),
                OsFamily::Linux => None,
            },
            egress: job_egress(&self.env, job_os(ctx)).map_err(VmError::from)?,
        };
        let provider = self.env.provider(ctx)?;
        let cluster = provider.name();
        ctx.set_detail(json!({"cluster": cluster, "vm_name": spec.name, "hostname": hostname, "cpus": spec.cpus, "memory_mib": spec.memory_mib}), true)
            .await?;
        ctx.info(format!(
            "creating VM {} on {cluster} ({} CPU, {} MiB)",
            spec.name, spec.cpus, spec.memory_mib
        ))
        .await?;
        let vm = provider.create_vm(&spec).await.map_err(VmError::from)?;
        ctx.record_resource("vm", &cluster, &vm.id, &json!({"name": vm.name}))
            .await?;
        ctx.set_detail(json!({"vm": vm.id, "vm_detail": vm.detail}), true)
            .await?;
        ctx.info(network_line(&vm.detail)).await?;
        // qemu-local: how the VM's process is confined (a QEMU without seccomp is said, not hidden).
        if let Some(sandbox) = vm.detail["sandbox"].as_str() {
            let user = vm.detail["run_as"].as_str().unwrap_or("vmscan's own user");
            let line = format!("QEMU process: seccomp sandbox {sandbox}; runs as {user}");
            if sandbox == "on" {
                ctx.info(line).await?;
            } else {
                ctx.warn(line).await?;
            }
        }

        let factor = tcg_factor(&self.env, &vm) as u64;
        if let Some(accel) = vm.detail["accel"].as_str() {
            let line = if factor > 1 {
                format!(
                    "accelerator: {accel} (software emulation, no KVM): address, port and login deadlines x{factor} ({} s, {} s, {} s)",
                    self.env.vm.address_secs * factor,
                    self.env.vm.port_secs * factor,
                    self.env.vm.login_secs * factor
                )
            } else {
                format!("accelerator: {accel}")
            };
            ctx.info(line).await?;
            ctx.set_detail(json!({"accel": accel, "deadline_factor": factor}), true)
                .await?;
        }
        let deadlines = Deadlines {
            power_on: Duration::from_secs(self.env.vm.power_on_secs),
            address: Duration::from_secs(self.env.vm.address_secs * factor),
            port_open: Duration::from_secs(self.env.vm.port_secs * factor),
        };
        let started = Instant::now();
        let vm = match provider.wait_ready(&vm, &deadlines).await {
            Ok(vm) => vm,
            Err(e) => {
                let tail = self.console(ctx, &vm).await;
                ctx.set_detail(json!({"console_tail": tail}), true).await?;
                return Err(VmError::from(e).into());
            }
        };
        let ready_secs = started.elapsed().as_secs_f64();
        let windows = job_os(ctx) == OsFamily::Windows;
        ctx.info(format!(
            "VM is up, {} answers at {}:{} after {ready_secs:.1} s",
            if windows { "WinRM" } else { "SSH" },
            vm.host.as_deref().unwrap_or("?"),
            vm.port.unwrap_or(0)
        ))
        .await?;
        if windows {
            return self.finish_windows(ctx, &vm, started, ready_secs).await;
        }
        let shell = match self.login(ctx, &vm).await {
            Ok(s) => s,
            Err(e) => {
                ctx.set_detail(json!({"console_tail": self.console(ctx, &vm).await}), true)
                    .await?;
                return Err(e);
            }
        };
        let fingerprint = shell.host_key_fingerprint().to_string();
        ctx.info(format!(
            "logged in as {login_user}{}; host key {fingerprint} recorded",
            if login_user == "root" {
                ""
            } else {
                " (the job's own user; privileged steps run with sudo -n)"
            }
        ))
        .await?;
        let timeout = Duration::from_secs(60);
        let os = match shell.read_file("/etc/os-release", 64 * 1024, timeout).await {
            Ok(bytes) => OsRelease::parse(&String::from_utf8_lossy(&bytes)),
            Err(e) => {
                ctx.warn(format!("cannot read /etc/os-release: {e}"))
                    .await?;
                OsRelease::default()
            }
        };
        let pretty = os.pretty_name();
        ctx.info(format!("guest OS: {pretty}")).await?;
        ctx.record_boot(&os.family(), started.elapsed()).await?;
        shell.close().await;
        ctx.set_detail(
            json!({
                "ssh_host": vm.host,
                "ssh_port": vm.port,
                "host_key": fingerprint,
                "os": pretty,
                "os_release": os.to_json(),
                "login_user": login_user,
                "ready_secs": ready_secs,
                "boot_secs": started.elapsed().as_secs_f64(),
                "console_tail": self.console(ctx, &vm).await,
            }),
            true,
        )
        .await?;
        Ok(StageOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_authorises_the_job_key_for_the_login_user() {
        let root = user_data("root", "vmscan-abc", "ssh-ed25519 AAAA k", "");
        assert!(root.starts_with("#cloud-config\n"));
        assert!(root.contains("disable_root: false") && root.contains("  - ssh-ed25519 AAAA k"));
        let rocky = user_data(
            "rocky",
            "vmscan-abc",
            "ssh-ed25519 AAAA k",
            "runcmd:\n  - echo hi",
        );
        assert!(rocky.contains("  - name: rocky") && rocky.ends_with("  - echo hi\n"));
        assert!(!root.contains("users:"));
    }

    #[test]
    fn the_network_line_names_what_the_guest_may_reach() {
        let qemu = json!({"guest_network": {"restricted": true, "routes": [
            {"dest": {"host": "127.0.0.1", "port": 8443}, "guest_addr": "10.0.2.100"}]}});
        assert_eq!(
            network_line(&qemu),
            "guest network: restricted; may reach 127.0.0.1:8443 (as 10.0.2.100:8443)"
        );
        let sg = json!({"security_group": {"name": "vmscan-x",
            "ingress": ["192.0.2.10/32 tcp/22"], "egress": []}});
        assert_eq!(
            network_line(&sg),
            "guest network: security group vmscan-x; in from 192.0.2.10/32 tcp/22; may reach nothing"
        );
        assert!(network_line(&json!({})).contains("not restricted by vmscan"));
    }

    #[test]
    fn the_job_user_gets_the_key_and_sudo_and_root_only_when_asked() {
        let u = user_data("vmscan-1a2b3c4d", "h", "ssh-ed25519 AAAA k", "");
        assert!(u.contains("  - name: vmscan-1a2b3c4d\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n"));
        assert!(u.contains("lock_passwd: true") && !u.contains("disable_root"));
        assert_eq!(u.matches("ssh-ed25519 AAAA k").count(), 1, "{u}");
    }
}
