//! Settings of the scan itself: the VM each job boots, the agent profile
//! installed on it, and the inventory system asked about it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::domain::OsFamily;
use crate::inventory::FlexeraOneConfig;
use crate::remote::winrm::{WinRmAuth, WinRmScheme};

/// The VM a scan boots.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    pub cpus: u32,
    pub memory_mib: u32,
    /// The user vmscan logs in as; the seed authorises the job's key for it.
    pub ssh_user: String,
    /// Password tried when the job's key is refused (secret:
    /// VMSCAN_VM__SSH_PASSWORD). Used only with `legacy_password_login`: a
    /// hostile guest records whatever password it is sent.
    #[serde(skip_serializing)]
    pub ssh_password: Option<SecretString>,
    /// Send `ssh_password` to guests (images without cloud-init that only
    /// take a fixed password). Off by default; every such job says so.
    pub legacy_password_login: bool,
    /// Deadlines for bringing the VM up, each reported by name when it expires.
    pub power_on_secs: u64,
    pub address_secs: u64,
    pub port_secs: u64,
    pub login_secs: u64,
    /// Timeout of one remote command.
    pub command_secs: u64,
    /// Keep a failed job's VM this long for debugging (0: tear down at once).
    /// The job waits, shown with the time of teardown; Cancel tears down now.
    pub keep_failed_secs: u64,
    /// Delete the cluster image at teardown too.
    pub delete_image: bool,
    /// Extra cloud-init user-data lines appended to the generated seed.
    pub extra_user_data: String,
    /// How Windows guests are reached (`[vm.winrm]`).
    pub winrm: WinRmConfig,
    /// `host:port` pairs the guest may reach besides the agent profile's
    /// upload/download servers (on clusters that restrict the guest network).
    pub allowed_destinations: Vec<String>,
}

/// WinRM login to Windows guests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WinRmConfig {
    pub scheme: WinRmScheme,
    /// 0: the port the cluster reports for the VM, else 5985 (http) or 5986 (https).
    pub port: u16,
    /// `Administrator`, `DOMAIN\user` or `user@domain`.
    pub user: String,
    /// Secret: VMSCAN_VM__WINRM__PASSWORD.
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    /// NTLM (sealed on plain HTTP) or Basic (needs AllowUnencrypted on HTTP).
    pub auth: WinRmAuth,
    /// PEM bundle of the CAs trusted for HTTPS (else the built-in roots).
    pub ca_bundle: Option<PathBuf>,
    /// Off: any certificate is accepted (templates often have self-signed ones).
    pub verify_tls: bool,
    /// OperationTimeout of each WS-Management call.
    pub operation_timeout_secs: u64,
}

impl Default for WinRmConfig {
    fn default() -> Self {
        WinRmConfig {
            scheme: WinRmScheme::Http,
            port: 0,
            user: "Administrator".into(),
            password: None,
            auth: WinRmAuth::Ntlm,
            ca_bundle: None,
            verify_tls: true,
            operation_timeout_secs: 20,
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            cpus: 1,
            memory_mib: 256,
            ssh_user: "root".into(),
            ssh_password: None,
            legacy_password_login: false,
            power_on_secs: 30,
            address_secs: 60,
            port_secs: 180,
            login_secs: 60,
            command_secs: 600,
            keep_failed_secs: 0,
            delete_image: true,
            extra_user_data: String::new(),
            winrm: WinRmConfig::default(),
            allowed_destinations: Vec::new(),
        }
    }
}

/// How to install and check the license agent on one guest OS family.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentProfile {
    /// Commands run before the install (e.g. a repository rpm for end-of-life CentOS).
    pub pre_install: Vec<String>,
    /// The installer: a local path or an http(s) URL; uploaded to `upload_dir`.
    pub installer: String,
    pub upload_dir: String,
    /// The bootstrap file the agent reads (Flexera: the rollout response file),
    /// rendered from `response_template` with {upload_url}, {download_url},
    /// {hostname}, {job_id} replaced.
    pub response_file: String,
    pub response_template: String,
    pub upload_url: String,
    pub download_url: String,
    /// The install command; {installer} is the uploaded installer's path.
    pub install_command: String,
    /// A command that must exit 0 once the agent runs.
    pub service_check: String,
    /// Log files polled by log-check, and the patterns (regular expressions).
    pub log_files: Vec<String>,
    pub required_patterns: Vec<String>,
    pub forbidden_patterns: Vec<String>,
    pub log_timeout_secs: u64,
    pub log_poll_secs: u64,
    /// Pattern in the logs proving the agent's upload; with
    /// `teardown_before_inventory`, the VM is removed once it appears.
    pub upload_confirmed_pattern: String,
    pub teardown_before_inventory: bool,
    /// Windows: msiexec properties (`NAME = "value"`), rendered like the
    /// response template; empty: Flexera's bootstrap download/upload locations.
    pub msi_properties: BTreeMap<String, String>,
    /// Windows: services that must be running after the install
    /// (empty: Flexera's `ndinit` and `mgssecsvc`).
    pub services: Vec<String>,
    /// Windows: switch `interface_alias` to DHCP for address and DNS before the install.
    pub switch_to_dhcp: bool,
    pub interface_alias: String,
}

impl Default for AgentProfile {
    fn default() -> Self {
        AgentProfile {
            pre_install: Vec::new(),
            installer: String::new(),
            upload_dir: "/var/tmp".into(),
            response_file: "/var/tmp/mgsft_rollout_response".into(),
            response_template: "MGSFT_BOOTSTRAP_DOWNLOAD={download_url}\nMGSFT_BOOTSTRAP_UPLOAD={upload_url}\n\
                                MGSFT_HTTPS_CHECKSERVERCERTIFICATE=false\nMGSFT_HTTPS_CHECKCERTIFICATEREVOCATION=false\n\
                                MGSFT_RUNPOLICY=1\n"
                .into(),
            upload_url: String::new(),
            download_url: String::new(),
            install_command: "sh {installer}".into(),
            service_check: String::new(),
            log_files: vec![
                "/var/opt/managesoft/log/installation.log".into(),
                "/var/opt/managesoft/log/tracker.log".into(),
            ],
            required_patterns: Vec::new(),
            forbidden_patterns: vec!["(?i)\\berror\\b".into()],
            log_timeout_secs: 600,
            log_poll_secs: 5,
            upload_confirmed_pattern: String::new(),
            teardown_before_inventory: false,
            msi_properties: BTreeMap::new(),
            services: Vec::new(),
            switch_to_dhcp: false,
            interface_alias: "Ethernet".into(),
        }
    }
}

/// Agent profiles per OS family ("linux", "windows").
/// None configured: the agent stages are left out of the pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub profiles: BTreeMap<String, AgentProfile>,
}

impl AgentConfig {
    pub fn linux(&self) -> Option<&AgentProfile> {
        self.profiles
            .get("linux")
            .filter(|p| !p.installer.is_empty())
    }

    /// The Windows profile; settings left at their (Linux) defaults take
    /// Flexera's Windows defaults.
    pub fn windows(&self) -> Option<AgentProfile> {
        let mut p = self
            .profiles
            .get("windows")
            .filter(|p| !p.installer.is_empty())
            .cloned()?;
        let linux = AgentProfile::default();
        if p.upload_dir == linux.upload_dir {
            p.upload_dir = r"C:\Windows\Temp\vmscan".into();
        }
        if p.log_files == linux.log_files {
            p.log_files = vec![
                r"C:\Windows\Temp\ManageSoft\installation.log".into(),
                r"C:\Windows\Temp\ManageSoft\tracker.log".into(),
            ];
        }
        if p.services.is_empty() {
            p.services = vec!["ndinit".into(), "mgssecsvc".into()];
        }
        if p.msi_properties.is_empty() {
            p.msi_properties = BTreeMap::from([
                (
                    "MGSFT_BOOTSTRAP_DOWNLOAD".to_string(),
                    "{download_url}".to_string(),
                ),
                (
                    "MGSFT_BOOTSTRAP_UPLOAD".to_string(),
                    "{upload_url}".to_string(),
                ),
                ("MGSFT_RUNPOLICY".to_string(), "1".to_string()),
            ]);
        }
        Some(p)
    }

    /// The profile for jobs of this OS family, if one is configured.
    pub fn for_os(&self, os: OsFamily) -> Option<AgentProfile> {
        match os {
            OsFamily::Linux => self.linux().cloned(),
            OsFamily::Windows => self.windows(),
        }
    }

    /// Whether any OS family has a profile (the agent stages are in the pipeline).
    pub fn any(&self) -> bool {
        OsFamily::ALL.iter().any(|os| self.for_os(*os).is_some())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InventoryKind {
    /// No inventory check: report-check is left out of the pipeline.
    #[default]
    None,
    FlexeraOne,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    pub kind: InventoryKind,
    /// Between checks the job waits without holding a worker.
    pub check_interval_secs: u64,
    /// Give up when the VM is not listed this long after the first check.
    pub deadline_secs: u64,
    pub flexera_one: FlexeraOneConfig,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            kind: InventoryKind::None,
            check_interval_secs: 3600,
            deadline_secs: 3 * 24 * 3600,
            flexera_one: FlexeraOneConfig::default(),
        }
    }
}

/// Where a local-path installer may be read from is not restricted: it comes
/// from the operator's configuration, not from a submitter.
pub fn installer_is_url(installer: &str) -> bool {
    installer.starts_with("http://") || installer.starts_with("https://")
}

pub fn installer_path(installer: &str) -> Option<PathBuf> {
    (!installer_is_url(installer) && !installer.is_empty()).then(|| PathBuf::from(installer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_profile_takes_flexera_windows_defaults() {
        let mut agents = AgentConfig::default();
        assert!(!agents.any());
        agents.profiles.insert(
            "windows".into(),
            AgentProfile {
                installer: "agent.msi".into(),
                ..AgentProfile::default()
            },
        );
        let w = agents.for_os(OsFamily::Windows).unwrap();
        assert_eq!(
            w.log_files,
            [
                r"C:\Windows\Temp\ManageSoft\installation.log",
                r"C:\Windows\Temp\ManageSoft\tracker.log"
            ]
        );
        assert_eq!(w.services, ["ndinit", "mgssecsvc"]);
        assert_eq!(w.upload_dir, r"C:\Windows\Temp\vmscan");
        assert_eq!(w.msi_properties["MGSFT_BOOTSTRAP_UPLOAD"], "{upload_url}");
        assert!(agents.for_os(OsFamily::Linux).is_none());
        assert!(agents.any());
    }

    #[test]
    fn the_example_vm_section_parses_and_the_winrm_password_is_never_serialized() {
        use figment::providers::{Format, Toml};
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/vmscan.example.toml");
        let mut vm: VmConfig = figment::Figment::from(Toml::file(path))
            .extract_inner("vm")
            .unwrap();
        assert_eq!(vm.winrm.auth, WinRmAuth::Ntlm);
        assert_eq!(vm.winrm.scheme, WinRmScheme::Http);
        assert_eq!(vm.winrm.user, "Administrator");
        vm.winrm.password = Some(SecretString::from("hunter2".to_string()));
        let shown = serde_json::to_string(&vm).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            !shown.contains("\"password\"") && !shown.contains("ssh_password"),
            "{shown}"
        );
    }
}
