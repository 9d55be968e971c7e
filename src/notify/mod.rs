//! Telling people about scans: the runner's hooks write an outbox (fast, never
//! failing the scan); a delivery loop sends email and keeps a Jira ticket per
//! job, retrying with back-off and recording each notification's state.

mod batch;
pub mod email;
pub mod jira;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NotifyConfig};
use crate::domain::{fmt_bytes, fmt_duration_ms, now_millis, JobState, StageName, StageState};
use crate::store::notify::{Delivered, JiraIssue, Notification};
use crate::store::{DynStore, Job, StageRun};
use crate::worker::events::{JobEvents, StageEnd};
use email::{esc, Mail, Mailer, SmtpMailer};
use jira::{IssueTracker, JiraClient};

pub const EMAIL: &str = "email";
pub const JIRA: &str = "jira";

/// Why a delivery attempt failed, and whether trying again can help.
#[derive(Clone, Debug)]
pub struct SendError {
    pub message: String,
    pub retryable: bool,
    /// The server asked to wait this long (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn retry(message: String) -> Self {
        SendError {
            message,
            retryable: true,
            retry_after: None,
        }
    }

    pub fn permanent(message: String) -> Self {
        SendError {
            message,
            retryable: false,
            retry_after: None,
        }
    }
}

/// The `JobEvents` follower: records what to send, nothing more.
pub struct Outbox {
    store: DynStore,
    email: bool,
    jira: bool,
    batch_summary: bool,
}

impl Outbox {
    pub fn new(store: DynStore, cfg: &NotifyConfig) -> Self {
        Outbox {
            store,
            email: cfg.email.enabled,
            jira: cfg.jira.enabled,
            batch_summary: cfg.batch_summary,
        }
    }

    /// A job of a batch is told about in the batch's summary only.
    fn in_summary(&self, job: &Job) -> bool {
        self.batch_summary && job.batch_id.is_some()
    }

    async fn put(&self, job: &Job, channel: &str, kind: &str, payload: Value) {
        if let Err(e) = self
            .store
            .enqueue_notification(job.id, channel, kind, &payload)
            .await
        {
            // Never fails the scan; the job page shows what was recorded.
            tracing::warn!(job = %job.id, channel, kind, error = %e, "cannot record notification");
        }
    }
}

/// Stage detail keys worth telling people about.
const FACT_KEYS: &[&str] = &[
    "size",
    "bytes",
    "total_bytes",
    "virtual_bytes",
    "format",
    "source_format",
    "sha256",
    "verified",
    "cluster",
    "vm",
    "image",
    "os",
    "hostname",
];

fn facts(detail: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for k in FACT_KEYS {
        if let Some(v) = detail.get(*k).filter(|v| !v.is_null() && !v.is_object()) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    Value::Object(m)
}

#[async_trait]
impl JobEvents for Outbox {
    async fn job_started(&self, job: &Job) {
        if self.in_summary(job) {
            return;
        }
        let p = json!({"run": job.run_base_attempt});
        if self.jira {
            self.put(job, JIRA, "job_started", p.clone()).await;
        }
        if self.email {
            self.put(job, EMAIL, "job_started", p).await;
        }
    }

    async fn stage_started(&self, job: &Job, stage: StageName) {
        if self.jira && !self.in_summary(job) {
            self.put(job, JIRA, "stage_started", json!({"stage": stage.as_str()}))
                .await;
        }
    }

    async fn stage_finished(&self, job: &Job, stage: StageName, end: &StageEnd<'_>) {
        if self.jira && !self.in_summary(job) {
            let p = json!({
                "stage": stage.as_str(),
                "state": end.state.as_str(),
                "duration_ms": end.duration_ms,
                "error": end.error,
                "facts": facts(end.detail),
            });
            self.put(job, JIRA, "stage_finished", p).await;
        }
    }

    async fn job_finished(&self, job: &Job, state: JobState, error: Option<&str>) {
        if let Some(b) = job.batch_id {
            // The last job of the batch to end records the summary (once).
            let channels = batch::summary_channels(self.batch_summary, self.email, self.jira);
            if let Err(e) = self.store.close_batch(b, &channels).await {
                tracing::warn!(batch = %b, error = %e, "cannot close the batch; the sweep retries");
            }
            if self.in_summary(job) {
                return;
            }
        }
        let p = json!({"state": state.as_str(), "error": error});
        if self.jira {
            self.put(job, JIRA, "job_finished", p.clone()).await;
            self.put(job, JIRA, "transition", p.clone()).await;
        }
        if self.email {
            self.put(job, EMAIL, "job_finished", p).await;
        }
    }
}

/// Sends what the outbox holds.
pub struct Deliverer {
    store: DynStore,
    cfg: Arc<Config>,
    mailer: Option<Arc<dyn Mailer>>,
    jira: Option<Arc<dyn IssueTracker>>,
}

impl Deliverer {
    pub fn from_config(store: DynStore, cfg: Arc<Config>) -> anyhow::Result<Self> {
        let n = &cfg.notify;
        let mailer: Option<Arc<dyn Mailer>> = if n.email.enabled {
            Some(Arc::new(SmtpMailer::new(&n.email)?))
        } else {
            None
        };
        let jira: Option<Arc<dyn IssueTracker>> = if n.jira.enabled {
            Some(Arc::new(JiraClient::new(&n.jira)?))
        } else {
            None
        };
        Ok(Deliverer {
            store,
            cfg,
            mailer,
            jira,
        })
    }

    /// Claims and sends due notifications until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let me = format!("{}-notify", crate::worker::worker_name());
        let poll = Duration::from_millis(self.cfg.notify.poll_interval_ms.max(10));
        let lease = Duration::from_secs(self.cfg.notify.lease_secs);
        let sweep = Duration::from_secs(self.cfg.notify.batch_sweep_secs.max(1));
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            if last_sweep.is_none_or(|t| t.elapsed() >= sweep) {
                last_sweep = Some(std::time::Instant::now());
                self.close_ended_batches().await;
            }
            let batch = match self.store.claim_notifications(&me, lease, 16).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "notifications: cannot claim");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            let sends = batch.into_iter().map(|n| {
                let me = me.clone();
                let this = self.clone();
                async move {
                    let outcome = this.deliver(&n).await;
                    if let Delivered::Failed(e) | Delivered::Retry { error: e, .. } = &outcome {
                        tracing::warn!(job = %n.job_id, channel = %n.channel, kind = %n.kind, attempt = n.attempts, error = %e, "notification not delivered");
                    }
                    if let Err(e) = this.store.finish_notification(n.id, &me, &outcome).await {
                        tracing::warn!(error = %e, "notifications: cannot record delivery");
                    }
                }
            });
            tokio::select! {
                _ = futures::future::join_all(sends) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One attempt at one notification.
    pub async fn deliver(&self, n: &Notification) -> Delivered {
        let r = match (n.channel.as_str(), n.kind.as_str()) {
            (EMAIL, batch::KIND) => self.deliver_batch_email(n).await,
            (JIRA, batch::KIND) => self.deliver_batch_jira(n).await,
            (EMAIL, _) => self.deliver_email(n).await,
            (JIRA, _) => self.deliver_jira(n).await,
            (other, _) => Err(SendError::permanent(format!("unknown channel {other:?}"))),
        };
        match r {
            Ok(d) => d,
            Err(e) if !e.retryable => Delivered::Failed(e.message),
            Err(e) if n.attempts >= i64::from(self.cfg.notify.max_attempts) => Delivered::Failed(
                format!("gave up after {} attempts: {}", n.attempts, e.message),
            ),
            Err(e) => {
                let c = &self.cfg.notify;
                let exp = (n.attempts - 1).clamp(0, 20) as u32;
                let backoff = c
                    .backoff_secs
                    .saturating_mul(1u64 << exp)
                    .min(c.max_backoff_secs);
                let wait = e.retry_after.map(|d| d.as_secs()).unwrap_or(backoff).max(1);
                Delivered::Retry {
                    at: now_millis() + (wait as i64) * 1000,
                    error: format!("{} (attempt {}, next in {wait} s)", e.message, n.attempts),
                }
            }
        }
    }

    async fn facts(&self, n: &Notification) -> Result<Facts, SendError> {
        let db = |e: crate::store::StoreError| SendError::retry(format!("database: {e}"));
        let job = self
            .store
            .get_job(n.job_id)
            .await
            .map_err(db)?
            .ok_or_else(|| SendError::permanent(format!("job {} no longer exists", n.job_id)))?;
        let runs = self.store.stage_runs(n.job_id).await.map_err(db)?;
        let runs: Vec<StageRun> = runs
            .into_iter()
            .filter(|r| r.attempt >= job.run_base_attempt)
            .collect();
        let name = self.store.requester_name(n.job_id).await.map_err(db)?;
        let issue = self.store.jira_issue(n.job_id).await.map_err(db)?;
        let published_report = runs
            .iter()
            .rev()
            .find(|r: &&StageRun| {
                r.stage == crate::domain::StageName::Publish.as_str()
                    && r.state == StageState::Succeeded
            })
            .and_then(|r| r.detail.get("report_html_url"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Facts {
            link: job_link(&self.cfg, &job),
            report: job.state.is_final().then(|| report_link(&self.cfg, &job)),
            published_report,
            job,
            runs,
            name,
            issue,
        })
    }

    async fn deliver_email(&self, n: &Notification) -> Result<Delivered, SendError> {
        let Some(mailer) = &self.mailer else {
            return Ok(Delivered::Skipped("email is not configured".into()));
        };
        // "Scan started" links the Jira ticket: wait a little for its creation.
        // The ticket is read only after its creation settled; reading it first
        // raced with a creation that finished between the two reads.
        if n.kind == "job_started" && self.jira.is_some() {
            let waited = now_millis() - n.created_at;
            let wait_max = (self.cfg.notify.jira_link_wait_secs as i64) * 1000;
            let pending = self
                .store
                .job_notifications(n.job_id)
                .await
                .map_err(|e| SendError::retry(format!("database: {e}")))?
                .iter()
                .any(|o| {
                    o.channel == JIRA
                        && o.kind == "job_started"
                        && matches!(o.state.as_str(), "pending" | "sending")
                });
            if pending && waited < wait_max {
                return Ok(Delivered::Defer(
                    now_millis() + self.cfg.notify.poll_interval_ms.max(10) as i64,
                ));
            }
        }
        let f = self.facts(n).await?;
        let to = self.recipients(&f.job, f.name.clone());
        if to.is_empty() {
            return Ok(Delivered::Skipped(
                "no recipients (no requester email, no notify.email.admins)".into(),
            ));
        }
        let lines = if n.kind == "job_finished" && f.job.state != JobState::Succeeded {
            self.store
                .log_tail(n.job_id, self.cfg.notify.log_lines.clamp(1, 500))
                .await
                .map_err(|e| SendError::retry(format!("database: {e}")))?
                .into_iter()
                .map(|l| format!("{} {}", l.level.as_str(), l.message))
                .collect()
        } else {
            Vec::new()
        };
        let mail = render_email(&f, n, to, &lines);
        mailer.send(&mail).await?;
        Ok(Delivered::Sent)
    }

    /// The requester, the admins and the job's extra addresses.
    fn recipients(&self, job: &Job, name: Option<String>) -> Vec<Mailbox> {
        let mut to: Vec<Mailbox> = Vec::new();
        if let Some(addr) = job.email.as_deref().and_then(|e| e.parse().ok()) {
            to.push(Mailbox::new(name, addr));
        }
        // Extra addresses were checked against auth.notify_domains at submit.
        let also = job
            .options
            .get("also_notify")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string));
        for a in self.cfg.notify.email.admins.iter().cloned().chain(also) {
            if let Ok(m) = a.parse::<Mailbox>() {
                if !to.iter().any(|t| t.email == m.email) {
                    to.push(m);
                }
            }
        }
        to
    }

    async fn deliver_jira(&self, n: &Notification) -> Result<Delivered, SendError> {
        let Some(jira) = &self.jira else {
            return Ok(Delivered::Skipped("Jira is not configured".into()));
        };
        let f = self.facts(n).await?;
        let db = |e: crate::store::StoreError| SendError::retry(format!("database: {e}"));
        if n.kind == "job_started" {
            if let Some(issue) = &f.issue {
                // A retried job keeps its ticket.
                jira.comment(
                    &issue.key,
                    &format!("A new run of this scan started (retry).\nJob: {}", f.link),
                )
                .await?;
                return Ok(Delivered::Sent);
            }
            let cfg = &self.cfg.notify.jira;
            let summary: String = format!("{}{}", cfg.summary_prefix, f.image_name())
                .chars()
                .take(250)
                .collect();
            let issue = jira.create_issue(&summary, &f.description()).await?;
            self.store
                .set_jira_issue(n.job_id, &issue)
                .await
                .map_err(db)?;
            return Ok(Delivered::Sent);
        }
        let Some(issue) = &f.issue else {
            return Err(SendError::permanent(
                "no Jira ticket for this job (creating it failed)".into(),
            ));
        };
        let p = &n.payload;
        match n.kind.as_str() {
            "stage_started" => {
                let stage = p["stage"].as_str().unwrap_or("?");
                jira.comment(&issue.key, &format!("{stage} started."))
                    .await?;
            }
            "stage_finished" => jira.comment(&issue.key, &stage_comment(p)).await?,
            "job_finished" => jira.comment(&issue.key, &f.final_summary(p)).await?,
            "transition" => {
                let cfg = &self.cfg.notify.jira;
                let name = if p["state"] == "succeeded" {
                    &cfg.success_transition
                } else {
                    &cfg.failure_transition
                };
                if name.trim().is_empty() {
                    return Ok(Delivered::Skipped(
                        "no transition configured for this outcome".into(),
                    ));
                }
                jira.transition(&issue.key, name.trim()).await?;
            }
            other => {
                return Err(SendError::permanent(format!(
                    "unknown Jira notification {other:?}"
                )))
            }
        }
        Ok(Delivered::Sent)
    }
}

/// The dashboard's address, for links in emails and tickets.
fn base_url(cfg: &Config) -> String {
    let base = cfg
        .server
        .external_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| format!("http://{}", cfg.server.listen));
    base.trim_end_matches('/').to_string()
}

/// The page of a job, for links in emails and tickets.
pub fn job_link(cfg: &Config, job: &Job) -> String {
    format!("{}/jobs/{}", base_url(cfg), job.id)
}

/// A finished job's scan report (HTML; `report.json` and `report.xml` beside it).
pub fn report_link(cfg: &Config, job: &Job) -> String {
    format!("{}/api/v1/jobs/{}/report.html", base_url(cfg), job.id)
}

/// What a message says about a job, loaded when it is sent.
struct Facts {
    job: Job,
    runs: Vec<StageRun>,
    name: Option<String>,
    issue: Option<JiraIssue>,
    link: String,
    /// The scan report, once the job has ended.
    report: Option<String>,
    /// The copy published next to the image.
    published_report: Option<String>,
}

impl Facts {
    fn url(&self) -> String {
        crate::domain::redact_url(&self.job.url)
    }

    fn image_name(&self) -> String {
        let u = self.url();
        let tail = u
            .split(['?', '#'])
            .next()
            .unwrap_or(&u)
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(&u)
            .to_string();
        if tail.is_empty() {
            u
        } else {
            tail
        }
    }

    fn requester(&self) -> String {
        let who = self
            .job
            .email
            .clone()
            .or_else(|| self.job.requested_by.clone());
        match (&self.name, who) {
            (Some(n), Some(w)) if n != &w => format!("{n} <{w}>"),
            (Some(n), _) => n.clone(),
            (None, Some(w)) => w,
            (None, None) => "anonymous".into(),
        }
    }

    fn description(&self) -> String {
        let mut d = format!(
            "vmscan scan of a VM template image.\nImage: {}\nRequested by: {}\nJob: {}\n",
            self.url(),
            self.requester(),
            self.link
        );
        if let Some(c) = &self.job.checksum {
            d.push_str(&format!("Checksum: {}\n", crate::domain::redact_url(c)));
        }
        if self.job.options.as_object().is_some_and(|o| !o.is_empty()) {
            d.push_str(&format!("Options: {}\n", self.job.options));
        }
        if let Some(n) = &self.job.note {
            d.push_str(&format!("Note: {n}\n"));
        }
        d
    }

    /// (stage, state, duration) rows of the current run.
    fn stage_rows(&self) -> Vec<(String, String, String)> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for r in &self.runs {
            let row = (
                r.stage.clone(),
                r.state.as_str().to_string(),
                r.duration_ms.map(fmt_duration_ms).unwrap_or_default(),
            );
            match rows.iter_mut().find(|x| x.0 == r.stage) {
                Some(x) => *x = row,
                None => rows.push(row),
            }
        }
        rows
    }

    fn failed_stage(&self) -> Option<&StageRun> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.state == StageState::Failed)
    }

    fn final_summary(&self, p: &Value) -> String {
        let state = p["state"].as_str().unwrap_or("finished");
        let took = self
            .job
            .started_at
            .zip(self.job.finished_at)
            .map(|(s, f)| format!(" in {}", fmt_duration_ms(f - s)))
            .unwrap_or_default();
        let mut s = format!("Scan {state}{took}.\n");
        if let Some(e) = p["error"].as_str() {
            s.push_str(&format!("Error: {e}\n"));
        }
        for (stage, st, d) in self.stage_rows() {
            s.push_str(&format!("{stage}: {st} {d}\n"));
        }
        s.push_str(&format!("Job: {}\n", self.link));
        if let Some(r) = &self.report {
            s.push_str(&format!("Scan report: {r}\n"));
        }
        if let Some(r) = &self.published_report {
            s.push_str(&format!("Published report: {r}\n"));
        }
        s
    }
}

fn stage_comment(p: &Value) -> String {
    let stage = p["stage"].as_str().unwrap_or("?");
    let state = p["state"].as_str().unwrap_or("?");
    let took = p["duration_ms"]
        .as_i64()
        .map(fmt_duration_ms)
        .unwrap_or_default();
    let mut s = match p["error"].as_str() {
        Some(e) => format!("{stage} {state} after {took}: {e}"),
        None => format!("{stage} {state} in {took}."),
    };
    if let Some(f) = p["facts"].as_object().filter(|f| !f.is_empty()) {
        let parts: Vec<String> = f
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                ("size" | "bytes" | "total_bytes" | "virtual_bytes", Some(b)) => {
                    format!("{k}: {}", fmt_bytes(b))
                }
                _ => format!(
                    "{k}: {}",
                    v.as_str().map(str::to_string).unwrap_or(v.to_string())
                ),
            })
            .collect();
        s.push('\n');
        s.push_str(&parts.join(", "));
    }
    s
}

fn render_email(f: &Facts, n: &Notification, to: Vec<Mailbox>, log: &[String]) -> Mail {
    let image = f.image_name();
    let state = n.payload["state"].as_str().unwrap_or("");
    let failed = f.failed_stage();
    let (subject, headline) = match (n.kind.as_str(), state) {
        ("job_started", _) => (
            format!("[vmscan] scan started: {image}"),
            "The scan started.".to_string(),
        ),
        (_, "succeeded") => (
            format!("[vmscan] scan succeeded: {image}"),
            "The scan succeeded.".to_string(),
        ),
        (_, "cancelled") => (
            format!("[vmscan] scan cancelled: {image}"),
            "The scan was cancelled.".to_string(),
        ),
        _ => match failed {
            Some(r) => (
                format!("[vmscan] scan failed at {}: {image}", r.stage),
                format!("The scan failed at stage {}.", r.stage),
            ),
            None => (
                format!("[vmscan] scan failed: {image}"),
                "The scan failed.".to_string(),
            ),
        },
    };
    let error = n.payload["error"].as_str();
    let rows = f.stage_rows();
    // Only the end-of-scan message has a report to point to.
    let (report, published_report) = if n.kind == "job_started" {
        (None, None)
    } else {
        (f.report.as_ref(), f.published_report.as_ref())
    };

    let mut t = format!(
        "{headline}\n\nImage: {}\nRequested by: {}\nJob page: {}\n",
        f.url(),
        f.requester(),
        f.link
    );
    if let Some(r) = report {
        t.push_str(&format!("Scan report: {r}\n"));
    }
    if let Some(r) = published_report {
        t.push_str(&format!("Published report: {r}\n"));
    }
    if let Some(i) = &f.issue {
        t.push_str(&format!("Jira: {} {}\n", i.key, i.url));
    }
    if let Some(e) = error {
        t.push_str(&format!("\nError: {e}\n"));
    }
    if !rows.is_empty() {
        t.push_str("\nStages:\n");
        for (s, st, d) in &rows {
            t.push_str(&format!("  {s:<16} {st:<12} {d}\n"));
        }
    }
    if !log.is_empty() {
        t.push_str("\nLast log lines:\n");
        for l in log {
            t.push_str(&format!("  {l}\n"));
        }
    }

    let mut h = format!(
        "<html><body><p><strong>{}</strong></p><table>\
         <tr><th align=\"left\">Image</th><td>{}</td></tr>\
         <tr><th align=\"left\">Requested by</th><td>{}</td></tr>\
         <tr><th align=\"left\">Job page</th><td><a href=\"{}\">{}</a></td></tr>",
        esc(&headline),
        esc(&f.url()),
        esc(&f.requester()),
        esc(&f.link),
        esc(&f.link)
    );
    if let Some(r) = report {
        h.push_str(&format!(
            "<tr><th align=\"left\">Scan report</th><td><a href=\"{}\">{}</a></td></tr>",
            esc(r),
            esc(r)
        ));
    }
    if let Some(r) = published_report {
        h.push_str(&format!(
            "<tr><th align=\"left\">Published report</th><td><a href=\"{}\">{}</a></td></tr>",
            esc(r),
            esc(r)
        ));
    }
    if let Some(i) = &f.issue {
        h.push_str(&format!(
            "<tr><th align=\"left\">Jira</th><td><a href=\"{}\">{}</a></td></tr>",
            esc(&i.url),
            esc(&i.key)
        ));
    }
    h.push_str("</table>");
    if let Some(e) = error {
        h.push_str(&format!("<p style=\"color:#b00\">Error: {}</p>", esc(e)));
    }
    if !rows.is_empty() {
        h.push_str("<h3>Stages</h3><table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>Stage</th><th>State</th><th>Duration</th></tr>");
        for (s, st, d) in &rows {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(s),
                esc(st),
                esc(d)
            ));
        }
        h.push_str("</table>");
    }
    if !log.is_empty() {
        h.push_str("<h3>Last log lines</h3><pre>");
        for l in log {
            h.push_str(&esc(l));
            h.push('\n');
        }
        h.push_str("</pre>");
    }
    h.push_str("</body></html>");
    Mail {
        to,
        subject,
        text: t,
        html: h,
    }
}
