//! Nutanix Prism Central v3 (being written).

mod config;

use std::path::Path;

use async_trait::async_trait;

pub use config::NutanixConfig;

use super::{
    ClusterError, ClusterImage, ClusterProvider, ClusterVm, Deadlines, Owned, Progress, VmSpec,
};
use crate::domain::JobId;

/// The registry name of the configured cloud `name`.
pub fn provider_name(name: &str) -> String {
    format!("nutanix:{name}")
}

pub struct NutanixProvider {
    name: String,
}

impl NutanixProvider {
    pub fn new(name: &str, _cfg: NutanixConfig) -> Result<Self, ClusterError> {
        Err(ClusterError::Local(format!(
            "nutanix:{name}: the Nutanix provider is not in this build yet"
        )))
    }
}

fn missing(name: &str) -> ClusterError {
    ClusterError::Local(format!("nutanix:{name}: not in this build yet"))
}

#[async_trait]
impl ClusterProvider for NutanixProvider {
    fn name(&self) -> String {
        provider_name(&self.name)
    }
    async fn upload_image(
        &self,
        _: JobId,
        _: &Path,
        _: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        Err(missing(&self.name))
    }
    async fn create_vm(&self, _: &VmSpec) -> Result<ClusterVm, ClusterError> {
        Err(missing(&self.name))
    }
    async fn wait_ready(&self, _: &ClusterVm, _: &Deadlines) -> Result<ClusterVm, ClusterError> {
        Err(missing(&self.name))
    }
    async fn console_tail(&self, _: &ClusterVm, _: usize) -> Option<String> {
        None
    }
    async fn delete_vm(&self, _: &str) -> Result<(), ClusterError> {
        Err(missing(&self.name))
    }
    async fn delete_image(&self, _: &str) -> Result<(), ClusterError> {
        Err(missing(&self.name))
    }
    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        Err(missing(&self.name))
    }
}
