//! Settings of one OpenStack cloud (`[cluster.openstack.NAME]`).

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenStackConfig {
    /// Keystone v3, e.g. `https://keystone.example.com:5000/v3`.
    pub auth_url: String,
    pub region: Option<String>,
    /// Endpoint interface in the service catalog: public, internal or admin.
    pub interface: String,
    /// Password authentication.
    pub username: String,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    pub user_domain_name: String,
    pub project_name: String,
    pub project_domain_name: String,
    /// Application credential authentication (wins over the password when set).
    pub application_credential_id: String,
    #[serde(skip_serializing)]
    pub application_credential_secret: Option<SecretString>,
    pub verify_tls: bool,
    pub ca_bundle: Option<PathBuf>,
    /// Nova flavor and Neutron network, by name.
    pub flavor: String,
    pub network: String,
    /// Attach a floating IP from this pool; empty: use the fixed address.
    pub floating_ip_pool: String,
    pub ssh_port: u16,
    pub winrm_port: u16,
    pub request_secs: u64,
    pub upload_base_secs: u64,
    pub upload_min_bytes_per_sec: u64,
    pub poll_ms: u64,
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
            ssh_port: 22,
            winrm_port: 5985,
            request_secs: 60,
            upload_base_secs: 300,
            upload_min_bytes_per_sec: 5 * 1024 * 1024,
            poll_ms: 2000,
            max_attempts: 4,
            retry_backoff_ms: 1000,
        }
    }
}
