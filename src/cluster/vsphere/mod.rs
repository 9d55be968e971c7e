//! VMware vSphere through the Web Services (SOAP) API at `/sdk`, which every
//! vCenter and ESXi speaks: the image is imported as an OVF (a template
//! VM), each scan VM is a clone of it with the job's CPU, memory, NIC,
//! cloud-init guestinfo and guest customization. Everything vmscan creates
//! carries the job in its name and annotation.

pub mod client;
mod config;
mod import;
mod inventory;
pub mod soap;
mod vm;
mod xml;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

pub use client::Client;
pub use config::{LinuxCustomization, VsphereConfig};
pub use soap::{MoRef, VsError};
pub use vm::job_of_annotation;

use super::{
    image_name, job_of_name, probe, windows_computer_name, ClusterError, ClusterImage,
    ClusterProvider, ClusterVm, Deadlines, ImageFile, Owned, Progress, VmSpec,
};
use crate::domain::{JobId, OsFamily};
use inventory::Inventory;

/// The registry name of the configured vCenter `name`.
pub fn provider_name(name: &str) -> String {
    format!("vsphere:{name}")
}

/// Which vCenter a configuration talks to, as the pages show it.
pub fn endpoint(cfg: &VsphereConfig) -> String {
    format!("vCenter {}", super::shown_url(&cfg.url))
}

/// The name of a guest-IP wait that ran out (`ClusterError::Deadline`).
pub const GUEST_IP: &str = "guest IP";

pub struct VsphereProvider {
    name: String,
    cfg: Arc<VsphereConfig>,
    client: Client,
    inventory: OnceCell<Inventory>,
}

/// Ids are managed object ids (`vm-42`): nothing else goes into a request.
fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 80
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Local(format!(
            "{id:?} is not a vSphere object id"
        )))
    }
}

/// The address vmscan reaches the guest at: the first IPv4 that VMware Tools
/// reports on the NIC of the configured port group, else `guest.ipAddress`
/// (which may be an IPv6 or another NIC's address).
fn guest_address(o: &client::ObjectContent, network: &str) -> String {
    let on_ours = o.props.get("guest.net").and_then(|nets| {
        nets.children
            .iter()
            .filter(|n| n.text_at("network") == network)
            .flat_map(|n| n.children("ipAddress"))
            .map(|a| a.text.trim().to_string())
            .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
    });
    on_ours.unwrap_or_else(|| o.text("guest.ipAddress"))
}

impl VsphereProvider {
    pub fn new(name: &str, cfg: VsphereConfig) -> Result<Self, ClusterError> {
        let bad = |what: &str| ClusterError::Local(format!("cluster.vsphere.{name}: {what}"));
        if cfg.url.trim().is_empty() {
            return Err(bad("url is required (https://vcenter.example.com/sdk)"));
        }
        if cfg.username.is_empty() || cfg.password.is_none() {
            return Err(bad(
                "set username and password (VMSCAN_CLUSTER__VSPHERE__<NAME>__PASSWORD)",
            ));
        }
        if cfg.datacenter.is_empty() || cfg.datastore.is_empty() || cfg.network.is_empty() {
            return Err(bad(
                "datacenter, datastore and network (by name) are required",
            ));
        }
        if cfg.cluster.is_empty() && cfg.resource_pool.is_empty() {
            return Err(bad("set cluster or resource_pool (by name)"));
        }
        if vm::nic_device(&cfg.nic_type).is_none() {
            return Err(bad("nic_type must be vmxnet3, e1000e or e1000"));
        }
        let cfg = Arc::new(cfg);
        let client = Client::new(cfg.clone()).map_err(|e| bad(&e))?;
        Ok(VsphereProvider {
            name: name.to_string(),
            cfg,
            client,
            inventory: OnceCell::new(),
        })
    }

    /// The SOAP session (tests read `logins()`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session with vCenter.
    pub async fn logout(&self) {
        self.client.logout().await;
    }

    fn err(&self, e: VsError) -> ClusterError {
        ClusterError::Api {
            provider: self.name(),
            retryable: e.retryable(),
            message: e.to_string(),
        }
    }

    async fn inventory(&self) -> Result<&Inventory, ClusterError> {
        self.inventory
            .get_or_try_init(|| inventory::resolve(&self.client))
            .await
            .map_err(|e| self.err(e))
    }

    /// Every VM (templates too) whose name is `name`.
    async fn vms_named(&self, name: &str) -> Result<Vec<MoRef>, VsError> {
        let root = self.client.content().await?.root_folder.clone();
        Ok(self
            .client
            .find_all(&root, "VirtualMachine", &["name"])
            .await?
            .into_iter()
            .filter(|o| o.text("name") == name)
            .map(|o| o.obj)
            .collect())
    }

    /// Powers off (when on) and destroys a VM; gone counts as done.
    async fn destroy(&self, vm: &MoRef) -> Result<(), VsError> {
        let c = &self.client;
        let state = match c.properties(vm, &["runtime.powerState"]).await {
            Ok(o) => o.text("runtime.powerState"),
            Err(e) if e.is_gone() => return Ok(()),
            Err(e) => return Err(e),
        };
        if state != "poweredOff" {
            match c
                .run_task("PowerOffVM_Task", vm, "", &format!("powering off {vm}"))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_gone() => return Ok(()),
                // Off meanwhile: what we wanted.
                Err(e) if e.fault_kind() == Some("InvalidPowerState") => {}
                Err(e) => return Err(e),
            }
        }
        match c
            .run_task("Destroy_Task", vm, "", &format!("destroying {vm}"))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_gone() => return Ok(()),
            Err(e) => return Err(e),
        }
        // Verify: vCenter no longer knows it.
        match c.properties(vm, &["name"]).await {
            Err(e) if e.is_gone() => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(VsError::Other(format!(
                "{vm} still exists after Destroy_Task"
            ))),
        }
    }

    /// Destroys every VM called `name` except `keep`.
    async fn destroy_named(&self, name: &str, keep: Option<&MoRef>) -> Result<(), VsError> {
        for vm in self.vms_named(name).await? {
            if Some(&vm) != keep {
                tracing::info!(vm = %vm, %name, "destroying another VM of the job");
                self.destroy(&vm).await?;
            }
        }
        Ok(())
    }

    /// The disk size of an imported image VM, as vCenter reports it.
    async fn disk_bytes(&self, vm: &MoRef) -> Result<u64, VsError> {
        let o = self
            .client
            .properties(vm, &["config.hardware.device"])
            .await?;
        let Some(devices) = o.props.get("config.hardware.device") else {
            return Ok(0);
        };
        Ok(devices
            .children
            .iter()
            .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
            .map(|d| {
                let bytes: u64 = d.text_at("capacityInBytes").parse().unwrap_or(0);
                let kb: u64 = d.text_at("capacityInKB").parse().unwrap_or(0);
                if bytes > 0 {
                    bytes
                } else {
                    kb * 1024
                }
            })
            .sum())
    }

    /// Clone, reconfigure, customize and power on: the VM, or the error
    /// after the half-made clone was removed.
    async fn build_vm(
        &self,
        spec: &VmSpec,
        inv: &Inventory,
        image: &MoRef,
        vm: &MoRef,
    ) -> Result<Value, VsError> {
        let c = &self.client;
        let guest_id = match spec.os {
            OsFamily::Windows => &self.cfg.windows_guest_id,
            OsFamily::Linux => &self.cfg.linux_guest_id,
        };
        let annotation = vm::annotation(spec.job, "Scan VM");
        let hw = vm::Hardware {
            guest_id,
            annotation: &annotation,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            nic_device: vm::nic_device(&self.cfg.nic_type).unwrap_or("VirtualVmxnet3"),
            inv,
            guestinfo: vm::guestinfo(&spec.user_data, &spec.name, &spec.hostname),
        };
        c.run_task(
            "ReconfigVM_Task",
            vm,
            &vm::reconfig_args(&hw),
            &format!(
                "configuring {} ({} CPU, {} MiB)",
                spec.name, spec.cpus, spec.memory_mib
            ),
        )
        .await?;
        let computer_name = windows_computer_name(spec.job);
        let custom = match spec.os {
            OsFamily::Windows => Some(vm::Customization::Sysprep {
                computer_name: &computer_name,
                admin_password: spec.admin_password.as_ref(),
                time_zone: self.cfg.windows_time_zone,
            }),
            OsFamily::Linux if self.cfg.linux_customization == LinuxCustomization::LinuxPrep => {
                Some(vm::Customization::LinuxPrep {
                    hostname: &spec.hostname,
                    domain: &self.cfg.domain,
                })
            }
            OsFamily::Linux => None,
        };
        let customization = match &custom {
            Some(cu) => {
                c.run_task(
                    "CustomizeVM_Task",
                    vm,
                    &vm::customize_args(cu),
                    &format!("customizing {}", spec.name),
                )
                .await?;
                Some(match cu {
                    vm::Customization::Sysprep { .. } => "sysprep",
                    vm::Customization::LinuxPrep { .. } => "linux-prep",
                })
            }
            None => None,
        };
        c.run_task(
            "PowerOnVM_Task",
            vm,
            "",
            &format!("powering on {}", spec.name),
        )
        .await?;
        let mut detail = json!({
            "vm": vm.value,
            "image_vm": image.value,
            "os": spec.os.as_str(),
            "guest_id": guest_id,
            "network": self.cfg.network,
            "datastore": self.cfg.datastore,
            "customization": customization.unwrap_or("cloud-init"),
        });
        if spec.os == OsFamily::Windows {
            detail["computer_name"] = json!(computer_name);
            detail["admin_password_set"] = json!(spec.admin_password.is_some());
        }
        Ok(detail)
    }
}

#[async_trait]
impl ClusterProvider for VsphereProvider {
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
        let name = image_name(job);
        let inv = self.inventory().await?.clone();
        // A retried upload replaces the job's earlier image: one per job.
        self.destroy_named(&name, None)
            .await
            .map_err(|e| self.err(e))?;
        let vm = import::import(&self.client, &inv, &name, image, progress)
            .await
            .map_err(|e| self.err(e))?;
        let tagged = async {
            self.client
                .run_task(
                    "ReconfigVM_Task",
                    &vm,
                    &vm::annotate_args(&vm::annotation(job, "Image")),
                    &format!("annotating {name}"),
                )
                .await?;
            // A template: cloned from, never powered on itself.
            self.client.call("MarkAsTemplate", &vm, "").await?;
            self.disk_bytes(&vm).await
        }
        .await;
        let virtual_size = match tagged {
            Ok(v) => v,
            Err(e) => {
                let _ = self.destroy(&vm).await;
                return Err(self.err(e));
            }
        };
        tracing::info!(image = %vm, %name, virtual_size, "vSphere image imported");
        Ok(ClusterImage {
            id: vm.value,
            name,
            size: image.file_size,
            virtual_size,
        })
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        check_id(&spec.image.id)?;
        if job_of_name(&spec.name) != Some(spec.job) {
            return Err(ClusterError::Local(format!(
                "{:?} is not the job's vmscan-… name",
                spec.name
            )));
        }
        let inv = self.inventory().await?.clone();
        // A retry replaces the job's earlier VM: never two of the same name.
        self.destroy_named(&spec.name, None)
            .await
            .map_err(|e| self.err(e))?;
        let image = vm::vm_ref(&spec.image.id);
        let result = self
            .client
            .run_task(
                "CloneVM_Task",
                &image,
                &vm::clone_args(&inv, &spec.name),
                &format!("cloning {} from {}", spec.name, spec.image.name),
            )
            .await
            .map_err(|e| self.err(e))?;
        let vm = result
            .as_ref()
            .and_then(MoRef::from_element)
            .ok_or_else(|| self.err(VsError::Other("CloneVM_Task: no VM in the result".into())))?;
        // A clone retried after a lost answer may have made a twin.
        self.destroy_named(&spec.name, Some(&vm))
            .await
            .map_err(|e| self.err(e))?;
        let detail = match self.build_vm(spec, &inv, &image, &vm).await {
            Ok(d) => d,
            Err(e) => {
                if let Err(d) = self.destroy(&vm).await {
                    tracing::warn!(vm = %vm, "vSphere: removing the failed VM: {d}");
                }
                return Err(self.err(e));
            }
        };
        tracing::info!(vm = %vm, name = %spec.name, "vSphere VM powered on");
        Ok(ClusterVm {
            id: vm.value.clone(),
            name: spec.name.clone(),
            host: None,
            port: Some(match spec.os {
                OsFamily::Windows => self.cfg.winrm_port,
                OsFamily::Linux => self.cfg.ssh_port,
            }),
            detail,
        })
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        check_id(&vm.id)?;
        let r = vm::vm_ref(&vm.id);
        let poll = Duration::from_millis(self.cfg.poll_ms.max(10));
        let t0 = Instant::now();
        let read = |paths: &'static [&'static str]| {
            let r = r.clone();
            async move {
                self.client.properties(&r, paths).await.map_err(|e| {
                    if e.is_gone() {
                        ClusterError::Api {
                            provider: self.name(),
                            message: format!("VM {} ({}) no longer exists", vm.name, vm.id),
                            retryable: true,
                        }
                    } else {
                        self.err(e)
                    }
                })
            }
        };
        loop {
            let o = read(&["runtime.powerState"]).await?;
            if o.text("runtime.powerState") == "poweredOn" {
                break;
            }
            if t0.elapsed() > deadlines.power_on {
                return Err(ClusterError::Deadline {
                    what: "power-on".into(),
                    secs: deadlines.power_on.as_secs(),
                    console_tail: None,
                });
            }
            tokio::time::sleep(poll).await;
        }
        let powered_on = t0.elapsed();

        // VMware Tools reports the guest's address.
        let start = Instant::now();
        let (host, hostname) = loop {
            let o = read(&["guest.ipAddress", "guest.hostName", "guest.net"]).await?;
            let ip = guest_address(&o, &self.cfg.network);
            if !ip.is_empty() {
                break (ip, o.text("guest.hostName"));
            }
            if start.elapsed() > deadlines.address {
                return Err(ClusterError::Deadline {
                    what: GUEST_IP.into(),
                    secs: deadlines.address.as_secs(),
                    console_tail: None,
                });
            }
            tokio::time::sleep(poll).await;
        };
        let addressed = t0.elapsed();

        let windows = vm.detail["os"] == "windows";
        let port = vm.port.unwrap_or(if windows {
            self.cfg.winrm_port
        } else {
            self.cfg.ssh_port
        });
        let banner = probe::wait_for_shell(
            &host,
            port,
            windows,
            deadlines.port_open,
            Duration::from_millis(250),
        )
        .await
        .map_err(|what| ClusterError::Deadline {
            what: what.into(),
            secs: deadlines.port_open.as_secs(),
            console_tail: None,
        })?;
        let mut ready = vm.clone();
        ready.host = Some(host.clone());
        ready.port = Some(port);
        ready.detail["address"] = json!(host);
        ready.detail["guest_hostname"] = json!(hostname);
        ready.detail["ssh_banner"] = json!(banner);
        ready.detail["power_on_secs"] = json!(powered_on.as_secs_f64());
        ready.detail["address_secs"] = json!(addressed.as_secs_f64());
        ready.detail["ready_secs"] = json!(t0.elapsed().as_secs_f64());
        Ok(ready)
    }

    async fn console_tail(&self, _vm: &ClusterVm, _max_bytes: usize) -> Option<String> {
        // vSphere's API has no serial console to read.
        None
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        check_id(vm_id)?;
        self.destroy(&vm::vm_ref(vm_id))
            .await
            .map_err(|e| self.err(e))
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        check_id(image_id)?;
        self.destroy(&vm::vm_ref(image_id))
            .await
            .map_err(|e| self.err(e))
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        let root = self
            .client
            .content()
            .await
            .map_err(|e| self.err(e))?
            .root_folder
            .clone();
        let all = self
            .client
            .find_all(&root, "VirtualMachine", &["name", "config.annotation"])
            .await
            .map_err(|e| self.err(e))?;
        let mut owned = Vec::new();
        for o in all {
            let name = o.text("name");
            let tagged = vm::job_of_annotation(&o.text("config.annotation"));
            if tagged.is_none() && !name.starts_with("vmscan-") {
                continue;
            }
            let job = tagged.or_else(|| job_of_name(&name));
            let id = o.obj.value;
            owned.push(if name.starts_with("vmscan-img-") {
                Owned::Image { id, name, job }
            } else {
                Owned::Vm { id, name, job }
            });
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_on_the_scan_network_wins() {
        // guest.net as vcsim and vCenter return it (ArrayOfGuestNicInfo).
        let doc = r#"<val xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ArrayOfGuestNicInfo"><GuestNicInfo><network>other</network><ipAddress>10.9.9.9</ipAddress></GuestNicInfo><GuestNicInfo><network>scan-net</network><ipAddress>fe80::1</ipAddress><ipAddress>192.0.2.7</ipAddress></GuestNicInfo></val>"#;
        let mut o = client::ObjectContent {
            obj: MoRef::new("VirtualMachine", "vm-1"),
            props: Default::default(),
        };
        o.props.insert(
            "guest.ipAddress".into(),
            xml::Element::parse("<v>fe80::1</v>").unwrap(),
        );
        assert_eq!(guest_address(&o, "scan-net"), "fe80::1");
        o.props
            .insert("guest.net".into(), xml::Element::parse(doc).unwrap());
        assert_eq!(guest_address(&o, "scan-net"), "192.0.2.7");
        assert_eq!(guest_address(&o, "third"), "fe80::1");
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("vm-42").is_ok());
        for bad in ["", "vm 1", "a<b", "x/y"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_json() {
        let cfg = VsphereConfig {
            password: Some("hunter2-pw".to_string().into()),
            ..VsphereConfig::default()
        };
        assert!(!format!("{cfg:?}").contains("hunter2-pw"));
        assert!(!serde_json::to_string(&cfg).unwrap().contains("hunter2-pw"));
    }

    #[test]
    fn the_sdk_url_gets_its_path_and_loses_credentials() {
        let u = client::sdk_url("https://u:p@vc.example.com").unwrap();
        assert_eq!(u.as_str(), "https://vc.example.com/sdk");
        let u = client::sdk_url("https://vc.example.com/sdk/").unwrap();
        assert_eq!(u.path(), "/sdk/");
        assert!(client::sdk_url("ftp://x").is_err());
    }
}
