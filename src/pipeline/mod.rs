//! The pipeline: an ordered list of named stages. A stage is a small trait;
//! the worker's runner decides what runs, checkpoints results and tears down.

mod archive;
pub mod checksum;
mod context;
mod convert;
mod extract;
mod fetch;
mod guest_os;
mod hashing;
pub mod http;
pub mod image_format;
mod inspect;
pub mod netpolicy;
pub mod publish;
mod qemu;
pub mod scan;
mod writeback;

use std::sync::Arc;

use async_trait::async_trait;

use crate::cluster::{ClusterError, Clusters};
use crate::config::Config;
use crate::domain::{Millis, StageName};
use crate::store::StoreError;

pub use context::StageCtx;
pub use inspect::{inspect_file, InspectError, InspectReport};

/// The parsers of untrusted bytes, reachable by the property tests in
/// `tests/parsers_prop.rs` (an integration test binary, so it can install its
/// own counting allocator). Not an API.
#[doc(hidden)]
pub mod untrusted {
    pub use super::archive::{
        sniff, unpack, ArchiveError, Candidate, Counters, Job, Limits, Unpacked,
    };
    pub use super::checksum::{parse_sums, SumsEntry};
    pub use super::guest_os::{detect, DetectError, Detection, DiskBytes, Partition};
    pub use super::inspect::{examine, Verdict};
}

/// Stages this build has. Anything else is absent from the pipeline, never faked.
pub const BUILT_STAGES: &[StageName] = &[
    StageName::Fetch,
    StageName::Extract,
    StageName::Checksum,
    StageName::Inspect,
    StageName::Convert,
    StageName::ClusterUpload,
    StageName::VmCreate,
    StageName::AgentInstall,
    StageName::LogCheck,
    StageName::ReportCheck,
    StageName::Teardown,
    StageName::Publish,
];

/// What a finished stage asks of the runner.
#[derive(Debug)]
pub enum StageOutcome {
    Done,
    /// Come back later (a check that takes hours); the job holds no worker meanwhile.
    Park {
        until: Millis,
        reason: String,
    },
}

/// A stage's own error type reports whether trying again can help.
pub trait StageFailure: std::error::Error + Send + Sync + 'static {
    fn is_retryable(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(Box<dyn StageFailure>),
    #[error("cancelled")]
    Cancelled,
    /// The store refused a write (lease lost) or is down.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stage panicked: a bug in vmscan, never retried.
    #[error("internal error in {stage}: {message}")]
    Panicked { stage: StageName, message: String },
}

impl StageError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StageError::Failed(f) => f.is_retryable(),
            StageError::Cancelled | StageError::Panicked { .. } => false,
            StageError::Store(_) => true,
        }
    }
}

impl StageFailure for ClusterError {
    fn is_retryable(&self) -> bool {
        ClusterError::is_retryable(self)
    }
}

impl<E: StageFailure> From<E> for StageError {
    fn from(e: E) -> Self {
        StageError::Failed(Box::new(e))
    }
}

#[async_trait]
pub trait Stage: Send + Sync {
    fn name(&self) -> StageName;

    /// Teardown-type stages run even after a failure or a cancel.
    fn always_runs(&self) -> bool {
        false
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError>;
}

pub type Pipeline = Arc<Vec<Arc<dyn Stage>>>;

/// The image as the latest of `stages` (newest first) left it: each records "path".
pub(crate) fn current_image(ctx: &StageCtx, stages: &[StageName]) -> Option<std::path::PathBuf> {
    stages.iter().find_map(|s| {
        ctx.output_of(*s)?
            .get("path")?
            .as_str()
            .map(std::path::PathBuf::from)
    })
}

/// Builds the configured pipeline, in the configured order, on the
/// configured cluster. Scan stages whose prerequisites are not configured
/// are left out (see [`scan::omitted`]).
pub fn build(cfg: &Config) -> Result<Pipeline, ClusterError> {
    Ok(build_on(cfg, Arc::new(Clusters::from_config(cfg)?)))
}

/// Like [`build`], on given clusters.
pub fn build_on(cfg: &Config, clusters: Arc<Clusters>) -> Pipeline {
    let env = Arc::new(scan::ScanEnv::new(cfg, clusters));
    let omitted: Vec<StageName> = scan::omitted(cfg).into_iter().map(|(s, _)| s).collect();
    let stages = cfg
        .pipeline
        .stages
        .iter()
        .filter(|name| !omitted.contains(name))
        .filter_map(|name| -> Option<Arc<dyn Stage>> {
            match name {
                StageName::Fetch => Some(Arc::new(fetch::FetchStage::new(cfg.fetch.clone()))),
                StageName::Extract => {
                    Some(Arc::new(extract::ExtractStage::new(cfg.extract.clone())))
                }
                StageName::Checksum => {
                    Some(Arc::new(checksum::ChecksumStage::new(cfg.fetch.clone())))
                }
                StageName::Inspect => {
                    Some(Arc::new(inspect::InspectStage::new(cfg.inspect.clone())))
                }
                StageName::Convert => Some(Arc::new(convert::ConvertStage::new(
                    cfg.convert.clone(),
                    cfg.inspect.clone(),
                ))),
                StageName::ClusterUpload => {
                    Some(Arc::new(scan::ClusterUploadStage::new(env.clone())))
                }
                StageName::VmCreate => Some(Arc::new(scan::VmCreateStage::new(env.clone()))),
                StageName::AgentInstall => {
                    Some(Arc::new(scan::AgentInstallStage::new(env.clone())))
                }
                StageName::LogCheck => Some(Arc::new(scan::LogCheckStage::new(env.clone()))),
                StageName::ReportCheck => Some(Arc::new(scan::ReportCheckStage::new(env.clone()))),
                StageName::Teardown => Some(Arc::new(scan::TeardownStage::new(env.clone()))),
                StageName::Publish => Some(Arc::new(publish::PublishStage::new(cfg))),
                StageName::Notify => None,
            }
        })
        .collect();
    Arc::new(stages)
}
