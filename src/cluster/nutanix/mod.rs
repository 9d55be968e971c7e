//! Nutanix Prism Central. `api_version = "v4"` (the default) is the
//! [`v4`] provider; this module is the legacy v3 one: images are uploaded (streamed) into the image
//! service, VMs are cloned from them with cloud-init (or sysprep) guest
//! customization, and every mutation is an asynchronous task polled to its
//! end. Everything vmscan creates carries the job id in its name and
//! description (and a category when configured), so the janitor finds it.

mod client;
mod config;
mod upload;
pub mod v4;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use client::{PrismClient, PrismError};
pub use config::{ApiVersion, ImageSource, NutanixConfig};

use super::{
    image_name, job_of_name, probe, ClusterError, ClusterImage, ClusterProvider, ClusterVm,
    Deadlines, ImageFile, Owned, Progress, VmSpec,
};
use crate::domain::{JobId, OsFamily};

/// The registry name of the configured Prism Central `name`.
pub fn provider_name(name: &str) -> String {
    format!("nutanix:{name}")
}

/// The provider for `[cluster.nutanix.NAME]`, by its `api_version`.
pub fn provider(name: &str, cfg: NutanixConfig) -> Result<Arc<dyn ClusterProvider>, ClusterError> {
    Ok(match cfg.api_version {
        ApiVersion::V4 => Arc::new(v4::V4Provider::new(name, cfg)?),
        ApiVersion::V3 => Arc::new(NutanixProvider::new(name, cfg)?),
    })
}

/// The settings both API versions need.
fn check_config(label: &str, cfg: &NutanixConfig) -> Result<(), ClusterError> {
    if cfg.cluster_name.is_empty() || cfg.subnet_name.is_empty() {
        return Err(ClusterError::Local(format!(
            "{label}: cluster_name and subnet_name must be set"
        )));
    }
    if cfg.api_version == ApiVersion::V4 && cfg.image_source() == ImageSource::Upload {
        return Err(ClusterError::Local(format!(
            "{label}: api_version = \"v4\" has no endpoint that takes an image's bytes: use image_source = \"url\" (with image_url_base), or api_version = \"v3\" to upload"
        )));
    }
    if cfg.image_source() == ImageSource::Url && url::Url::parse(&cfg.image_url_base).is_err() {
        return Err(ClusterError::Local(format!(
            "{label}: image_source = \"url\" (the {} default) needs image_url_base, vmscan's address as Prism Central reaches it (got {:?})",
            cfg.api_version.as_str(),
            cfg.image_url_base
        )));
    }
    Ok(())
}

/// A VM's guest customization, as both API versions send it (base64).
enum Customization {
    CloudInit { user_data: String },
    Sysprep { unattend_xml: String },
}

/// cloud-init user-data for Linux; for Windows the configured answer file
/// with the hostname and the job's own password, or nothing.
fn customization(cfg: &NutanixConfig, spec: &VmSpec) -> Option<Customization> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    match spec.os {
        OsFamily::Linux => Some(Customization::CloudInit {
            user_data: b64(&spec.user_data),
        }),
        OsFamily::Windows if !cfg.sysprep_unattend_xml.trim().is_empty() => {
            let password = spec
                .admin_password
                .as_ref()
                .map(|p| xml_escape(secrecy::ExposeSecret::expose_secret(p)))
                .unwrap_or_default();
            let xml = cfg
                .sysprep_unattend_xml
                .replace("{hostname}", &spec.hostname)
                .replace("{admin_password}", &password);
            Some(Customization::Sysprep {
                unattend_xml: b64(&xml),
            })
        }
        OsFamily::Windows => None,
    }
}

/// The facts a created VM shows on the job page (both API versions).
fn vm_detail(cfg: &NutanixConfig, spec: &VmSpec) -> Value {
    json!({
        "prism_central": cfg.url,
        "api_version": cfg.api_version.as_str(),
        "cluster": cfg.cluster_name,
        "subnet": cfg.subnet_name,
        "os": spec.os.as_str(),
        // Sysprep sets the job's own password only where the answer file asks for it.
        "admin_password_set": spec.os == OsFamily::Windows
            && spec.admin_password.is_some()
            && cfg.sysprep_unattend_xml.contains("{admin_password}"),
    })
}

/// Once the VM has an address: waits until its remote shell answers (an
/// SSH banner, or WinRM's port accepts) and returns it ready.
async fn shell_ready(
    cfg: &NutanixConfig,
    vm: &ClusterVm,
    ip: String,
    deadlines: &Deadlines,
    poll: Duration,
) -> Result<ClusterVm, ClusterError> {
    let windows = vm.detail.get("os").and_then(Value::as_str) == Some("windows");
    let port = if windows {
        cfg.winrm_port
    } else {
        cfg.ssh_port
    };
    let poll = poll.min(Duration::from_secs(2));
    let banner = probe::wait_for_shell(&ip, port, windows, deadlines.port_open, poll)
        .await
        .map_err(|what| ClusterError::Deadline {
            what: what.into(),
            secs: deadlines.port_open.as_secs(),
            console_tail: None,
        })?;
    let mut ready = vm.clone();
    ready.detail["address"] = json!(ip);
    ready.detail["ssh_banner"] = json!(banner);
    ready.host = Some(ip);
    ready.port = Some(port);
    Ok(ready)
}

/// The description tag that marks an entity as the job's.
fn tag(job: JobId) -> String {
    format!("vmscan job {}", job.as_uuid())
}

pub struct NutanixProvider {
    name: String,
    client: PrismClient,
    /// Prism Element cluster and subnet uuids, resolved by name once.
    placement: OnceCell<(String, String)>,
}

impl NutanixProvider {
    pub fn new(name: &str, cfg: NutanixConfig) -> Result<Self, ClusterError> {
        let label = provider_name(name);
        check_config(&label, &cfg)?;
        let client =
            PrismClient::new(cfg).map_err(|e| ClusterError::Local(format!("{label}: {e}")))?;
        Ok(NutanixProvider {
            name: label,
            client,
            placement: OnceCell::new(),
        })
    }

    fn err(&self, e: PrismError) -> ClusterError {
        ClusterError::Api {
            provider: self.name.clone(),
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }

    fn categories(&self) -> Value {
        let c = &self.client.cfg;
        if c.category_key.is_empty() {
            json!({})
        } else {
            json!({ c.category_key.clone(): c.category_value.clone() })
        }
    }

    /// The one entity of `kind` whose name is exactly `name` (the server's
    /// filter is a hint; the name is re-checked here).
    async fn find_by_name(
        &self,
        kind: &str,
        name: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<String, ClusterError> {
        let found: Vec<Value> = self
            .client
            .list_all(kind, Some(&format!("name=={name}")))
            .await
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|e| entity_name(e) == Some(name) && keep(e))
            .collect();
        match found.as_slice() {
            [one] => one
                .pointer("/metadata/uuid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| self.protocol(format!("{kind} {name:?} has no uuid"))),
            [] => Err(ClusterError::Api {
                provider: self.name.clone(),
                message: format!("no {kind} named {name:?} in Prism Central"),
                retryable: false,
            }),
            many => Err(ClusterError::Api {
                provider: self.name.clone(),
                message: format!(
                    "{} {kind}s are named {name:?}; names must be unique",
                    many.len()
                ),
                retryable: false,
            }),
        }
    }

    fn protocol(&self, m: String) -> ClusterError {
        ClusterError::Api {
            provider: self.name.clone(),
            message: m,
            retryable: false,
        }
    }

    /// (cluster uuid, subnet uuid) for new VMs.
    async fn placement(&self) -> Result<&(String, String), ClusterError> {
        self.placement
            .get_or_try_init(|| async {
                let cfg = &self.client.cfg;
                // Prism Central lists itself as a cluster too: skip it.
                let cluster = self
                    .find_by_name("cluster", &cfg.cluster_name, |e| !is_prism_central(e))
                    .await?;
                let subnet = self
                    .find_by_name("subnet", &cfg.subnet_name, |e| {
                        e.pointer("/status/cluster_reference/uuid")
                            .and_then(Value::as_str)
                            .is_none_or(|u| u == cluster)
                    })
                    .await?;
                Ok((cluster, subnet))
            })
            .await
    }

    /// Starts a mutation and waits for its task; returns the entity's answer.
    async fn mutate(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, PrismError> {
        let answer = self.client.call(method, path, body).await?;
        for t in client::task_uuids(&answer) {
            self.client.wait_task(&t).await?;
        }
        Ok(answer)
    }

    /// Deletes an entity, waits for the task and checks it is gone; 404 at
    /// any point means done.
    async fn delete_entity(&self, kind: &str, uuid: &str) -> Result<(), ClusterError> {
        let path = format!("/{kind}s/{uuid}");
        match self.mutate(Method::DELETE, &path, None).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(self.err(e)),
        }
        let limit = Instant::now() + Duration::from_secs(self.client.cfg.task_timeout_secs.max(1));
        loop {
            match self.client.call(Method::GET, &path, None).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(self.err(e)),
                Ok(v) if Instant::now() >= limit => {
                    return Err(self.protocol(format!(
                        "{kind} {uuid} still exists after its delete task succeeded (state {})",
                        v.pointer("/status/state")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    )))
                }
                Ok(_) => {
                    tokio::time::sleep(Duration::from_millis(self.client.cfg.task_poll_ms.max(10)))
                        .await
                }
            }
        }
    }

    /// Entities of `kind` named with our prefix, with the job they belong to.
    async fn owned(
        &self,
        kind: &str,
    ) -> Result<Vec<(String, String, Option<JobId>)>, ClusterError> {
        let all = self
            .client
            .list_all(kind, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(all
            .iter()
            .filter_map(|e| {
                let name = entity_name(e)?;
                if !name.starts_with("vmscan-") {
                    return None;
                }
                // Deleted entities may linger in the list until their task ends.
                if e.pointer("/status/state").and_then(Value::as_str) == Some("DELETE_PENDING") {
                    return None;
                }
                let uuid = e.pointer("/metadata/uuid")?.as_str()?.to_string();
                let job = job_of_name(name).or_else(|| {
                    e.pointer("/spec/description")
                        .and_then(Value::as_str)
                        .and_then(|d| d.strip_prefix("vmscan job "))
                        .and_then(|j| j.parse().ok())
                });
                Some((uuid, name.to_string(), job))
            })
            .collect())
    }

    fn vm_body(&self, spec: &VmSpec, cluster: &str, subnet: &str) -> Result<Value, ClusterError> {
        let cfg = &self.client.cfg;
        let mut disk = json!({
            "data_source_reference": {"kind": "image", "uuid": spec.image.id},
            "device_properties": {"device_type": "DISK", "disk_address": {"adapter_type": "SCSI", "device_index": 0}},
        });
        if cfg.disk_size_mib > 0 {
            disk["disk_size_mib"] = json!(cfg.disk_size_mib);
        }
        let mut resources = json!({
            "num_sockets": spec.cpus.max(1),
            "num_vcpus_per_socket": 1,
            "num_threads_per_core": 1,
            "memory_size_mib": spec.memory_mib.max(256),
            // Omitted, Prism creates the VM powered off.
            "power_state": "ON",
            "disk_list": [disk],
            "nic_list": [{"subnet_reference": {"kind": "subnet", "uuid": subnet}}],
        });
        match customization(cfg, spec) {
            Some(Customization::CloudInit { user_data }) => {
                resources["guest_customization"] = json!({"cloud_init": {"user_data": user_data}});
            }
            Some(Customization::Sysprep { unattend_xml }) => {
                resources["guest_customization"] =
                    json!({"sysprep": {"install_type": "PREPARED", "unattend_xml": unattend_xml}});
            }
            None => {}
        }
        Ok(json!({
            "api_version": "3.1.0",
            "metadata": {"kind": "vm", "categories": self.categories()},
            "spec": {
                "name": spec.name,
                "description": tag(spec.job),
                "cluster_reference": {"kind": "cluster", "uuid": cluster},
                "resources": resources,
            },
        }))
    }
}

fn entity_name(e: &Value) -> Option<&str> {
    e.pointer("/spec/name")
        .or_else(|| e.pointer("/status/name"))
        .and_then(Value::as_str)
}

fn is_prism_central(e: &Value) -> bool {
    e.pointer("/status/resources/config/service_list")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|s| s.as_str() == Some("PRISM_CENTRAL")))
}

/// The first IP in `status.resources.nic_list[].ip_endpoint_list[]`.
fn first_ip(vm: &Value) -> Option<String> {
    vm.pointer("/status/resources/nic_list")?
        .as_array()?
        .iter()
        .flat_map(|n| {
            n.get("ip_endpoint_list")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .find_map(|ep| ep.get("ip").and_then(Value::as_str).map(str::to_string))
}

/// Which Prism Central a configuration talks to, as the pages show it.
pub fn endpoint(cfg: &NutanixConfig) -> String {
    format!("Prism Central {}", super::shown_url(&cfg.url))
}

#[async_trait]
impl ClusterProvider for NutanixProvider {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn endpoint(&self) -> Option<String> {
        Some(endpoint(&self.client.cfg))
    }

    async fn upload_image(
        &self,
        job: JobId,
        image: &ImageFile,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        upload::upload(self, job, image, progress).await
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        let (cluster, subnet) = self.placement().await?.clone();
        // A retry replaces the VM an earlier attempt created.
        for (uuid, name, _) in self.owned("vm").await? {
            if name == spec.name {
                tracing::info!(vm = %uuid, "deleting the VM of an earlier attempt");
                self.delete_entity("vm", &uuid).await?;
            }
        }
        let body = self.vm_body(spec, &cluster, &subnet)?;
        let answer = self
            .client
            .call(Method::POST, "/vms", Some(&body))
            .await
            .map_err(|e| self.err(e))?;
        let uuid = answer
            .pointer("/metadata/uuid")
            .and_then(Value::as_str)
            .ok_or_else(|| self.protocol("the VM create answer has no metadata.uuid".into()))?
            .to_string();
        let vm = ClusterVm {
            id: uuid.clone(),
            name: spec.name.clone(),
            host: None,
            port: None,
            detail: vm_detail(&self.client.cfg, spec),
        };
        for t in client::task_uuids(&answer) {
            if let Err(e) = self.client.wait_task(&t).await {
                // The VM may exist half-made: the caller records it and
                // teardown removes it; the error says why it failed.
                return Err(self.err(e));
            }
        }
        Ok(vm)
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        let poll = Duration::from_millis(self.client.cfg.vm_poll_ms.max(10));
        let path = format!("/vms/{}", vm.id);
        let deadline = |what: &str, d: Duration| ClusterError::Deadline {
            what: what.into(),
            secs: d.as_secs(),
            console_tail: None,
        };
        // Power on, then an address.
        let start = Instant::now();
        let ip = loop {
            let v = self
                .client
                .call(Method::GET, &path, None)
                .await
                .map_err(|e| self.err(e))?;
            let on = v
                .pointer("/status/resources/power_state")
                .and_then(Value::as_str)
                == Some("ON");
            if v.pointer("/status/state").and_then(Value::as_str) == Some("ERROR") {
                return Err(self.protocol(format!(
                    "VM {} is in state ERROR: {}",
                    vm.id,
                    client::error_message(&v["status"].to_string())
                )));
            }
            if !on && start.elapsed() >= deadlines.power_on {
                return Err(deadline("power-on", deadlines.power_on));
            }
            if on {
                if let Some(ip) = first_ip(&v) {
                    break ip;
                }
                if start.elapsed() >= deadlines.power_on + deadlines.address {
                    return Err(deadline("address", deadlines.address));
                }
            }
            tokio::time::sleep(poll).await;
        };
        shell_ready(&self.client.cfg, vm, ip, deadlines, poll).await
    }

    async fn console_tail(&self, _vm: &ClusterVm, _max_bytes: usize) -> Option<String> {
        // Prism's v3 API has no serial console; the VM page in Prism does.
        None
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        self.delete_entity("vm", vm_id).await
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        self.delete_entity("image", image_id).await
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        let mut out: Vec<Owned> = self
            .owned("vm")
            .await?
            .into_iter()
            .map(|(id, name, job)| Owned::Vm { id, name, job })
            .collect();
        out.extend(
            self.owned("image")
                .await?
                .into_iter()
                .filter(|(_, name, _)| name.starts_with("vmscan-img-"))
                .map(|(id, name, job)| Owned::Image { id, name, job }),
        );
        Ok(out)
    }
}

/// The image entity name for a job (shared with the upload module).
fn job_image_name(job: JobId) -> String {
    image_name(job)
}

use crate::domain::escape_markup as xml_escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_ip_and_skips_prism_central() {
        let vm = json!({"status": {"resources": {"nic_list": [
            {"ip_endpoint_list": []},
            {"ip_endpoint_list": [{"type": "ASSIGNED", "ip": "10.23.129.96"}]}
        ]}}});
        assert_eq!(first_ip(&vm).as_deref(), Some("10.23.129.96"));
        assert_eq!(first_ip(&json!({})), None);
        let pc = json!({"status": {"resources": {"config": {"service_list": ["PRISM_CENTRAL"]}}}});
        assert!(is_prism_central(&pc));
        let pe = json!({"status": {"resources": {"config": {"service_list": ["AOS"]}}}});
        assert!(!is_prism_central(&pe));
    }
}
