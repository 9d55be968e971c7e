//! What a batch's jobs add up to ("3 of 5 passed, 1 running, 1 failed at
//! agent-install"), for the batch page, the CLI and the summary message.

use serde::Serialize;

use crate::domain::{BatchId, JobState, StageState};
use crate::store::batch::Batch;
use crate::store::{DynStore, Job, StoreResult};

/// One job of a batch with what its summary needs.
#[derive(Clone, Debug, Serialize)]
pub struct BatchJob {
    pub job: Job,
    /// The manifest's key for the image.
    pub key: String,
    /// The stage the current run failed at, if it failed at one.
    pub failed_stage: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub running: usize,
    pub queued: usize,
    pub waiting: usize,
    /// Every job has ended.
    pub ended: bool,
    /// "3 of 5 passed, 1 running, 1 failed at agent-install".
    pub text: String,
}

impl Summary {
    pub fn of(jobs: &[BatchJob]) -> Summary {
        let mut s = Summary {
            total: jobs.len(),
            ..Summary::default()
        };
        // Failures grouped by stage, in the order first seen.
        let mut failed_at: Vec<(Option<&str>, usize)> = Vec::new();
        for j in jobs {
            match j.job.state {
                JobState::Succeeded => s.succeeded += 1,
                JobState::Failed => {
                    s.failed += 1;
                    let stage = j.failed_stage.as_deref();
                    match failed_at.iter_mut().find(|(st, _)| *st == stage) {
                        Some((_, n)) => *n += 1,
                        None => failed_at.push((stage, 1)),
                    }
                }
                JobState::Cancelled => s.cancelled += 1,
                JobState::Running => s.running += 1,
                JobState::Queued => s.queued += 1,
                JobState::Waiting => s.waiting += 1,
            }
        }
        s.ended = s.succeeded + s.failed + s.cancelled == s.total;
        let mut parts = vec![format!("{} of {} passed", s.succeeded, s.total)];
        for (n, what) in [
            (s.running, "running"),
            (s.waiting, "waiting"),
            (s.queued, "queued"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        for (stage, n) in failed_at {
            parts.push(match stage {
                Some(st) => format!("{n} failed at {st}"),
                None => format!("{n} failed"),
            });
        }
        if s.cancelled > 0 {
            parts.push(format!("{} cancelled", s.cancelled));
        }
        s.text = parts.join(", ");
        s
    }
}

/// A batch with its jobs, or None if there is no such batch.
pub async fn load(store: &DynStore, id: BatchId) -> StoreResult<Option<(Batch, Vec<BatchJob>)>> {
    let Some(batch) = store.get_batch(id).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for job in store.batch_jobs(id).await? {
        let failed_stage = if job.state == JobState::Failed {
            store
                .stage_runs(job.id)
                .await?
                .into_iter()
                .rev()
                .find(|r| r.attempt >= job.run_base_attempt && r.state == StageState::Failed)
                .map(|r| r.stage)
        } else {
            None
        };
        let key = job
            .options
            .get("batch_key")
            .and_then(|k| k.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| job.id.short());
        out.push(BatchJob {
            job,
            key,
            failed_stage,
        });
    }
    Ok(Some((batch, out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState, failed_stage: Option<&str>) -> BatchJob {
        BatchJob {
            job: Job {
                id: crate::domain::JobId::new(),
                url: "https://h.example/a.qcow2".into(),
                checksum: None,
                requested_by: None,
                email: None,
                note: None,
                options: serde_json::json!({}),
                state,
                current_stage: None,
                error: None,
                attempt: 1,
                run_base_attempt: 1,
                lease_expiries: 0,
                locked_by: None,
                lease_expires_at: None,
                wake_at: None,
                wait_reason: None,
                cancel_requested: false,
                abort_reason: None,
                created_at: 0,
                updated_at: 0,
                started_at: None,
                finished_at: None,
                log_dropped: 0,
                batch_id: None,
            },
            key: "k".into(),
            failed_stage: failed_stage.map(str::to_string),
        }
    }

    #[test]
    fn says_how_many_passed_run_and_failed_where() {
        use JobState::*;
        let s = Summary::of(&[
            job(Succeeded, None),
            job(Succeeded, None),
            job(Running, None),
            job(Failed, Some("agent-install")),
            job(Succeeded, None),
        ]);
        assert_eq!(
            s.text,
            "3 of 5 passed, 1 running, 1 failed at agent-install"
        );
        assert!(!s.ended);
        let s = Summary::of(&[
            job(Failed, Some("fetch")),
            job(Failed, Some("checksum")),
            job(Failed, Some("fetch")),
            job(Cancelled, None),
            job(Failed, None),
        ]);
        assert_eq!(
            s.text,
            "0 of 5 passed, 2 failed at fetch, 1 failed at checksum, 1 failed, 1 cancelled"
        );
        assert!(s.ended);
        assert_eq!(
            Summary::of(&[job(Queued, None), job(Waiting, None)]).text,
            "0 of 2 passed, 1 waiting, 1 queued"
        );
    }
}
