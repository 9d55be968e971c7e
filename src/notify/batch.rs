//! The batch summary: one email and one Jira ticket when the last job of a
//! batch has ended, instead of one per image (`notify.batch_summary`).

use lettre::message::Mailbox;

use super::email::{esc, Mail};
use super::{base_url, Deliverer, SendError, EMAIL, JIRA};
use crate::batches::{BatchJob, Summary};
use crate::domain::{BatchId, JobState};
use crate::store::batch::Batch;
use crate::store::notify::{Delivered, Notification};

pub const KIND: &str = "batch_finished";

/// The channels a batch's summary goes to.
pub fn summary_channels(batch_summary: bool, email: bool, jira: bool) -> Vec<&'static str> {
    let mut c = Vec::new();
    if batch_summary && jira {
        c.push(JIRA);
    }
    if batch_summary && email {
        c.push(EMAIL);
    }
    c
}

struct BatchFacts {
    batch: Batch,
    jobs: Vec<BatchJob>,
    summary: Summary,
    link: String,
    base: String,
    name: Option<String>,
}

impl BatchFacts {
    fn label(&self) -> String {
        match &self.batch.owner {
            Some(o) => format!("{o} ({} images)", self.jobs.len()),
            None => format!("{} ({} images)", self.batch.id.short(), self.jobs.len()),
        }
    }

    /// (image key, outcome, job link) per job.
    fn rows(&self) -> Vec<(String, String, String)> {
        self.jobs
            .iter()
            .map(|j| {
                let outcome = match (&j.job.state, &j.failed_stage, &j.job.error) {
                    (JobState::Failed, Some(st), Some(e)) => format!("failed at {st}: {e}"),
                    (JobState::Failed, None, Some(e)) => format!("failed: {e}"),
                    (s, _, _) => s.as_str().to_string(),
                };
                (
                    j.key.clone(),
                    outcome,
                    format!("{}/jobs/{}", self.base, j.job.id),
                )
            })
            .collect()
    }

    fn text(&self) -> String {
        let mut t = format!("Batch {} ended: {}.\n\n", self.batch.id, self.summary.text);
        if let Some(o) = &self.batch.owner {
            t.push_str(&format!("Owner: {o}\n"));
        }
        if let Some(r) = &self.batch.requested_by {
            t.push_str(&format!("Requested by: {r}\n"));
        }
        t.push_str(&format!("Batch page: {}\n\n", self.link));
        for (key, outcome, link) in self.rows() {
            t.push_str(&format!("  {key:<24} {outcome}\n  {:<24} {link}\n", ""));
        }
        t
    }

    fn html(&self) -> String {
        let mut h = format!(
            "<html><body><p><strong>Batch ended: {}.</strong></p><table>",
            esc(&self.summary.text)
        );
        if let Some(o) = &self.batch.owner {
            h.push_str(&format!(
                "<tr><th align=\"left\">Owner</th><td>{}</td></tr>",
                esc(o)
            ));
        }
        if let Some(r) = &self.batch.requested_by {
            h.push_str(&format!(
                "<tr><th align=\"left\">Requested by</th><td>{}</td></tr>",
                esc(r)
            ));
        }
        h.push_str(&format!(
            "<tr><th align=\"left\">Batch page</th><td><a href=\"{0}\">{0}</a></td></tr></table>",
            esc(&self.link)
        ));
        h.push_str("<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>Image</th><th>Outcome</th><th>Job</th></tr>");
        for (key, outcome, link) in self.rows() {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td><a href=\"{2}\">{2}</a></td></tr>",
                esc(&key),
                esc(&outcome),
                esc(&link)
            ));
        }
        h.push_str("</table></body></html>");
        h
    }
}

impl Deliverer {
    /// Closes batches whose last job ended without the close being recorded.
    pub(super) async fn close_ended_batches(&self) {
        let channels = summary_channels(
            self.cfg.notify.batch_summary,
            self.mailer.is_some(),
            self.jira.is_some(),
        );
        let ids = match self.store.ended_open_batches(100).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "notifications: cannot look for ended batches");
                return;
            }
        };
        for id in ids {
            if let Err(e) = self.store.close_batch(id, &channels).await {
                tracing::warn!(batch = %id, error = %e, "cannot close the batch");
            }
        }
    }

    async fn batch_facts(&self, n: &Notification) -> Result<BatchFacts, SendError> {
        let db = |e: crate::store::StoreError| SendError::retry(format!("database: {e}"));
        let id: BatchId = n.payload["batch"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| SendError::permanent("the notification names no batch".into()))?;
        let (batch, jobs) = crate::batches::load(&self.store, id)
            .await
            .map_err(db)?
            .ok_or_else(|| SendError::permanent(format!("batch {id} no longer exists")))?;
        let name = self.store.requester_name(n.job_id).await.map_err(db)?;
        let base = base_url(&self.cfg);
        Ok(BatchFacts {
            summary: Summary::of(&jobs),
            link: format!("{base}/batches/{id}"),
            base,
            batch,
            jobs,
            name,
        })
    }

    pub(super) async fn deliver_batch_email(
        &self,
        n: &Notification,
    ) -> Result<Delivered, SendError> {
        let Some(mailer) = &self.mailer else {
            return Ok(Delivered::Skipped("email is not configured".into()));
        };
        let f = self.batch_facts(n).await?;
        // The batch's first job carries the requester and the extra addresses.
        let to: Vec<Mailbox> = match f.jobs.first() {
            Some(j) => self.recipients(&j.job, f.name.clone()),
            None => Vec::new(),
        };
        if to.is_empty() {
            return Ok(Delivered::Skipped(
                "no recipients (no requester email, no notify.email.admins)".into(),
            ));
        }
        let mail = Mail {
            to,
            subject: format!("[vmscan] batch {}: {}", f.label(), f.summary.text),
            text: f.text(),
            html: f.html(),
        };
        mailer.send(&mail).await?;
        Ok(Delivered::Sent)
    }

    pub(super) async fn deliver_batch_jira(
        &self,
        n: &Notification,
    ) -> Result<Delivered, SendError> {
        let Some(jira) = &self.jira else {
            return Ok(Delivered::Skipped("Jira is not configured".into()));
        };
        let f = self.batch_facts(n).await?;
        let key = match &f.batch.jira {
            // A retried job reopened the batch: its ticket hears the new ending.
            Some(issue) => {
                jira.comment(&issue.key, &f.text()).await?;
                issue.key.clone()
            }
            None => {
                let cfg = &self.cfg.notify.jira;
                let summary: String = format!(
                    "{}batch {}: {}",
                    cfg.summary_prefix,
                    f.label(),
                    f.summary.text
                )
                .chars()
                .take(250)
                .collect();
                let issue = jira.create_issue(&summary, &f.text()).await?;
                self.store
                    .set_batch_jira(f.batch.id, &issue)
                    .await
                    .map_err(|e| SendError::retry(format!("database: {e}")))?;
                issue.key
            }
        };
        let cfg = &self.cfg.notify.jira;
        let name = if f.summary.succeeded == f.summary.total {
            &cfg.success_transition
        } else {
            &cfg.failure_transition
        };
        if !name.trim().is_empty() {
            jira.transition(&key, name.trim()).await?;
        }
        Ok(Delivered::Sent)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_summary_goes_only_where_it_is_configured() {
        use super::summary_channels as c;
        assert_eq!(c(true, true, true), vec!["jira", "email"]);
        assert_eq!(c(true, true, false), vec!["email"]);
        assert!(c(false, true, true).is_empty());
    }
}
