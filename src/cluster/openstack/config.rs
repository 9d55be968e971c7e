//! Settings of one OpenStack cloud (`[cluster.openstack.NAME]`).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityGroupMode {
    /// `security_groups` (or the project's default) as configured.
    #[default]
    Configured,
    PerJob,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenStackConfig {
    /// Keystone v3, e.g. `https://keystone.example.com:5000/v3` (`/v3` is
    /// added when missing).
    pub auth_url: String,
    /// Region of the catalog endpoints (by `region` or `region_id`); None: any.
    pub region: Option<String>,
    /// Endpoint interface in the service catalog: public, internal or admin.
    pub interface: String,
    /// Password authentication, scoped to `project_name`.
    pub username: String,
    /// Secret: `VMSCAN_CLUSTER__OPENSTACK__<NAME>__PASSWORD`.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    pub user_domain_name: String,
    pub project_name: String,
    pub project_domain_name: String,
    /// Application credential authentication (wins over the password when set).
    pub application_credential_id: String,
    #[serde(skip_serializing)]
    pub application_credential_secret: Option<SecretString>,
    /// Verify the APIs' TLS certificates (against `ca_bundle` when set).
    pub verify_tls: bool,
    /// PEM file with the CA(s) that signed the APIs' certificates.
    pub ca_bundle: Option<PathBuf>,
    /// Nova flavor and Neutron network, by name.
    pub flavor: String,
    pub network: String,
    /// Attach a floating IP from this pool (an external network, by name);
    /// empty: use the fixed address.
    pub floating_ip_pool: String,
    /// Nova key pair put on every server (the job's key always comes in the
    /// user-data); empty: none.
    pub key_name: String,
    /// Security groups by name; empty: the project's default. Not used with
    /// `security_group = "per-job"`.
    pub security_groups: Vec<String>,
    /// "per-job": each server gets its own group allowing only SSH/WinRM from
    /// `shell_from_cidr` and egress to the job's agent endpoints.
    pub security_group: SecurityGroupMode,
    /// vmscan's address as the guests see it, e.g. `192.0.2.10/32`.
    pub shell_from_cidr: String,
    /// Ask Nova for a config drive (clouds without a metadata service).
    pub config_drive: bool,
    /// Port of the guest's remote shell as vmscan reaches it (22 for SSH).
    pub ssh_port: u16,
    /// Port of WinRM on Windows guests.
    pub winrm_port: u16,
    /// One API request (not an upload) may take this long.
    pub request_secs: u64,
    /// Time allowed for an upload: `upload_base_secs` plus one second per
    /// `upload_min_bytes_per_sec` bytes of image.
    pub upload_base_secs: u64,
    pub upload_min_bytes_per_sec: u64,
    /// How often an image or server is polled.
    pub poll_ms: u64,
    /// How long an image may take to become active, or a server to be gone.
    pub task_timeout_secs: u64,
    /// Tries for a request failing with 5xx, 429, a dropped connection (and
    /// 409 where Nova says the server is busy), with back-off doubling from
    /// `retry_backoff_ms`. 403 is never retried; 401 re-authenticates once.
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
}

impl Default for OpenStackConfig {
    fn default() -> Self {
        OpenStackConfig {
            auth_url: String::new(),
            region: None,
            interface: "public".into(),
            username: String::new(),
            password: None,
            user_domain_name: "Default".into(),
            project_name: String::new(),
            project_domain_name: "Default".into(),
            application_credential_id: String::new(),
            application_credential_secret: None,
            verify_tls: true,
            ca_bundle: None,
            flavor: String::new(),
            network: String::new(),
            floating_ip_pool: String::new(),
            key_name: String::new(),
            security_groups: Vec::new(),
            security_group: SecurityGroupMode::Configured,
            shell_from_cidr: String::new(),
            config_drive: false,
            ssh_port: 22,
            winrm_port: 5985,
            request_secs: 60,
            upload_base_secs: 300,
            upload_min_bytes_per_sec: 5 * 1024 * 1024,
            poll_ms: 2000,
            task_timeout_secs: 1800,
            max_attempts: 4,
            retry_backoff_ms: 1000,
        }
    }
}
