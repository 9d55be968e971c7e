//! The scan proper: upload the image to the cluster, boot a VM, install the
//! license agent, check its logs and the inventory, and tear it all down.

mod agent;
mod bundle;
mod dhcp;
mod logs;
mod os_release;
mod report;
mod shell;
mod teardown;
mod upload;
mod vm;

use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::{ClusterError, ClusterProvider, Clusters};
use crate::config::{AgentProfile, Config, InventoryKind, VmConfig};
use crate::domain::{OsFamily, StageName};
use crate::inventory::{FlexeraOne, InventoryClient};

pub use agent::AgentInstallStage;
pub use bundle::{Bundle, BundleError};
pub use logs::LogCheckStage;
pub use os_release::{choose_package, ChosenPackage, NoPackage, OsRelease};
pub use report::ReportCheckStage;
pub use teardown::{teardown_job, TeardownStage};
pub use upload::ClusterUploadStage;
pub use vm::VmCreateStage;

use super::StageCtx;

/// What the scan stages share: the cluster, the inventory, the settings.
pub struct ScanEnv {
    pub clusters: Arc<Clusters>,
    pub inventory: Option<Arc<dyn InventoryClient>>,
    pub vm: VmConfig,
    /// The Linux agent profile.
    pub agent: Option<AgentProfile>,
    pub windows_agent: Option<AgentProfile>,
    pub inventory_interval_secs: u64,
    pub inventory_deadline_secs: u64,
}

impl ScanEnv {
    pub fn new(cfg: &Config, clusters: Arc<Clusters>) -> Self {
        let inventory: Option<Arc<dyn InventoryClient>> = match cfg.inventory.kind {
            InventoryKind::None => None,
            InventoryKind::FlexeraOne => {
                Some(Arc::new(FlexeraOne::new(cfg.inventory.flexera_one.clone())))
            }
        };
        ScanEnv {
            clusters,
            inventory,
            vm: cfg.vm.clone(),
            agent: cfg.agent.linux(),
            windows_agent: cfg.agent.windows(),
            inventory_interval_secs: cfg.inventory.check_interval_secs,
            inventory_deadline_secs: cfg.inventory.deadline_secs,
        }
    }
}

impl ScanEnv {
    /// The cluster the job runs on (chosen on submit, else the default).
    pub fn provider(&self, ctx: &StageCtx) -> Result<Arc<dyn ClusterProvider>, ClusterError> {
        self.clusters.for_job(&ctx.job.options)
    }

    /// The agent profile for guests of this OS family.
    pub fn agent_for(&self, os: OsFamily) -> Option<&AgentProfile> {
        match os {
            OsFamily::Linux => self.agent.as_ref(),
            OsFamily::Windows => self.windows_agent.as_ref(),
        }
    }
}

/// Scan stages left out of this configuration, and why (shown on job pages).
pub fn omitted(cfg: &Config) -> Vec<(StageName, String)> {
    let mut out = Vec::new();
    // Per configuration, not per job: with any profile the stages stay in,
    // and a job whose OS has none fails at agent-install, saying so.
    if !cfg.agent.any() {
        let why = "no agent profile is configured ([agent.profiles.linux] or [agent.profiles.windows]); this scan proves only that the image boots and accepts a login";
        out.push((StageName::AgentInstall, why.to_string()));
        out.push((StageName::LogCheck, why.to_string()));
    }
    if cfg.inventory.kind == InventoryKind::None || !cfg.agent.any() {
        out.push((
            StageName::ReportCheck,
            "no inventory system is configured ([inventory] kind)".to_string(),
        ));
    }
    out
}

/// The image file the scan uses: converted, else extracted, else fetched.
pub fn image_path(ctx: &StageCtx) -> Option<PathBuf> {
    super::current_image(
        ctx,
        &[StageName::Convert, StageName::Extract, StageName::Fetch],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(cfg: &Config) -> Vec<StageName> {
        omitted(cfg).into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn agent_stages_stay_while_any_os_family_has_a_profile() {
        let mut cfg = Config::default();
        assert!(stages(&cfg).contains(&StageName::AgentInstall));
        cfg.agent.profiles.insert(
            "windows".into(),
            AgentProfile {
                installer: "/srv/agent.msi".into(),
                ..AgentProfile::default()
            },
        );
        assert!(!stages(&cfg).contains(&StageName::AgentInstall));
        assert!(!stages(&cfg).contains(&StageName::LogCheck));
        // Report-check still needs an inventory system.
        assert!(stages(&cfg).contains(&StageName::ReportCheck));
    }
}
