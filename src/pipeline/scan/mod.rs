//! The scan proper: upload the image to the cluster, boot a VM, install the
//! license agent, check its logs and the inventory, and tear it all down.

mod agent;
mod logs;
mod report;
mod shell;
mod teardown;
mod upload;
mod vm;

use std::path::PathBuf;
use std::sync::Arc;

use crate::cluster::{ClusterError, ClusterProvider, Clusters};
use crate::config::{AgentProfile, Config, InventoryKind, VmConfig};
use crate::domain::StageName;
use crate::inventory::{FlexeraOne, InventoryClient};

pub use agent::AgentInstallStage;
pub use logs::LogCheckStage;
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
    pub agent: Option<AgentProfile>,
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
            agent: cfg.agent.linux().cloned(),
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
}

/// Scan stages left out of this configuration, and why (shown on job pages).
pub fn omitted(cfg: &Config) -> Vec<(StageName, String)> {
    let mut out = Vec::new();
    if cfg.agent.linux().is_none() {
        let why = "no agent profile is configured ([agent.profiles.linux]); this scan proves only that the image boots and answers SSH";
        out.push((StageName::AgentInstall, why.to_string()));
        out.push((StageName::LogCheck, why.to_string()));
    }
    if cfg.inventory.kind == InventoryKind::None || cfg.agent.linux().is_none() {
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
