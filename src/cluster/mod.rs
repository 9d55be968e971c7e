//! Cluster providers: where scan VMs run. The pipeline only sees this trait;
//! the local QEMU provider is the embedded default, Nutanix, OpenStack and
//! vSphere are chosen by configuration.

pub mod egress;
mod image;
pub mod nutanix;
pub mod openstack;
pub mod probe;
pub mod qemu;
mod registry;
mod tls;
pub mod vsphere;

pub use image::{ImageFile, ImageFileError};
pub use registry::{ClusterInfo, Clusters};

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{JobId, OsFamily};

/// Names every cluster object a job creates, stable across retries of the job.
pub fn vm_name(job: JobId) -> String {
    format!("vmscan-{}", job.as_uuid().simple())
}

/// The guest's hostname: what the inventory system will list. Uses the
/// random tail of the job id (the head is a timestamp).
pub fn guest_hostname(job: JobId) -> String {
    let s = job.as_uuid().simple().to_string();
    format!("vmscan-{}", &s[s.len() - 12..])
}

/// A Windows guest's computer name: `VMS-` and 11 characters of the job's
/// random tail. NetBIOS names are at most 15 characters of letters, digits
/// and hyphens, not all digits; Windows keeps them upper case.
pub fn windows_computer_name(job: JobId) -> String {
    let s = job.as_uuid().simple().to_string().to_ascii_uppercase();
    format!("VMS-{}", &s[s.len() - 11..])
}

/// The name the guest gets and the inventory will list, by OS family.
pub fn guest_name(job: JobId, os: OsFamily) -> String {
    match os {
        OsFamily::Linux => guest_hostname(job),
        OsFamily::Windows => windows_computer_name(job),
    }
}

pub fn image_name(job: JobId) -> String {
    format!("vmscan-img-{}", job.as_uuid().simple())
}

/// The job in a name made by [`vm_name`] or [`image_name`].
pub fn job_of_name(name: &str) -> Option<JobId> {
    let rest = name
        .strip_prefix("vmscan-img-")
        .or_else(|| name.strip_prefix("vmscan-"))?;
    rest.get(..32)?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A deadline expired; `what` names it ("power-on", "address", "ssh port", "ssh login").
    #[error("VM did not reach {what} within {secs} s{}", console_tail.as_deref().map(|t| format!("; serial console ends with:\n{t}")).unwrap_or_default())]
    Deadline {
        what: String,
        secs: u64,
        console_tail: Option<String>,
    },
    /// The guest's console already says it will never boot (no bootable
    /// device, a kernel panic): no point waiting for the deadlines.
    #[error("VM cannot boot: its serial console says {line:?}; serial console ends with:\n{console_tail}")]
    BootFailed { line: String, console_tail: String },
    #[error("{provider}: {message}")]
    Api {
        provider: String,
        message: String,
        retryable: bool,
    },
    #[error("{0}")]
    Local(String),
    #[error("cluster capacity: {0}")]
    Capacity(String),
    #[error("cancelled")]
    Cancelled,
}

impl ClusterError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ClusterError::Api { retryable, .. } => *retryable,
            ClusterError::Capacity(_) => true,
            _ => false,
        }
    }
}

/// An image uploaded to the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterImage {
    pub id: String,
    pub name: String,
    /// Bytes uploaded (the file).
    pub size: u64,
    /// Bytes of the disk it holds, as the cluster reports it.
    #[serde(default)]
    pub virtual_size: u64,
}

/// What a VM is created from and with.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub job: JobId,
    pub name: String,
    pub image: ClusterImage,
    pub cpus: u32,
    pub memory_mib: u32,
    /// cloud-init NoCloud user-data (YAML text starting with `#cloud-config`).
    pub user_data: String,
    pub hostname: String,
    /// Picks the guest customization (cloud-init or sysprep) and the shell port.
    pub os: OsFamily,
    /// Windows: the job's own Administrator password, for a cluster whose
    /// customization can set it (it then says so with `admin_password_set`
    /// in the VM's detail).
    pub admin_password: Option<secrecy::SecretString>,
    /// Where the guest may connect to (the agent's servers); a provider that
    /// restricts the guest's network allows these and nothing else.
    pub egress: Vec<egress::Destination>,
}

/// A VM the cluster runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterVm {
    pub id: String,
    pub name: String,
    /// Where its SSH/WinRM port is reachable from vmscan, once known.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Provider-specific facts for the job page (pid, console file, cluster uuid…).
    pub detail: serde_json::Value,
}

/// Separate deadlines for each step of bringing a VM up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deadlines {
    pub power_on: Duration,
    pub address: Duration,
    pub port_open: Duration,
}

/// Something tagged as ours that the cluster still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owned {
    Vm {
        id: String,
        name: String,
        job: Option<JobId>,
    },
    Image {
        id: String,
        name: String,
        job: Option<JobId>,
    },
}

pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// A configured URL as the job page may show it: without any user or
/// password written into it.
pub fn shown_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "(invalid URL)".to_string(),
    }
}

#[async_trait]
pub trait ClusterProvider: Send + Sync {
    /// "qemu-local", "nutanix:pc1", … shown on the job page.
    fn name(&self) -> String;
    /// Which endpoint it talks to, for the job page ("Prism Central
    /// https://pc1:9440"); never credentials.
    fn endpoint(&self) -> Option<String> {
        None
    }
    /// Uploads (or reuses) the job's image; `progress(done, total)` while it runs.
    async fn upload_image(
        &self,
        job: JobId,
        image: &ImageFile,
        progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError>;
    /// Creates and powers on the VM (replacing an earlier one of the same name).
    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError>;
    /// Waits until the VM is on and its remote-shell port answers.
    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError>;
    /// The tail of the VM's console, if the provider has one.
    async fn console_tail(&self, vm: &ClusterVm, max_bytes: usize) -> Option<String>;
    /// Powers off and deletes the VM, and checks that it is gone. Missing = done.
    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError>;
    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError>;
    /// Every VM and image this vmscan created that still exists.
    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError>;
}

/// Deletes a VM (`kind` "vm") or an image (any other kind) of the cluster.
pub async fn delete_object(
    provider: &dyn ClusterProvider,
    kind: &str,
    id: &str,
) -> Result<(), ClusterError> {
    if kind == "vm" {
        provider.delete_vm(id).await
    } else {
        provider.delete_image(id).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_computer_names_fit_netbios() {
        for _ in 0..200 {
            let job = crate::domain::JobId::new();
            let n = super::windows_computer_name(job);
            assert!(n.len() <= 15, "{n}");
            assert!(n.starts_with("VMS-"));
            assert!(n
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'));
            assert_eq!(super::guest_name(job, crate::domain::OsFamily::Windows), n);
            // Two jobs' names differ where their hostnames do.
            assert!(super::guest_hostname(job)
                .to_ascii_uppercase()
                .ends_with(&n[4..]));
        }
    }

    #[test]
    fn shown_urls_carry_no_credentials() {
        assert_eq!(
            super::shown_url("https://admin:hunter2@pc1.example.com:9440/"),
            "https://pc1.example.com:9440"
        );
        assert_eq!(super::shown_url("not a url"), "(invalid URL)");
    }
}
