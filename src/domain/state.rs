use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    /// Parked by a stage until `wake_at`; holds no worker and no lease.
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Waiting,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?} (one of queued, running, waiting, succeeded, failed, cancelled)")]
pub struct BadState(String);

impl FromStr for JobState {
    type Err = BadState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| BadState(s.to_string()))
    }
}

/// The state of one stage run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    Running,
    Succeeded,
    Failed,
    /// The stage parked the job; it runs again when the job wakes.
    Parked,
    Cancelled,
    /// The worker running it vanished (crash, lost lease); the stage ran again later.
    Interrupted,
    /// Not run because an earlier stage failed or the job was cancelled.
    Skipped,
}

impl StageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageState::Running => "running",
            StageState::Succeeded => "succeeded",
            StageState::Failed => "failed",
            StageState::Parked => "parked",
            StageState::Cancelled => "cancelled",
            StageState::Interrupted => "interrupted",
            StageState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for StageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StageState {
    type Err = BadState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            StageState::Running,
            StageState::Succeeded,
            StageState::Failed,
            StageState::Parked,
            StageState::Cancelled,
            StageState::Interrupted,
            StageState::Skipped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| BadState(s.to_string()))
    }
}

/// A pipeline stage's name, as stored and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageName {
    Fetch,
    Extract,
    Checksum,
    Inspect,
    Convert,
    ClusterUpload,
    VmCreate,
    AgentInstall,
    LogCheck,
    ReportCheck,
    Teardown,
    Publish,
    Notify,
}

impl StageName {
    pub const ALL: [StageName; 13] = [
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
        StageName::Notify,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            StageName::Fetch => "fetch",
            StageName::Extract => "extract",
            StageName::Checksum => "checksum",
            StageName::Inspect => "inspect",
            StageName::Convert => "convert",
            StageName::ClusterUpload => "cluster-upload",
            StageName::VmCreate => "vm-create",
            StageName::AgentInstall => "agent-install",
            StageName::LogCheck => "log-check",
            StageName::ReportCheck => "report-check",
            StageName::Teardown => "teardown",
            StageName::Publish => "publish",
            StageName::Notify => "notify",
        }
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown stage {0:?}")]
pub struct BadStage(String);

impl FromStr for StageName {
    type Err = BadStage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StageName::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| BadStage(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_text() {
        for s in StageName::ALL {
            assert_eq!(s.as_str().parse::<StageName>().unwrap(), s);
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("bogus".parse::<JobState>().is_err());
    }
}
