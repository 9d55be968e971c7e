//! Settings of one vCenter (`[cluster.vsphere.NAME]`).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How a Linux guest learns its hostname and the job's user-data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinuxCustomization {
    /// cloud-init's VMware datasource reads `guestinfo.userdata`/`metadata`.
    #[default]
    CloudInit,
    /// Also a `CustomizationLinuxPrep` spec (hostname), for images without
    /// cloud-init (VMware Tools applies it at first boot).
    LinuxPrep,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VsphereConfig {
    /// The vCenter (or ESXi) web services endpoint, e.g.
    /// `https://vcenter.example.com/sdk` (`/sdk` is added when missing).
    pub url: String,
    /// The service account, e.g. `svc-vmscan@vsphere.local`.
    pub username: String,
    /// Secret: `VMSCAN_CLUSTER__VSPHERE__<NAME>__PASSWORD`.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// Verify vCenter's TLS certificate (against `ca_bundle` when set).
    pub verify_tls: bool,
    /// PEM file with the CA(s) that signed vCenter's certificate.
    pub ca_bundle: Option<PathBuf>,
    /// Inventory, by name: the datacenter, and a cluster or a resource pool
    /// in it (a pool name wins; with both, the pool is looked up in the cluster).
    pub datacenter: String,
    pub cluster: String,
    pub resource_pool: String,
    pub datastore: String,
    /// VM folder for images and VMs; empty: the datacenter's root VM folder.
    pub folder: String,
    /// Port group (standard or distributed) of the scan VM's NIC.
    pub network: String,
    /// Guest OS ids of the images vmscan imports.
    pub linux_guest_id: String,
    pub windows_guest_id: String,
    /// The SCSI controller of the imported disk ("lsilogic", "pvscsi", …).
    pub scsi_controller: String,
    /// NIC type ("vmxnet3", "e1000e", …).
    pub nic_type: String,
    pub linux_customization: LinuxCustomization,
    /// DNS domain of the LinuxPrep customization.
    pub domain: String,
    /// Sysprep's time zone (Microsoft index; 85 is GMT).
    pub windows_time_zone: i32,
    /// Port of the guest's remote shell as vmscan reaches it (22 for SSH).
    pub ssh_port: u16,
    /// Port of WinRM on Windows guests.
    pub winrm_port: u16,
    /// One SOAP request (not an upload) may take this long.
    pub request_secs: u64,
    /// Time allowed for a disk upload: `upload_base_secs` plus one second
    /// per `upload_min_bytes_per_sec` bytes.
    pub upload_base_secs: u64,
    pub upload_min_bytes_per_sec: u64,
    /// How often the import lease is kept alive (`HttpNfcLeaseProgress`);
    /// vCenter drops a lease after 5 minutes without it.
    pub lease_progress_secs: u64,
    /// How often tasks and VM state are polled.
    pub poll_ms: u64,
    /// How long one task may run.
    pub task_timeout_secs: u64,
    /// Tries for a call failing with a busy fault or a lost connection,
    /// with back-off doubling from `retry_backoff_ms`. `NotAuthenticated`
    /// logs in again once; `InvalidLogin` and `NoPermission` never retry.
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    /// qemu-img, for the streamOptimized VMDK.
    pub qemu_img: PathBuf,
}

impl Default for VsphereConfig {
    fn default() -> Self {
        VsphereConfig {
            url: String::new(),
            username: String::new(),
            password: None,
            verify_tls: true,
            ca_bundle: None,
            datacenter: String::new(),
            cluster: String::new(),
            resource_pool: String::new(),
            datastore: String::new(),
            folder: String::new(),
            network: String::new(),
            linux_guest_id: "otherLinux64Guest".into(),
            windows_guest_id: "windows9Server64Guest".into(),
            scsi_controller: "lsilogic".into(),
            nic_type: "vmxnet3".into(),
            linux_customization: LinuxCustomization::CloudInit,
            domain: "localdomain".into(),
            windows_time_zone: 85,
            ssh_port: 22,
            winrm_port: 5985,
            request_secs: 60,
            upload_base_secs: 300,
            upload_min_bytes_per_sec: 5 * 1024 * 1024,
            lease_progress_secs: 30,
            poll_ms: 1000,
            task_timeout_secs: 1800,
            max_attempts: 4,
            retry_backoff_ms: 1000,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}
