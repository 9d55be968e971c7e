//! Hooks for things that follow a job's life (notifications). The runner
//! calls them; they must return quickly and never fail the scan, so an
//! implementation records what to send and delivers it elsewhere.

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::{JobState, StageName, StageState};
use crate::store::Job;

#[async_trait]
pub trait JobEvents: Send + Sync {
    /// A run of the job starts (first claim, or first claim after a retry).
    async fn job_started(&self, job: &Job);
    async fn stage_started(&self, job: &Job, stage: StageName);
    async fn stage_finished(&self, job: &Job, stage: StageName, outcome: &StageEnd<'_>);
    async fn job_finished(&self, job: &Job, state: JobState, error: Option<&str>);
}

/// How a stage run ended.
pub struct StageEnd<'a> {
    pub state: StageState,
    pub duration_ms: i64,
    pub detail: &'a Value,
    pub error: Option<&'a str>,
}
