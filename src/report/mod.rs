//! The scan report: what a finished job proves about its image, as one typed
//! value ([`ScanReport`]) rendered as printable HTML, JSON (documented by
//! `static/scan-report.schema.json`) and JUnit XML.

mod from_job;
mod html;
mod junit;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use from_job::{build, load, Ending, NotFinished, ReportInput};
pub use html::{render_html, REPORT_CSP};
pub use junit::render_junit;

/// Bumped when a field changes meaning or goes away (adding one does not).
pub const REPORT_FORMAT: u32 = 1;

/// Where the schema is served (`/static` is public).
pub const SCHEMA_PATH: &str = "/static/scan-report.schema.json";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot render the scan report: {0}")]
    Render(String),
}

/// Everything a report states, in the order the HTML shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScanReport {
    pub report_format: u32,
    /// The schema this document follows.
    pub schema: String,
    pub generated_at: String,
    /// The vmscan that wrote this report and the configuration it ran with.
    pub generator: Generator,
    pub verdict: Verdict,
    pub job: JobFacts,
    pub image: ImageFacts,
    pub cluster: Option<String>,
    pub guest_os: GuestOs,
    pub stages: Vec<StageFacts>,
    /// Absent when the agent stages are not configured or never ran.
    pub agent: Option<AgentEvidence>,
    /// Absent when no inventory system is configured or it was never asked.
    pub inventory: Option<InventoryEvidence>,
    pub teardown: TeardownEvidence,
    /// Where the image was published, when it was.
    pub publication: Option<Publication>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Generator {
    pub vmscan_version: String,
    /// sha256 over the effective configuration without its secrets.
    pub config_sha256: String,
}

impl Generator {
    pub fn of(cfg: &crate::config::Config) -> Self {
        Generator {
            vmscan_version: env!("CARGO_PKG_VERSION").to_string(),
            config_sha256: config_digest(cfg),
        }
    }
}

/// sha256 of the configuration as canonical JSON (object keys sorted),
/// serialised the way `vmscan config check` shows it: secrets are left out
/// or replaced by `***`, so the digest says whether two runs had the same
/// settings without revealing a credential.
pub fn config_digest(cfg: &crate::config::Config) -> String {
    let value = serde_json::to_value(cfg).unwrap_or_default();
    hex::encode(Sha256::digest(
        serde_json::to_vec(&value).unwrap_or_default(),
    ))
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// One sentence for people.
    pub summary: String,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobFacts {
    pub id: String,
    /// The job's state when the report was written.
    pub state: String,
    pub requested_by: Option<String>,
    pub requester_name: Option<String>,
    pub requester_email: Option<String>,
    pub requested_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_secs: Option<f64>,
    pub note: Option<String>,
    pub batch_id: Option<String>,
    /// Paths on the vmscan that ran the job.
    pub page: String,
    pub api: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageFacts {
    /// With user-info and secret-looking parameters replaced by `***`.
    pub source_url: String,
    pub file_name: Option<String>,
    /// The disk format read from the image's headers.
    pub format: Option<String>,
    pub virtual_size_bytes: Option<u64>,
    /// The downloaded file.
    pub file_size_bytes: Option<u64>,
    /// The disk image inside it, when the download was an archive.
    pub disk_file_size_bytes: Option<u64>,
    /// sha256 of the downloaded file.
    pub sha256: Option<String>,
    pub checksum: ChecksumEvidence,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMethod {
    /// The submitter gave the digest.
    GivenDigest,
    /// A SUMS file (`file:https://…/SHA256SUMS`) named it.
    SumsFile,
    /// No checksum was given: the image was not verified.
    NotGiven,
    /// The checksum stage did not finish.
    NotChecked,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChecksumEvidence {
    pub verified: bool,
    pub method: ChecksumMethod,
    pub algorithm: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
    /// "given with the job", "from https://…/SHA256SUMS" (redacted).
    pub source: Option<String>,
    /// The file the digest is about (the download or the image inside it).
    pub verified_file: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GuestOs {
    /// linux | windows | auto (not known yet)
    pub family: String,
    /// chosen | detected | assumed | pending
    pub family_source: String,
    /// What the disk showed ("partition 1 (Linux filesystem) holds ext4").
    pub disk_evidence: Option<String>,
    /// What the booted guest said (os-release PRETTY_NAME, Windows caption).
    pub name: Option<String>,
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    Passed,
    Failed,
    Cancelled,
    Interrupted,
    /// Not run: an earlier stage failed or the job was cancelled.
    Skipped,
    /// Not part of this configuration (see `note`).
    LeftOut,
    Running,
    Waiting,
    Pending,
}

impl StageOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            StageOutcome::Passed => "passed",
            StageOutcome::Failed => "failed",
            StageOutcome::Cancelled => "cancelled",
            StageOutcome::Interrupted => "interrupted",
            StageOutcome::Skipped => "skipped",
            StageOutcome::LeftOut => "left out",
            StageOutcome::Running => "running",
            StageOutcome::Waiting => "waiting",
            StageOutcome::Pending => "pending",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageFacts {
    pub name: String,
    pub outcome: StageOutcome,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_secs: Option<f64>,
    /// Runs of this stage in the job's current run (retries, waits).
    pub attempts: u32,
    pub error: Option<String>,
    /// Why a stage was left out or skipped; what it established.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentEvidence {
    /// The package entry chosen (`deb`, `rpm`, an os-release ID, or the profile's installer).
    pub package: Option<String>,
    pub package_reason: Option<String>,
    pub installer: Option<String>,
    /// The installed agent's version as the guest's package manager reports it.
    pub version: Option<String>,
    /// Why no version is known, when none is.
    pub version_note: Option<String>,
    pub install_exit_status: Option<i64>,
    pub services: Vec<ServiceState>,
    pub service_manager: Option<String>,
    pub inventory_command: Option<String>,
    pub inventory_exit_status: Option<i64>,
    /// Log lines that matched the required patterns (log-check).
    pub matched_log_lines: Vec<LogMatch>,
    /// The agent's logs show its inventory upload.
    pub upload_confirmed: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceState {
    pub name: String,
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogMatch {
    pub pattern: String,
    pub file: String,
    pub line: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InventoryEvidence {
    pub system: Option<String>,
    /// The computer name asked for (the guest's hostname).
    pub hostname: Option<String>,
    pub found: bool,
    pub found_at: Option<String>,
    pub first_check_at: Option<String>,
    pub checks: u32,
    /// The inventory rows that list the guest, as the system returned them.
    pub rows: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TeardownEvidence {
    pub outcome: StageOutcome,
    pub finished_at: Option<String>,
    /// Every VM and image the job created, and whether it is gone.
    pub resources: Vec<ResourceFacts>,
    /// Teardown ran and every resource is deleted.
    pub all_removed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceFacts {
    pub kind: String,
    pub provider: String,
    pub id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub deleted_at: Option<String>,
    /// deleted | present
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Publication {
    pub name: String,
    pub version: String,
    pub store: Option<String>,
    pub repo: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub format: Option<String>,
}

/// `{dir of image_path}/{name}-{version}.scan-report.{ext}`: the report
/// lies next to the image it is about.
pub fn published_path(image_path: &str, name: &str, version: &str, ext: &str) -> String {
    let file = format!("{name}-{version}.scan-report.{ext}");
    match image_path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file}"),
        None => file,
    }
}

/// The published report's URL from the image's: same directory.
pub fn published_url(image_url: &str, name: &str, version: &str, ext: &str) -> String {
    published_path(image_url, name, version, ext)
}

/// Renders the report as pretty JSON.
pub fn render_json(r: &ScanReport) -> String {
    serde_json::to_string_pretty(r).expect("a report serialises")
}

#[cfg(test)]
mod tests;
