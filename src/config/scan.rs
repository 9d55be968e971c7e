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
    /// The user vmscan logs in as. Empty (the default): a user of the job's
    /// own (`vmscan-<job>`) that the cloud-init seed creates with the job's
    /// key only and passwordless sudo; privileged steps run with `sudo -n`,
    /// as hardened images (PermitRootLogin no) need. `root`: log in as root.
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
    /// The address, port and login deadlines are multiplied by this when the
    /// local QEMU cluster runs the VM under TCG (software emulation) rather
    /// than KVM.
    pub tcg_deadline_factor: u32,
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
            // What systemd + cloud-init cloud images need.
            cpus: 2,
            memory_mib: 1024,
            ssh_user: String::new(),
            ssh_password: None,
            legacy_password_login: false,
            power_on_secs: 30,
            address_secs: 60,
            port_secs: 180,
            login_secs: 60,
            tcg_deadline_factor: 3,
            command_secs: 600,
            keep_failed_secs: 0,
            delete_image: true,
            extra_user_data: String::new(),
            winrm: WinRmConfig::default(),
            allowed_destinations: Vec::new(),
        }
    }
}

impl VmConfig {
    /// The login user for a job: the configured one, else the job's own.
    pub fn login_user(&self, job: crate::domain::JobId) -> String {
        if self.ssh_user.is_empty() {
            format!("vmscan-{}", job.short())
        } else {
            self.ssh_user.clone()
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let u = &self.ssh_user;
        let ok = u.is_empty()
            || (u.len() <= 32
                && u.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && u.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)));
        if !ok {
            return Err(format!(
                "vm.ssh_user = {u:?}: use a POSIX user name (lowercase letters, digits, '-', '_'), or leave it empty for a per-job user"
            ));
        }
        if self.tcg_deadline_factor == 0 {
            return Err("vm.tcg_deadline_factor must be at least 1".into());
        }
        Ok(())
    }
}

/// How to install and check the license agent on one guest OS family.
///
/// Linux: the package is chosen by the guest's `/etc/os-release` from
/// `packages` (Flexera ships an rpm for the RHEL family and a deb for
/// Debian/Ubuntu), falling back to `installer`. Windows: `installer` is
/// Flexera's bundle (a zip with `FlexNet Inventory Agent.msi`, `Data1.cab`
/// and `InstallFlexNetInvAgent.mst` and/or `mgssetup.ini`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentProfile {
    /// Commands run before the install, whatever the package.
    pub pre_install: Vec<String>,
    /// The installer when no entry of `packages` matches the guest: a local
    /// path or an http(s) URL; uploaded to `upload_dir`.
    pub installer: String,
    /// Linux packages by family (`rpm`, `deb`, or an os-release ID such as
    /// `centos`): [agent.profiles.linux.packages.deb] …
    pub packages: BTreeMap<String, PackageConfig>,
    pub upload_dir: String,
    /// The bootstrap file the agent reads (Flexera: the rollout response
    /// file). Empty `response_template`: built from the settings below;
    /// else rendered with {upload_url}, {download_url}, {hostname},
    /// {job_id}, {check_server_certificate}, {check_certificate_revocation}.
    pub response_file: String,
    pub response_template: String,
    pub upload_url: String,
    pub download_url: String,
    /// MGSFT_HTTPS_CHECKSERVERCERTIFICATE / …CHECKCERTIFICATEREVOCATION:
    /// true in Flexera's template; turn off only for a lab beacon.
    pub check_server_certificate: bool,
    pub check_certificate_revocation: bool,
    /// MGSFT_HTTP_PROXY, MGSFT_HTTPS_PROXY, MGSFT_PROXY, MGSFT_NO_PROXY
    /// (left out of the file when empty).
    pub http_proxy: String,
    pub https_proxy: String,
    pub proxy: String,
    pub no_proxy: String,
    /// The install command for `installer`; {installer} is the uploaded
    /// path. Empty: by its name (`.rpm`: rpm --upgrade …, `.deb`: dpkg -i,
    /// else `sh {installer}`).
    pub install_command: String,
    /// Linux: run once the agent is installed, so that it inventories and
    /// uploads now rather than at a random time of its schedule (as
    /// Flexera's own install script does). Empty: none.
    pub inventory_command: String,
    /// Linux: prints the installed agent's version for the scan report
    /// (asks the package manager). Empty: not asked. Its failure only
    /// leaves the version unknown.
    pub version_command: String,
    /// An extra command that must exit 0 once the agent runs.
    pub service_check: String,
    /// Services that must be running after the install (empty: Flexera's,
    /// `ndtask` and `mgsusageag` on Linux, checked with systemctl where
    /// systemd runs; `ndinit` and `mgssecsvc` on Windows).
    pub services: Vec<String>,
    /// Log files polled by log-check, and the patterns (regular
    /// expressions). Empty `required_patterns`: the OS family's success
    /// lines (a log that merely exists proves nothing).
    pub log_files: Vec<String>,
    pub required_patterns: Vec<String>,
    pub forbidden_patterns: Vec<String>,
    pub log_timeout_secs: u64,
    pub log_poll_secs: u64,
    /// Pattern in the logs proving the agent's upload; with
    /// `teardown_before_inventory`, the VM is removed once it appears.
    /// Empty: the family's upload line.
    pub upload_confirmed_pattern: String,
    pub teardown_before_inventory: bool,
    /// Windows: extra msiexec properties (`NAME = "value"`, rendered like
    /// the response template) after Flexera's own command line. MGSFT_*
    /// keys are refused: they belong to the Linux file, msiexec ignores them.
    pub msi_properties: BTreeMap<String, String>,
    /// Windows: switch `interface_alias` to DHCP for address and DNS before the install.
    pub switch_to_dhcp: bool,
    pub interface_alias: String,
}

/// One Linux package of the agent and how it installs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PackageConfig {
    /// `managesoft-<ver>.x86_64.rpm` / `managesoft_<ver>_amd64.deb`: a local path or URL.
    pub installer: String,
    /// Empty: `rpm --upgrade --oldpackage --verbose --hash {installer}` for
    /// rpm, `dpkg -i {installer}` for deb.
    pub install_command: String,
    /// Commands before the install on guests of this family (end-of-life
    /// CentOS 7/8 need a vault repository before anything installs).
    pub pre_install: Vec<String>,
    /// os-release IDs this package is for, matched against ID, then ID_LIKE.
    /// Empty: `rpm` = the RHEL/SUSE family, `deb` = debian and ubuntu,
    /// another name = that ID.
    pub os_ids: Vec<String>,
}

/// Flexera's rpm install command (flexia-setup.sh).
pub const RPM_INSTALL: &str = "rpm --upgrade --oldpackage --verbose --hash {installer}";
/// The deb install (AT&T's Packer script for the Flexera agent).
pub const DEB_INSTALL: &str = "dpkg -i {installer}";
/// Generates and uploads an inventory now (docs.flexera.com FIA-CommandLine).
pub const LINUX_INVENTORY_COMMAND: &str = "/opt/managesoft/bin/ndtrack -t Machine";
/// The agent's package is `managesoft` in both formats (flexera.md: the
/// `managesoft_<ver>_amd64.deb` and `managesoft-<ver>.x86_64.rpm` files).
pub const LINUX_VERSION_COMMAND: &str = "dpkg-query -W -f='${Version}' managesoft 2>/dev/null || rpm -q --qf '%{VERSION}-%{RELEASE}' managesoft";
/// ndtrack's success lines in tracker.log (AT&T script; Jamf EA).
pub const UPLOAD_SUCCESS: &str = "Upload successful|Finished uploading inventory";
/// The last line of a good Windows install in installation.log (Pester test).
pub const INSTALL_SUCCESS: &str = "Program exited successfully";

impl PackageConfig {
    /// The os-release IDs this entry (named `key`) is for.
    pub fn ids(&self, key: &str) -> Vec<String> {
        if !self.os_ids.is_empty() {
            return self.os_ids.iter().map(|s| s.to_ascii_lowercase()).collect();
        }
        let ids: &[&str] = match key {
            "rpm" => &[
                "rhel",
                "centos",
                "fedora",
                "rocky",
                "almalinux",
                "ol",
                "amzn",
                "sles",
                "suse",
                "opensuse",
            ],
            "deb" => &["debian", "ubuntu"],
            other => return vec![other.to_ascii_lowercase()],
        };
        ids.iter().map(|s| s.to_string()).collect()
    }
}

/// The install command for `installer` when none is configured.
pub fn default_install_command(installer: &str) -> &'static str {
    let name = installer.to_ascii_lowercase();
    if name.ends_with(".rpm") {
        RPM_INSTALL
    } else if name.ends_with(".deb") {
        DEB_INSTALL
    } else {
        "sh {installer}"
    }
}

impl Default for AgentProfile {
    fn default() -> Self {
        AgentProfile {
            pre_install: Vec::new(),
            installer: String::new(),
            packages: BTreeMap::new(),
            upload_dir: "/var/tmp".into(),
            response_file: "/var/tmp/mgsft_rollout_response".into(),
            response_template: String::new(),
            upload_url: String::new(),
            download_url: String::new(),
            check_server_certificate: true,
            check_certificate_revocation: true,
            http_proxy: String::new(),
            https_proxy: String::new(),
            proxy: String::new(),
            no_proxy: String::new(),
            install_command: String::new(),
            inventory_command: LINUX_INVENTORY_COMMAND.into(),
            version_command: LINUX_VERSION_COMMAND.into(),
            service_check: String::new(),
            services: Vec::new(),
            log_files: vec![
                "/var/opt/managesoft/log/installation.log".into(),
                "/var/opt/managesoft/log/tracker.log".into(),
            ],
            required_patterns: Vec::new(),
            forbidden_patterns: default_forbidden(),
            log_timeout_secs: 600,
            log_poll_secs: 5,
            upload_confirmed_pattern: String::new(),
            teardown_before_inventory: false,
            msi_properties: BTreeMap::new(),
            switch_to_dhcp: false,
            interface_alias: "Ethernet".into(),
        }
    }
}

/// Lines that mean the agent failed for good. Not a blanket "error": the
/// agent logs beacon errors and retries by design. Flexera's install script
/// reports a failed install from installation.log, and msiexec's own
/// failure line is "Installation failed" (flexera.md 1a/1b).
fn default_forbidden() -> Vec<String> {
    vec![
        "(?i)Installation failed".into(),
        "(?i)Program exited with (an )?error".into(),
    ]
}

impl AgentProfile {
    /// The Linux profile with its family defaults filled in.
    fn linux_resolved(mut self) -> Self {
        if self.services.is_empty() {
            self.services = vec!["ndtask".into(), "mgsusageag".into()];
        }
        if self.required_patterns.is_empty() {
            self.required_patterns = vec![UPLOAD_SUCCESS.into()];
        }
        if self.upload_confirmed_pattern.is_empty() {
            self.upload_confirmed_pattern = UPLOAD_SUCCESS.into();
        }
        self
    }

    /// Whether any installer is configured (the profile is usable).
    pub fn has_installer(&self) -> bool {
        !self.installer.is_empty() || self.packages.values().any(|p| !p.installer.is_empty())
    }

    /// Problems a configured profile has, named for the operator.
    pub fn check(&self, family: &str) -> Result<(), String> {
        for p in self
            .required_patterns
            .iter()
            .chain(&self.forbidden_patterns)
            .chain(std::iter::once(&self.upload_confirmed_pattern))
        {
            if let Err(e) = regex::Regex::new(p) {
                return Err(format!(
                    "agent.profiles.{family}: invalid pattern {p:?}: {e}"
                ));
            }
        }
        if let Some(k) = self
            .msi_properties
            .keys()
            .find(|k| k.to_ascii_uppercase().starts_with("MGSFT_"))
        {
            return Err(format!(
                "agent.profiles.{family}.msi_properties: {k} is a key of the Linux rollout response file; \
                 msiexec ignores it silently. The Windows agent takes its beacon from the bundle's \
                 mgssetup.ini or InstallFlexNetInvAgent.mst, or from download_url (DEPLOYSERVERURL)"
            ));
        }
        for (k, p) in &self.packages {
            if p.installer.is_empty() {
                return Err(format!(
                    "agent.profiles.{family}.packages.{k}: no installer"
                ));
            }
        }
        Ok(())
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
    pub fn linux(&self) -> Option<AgentProfile> {
        self.profiles
            .get("linux")
            .filter(|p| p.has_installer())
            .cloned()
            .map(AgentProfile::linux_resolved)
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
        // msiexec runs the first inventory itself (GENERATEINVENTORY=YES).
        if p.inventory_command == linux.inventory_command {
            p.inventory_command = String::new();
        }
        if p.version_command == linux.version_command {
            p.version_command = String::new();
        }
        if p.required_patterns.is_empty() {
            p.required_patterns = vec![INSTALL_SUCCESS.into(), UPLOAD_SUCCESS.into()];
        }
        if p.upload_confirmed_pattern.is_empty() {
            p.upload_confirmed_pattern = UPLOAD_SUCCESS.into();
        }
        Some(p)
    }

    /// The profile for jobs of this OS family, if one is configured.
    pub fn for_os(&self, os: OsFamily) -> Option<AgentProfile> {
        match os {
            OsFamily::Linux => self.linux(),
            OsFamily::Windows => self.windows(),
        }
    }

    /// Whether any OS family has a profile (the agent stages are in the pipeline).
    pub fn any(&self) -> bool {
        OsFamily::ALL.iter().any(|os| self.for_os(*os).is_some())
    }

    pub fn check(&self) -> Result<(), String> {
        for (family, p) in &self.profiles {
            if !matches!(family.as_str(), "linux" | "windows") {
                return Err(format!(
                    "agent.profiles.{family}: the OS families are linux and windows"
                ));
            }
            p.check(family)?;
        }
        Ok(())
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
        assert!(w.msi_properties.is_empty(), "no MGSFT_* keys for msiexec");
        assert!(
            w.inventory_command.is_empty(),
            "GENERATEINVENTORY=YES does it"
        );
        assert_eq!(w.required_patterns, [INSTALL_SUCCESS, UPLOAD_SUCCESS]);
        assert!(agents.for_os(OsFamily::Linux).is_none());
        assert!(agents.any());
    }

    #[test]
    fn a_linux_profile_takes_flexeras_linux_defaults() {
        let mut agents = AgentConfig::default();
        let mut p = AgentProfile::default();
        p.packages.insert(
            "deb".into(),
            PackageConfig {
                installer: "/srv/managesoft_24.0.0_amd64.deb".into(),
                ..PackageConfig::default()
            },
        );
        agents.profiles.insert("linux".into(), p);
        let l = agents.for_os(OsFamily::Linux).unwrap();
        assert_eq!(l.services, ["ndtask", "mgsusageag"]);
        assert_eq!(
            l.inventory_command,
            "/opt/managesoft/bin/ndtrack -t Machine"
        );
        assert_eq!(l.required_patterns, [UPLOAD_SUCCESS]);
        assert!(l.check_server_certificate && l.check_certificate_revocation);
        assert!(!l.forbidden_patterns.iter().any(|f| f.contains("error\\b")));
        assert!(agents.check().is_ok());
    }

    #[test]
    fn mgsft_keys_for_msiexec_and_bad_patterns_are_refused() {
        let mut agents = AgentConfig::default();
        let mut w = AgentProfile {
            installer: "agent.zip".into(),
            ..AgentProfile::default()
        };
        w.msi_properties
            .insert("MGSFT_BOOTSTRAP_UPLOAD".into(), "{upload_url}".into());
        agents.profiles.insert("windows".into(), w);
        assert!(agents
            .check()
            .unwrap_err()
            .starts_with("agent.profiles.windows.msi_properties: MGSFT_BOOTSTRAP_UPLOAD is a key of the Linux rollout response file"));
        let mut agents = AgentConfig::default();
        agents.profiles.insert(
            "linux".into(),
            AgentProfile {
                required_patterns: vec!["(".into()],
                ..AgentProfile::default()
            },
        );
        assert!(agents.check().unwrap_err().contains("invalid pattern"));
        let vm = VmConfig {
            ssh_user: "Root; rm".into(),
            ..VmConfig::default()
        };
        assert!(vm.check().is_err());
        assert!(VmConfig::default().check().is_ok());
        assert_eq!(VmConfig::default().memory_mib, 1024);
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
