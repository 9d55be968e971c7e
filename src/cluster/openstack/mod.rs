//! OpenStack: Keystone v3 for the token and catalog, Glance v2 for the
//! image, Nova v2.1 for the VM and Neutron for networks and floating IPs.
//! Everything vmscan creates carries the job id (`vmscan_job`).

mod auth;
mod config;
mod error;
mod glance;
mod http;
mod neutron;
mod nova;
mod secgroup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use config::{OpenStackConfig, SecurityGroupMode};
pub use error::OsError;

use super::{
    image_name, probe, ClusterError, ClusterImage, ClusterProvider, ClusterVm, Deadlines,
    ImageFile, Owned, Progress, VmSpec,
};
use crate::domain::{JobId, OsFamily};
use http::Api;

/// The image property and server metadata key holding the job id.
pub const JOB_KEY: &str = "vmscan_job";

/// The registry name of the configured cloud `name`.
pub fn provider_name(name: &str) -> String {
    format!("openstack:{name}")
}

pub struct OpenStackProvider {
    name: String,
    cfg: Arc<OpenStackConfig>,
    api: Api,
    flavor: OnceCell<String>,
    network: OnceCell<String>,
    pool: OnceCell<String>,
}

/// VM names come from `vm_name`: checked before they reach a URL or a filter.
fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = name.starts_with("vmscan-")
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Local(format!(
            "{name:?} is not a vmscan-… name"
        )))
    }
}

/// Server and image ids are UUIDs: nothing else goes into a path.
fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Local(format!(
            "{id:?} is not an OpenStack id"
        )))
    }
}

/// The job of a tagged object, else of its name (`prefix` + 32 hex digits).
fn job_of(tag: Option<&str>, name: &str, prefix: &str) -> Option<JobId> {
    tag.and_then(|t| t.parse().ok()).or_else(|| {
        name.strip_prefix(prefix)
            .and_then(|h| h.get(..32))
            .and_then(|h| h.parse().ok())
    })
}

impl OpenStackProvider {
    pub fn new(name: &str, cfg: OpenStackConfig) -> Result<Self, ClusterError> {
        let bad = |what: &str| ClusterError::Local(format!("cluster.openstack.{name}: {what}"));
        if cfg.auth_url.trim().is_empty() {
            return Err(bad("auth_url is required (Keystone v3)"));
        }
        let app_cred = !cfg.application_credential_id.is_empty()
            && cfg.application_credential_secret.is_some();
        if !app_cred && (cfg.username.is_empty() || cfg.password.is_none()) {
            return Err(bad(
                "set username and password, or application_credential_id and application_credential_secret",
            ));
        }
        if !app_cred && cfg.project_name.is_empty() {
            return Err(bad("project_name is required with password authentication"));
        }
        if cfg.flavor.is_empty() || cfg.network.is_empty() {
            return Err(bad("flavor and network (by name) are required"));
        }
        if cfg.security_group == SecurityGroupMode::PerJob
            && cfg.shell_from_cidr.parse::<ipnet::IpNet>().is_err()
        {
            return Err(bad(
                "security_group = \"per-job\" needs shell_from_cidr (vmscan's address, e.g. 192.0.2.10/32)",
            ));
        }
        if !matches!(cfg.interface.as_str(), "public" | "internal" | "admin") {
            return Err(bad("interface must be public, internal or admin"));
        }
        let cfg = Arc::new(cfg);
        let api = Api::new(cfg.clone()).map_err(|e| bad(&e))?;
        Ok(OpenStackProvider {
            name: name.to_string(),
            cfg,
            api,
            flavor: OnceCell::new(),
            network: OnceCell::new(),
            pool: OnceCell::new(),
        })
    }

    /// Tokens Keystone issued to this provider so far (tests see re-authentication).
    pub fn authentications(&self) -> u64 {
        self.api.keystone.authentications()
    }

    fn err(&self, e: OsError) -> ClusterError {
        ClusterError::Api {
            provider: self.name(),
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }

    async fn flavor_id(&self) -> Result<&String, ClusterError> {
        self.flavor
            .get_or_try_init(|| nova::flavor_id(&self.api, &self.cfg.flavor))
            .await
            .map_err(|e| self.err(e))
    }

    async fn network_id(&self) -> Result<&String, ClusterError> {
        self.network
            .get_or_try_init(|| neutron::network_id(&self.api, &self.cfg.network))
            .await
            .map_err(|e| self.err(e))
    }

    async fn pool_id(&self) -> Result<&String, ClusterError> {
        self.pool
            .get_or_try_init(|| neutron::network_id(&self.api, &self.cfg.floating_ip_pool))
            .await
            .map_err(|e| self.err(e))
    }

    async fn tail(&self, id: &str) -> Option<String> {
        let t = nova::console(&self.api, id, 50).await.ok()?;
        (!t.trim().is_empty()).then_some(t)
    }

    async fn deadline(&self, id: &str, what: &str, limit: Duration) -> ClusterError {
        ClusterError::Deadline {
            what: what.into(),
            secs: limit.as_secs(),
            console_tail: self.tail(id).await,
        }
    }

    async fn server(&self, vm: &ClusterVm) -> Result<nova::Server, ClusterError> {
        nova::get(&self.api, &vm.id).await.map_err(|e| {
            if e.is_not_found() {
                ClusterError::Api {
                    provider: self.name(),
                    message: format!("server {} ({}) no longer exists", vm.name, vm.id),
                    retryable: true,
                }
            } else {
                self.err(e)
            }
        })
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.cfg.poll_ms.max(10))
    }

    /// Deletes every server called `name` except `keep`.
    async fn delete_servers_named(
        &self,
        name: &str,
        keep: Option<&str>,
    ) -> Result<(), ClusterError> {
        let same = nova::list(&self.api, &format!("&name=%5E{name}%24"))
            .await
            .map_err(|e| self.err(e))?;
        for s in same
            .iter()
            .filter(|s| s.name == name && Some(s.id.as_str()) != keep)
        {
            tracing::info!(server = %s.id, %name, "deleting another server of the job");
            // A twin of the kept server shares its group: the group stays.
            self.delete_server(&s.id, keep.is_none())
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Deletes every image called `name` except `keep`.
    async fn delete_images_named(
        &self,
        name: &str,
        keep: Option<&str>,
    ) -> Result<(), ClusterError> {
        let same = glance::list(&self.api, &format!("&name={name}"))
            .await
            .map_err(|e| self.err(e))?;
        for img in same
            .iter()
            .filter(|i| i.name == name && Some(i.id.as_str()) != keep)
        {
            tracing::info!(image = %img.id, %name, "deleting another image of the job");
            glance::delete(&self.api, &img.id)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Deletes the server (floating IPs first) and, with `drop_group`, its
    /// per-job security group once the server is gone.
    async fn delete_server(&self, id: &str, drop_group: bool) -> Result<(), OsError> {
        if !self.cfg.floating_ip_pool.is_empty() {
            neutron::release_floating_ips(&self.api, id).await?;
        }
        // The per-job group is named after the server: learn the name while it exists.
        let name = match nova::get(&self.api, id).await {
            Ok(s) => Some(s.name),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        nova::delete(&self.api, id).await?;
        match name {
            Some(n) if drop_group && self.cfg.security_group == SecurityGroupMode::PerJob => {
                secgroup::delete_named(&self.api, &n).await
            }
            _ => Ok(()),
        }
    }

    /// With `security_group = "per-job"`: a fresh group for the job's server
    /// (an earlier one of a retry removed); its id and its rules for the page.
    async fn job_group(&self, spec: &VmSpec) -> Result<Option<(String, Value)>, ClusterError> {
        if self.cfg.security_group != SecurityGroupMode::PerJob {
            return Ok(None);
        }
        secgroup::delete_named(&self.api, &spec.name)
            .await
            .map_err(|e| self.err(e))?;
        let egress = secgroup::resolve(&spec.egress)
            .await
            .map_err(|e| self.err(e))?;
        let port = match spec.os {
            OsFamily::Windows => self.cfg.winrm_port,
            OsFamily::Linux => self.cfg.ssh_port,
        };
        let rules = secgroup::rules(&self.cfg.shell_from_cidr, port, &egress);
        let id = secgroup::create(&self.api, &spec.name, &spec.job.to_string(), &rules)
            .await
            .map_err(|e| self.err(e))?;
        tracing::info!(group = %id, name = %spec.name, "per-job security group created");
        Ok(Some((id, secgroup::describe(&spec.name, &rules))))
    }
}

/// Which cloud a configuration talks to, as the pages show it.
pub fn endpoint(cfg: &OpenStackConfig) -> String {
    let url = super::shown_url(&cfg.auth_url);
    match &cfg.region {
        Some(r) => format!("Keystone {url} (region {r})"),
        None => format!("Keystone {url}"),
    }
}

#[async_trait]
impl ClusterProvider for OpenStackProvider {
    fn name(&self) -> String {
        provider_name(&self.name)
    }

    fn endpoint(&self) -> Option<String> {
        Some(endpoint(&self.cfg))
    }

    async fn upload_image(
        &self,
        job: JobId,
        image: &ImageFile,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        let path = image.path.as_path();
        let name = image_name(job);
        // A retried upload replaces the job's earlier image: one per job.
        self.delete_images_named(&name, None).await?;
        let (img, hash) = glance::upload_with_retries(&self.api, &name, job, path, progress)
            .await
            .map_err(|e| self.err(e))?;
        // A create retried after a lost answer may have left a queued twin.
        self.delete_images_named(&name, Some(&img.id)).await?;
        let size = img.size.unwrap_or_default();
        tracing::info!(image = %img.id, %name, size, hash = hash.as_deref().unwrap_or("-"), "Glance image active");
        Ok(ClusterImage {
            id: img.id,
            name,
            size,
            virtual_size: image.virtual_size,
        })
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        check_name(&spec.name)?;
        check_id(&spec.image.id)?;
        // A retry replaces the job's earlier server: never two of the same name.
        self.delete_servers_named(&spec.name, None).await?;
        let flavor = self.flavor_id().await?.clone();
        let network = self.network_id().await?.clone();
        let group = self.job_group(spec).await?;
        let id = nova::create(
            &self.api,
            &nova::NewServer {
                name: &spec.name,
                image: &spec.image.id,
                flavor: &flavor,
                network: &network,
                user_data: &spec.user_data,
                job: spec.job.to_string(),
                security_group: group.as_ref().map(|(id, _)| id.as_str()),
            },
        )
        .await
        .map_err(|e| self.err(e))?;
        tracing::info!(server = %id, name = %spec.name, "Nova server created");
        // A POST retried after a lost answer may have made a twin: remove it.
        self.delete_servers_named(&spec.name, Some(&id)).await?;
        Ok(ClusterVm {
            id: id.clone(),
            name: spec.name.clone(),
            host: None,
            port: Some(match spec.os {
                OsFamily::Windows => self.cfg.winrm_port,
                OsFamily::Linux => self.cfg.ssh_port,
            }),
            detail: json!({
                "server_id": id,
                "flavor": self.cfg.flavor,
                "flavor_id": flavor,
                "network": self.cfg.network,
                "image_id": spec.image.id,
                "os": spec.os.as_str(),
                "security_group": group.map(|(_, shown)| shown),
            }),
        })
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        check_id(&vm.id)?;
        let t0 = Instant::now();

        // Power-on: BUILD → ACTIVE, or ERROR with Nova's fault message.
        let limit = deadlines.power_on;
        let mut server = loop {
            let s = self.server(vm).await?;
            match s.status.as_str() {
                "ACTIVE" => break s,
                "ERROR" => {
                    let fault = s.fault.unwrap_or_else(|| "no fault message".into());
                    return Err(ClusterError::Api {
                        provider: self.name(),
                        retryable: fault.contains("No valid host"),
                        message: format!("server {} ({}) went to ERROR: {fault}", vm.name, vm.id),
                    });
                }
                _ => {}
            }
            if t0.elapsed() > limit {
                return Err(self.deadline(&vm.id, "power-on", limit).await);
            }
            tokio::time::sleep(self.poll()).await;
        };
        let powered_on = t0.elapsed();

        // Address: the fixed one on our network, or a floating IP from the pool.
        let limit = deadlines.address;
        let start = Instant::now();
        let host = loop {
            let fixed = server.address(&self.cfg.network);
            if let Some(addr) = fixed {
                if self.cfg.floating_ip_pool.is_empty() {
                    break addr;
                }
                if let Some(f) = server.floating() {
                    break f;
                }
                let pool = self.pool_id().await?.clone();
                let floating = neutron::attach_floating_ip(&self.api, &pool, &vm.id, &vm.name)
                    .await
                    .map_err(|e| self.err(e))?;
                if let Some(f) = floating {
                    break f;
                }
            }
            if start.elapsed() > limit {
                return Err(self.deadline(&vm.id, "address", limit).await);
            }
            tokio::time::sleep(self.poll()).await;
            server = self.server(vm).await?;
            if server.status == "ERROR" {
                return Err(ClusterError::Api {
                    provider: self.name(),
                    retryable: false,
                    message: format!(
                        "server {} ({}) went to ERROR: {}",
                        vm.name,
                        vm.id,
                        server.fault.clone().unwrap_or_default()
                    ),
                });
            }
        };
        let addressed = t0.elapsed();

        // The remote shell answers (an SSH banner; WinRM: the port accepts).
        let windows = vm.detail["os"] == "windows";
        let port = vm.port.unwrap_or(if windows {
            self.cfg.winrm_port
        } else {
            self.cfg.ssh_port
        });
        let limit = deadlines.port_open;
        let poll = Duration::from_millis(250);
        let banner = match probe::wait_for_shell(&host, port, windows, limit, poll).await {
            Ok(b) => b,
            Err(what) => return Err(self.deadline(&vm.id, what, limit).await),
        };
        let mut ready = vm.clone();
        ready.host = Some(host.clone());
        ready.port = Some(port);
        ready.detail["addresses"] = server.addresses.clone();
        ready.detail["address"] = json!(host);
        ready.detail["ssh_banner"] = json!(banner);
        ready.detail["power_on_secs"] = json!(powered_on.as_secs_f64());
        ready.detail["address_secs"] = json!(addressed.as_secs_f64());
        ready.detail["ready_secs"] = json!(t0.elapsed().as_secs_f64());
        Ok(ready)
    }

    async fn console_tail(&self, vm: &ClusterVm, max_bytes: usize) -> Option<String> {
        check_id(&vm.id).ok()?;
        let t = self.tail(&vm.id).await?;
        let mut start = t.len().saturating_sub(max_bytes);
        while !t.is_char_boundary(start) {
            start += 1;
        }
        Some(t[start..].to_string())
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        check_id(vm_id)?;
        self.delete_server(vm_id, true)
            .await
            .map_err(|e| self.err(e))
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        check_id(image_id)?;
        glance::delete(&self.api, image_id)
            .await
            .map_err(|e| self.err(e))
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        let mut owned = Vec::new();
        for s in nova::list(&self.api, "").await.map_err(|e| self.err(e))? {
            if s.status == "DELETED" || (s.job.is_none() && !s.name.starts_with("vmscan-")) {
                continue;
            }
            owned.push(Owned::Vm {
                job: job_of(s.job.as_deref(), &s.name, "vmscan-"),
                id: s.id,
                name: s.name,
            });
        }
        for i in glance::list(&self.api, "").await.map_err(|e| self.err(e))? {
            if matches!(i.status.as_str(), "deleted" | "pending_delete")
                || (i.job.is_none() && !i.name.starts_with("vmscan-img-"))
            {
                continue;
            }
            owned.push(Owned::Image {
                job: job_of(i.job.as_deref(), &i.name, "vmscan-img-"),
                id: i.id,
                name: i.name,
            });
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_checked_and_carry_the_job() {
        let job = JobId::new();
        let vm = crate::cluster::vm_name(job);
        assert!(check_name(&vm).is_ok());
        assert_eq!(job_of(None, &vm, "vmscan-"), Some(job));
        assert_eq!(
            job_of(Some(&job.to_string()), "renamed", "vmscan-"),
            Some(job)
        );
        assert_eq!(job_of(None, &image_name(job), "vmscan-img-"), Some(job));
        assert!(check_id("0b5c1a52-3c2e-4f7e-9d1e-9b0e7c9a1d11").is_ok());
        for bad in ["", "../x", "a/b", "a?b=c", "x y"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let cfg = OpenStackConfig {
            password: Some("hunter2-pw".to_string().into()),
            application_credential_secret: Some("s3cr3t-app".to_string().into()),
            ..OpenStackConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2-pw") && !shown.contains("s3cr3t-app"),
            "{shown}"
        );
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("hunter2-pw") && !json.contains("s3cr3t-app"));
    }
}
