//! Configuration: one typed struct, loaded from a TOML file and then from
//! `VMSCAN_…` environment variables (`__` separates sections:
//! `VMSCAN_WORKER__POOL_SIZE=4`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::cluster::nutanix::NutanixConfig;
use crate::cluster::openstack::OpenStackConfig;
use crate::cluster::vsphere::VsphereConfig;
use crate::domain::StageName;

mod auth;
mod notify;
mod publish;
mod scan;
mod watch;
pub use auth::{AuthBackendKind, AuthConfig, CookieSecure, LdapConfig, LdapTls, NewNames};
pub use notify::{EmailConfig, JiraConfig, JiraDeployment, NotifyConfig, SmtpSecurity};
pub use publish::{
    ArtifactStoreKind, ArtifactoryConfig, LocalStoreConfig, NameRule, PublishConfig,
};
pub use scan::{
    default_install_command, installer_is_url, installer_path, AgentConfig, AgentProfile,
    InventoryConfig, InventoryKind, PackageConfig, VmConfig, WinRmConfig, DEB_INSTALL,
    INSTALL_SUCCESS, LINUX_INVENTORY_COMMAND, RPM_INSTALL, UPLOAD_SUCCESS,
};
pub use watch::WatchConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub worker: WorkerConfig,
    pub pipeline: PipelineConfig,
    pub fetch: FetchConfig,
    pub extract: ExtractConfig,
    pub inspect: InspectConfig,
    pub convert: ConvertConfig,
    pub cluster: ClusterConfig,
    pub vm: VmConfig,
    pub agent: AgentConfig,
    pub inventory: InventoryConfig,
    pub notify: NotifyConfig,
    pub publish: PublishConfig,
    pub watch: WatchConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the dashboard and API listen on.
    pub listen: SocketAddr,
    /// Base URL people use to reach the dashboard (links in emails, tickets).
    pub external_url: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// A client must send its request headers within this long (slowloris).
    pub header_read_timeout_secs: u64,
    /// ...and its body within this long.
    pub body_read_timeout_secs: u64,
    /// Live job views (Server-Sent Events) open at once, in all and per user.
    pub max_event_streams: usize,
    pub max_event_streams_per_user: usize,
    /// Submissions one user may make per minute (429 beyond).
    pub max_submissions_per_minute: i64,
    /// Jobs waiting for a worker before submissions are refused (429).
    pub max_queued_jobs: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Work directories, the SQLite file and images live here.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://user:pass@host/db`. Empty: SQLite under data_dir.
    #[serde(serialize_with = "redact_secret")]
    pub database_url: Option<SecretString>,
    pub max_connections: u32,
    /// A failed job's work files (downloads, copies) are kept this long for
    /// debugging, then deleted; other jobs' go when they end. Its guest
    /// credentials go as soon as teardown ran, whatever this says.
    pub keep_failed_work_secs: u64,
    /// The same for jobs that succeeded or were cancelled (0: delete at once).
    pub keep_work_secs: u64,
    /// A job's log keeps this many lines: its first `log_head_lines` and the
    /// newest; the ones between are dropped and counted on the job page.
    pub max_log_lines: i64,
    pub log_head_lines: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs one process runs at once.
    pub pool_size: usize,
    /// How long a claim holds without renewal before the job counts as lost.
    pub lease_secs: u64,
    /// Polling interval when no notification arrives.
    pub poll_interval_ms: u64,
    /// Lease losses before a job is torn down and failed.
    pub max_lease_expiries: i64,
    /// On SIGTERM, how long running stages may take to finish before they are handed back.
    pub shutdown_grace_secs: u64,
    /// How often a running job checks whether it was cancelled.
    pub cancel_check_ms: u64,
    /// How often the janitor removes VMs and images of ended jobs (also at start-up).
    pub janitor_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// The stages, in order. Only built stages may be listed.
    pub stages: Vec<StageName>,
    /// Times a stage failing with a retryable error is tried again.
    pub retry_limit: u32,
    /// First back-off after a retryable failure; doubles each time.
    pub retry_backoff_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    pub connect_timeout_secs: u64,
    /// A download that receives no byte for this long is aborted (and resumed later).
    pub read_timeout_secs: u64,
    /// Largest image accepted, in bytes.
    pub max_bytes: u64,
    /// A download slower than this (bytes/s) over `slow_window_secs` is
    /// dropped and resumed on a later try (0: no minimum).
    pub min_bytes_per_sec: u64,
    pub slow_window_secs: u64,
    /// Before fetching, free disk must hold the download plus this many
    /// more copies of its size (extract's and convert's).
    pub copies_after_fetch: u64,
    /// Directories `file://` URLs and plain paths may read from. Empty: none.
    pub allowed_roots: Vec<PathBuf>,
    /// Destinations never fetched from, checked on the resolved address of every
    /// connection and redirect, on top of a built-in list (link-local, metadata,
    /// multicast, reserved…) that no setting removes. Default: loopback; set a
    /// list without it to fetch from 127.0.0.1 (tests do).
    pub deny_cidrs: Vec<String>,
    /// If this or `allow_hosts` is not empty, only matching destinations are allowed.
    pub allow_cidrs: Vec<String>,
    /// Host names allowed (exact, or `*.example.com`), see `allow_cidrs`.
    pub allow_hosts: Vec<String>,
    pub max_redirects: usize,
    /// HTTP(S) proxy for fetches (`http://proxy:3128`). Unset: no proxy, and the
    /// `HTTP_PROXY`-style environment variables are ignored.
    pub proxy: Option<String>,
    /// SFTP login name when the `sftp://` URL names none (default "root").
    pub sftp_user: Option<String>,
    /// OpenSSH private key (unencrypted) for `sftp://` sources; tried before a password.
    pub sftp_key_file: Option<PathBuf>,
    /// SFTP password (env `VMSCAN_FETCH__SFTP_PASSWORD`); a password in the URL wins.
    #[serde(skip_serializing)]
    pub sftp_password: Option<SecretString>,
    /// Allowed SFTP host key fingerprints (`SHA256:…`), checked before logging in.
    /// Empty: trust on first use (logged), and then no password is ever sent.
    pub sftp_host_keys: Vec<String>,
    /// Hosts (names as written in the URL, or CIDRs) that may receive the
    /// configured `sftp_key_file` and `sftp_password`. Empty: none.
    pub sftp_credential_hosts: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// Most bytes an archive may unpack to (all entries together).
    pub max_total_bytes: u64,
    /// Most bytes out per byte in; more is a decompression bomb. Enforced once 64 MiB came out.
    pub max_expansion_ratio: u64,
    /// Most entries an archive may hold (a tar of a million empty files is refused).
    pub max_entries: u64,
    /// Free disk always left in the data directory while extracting.
    pub min_free_bytes: u64,
    /// Several disk images in one archive: fail (listing them), or take the largest or the first.
    pub candidate_rule: CandidateRule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateRule {
    Fail,
    Largest,
    First,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// The qemu-img binary (cross-checks the header reading).
    pub qemu_img: PathBuf,
    /// qemu-img info is killed after this long.
    pub timeout_secs: u64,
    /// CPU seconds and address space qemu-img info may use on an untrusted file.
    pub qemu_cpu_secs: u64,
    pub qemu_memory_bytes: u64,
    /// Largest virtual disk size accepted.
    pub max_virtual_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvertConfig {
    pub qemu_img: PathBuf,
    /// The disk format the target cluster wants (qcow2 for Nutanix and local QEMU).
    pub target_format: TargetFormat,
    /// A conversion still running after this long is killed.
    pub timeout_secs: u64,
    /// Parallel coroutines for qemu-img convert (-m), with out-of-order writes (-W).
    pub coroutines: u32,
    /// Address space qemu-img convert/check may use on an untrusted image
    /// (its CPU time is capped at `timeout_secs`).
    pub qemu_memory_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFormat {
    Qcow2,
    Raw,
}

impl TargetFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetFormat::Qcow2 => "qcow2",
            TargetFormat::Raw => "raw",
        }
    }
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            max_total_bytes: 256 * 1024 * 1024 * 1024,
            max_expansion_ratio: 1000,
            max_entries: 10_000,
            min_free_bytes: 1024 * 1024 * 1024,
            candidate_rule: CandidateRule::Fail,
        }
    }
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            qemu_img: PathBuf::from("qemu-img"),
            timeout_secs: 60,
            qemu_cpu_secs: 30,
            qemu_memory_bytes: 1024 * 1024 * 1024,
            max_virtual_bytes: 4 * 1024 * 1024 * 1024 * 1024,
        }
    }
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            qemu_img: PathBuf::from("qemu-img"),
            target_format: TargetFormat::Qcow2,
            timeout_secs: 4 * 3600,
            coroutines: 8,
            qemu_memory_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            external_url: None,
            max_body_bytes: 64 * 1024,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_event_streams: 256,
            max_event_streams_per_user: 16,
            max_submissions_per_minute: 30,
            max_queued_jobs: 1000,
        }
    }
}

impl StorageConfig {
    /// How long an ended job's work files are kept.
    pub fn keep_secs(&self, state: crate::domain::JobState) -> u64 {
        if state == crate::domain::JobState::Failed {
            self.keep_failed_work_secs
        } else {
            self.keep_work_secs
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            database_url: None,
            max_connections: 10,
            keep_failed_work_secs: 24 * 3600,
            keep_work_secs: 0,
            max_log_lines: 20_000,
            log_head_lines: 2_000,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            pool_size: 2,
            lease_secs: 30,
            poll_interval_ms: 1000,
            max_lease_expiries: 3,
            shutdown_grace_secs: 30,
            cancel_check_ms: 1000,
            janitor_secs: 300,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stages: crate::pipeline::BUILT_STAGES.to_vec(),
            retry_limit: 3,
            retry_backoff_secs: 30,
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout_secs: 15,
            read_timeout_secs: 60,
            max_bytes: 256 * 1024 * 1024 * 1024,
            min_bytes_per_sec: 16 * 1024,
            slow_window_secs: 300,
            copies_after_fetch: 2,
            allowed_roots: Vec::new(),
            // Loopback; the rest of the deny list is built in (pipeline::netpolicy).
            deny_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            allow_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            max_redirects: 10,
            proxy: None,
            sftp_user: None,
            sftp_key_file: None,
            sftp_password: None,
            sftp_host_keys: Vec::new(),
            sftp_credential_hosts: Vec::new(),
        }
    }
}

/// Where scan VMs run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster a job runs on when it names none ("qemu-local",
    /// "nutanix:NAME", "openstack:NAME", "vsphere:NAME"). Empty: the local QEMU cluster if
    /// enabled, else the first configured.
    pub default: Option<String>,
    pub qemu: QemuConfig,
    /// Prism Centrals, by a name of your choosing (`[cluster.nutanix.pc1]`).
    pub nutanix: BTreeMap<String, NutanixConfig>,
    /// OpenStack clouds, by a name of your choosing (`[cluster.openstack.east]`).
    pub openstack: BTreeMap<String, OpenStackConfig>,
    /// vCenters, by a name of your choosing (`[cluster.vsphere.vc1]`).
    pub vsphere: BTreeMap<String, VsphereConfig>,
}

/// The local QEMU "cluster": VMs are child processes of vmscan.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    /// Offer the local QEMU cluster ("qemu-local").
    pub enabled: bool,
    pub qemu_system: PathBuf,
    pub qemu_img: PathBuf,
    /// The image repository. Empty: `<data_dir>/images`.
    pub image_dir: Option<PathBuf>,
    /// Where each VM's state lives. Empty: `<data_dir>/vms`.
    pub vm_dir: Option<PathBuf>,
    /// "auto": KVM only if a probe guest runs under it; "kvm" or "tcg" forces one.
    pub accel: QemuAccel,
    /// How long the KVM probe guest may take to print on its serial port.
    pub kvm_probe_secs: u64,
    /// QEMU machine type.
    pub machine: String,
    /// CPUs and memory when the VM spec asks for 0.
    pub cpus: u32,
    pub memory_mib: u32,
    /// VMs running at once; a further create waits for a slot.
    pub max_vms: usize,
    /// How long a create waits for a free slot before failing (retryably).
    pub slot_wait_secs: u64,
    /// On delete, press the ACPI power button and wait for the guest to shut
    /// down first. Off (the default): a scan VM is thrown away, so QEMU is
    /// told to quit at once (its disk is a throwaway overlay anyway).
    pub clean_shutdown: bool,
    /// On delete: how long the guest may take to power off after the ACPI button.
    pub powerdown_secs: u64,
    /// Then how long QEMU may take to quit (QMP `quit`) before it is killed.
    pub quit_secs: u64,
    /// SeaBIOS prints on the serial console too ("No bootable device" shows on the job page).
    pub bios_serial_console: bool,
    /// Extra arguments appended to the qemu-system command line.
    pub extra_args: Vec<String>,
    /// The unprivileged user QEMU runs as when vmscan runs as root (unset:
    /// `nobody`; `""`: vmscan's own user). Needs to read the image repository.
    pub run_as: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    Auto,
    Kvm,
    Tcg,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            enabled: true,
            qemu_system: PathBuf::from("qemu-system-x86_64"),
            qemu_img: PathBuf::from("qemu-img"),
            image_dir: None,
            vm_dir: None,
            accel: QemuAccel::Auto,
            kvm_probe_secs: 5,
            machine: "pc".into(),
            cpus: 1,
            memory_mib: 512,
            max_vms: 2,
            slot_wait_secs: 60,
            clean_shutdown: false,
            powerdown_secs: 10,
            quit_secs: 3,
            bios_serial_console: true,
            extra_args: Vec::new(),
            run_as: None,
        }
    }
}

fn redact_secret<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => s.serialize_some(&redact_url(secret.expose_secret())),
        None => s.serialize_none(),
    }
}

pub use crate::domain::redact_url;

/// `VMSCAN_…` variables that are not config keys.
const NOT_CONFIG_VARS: &[&str] = &["log", "config", "static_dir", "test_pg_url"];

impl Config {
    /// Defaults, then the file (if given), then `VMSCAN_…` variables.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file(p));
        }
        // VMSCAN_LOG, VMSCAN_CONFIG … are read elsewhere, not config keys.
        let env = Env::prefixed("VMSCAN_")
            .filter(|k| !NOT_CONFIG_VARS.contains(&k.as_str().to_ascii_lowercase().as_str()))
            .split("__");
        fig = fig.merge(env);
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.worker.lease_secs < 3 {
            return bad(format!(
                "worker.lease_secs = {} is too short (at least 3)",
                self.worker.lease_secs
            ));
        }
        if self.watch.lease_secs < 3 || self.watch.poll_ms < 10 {
            return bad("watch.lease_secs must be at least 3 and watch.poll_ms at least 10".into());
        }
        if self.watch.min_interval_secs == 0
            || self.watch.default_interval_secs < self.watch.min_interval_secs
        {
            return bad(format!(
                "watch.min_interval_secs must be at least 1 and watch.default_interval_secs ({}) at least that ({})",
                self.watch.default_interval_secs, self.watch.min_interval_secs
            ));
        }
        if self.worker.max_lease_expiries < 1 {
            return bad("worker.max_lease_expiries must be at least 1".into());
        }
        for s in &self.pipeline.stages {
            if !crate::pipeline::BUILT_STAGES.contains(s) {
                return bad(format!(
                    "pipeline.stages lists {s:?}, which this build does not have (built: {})",
                    crate::pipeline::BUILT_STAGES
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if self.extract.max_expansion_ratio < 1 {
            return bad("extract.max_expansion_ratio must be at least 1".into());
        }
        if !(1..=16).contains(&self.convert.coroutines) {
            return bad(format!(
                "convert.coroutines = {} must be between 1 and 16 (qemu-img's limit)",
                self.convert.coroutines
            ));
        }
        if self.pipeline.stages.contains(&StageName::Publish) {
            self.publish.check().map_err(ConfigError::Invalid)?;
        }
        self.notify.validate()?;
        self.auth.validate()?;
        self.agent.check().map_err(ConfigError::Invalid)?;
        self.vm.check().map_err(ConfigError::Invalid)?;
        for name in self
            .cluster
            .nutanix
            .keys()
            .chain(self.cluster.openstack.keys())
            .chain(self.cluster.vsphere.keys())
        {
            let ok = !name.is_empty()
                && name.len() <= 40
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok {
                return bad(format!(
                    "cluster name {name:?}: use lowercase letters, digits, '-' and '_' (it is part of environment variable names)"
                ));
            }
        }
        for c in self.fetch.deny_cidrs.iter().chain(&self.fetch.allow_cidrs) {
            if c.parse::<ipnet::IpNet>().is_err() {
                return bad(format!("fetch: {c:?} is not a CIDR such as 10.0.0.0/8"));
            }
        }
        if let Some(p) = &self.fetch.proxy {
            let ok = url::Url::parse(p)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return bad(format!(
                    "fetch.proxy: {:?} is not a proxy URL such as http://proxy:3128",
                    redact_url(p)
                ));
            }
        }
        Ok(())
    }

    /// The database URL in effect (SQLite under the data directory by default).
    pub fn database_url(&self) -> String {
        match &self.storage.database_url {
            Some(u) if !u.expose_secret().trim().is_empty() => u.expose_secret().trim().to_string(),
            _ => format!(
                "sqlite:{}",
                self.storage.data_dir.join("vmscan.db").display()
            ),
        }
    }

    /// The effective config as JSON, secrets redacted (`config check`).
    pub fn to_redacted_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://vm:hunter2@db.example/vmscan"),
            "postgres://***:***@db.example/vmscan"
        );
        let mut c = Config::default();
        c.storage.database_url = Some(SecretString::from("postgres://vm:hunter2@db/x"));
        assert!(!c.to_redacted_json().contains("hunter2"));
        assert_eq!(c.database_url(), "postgres://vm:hunter2@db/x");
    }

    #[test]
    fn cluster_secrets_come_from_the_environment_and_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[cluster.nutanix.envtest]\nurl = \"https://pc:9440\"\nusername = \"svc\"\n",
        )
        .unwrap();
        // Only this test uses this variable name.
        std::env::set_var("VMSCAN_CLUSTER__NUTANIX__ENVTEST__PASSWORD", "s3cret-pw");
        let c = Config::load(Some(&file)).unwrap();
        std::env::remove_var("VMSCAN_CLUSTER__NUTANIX__ENVTEST__PASSWORD");
        let pc = &c.cluster.nutanix["envtest"];
        assert_eq!(pc.password.as_ref().unwrap().expose_secret(), "s3cret-pw");
        assert!(!c.to_redacted_json().contains("s3cret-pw"));
        assert!(!format!("{pc:?}").contains("s3cret-pw"));
    }

    #[test]
    fn the_example_config_loads_as_a_whole() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vmscan.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.cluster.default, None);
        assert!(c.cluster.qemu.enabled);
    }

    #[test]
    fn the_vsphere_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vsphere.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.cluster.default.as_deref(), Some("vsphere:vc1"));
        let vc = &c.cluster.vsphere["vc1"];
        assert_eq!(
            (vc.datacenter.as_str(), vc.network.as_str()),
            ("DC1", "scan-net")
        );
        assert!(!c.cluster.qemu.enabled);
    }

    #[test]
    fn defaults_to_sqlite_under_the_data_dir() {
        let c = Config::default();
        assert_eq!(c.database_url(), "sqlite:./data/vmscan.db");
        c.validate().unwrap();
    }
}
