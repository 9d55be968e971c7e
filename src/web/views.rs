//! What the API returns and the pages show, built from store records.

use serde::Serialize;
use serde_json::Value;

use super::stage_text;
use crate::domain::{
    fmt_bytes, fmt_duration_ms, fmt_millis, now_millis, JobState, StageName, StageState,
};
use crate::store::{Job, LogLine, Resource, StageRun};

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub short_id: String,
    pub url: String,
    pub state: JobState,
    pub error: Option<String>,
    pub current_stage: Option<String>,
    pub checksum: Option<String>,
    pub requested_by: Option<String>,
    pub email: Option<String>,
    pub note: Option<String>,
    pub attempt: i64,
    pub cancel_requested: bool,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Wall time from creation to finish (or to now, while unfinished).
    pub duration_ms: i64,
    pub wake_at: Option<String>,
    pub wait_reason: Option<String>,
    /// One line for people: "running: fetch", "waiting — next check at …".
    pub status_text: String,
    pub stages: Vec<StageView>,
    pub runs: Vec<RunView>,
    pub resources: Vec<Resource>,
    /// Stages this configuration leaves out, and why.
    pub notes: Vec<String>,
    pub links: Links,
    /// The requester's name, when given with the submission.
    pub requester_name: Option<String>,
    /// Lines the per-job log cap dropped between the first and the newest.
    pub log_dropped: i64,
    /// The Jira ticket that logs this job.
    pub jira: Option<crate::store::notify::JiraIssue>,
    /// Emails and Jira updates about this job, and how their delivery went.
    pub notifications: Vec<NotificationView>,
    /// What the submitter chose: target cluster, OS family, image name, version…
    pub options: Value,
    /// The watch that queued this scan, if one did.
    pub watch: Option<String>,
    pub cluster: Option<String>,
    /// The family the job scans as: `linux` or `windows`; `auto` until the
    /// inspect stage has looked at the image.
    pub os: String,
    /// chosen | detected | assumed (auto, nothing recognised) | pending
    pub os_source: &'static str,
    /// What the inspect stage saw on the disk.
    pub os_evidence: Option<String>,
    /// The batch (manifest) the job came in, and its key there.
    pub batch_id: Option<String>,
    pub batch_key: Option<String>,
    /// The disk: the size asked for, and what convert made of the image's.
    pub disk: Option<String>,
    /// Every stage run of the current run on one time axis.
    pub gantt: Vec<GanttBar>,
    /// The span the timeline covers, for its scale ("3m 12s").
    pub gantt_span: String,
    /// The timeline drawn (SVG).
    #[serde(skip)]
    pub gantt_svg: String,
    /// The newest serial console tail a stage recorded.
    pub console: Option<String>,
    /// The image name and version the scan publishes as (when chosen).
    pub image_name: Option<String>,
    pub image_version: Option<String>,
}

/// "grown from 2.0 GiB (…) to 20.0 GiB (…)": the requested size and both
/// sizes of the image once convert has run.
fn disk_text(job: &Job, current: &[&StageRun]) -> Option<String> {
    let both = |b: u64| format!("{} ({b} bytes)", fmt_bytes(b));
    let want = job.options.get("size").and_then(Value::as_u64);
    let convert = current
        .iter()
        .rev()
        .find(|r| r.stage == StageName::Convert.as_str() && r.state == StageState::Succeeded);
    let size = |k: &str| {
        convert
            .and_then(|r| r.detail.get(k))
            .and_then(Value::as_u64)
    };
    match (size("source_virtual_size"), size("virtual_size"), want) {
        (Some(from), Some(to), _) if from != to => {
            Some(format!("grown from {} to {}", both(from), both(to)))
        }
        (_, Some(to), Some(_)) => Some(format!("{} (already the requested size)", both(to))),
        (_, _, Some(w)) => Some(format!("{} requested", both(w))),
        _ => None,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NotificationView {
    /// email | jira
    pub channel: String,
    pub kind: String,
    /// pending | sending | sent | failed | skipped
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
}

impl From<&crate::store::notify::Notification> for NotificationView {
    fn from(n: &crate::store::notify::Notification) -> Self {
        NotificationView {
            channel: n.channel.clone(),
            kind: n.kind.clone(),
            state: n.state.clone(),
            attempts: n.attempts,
            last_error: n.last_error.clone(),
            created_at: fmt_millis(n.created_at),
            sent_at: n.sent_at.map(fmt_millis),
            next_attempt_at: (n.state == "pending").then(|| fmt_millis(n.next_attempt_at)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Links {
    pub api: String,
    pub page: String,
    pub log: String,
    /// The whole log as a text file.
    pub log_file: String,
    /// The scan report (HTML, JSON, JUnit XML) once the job has ended.
    pub report_html: String,
    pub report_json: String,
    pub report_xml: String,
    /// The report's copy next to the image in the artifact store, once published.
    pub published_report: Option<String>,
    pub events: String,
}

/// One pipeline stage, as of the job's current run.
#[derive(Clone, Debug, Serialize)]
pub struct StageView {
    pub name: String,
    /// pending | running | succeeded | failed | parked | cancelled | interrupted | skipped
    pub state: String,
    pub attempt: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub duration: Option<String>,
    pub error: Option<String>,
    pub detail: Value,
    /// 0..=1 when the stage reports progress.
    pub progress: Option<f64>,
    /// Key facts from the detail, formatted for people.
    pub facts: Vec<(String, String)>,
    /// The VM's serial console tail, when the stage recorded one.
    pub console: Option<String>,
    /// Log lines that proved something (log-check), as "file: line".
    pub excerpts: Vec<String>,
    /// What the stage did, in one sentence for people.
    pub summary: Option<String>,
    /// A parked stage: when it checks again (epoch ms, for the countdown).
    pub wake_at_ms: Option<i64>,
}

/// One bar of the job page's timeline: where a stage run sits on the job's
/// time axis, in percent of the span from the first start to the last end.
#[derive(Clone, Debug, Serialize)]
pub struct GanttBar {
    pub stage: String,
    pub attempt: i64,
    pub state: String,
    pub left_pct: f64,
    pub width_pct: f64,
    pub label: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    pub stage: String,
    pub attempt: i64,
    pub state: StageState,
    pub started_at: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub short_id: String,
    pub url: String,
    pub state: JobState,
    pub current_stage: Option<String>,
    pub error: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: String,
    pub age: String,
    pub duration_ms: i64,
    pub duration: String,
    pub status_text: String,
    /// The name and version it publishes as (chosen, or from the file name).
    pub image_name: Option<String>,
    pub image_version: Option<String>,
    pub cluster: Option<String>,
    /// The guest OS chosen at submission (`auto` until inspect looks).
    pub os: String,
    /// Where it is in the pipeline: stages done of all, 0..=1.
    pub progress: f64,
    /// The stage column: the running stage, or where a failed job stopped.
    pub stage_text: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogView {
    pub id: i64,
    pub ts: String,
    pub stage: Option<String>,
    pub level: String,
    pub message: String,
}

impl From<&LogLine> for LogView {
    fn from(l: &LogLine) -> Self {
        LogView {
            id: l.id,
            ts: fmt_millis(l.ts),
            stage: l.stage.clone(),
            level: l.level.as_str().to_string(),
            message: l.message.clone(),
        }
    }
}

fn redact(url: &str) -> String {
    crate::domain::redact_url(url)
}

fn job_duration(job: &Job) -> i64 {
    job.finished_at.unwrap_or_else(now_millis) - job.created_at
}

pub fn status_text(job: &Job) -> String {
    match job.state {
        JobState::Running => match &job.current_stage {
            Some(s) if job.cancel_requested => format!("cancelling (was running {s})"),
            Some(s) => format!("running: {s}"),
            None => "running".into(),
        },
        JobState::Waiting => format!(
            "waiting — next check at {}{}",
            job.wake_at.map(fmt_millis).unwrap_or_default(),
            job.wait_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        JobState::Queued if job.attempt > 0 => "queued (resuming)".into(),
        JobState::Queued => "queued".into(),
        JobState::Succeeded => "succeeded".into(),
        JobState::Failed => format!(
            "failed: {}",
            job.error.as_deref().unwrap_or("unknown error")
        ),
        JobState::Cancelled => "cancelled".into(),
    }
}

/// The image name a scan publishes under when none was chosen: the
/// publish stage's rule on the source's file name.
fn name_from_url(url: &str) -> Option<String> {
    let file = url.parse::<crate::domain::SourceUrl>().ok()?.file_name();
    (!file.is_empty()).then(|| crate::artifacts::name_from_file(&file))
}

pub fn summary(job: &Job, pipeline: &[StageName]) -> JobSummary {
    let d = job_duration(job);
    let at = job
        .current_stage
        .as_deref()
        .and_then(|c| pipeline.iter().position(|s| s.as_str() == c));
    let progress = match (job.state.is_final(), at) {
        (true, _) => 1.0,
        (false, Some(i)) => i as f64 / pipeline.len().max(1) as f64,
        (false, None) => 0.0,
    };
    let stage_text = match (&job.current_stage, job.state) {
        (Some(s), _) => s.clone(),
        (None, JobState::Failed) => job
            .error
            .as_deref()
            .and_then(|e| e.split_once(" failed: "))
            .filter(|(s, _)| s.parse::<StageName>().is_ok())
            .map(|(s, _)| format!("{s} failed"))
            .unwrap_or_else(|| "failed".into()),
        (None, s) => s.as_str().to_string(),
    };
    JobSummary {
        stage_text,
        image_name: opt_str(&job.options, "name").or_else(|| name_from_url(&job.url)),
        image_version: opt_str(&job.options, "version"),
        cluster: opt_str(&job.options, "cluster"),
        os: opt_str(&job.options, "os").unwrap_or_else(|| "auto".into()),
        progress,
        id: job.id.to_string(),
        short_id: job.id.short(),
        url: redact(&job.url),
        state: job.state,
        current_stage: job.current_stage.clone(),
        error: job.error.clone(),
        requested_by: job.requested_by.clone(),
        created_at: fmt_millis(job.created_at),
        age: fmt_duration_ms(now_millis() - job.created_at),
        duration_ms: d,
        duration: fmt_duration_ms(d),
        status_text: status_text(job),
    }
}

/// Human facts drawn from well-known detail keys.
fn facts(detail: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let num = |k: &str| detail.get(k).and_then(Value::as_u64);
    if let Some(b) = num("bytes") {
        let total = num("total_bytes")
            .map(|t| format!(" of {}", fmt_bytes(t)))
            .unwrap_or_default();
        out.push(("bytes".into(), format!("{}{total}", fmt_bytes(b))));
    }
    if let Some(r) = num("rate_bps").filter(|r| *r > 0) {
        out.push(("rate".into(), format!("{}/s", fmt_bytes(r))));
    }
    if let Some(e) = num("eta_secs") {
        out.push(("eta".into(), fmt_duration_ms(e as i64 * 1000)));
    }
    for key in [
        "sha256",
        "algorithm",
        "expected",
        "actual",
        "verified",
        "source",
        "path",
        "format",
        "source_virtual_size",
        "virtual_size",
        "requested_size",
        "cluster",
        "vm",
        "image",
        "hostname",
        "os",
        "ssh_port",
        "host_key",
        "ready_secs",
        "installer",
        "exit_status",
        "system",
        "found",
        "next_check",
        "deadline",
        "kept_until",
        "vms_deleted",
        "images_deleted",
    ] {
        if let Some(v) = detail.get(key).filter(|v| !v.is_null()) {
            let s = match v {
                Value::String(s) => s.clone(),
                // Objects (a cluster image…) show by name.
                Value::Object(o) => o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
                Value::Number(n) if key.ends_with("_secs") => {
                    format!("{:.1} s", n.as_f64().unwrap_or(0.0))
                }
                // Both units: the human one, and the count qemu-img prints.
                Value::Number(n) if key.ends_with("_size") && n.as_u64().is_some() => {
                    let b = n.as_u64().unwrap_or(0);
                    format!("{} ({b} bytes)", fmt_bytes(b))
                }
                other => other.to_string(),
            };
            out.push((key.into(), s));
        }
    }
    out
}

fn excerpts(detail: &Value) -> Vec<String> {
    detail
        .get("excerpts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["file"].as_str().unwrap_or("?"),
                        e["line"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (family, source, evidence) for [`JobView::os`].
fn effective_os(job: &Job, current: &[&StageRun]) -> (String, &'static str, Option<String>) {
    let inspected = current
        .iter()
        .rev()
        .find(|r| r.stage == StageName::Inspect.as_str() && r.state == StageState::Succeeded)
        .map(|r| &r.detail);
    crate::domain::effective_os(&job.options, inspected)
}

fn opt_str(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

/// The timeline's bars, and the span they cover.
fn gantt(runs: &[&StageRun]) -> (Vec<GanttBar>, String) {
    let now = now_millis();
    let Some(start) = runs.iter().map(|r| r.started_at).min() else {
        return (Vec::new(), String::new());
    };
    let end_of = |r: &StageRun| r.finished_at.unwrap_or(now).max(r.started_at);
    let end = runs.iter().map(|r| end_of(r)).max().unwrap_or(start);
    let span = (end - start).max(1) as f64;
    let bars = runs
        .iter()
        .map(|r| {
            let left = (r.started_at - start) as f64 / span * 100.0;
            let width = ((end_of(r) - r.started_at) as f64 / span * 100.0).max(0.4);
            let took = fmt_duration_ms(end_of(r) - r.started_at);
            GanttBar {
                stage: r.stage.clone(),
                attempt: r.attempt,
                state: r.state.as_str().to_string(),
                left_pct: (left * 10.0).round() / 10.0,
                width_pct: (width.min(100.0 - left).max(0.4) * 10.0).round() / 10.0,
                label: format!(
                    "{} (attempt {}): {} {took}, from +{}",
                    r.stage,
                    r.attempt,
                    r.state.as_str(),
                    fmt_duration_ms(r.started_at - start)
                ),
            }
        })
        .collect();
    (bars, fmt_duration_ms(end - start))
}

pub fn job_view(
    job: &Job,
    pipeline: &[StageName],
    runs: &[StageRun],
    resources: Vec<Resource>,
) -> JobView {
    let current: Vec<&StageRun> = runs
        .iter()
        .filter(|r| r.attempt >= job.run_base_attempt)
        .collect();
    let os = effective_os(job, &current);
    let gantt = gantt(&current);
    let mut names: Vec<String> = pipeline.iter().map(|s| s.as_str().to_string()).collect();
    // Stages that ran under an older configuration still show.
    for r in &current {
        if !names.contains(&r.stage) {
            names.push(r.stage.clone());
        }
    }
    let stages = names
        .into_iter()
        .map(|name| {
            let last = current.iter().rev().find(|r| r.stage == name);
            match last {
                Some(r) => {
                    let progress = r.detail.get("progress").and_then(Value::as_f64);
                    let duration_ms = r.duration_ms.or_else(|| {
                        (r.state == StageState::Running).then(|| now_millis() - r.started_at)
                    });
                    let finished = r.finished_at.is_some();
                    // A waiting job resumes at its newest run's stage: a
                    // parked check, or a failure it retries.
                    let resumes_here = job.state == JobState::Waiting
                        && current.last().is_some_and(|l| l.id == r.id);
                    StageView {
                        summary: stage_text::sentence(&name, &r.detail, duration_ms, finished),
                        wake_at_ms: (r.state == StageState::Parked || resumes_here)
                            .then_some(job.wake_at)
                            .flatten(),
                        name,
                        state: r.state.as_str().to_string(),
                        attempt: Some(r.attempt),
                        started_at: Some(fmt_millis(r.started_at)),
                        finished_at: r.finished_at.map(fmt_millis),
                        duration_ms,
                        duration: duration_ms.map(fmt_duration_ms),
                        error: r.error.clone(),
                        facts: facts(&r.detail),
                        console: r
                            .detail
                            .get("console_tail")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        excerpts: excerpts(&r.detail),
                        detail: r.detail.clone(),
                        progress,
                    }
                }
                None => StageView {
                    state: if job.state.is_final() {
                        "skipped".into()
                    } else {
                        "pending".into()
                    },
                    name,
                    attempt: None,
                    started_at: None,
                    finished_at: None,
                    duration_ms: None,
                    duration: None,
                    error: None,
                    detail: Value::Object(Default::default()),
                    progress: None,
                    facts: Vec::new(),
                    console: None,
                    excerpts: Vec::new(),
                    summary: None,
                    wake_at_ms: None,
                },
            }
        })
        .collect();
    let id = job.id.to_string();
    JobView {
        short_id: job.id.short(),
        url: redact(&job.url),
        state: job.state,
        error: job.error.clone(),
        current_stage: job.current_stage.clone(),
        checksum: job.checksum.as_deref().map(redact),
        requested_by: job.requested_by.clone(),
        email: job.email.clone(),
        note: job.note.clone(),
        attempt: job.attempt,
        cancel_requested: job.cancel_requested,
        created_at: fmt_millis(job.created_at),
        updated_at: fmt_millis(job.updated_at),
        started_at: job.started_at.map(fmt_millis),
        finished_at: job.finished_at.map(fmt_millis),
        duration_ms: job_duration(job),
        wake_at: job.wake_at.map(fmt_millis),
        wait_reason: job.wait_reason.clone(),
        status_text: status_text(job),
        stages,
        runs: runs
            .iter()
            .map(|r| RunView {
                stage: r.stage.clone(),
                attempt: r.attempt,
                state: r.state,
                started_at: fmt_millis(r.started_at),
                duration_ms: r.duration_ms,
                error: r.error.clone(),
            })
            .collect(),
        resources,
        notes: Vec::new(),
        requester_name: None,
        log_dropped: job.log_dropped,
        jira: None,
        notifications: Vec::new(),
        options: job.options.clone(),
        watch: job
            .options
            .get("watch")
            .and_then(Value::as_str)
            .map(str::to_string),
        cluster: job
            .options
            .get("cluster")
            .and_then(Value::as_str)
            .map(str::to_string),
        os: os.0,
        os_source: os.1,
        os_evidence: os.2,
        batch_id: job.batch_id.map(|b| b.to_string()),
        batch_key: job
            .options
            .get("batch_key")
            .and_then(Value::as_str)
            .map(str::to_string),
        disk: disk_text(job, &current),
        gantt_svg: super::charts::gantt(&gantt.0, &gantt.1),
        gantt: gantt.0,
        gantt_span: gantt.1,
        console: current
            .iter()
            .rev()
            .find_map(|r| r.detail.get("console_tail").and_then(Value::as_str))
            .filter(|t| !t.trim().is_empty())
            .map(str::to_string),
        image_name: opt_str(&job.options, "name"),
        image_version: opt_str(&job.options, "version"),
        links: Links {
            api: format!("/api/v1/jobs/{id}"),
            page: format!("/jobs/{id}"),
            log: format!("/api/v1/jobs/{id}/log"),
            log_file: format!("/api/v1/jobs/{id}/log.txt"),
            report_html: format!("/api/v1/jobs/{id}/report.html"),
            report_json: format!("/api/v1/jobs/{id}/report.json"),
            report_xml: format!("/api/v1/jobs/{id}/report.xml"),
            published_report: current
                .iter()
                .rev()
                .find(|r| r.stage == StageName::Publish.as_str())
                .and_then(|r| r.detail.get("report_html_url"))
                .and_then(Value::as_str)
                .map(str::to_string),
            events: format!("/api/v1/jobs/{id}/events"),
        },
        id,
    }
}

/// The signed-in person as pages show them: what to greet, which buttons to show.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Viewer {
    pub signed_in: bool,
    pub user: String,
    pub name: String,
    pub role: String,
    #[serde(skip)]
    pub csrf: String,
    pub can_submit: bool,
    pub can_operate: bool,
    pub is_admin: bool,
}

impl Viewer {
    pub fn of(me: &super::auth::Identity) -> Viewer {
        use crate::domain::Role;
        Viewer {
            signed_in: true,
            user: me.user.clone(),
            name: me.name_for_people(),
            role: me.role.to_string(),
            csrf: me.csrf().to_string(),
            can_submit: me.may(Role::Requester),
            can_operate: me.may(Role::Operator),
            is_admin: me.may(Role::Admin),
        }
    }

    /// Cancel and retry: one's own jobs as a requester, anyone's as an operator.
    pub fn may_act_on(&self, requested_by: &Option<String>) -> bool {
        self.can_operate || (self.can_submit && requested_by.as_deref() == Some(self.user.as_str()))
    }
}
