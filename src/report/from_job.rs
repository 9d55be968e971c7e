//! Builds a [`ScanReport`] from what the store holds about a job: the job
//! record, its stage runs (each with the detail its stage recorded) and the
//! resources it created. Reads only; a missing detail leaves a field empty.

use serde_json::Value;

use super::*;
use crate::domain::{fmt_millis, redact_url, Millis, StageName, StageState};
use crate::store::{Job, Resource, StageRun};

/// How far the job has come when its report is written.
#[derive(Clone, Debug)]
pub enum Ending {
    /// The job has ended (succeeded, failed or cancelled).
    Finished,
    /// Written by the publish stage once the image is deployed, as its last
    /// step: every other stage has passed and publish itself has, save
    /// recording it.
    Publishing(Box<Publication>),
}

pub struct ReportInput<'a> {
    pub job: &'a Job,
    /// The configured stages in order (`pipeline.stages`).
    pub configured: &'a [StageName],
    /// Stages this configuration leaves out, with the reason.
    pub omitted: &'a [(StageName, String)],
    pub runs: &'a [StageRun],
    pub resources: &'a [Resource],
    pub requester_name: Option<String>,
    pub generator: Generator,
    /// The cluster a job without an explicit one runs on.
    pub default_cluster: Option<String>,
    pub ending: Ending,
    pub now: Millis,
}

#[derive(Debug, thiserror::Error)]
#[error("job {id} is {state}: its report is written once it has ended")]
pub struct NotFinished {
    pub id: String,
    pub state: String,
}

fn secs(ms: i64) -> f64 {
    (ms as f64 / 1000.0 * 1000.0).round() / 1000.0
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(Value::as_str)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn i(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

/// The runs of the job's current run (a retry starts a new one), oldest first.
struct Runs<'a> {
    current: Vec<&'a StageRun>,
}

impl<'a> Runs<'a> {
    fn of(stage: StageName, runs: &Runs<'a>) -> Vec<&'a StageRun> {
        runs.current
            .iter()
            .copied()
            .filter(|r| r.stage == stage.as_str())
            .collect()
    }

    fn last(&self, stage: StageName) -> Option<&'a StageRun> {
        Runs::of(stage, self).last().copied()
    }

    /// The detail of the stage's latest run, passed or not.
    fn detail(&self, stage: StageName) -> Value {
        self.last(stage)
            .map(|r| r.detail.clone())
            .unwrap_or(Value::Null)
    }

    fn passed(&self, stage: StageName) -> Option<&'a StageRun> {
        self.last(stage)
            .filter(|r| r.state == StageState::Succeeded)
    }
}

pub fn build(input: &ReportInput) -> Result<ScanReport, NotFinished> {
    let job = input.job;
    let publishing = matches!(input.ending, Ending::Publishing(_));
    if !job.state.is_final() && !publishing {
        return Err(NotFinished {
            id: job.id.to_string(),
            state: job.state.to_string(),
        });
    }
    let runs = Runs {
        current: input
            .runs
            .iter()
            .filter(|r| r.attempt >= job.run_base_attempt)
            .collect(),
    };
    let stages = stage_facts(input, &runs);
    let verdict = verdict(input, &stages);
    let id = job.id.to_string();
    let job_facts = JobFacts {
        id: id.clone(),
        state: if publishing {
            "running (publishing)".into()
        } else {
            job.state.to_string()
        },
        requested_by: job.requested_by.clone(),
        requester_name: input.requester_name.clone(),
        requester_email: job.email.clone(),
        requested_at: fmt_millis(job.created_at),
        started_at: job.started_at.map(fmt_millis),
        finished_at: if publishing {
            None
        } else {
            job.finished_at.map(fmt_millis)
        },
        duration_secs: job
            .started_at
            .zip(if publishing {
                Some(input.now)
            } else {
                job.finished_at
            })
            .map(|(a, b)| secs(b - a)),
        note: job.note.clone(),
        batch_id: job.batch_id.map(|b| b.to_string()),
        page: format!("/jobs/{id}"),
        api: format!("/api/v1/jobs/{id}"),
    };
    let publication = match &input.ending {
        Ending::Publishing(p) => Some((**p).clone()),
        Ending::Finished => runs.passed(StageName::Publish).map(|r| {
            let d = &r.detail;
            Publication {
                name: s(d, "name").unwrap_or_default(),
                version: s(d, "version").unwrap_or_default(),
                store: s(d, "store"),
                repo: s(d, "repo"),
                path: s(d, "path"),
                url: s(d, "url"),
                sha256: d
                    .get("checksums")
                    .and_then(|c| c.get("sha256"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                size_bytes: u(d, "size"),
                format: s(d, "format"),
            }
        }),
    };
    Ok(ScanReport {
        report_format: REPORT_FORMAT,
        schema: SCHEMA_PATH.to_string(),
        generated_at: fmt_millis(input.now),
        generator: input.generator.clone(),
        verdict,
        job: job_facts,
        image: image_facts(job, &runs),
        cluster: cluster(input, &runs),
        guest_os: guest_os(job, &runs),
        agent: agent(&runs),
        inventory: inventory(&runs),
        teardown: teardown(input, &runs, &stages),
        publication,
        stages,
    })
}

fn stage_facts(input: &ReportInput, runs: &Runs) -> Vec<StageFacts> {
    let job = input.job;
    let mut names: Vec<StageName> = input
        .configured
        .iter()
        .copied()
        .filter(|s| crate::pipeline::BUILT_STAGES.contains(s))
        .collect();
    // Stages that ran under an older configuration still count.
    for r in &runs.current {
        if let Ok(n) = r.stage.parse::<StageName>() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let failed_at = runs
        .current
        .iter()
        .find(|r| r.state == StageState::Failed)
        .map(|r| r.stage.clone());
    names
        .into_iter()
        .map(|name| {
            let mine = Runs::of(name, runs);
            let Some(last) = mine.last() else {
                let left_out = input.omitted.iter().find(|(s, _)| *s == name);
                let (outcome, note) = match left_out {
                    Some((_, why)) => (StageOutcome::LeftOut, Some(why.clone())),
                    None if job.state.is_final() => (
                        StageOutcome::Skipped,
                        Some(match (&failed_at, job.state) {
                            (_, crate::domain::JobState::Cancelled) => {
                                "not run: the job was cancelled".to_string()
                            }
                            (Some(f), _) => format!("not run: the scan failed at {f}"),
                            (None, _) => "not run".to_string(),
                        }),
                    ),
                    None => (StageOutcome::Pending, None),
                };
                return StageFacts {
                    name: name.as_str().to_string(),
                    outcome,
                    started_at: None,
                    finished_at: None,
                    duration_secs: None,
                    attempts: 0,
                    error: None,
                    note,
                };
            };
            let first = mine[0];
            let publishing_me =
                matches!(input.ending, Ending::Publishing(_)) && name == StageName::Publish;
            let outcome = match last.state {
                _ if publishing_me => StageOutcome::Passed,
                StageState::Succeeded => StageOutcome::Passed,
                StageState::Failed => StageOutcome::Failed,
                StageState::Cancelled => StageOutcome::Cancelled,
                StageState::Interrupted => StageOutcome::Interrupted,
                StageState::Skipped => StageOutcome::Skipped,
                StageState::Running => StageOutcome::Running,
                StageState::Parked => StageOutcome::Waiting,
            };
            let finished = if publishing_me {
                Some(input.now)
            } else {
                last.finished_at
            };
            StageFacts {
                name: name.as_str().to_string(),
                outcome,
                started_at: Some(fmt_millis(first.started_at)),
                finished_at: finished.map(fmt_millis),
                // Wall time over all its runs: a stage that waited for
                // inventory took as long as the wait.
                duration_secs: finished.map(|f| secs(f - first.started_at)),
                attempts: mine.len() as u32,
                error: last.error.clone(),
                note: stage_note(name, &last.detail, publishing_me),
            }
        })
        .collect()
}

/// One line on what a passed stage established.
fn stage_note(name: StageName, d: &Value, publishing: bool) -> Option<String> {
    use crate::domain::fmt_bytes;
    match name {
        StageName::Fetch => u(d, "size").map(|b| format!("downloaded {}", fmt_bytes(b))),
        StageName::Checksum => match d.get("verified").and_then(Value::as_bool) {
            Some(true) => Some(format!(
                "{} verified ({})",
                s(d, "algorithm").unwrap_or_default(),
                s(d, "source").unwrap_or_default()
            )),
            Some(false) => Some("no checksum given: not verified".into()),
            None => None,
        },
        StageName::Inspect => s(d, "format").map(|f| {
            format!(
                "{f}, {} virtual",
                u(d, "virtual_size").map(fmt_bytes).unwrap_or_default()
            )
        }),
        StageName::Convert => {
            s(d, "skipped").or_else(|| s(d, "format").map(|f| format!("converted to {f}")))
        }
        StageName::ClusterUpload => s(d, "cluster").map(|c| format!("uploaded to {c}")),
        StageName::VmCreate => s(d, "os").map(|o| format!("booted, guest OS {o}")),
        StageName::AgentInstall => s(d, "package").map(|p| format!("package {p} installed")),
        StageName::LogCheck => d
            .get("excerpts")
            .and_then(Value::as_array)
            .map(|a| format!("{} required log line(s) found", a.len())),
        StageName::ReportCheck => match d.get("found").and_then(Value::as_bool) {
            Some(true) => Some(format!(
                "{} lists {}",
                s(d, "system").unwrap_or_else(|| "inventory".into()),
                s(d, "hostname").unwrap_or_default()
            )),
            _ => None,
        },
        StageName::Teardown => Some(format!(
            "{} VM(s) and {} image(s) deleted",
            u(d, "vms_deleted").unwrap_or(0),
            u(d, "images_deleted").unwrap_or(0)
        ))
        .filter(|_| d.get("vms_deleted").is_some()),
        StageName::Publish if publishing => {
            Some("image deployed; this report was written as publish's last step".into())
        }
        StageName::Publish => s(d, "url").map(|u| format!("published as {}", redact_url(&u))),
        StageName::Extract | StageName::Notify => None,
    }
}

fn verdict(input: &ReportInput, stages: &[StageFacts]) -> Verdict {
    let job = input.job;
    let failed = stages.iter().find(|s| s.outcome == StageOutcome::Failed);
    let file = input
        .runs
        .iter()
        .rev()
        .find(|r| r.stage == StageName::Fetch.as_str())
        .and_then(|r| s(&r.detail, "file_name"))
        .unwrap_or_else(|| "the image".into());
    let passed = stages
        .iter()
        .filter(|s| s.outcome == StageOutcome::Passed)
        .count();
    let publishing = matches!(input.ending, Ending::Publishing(_));
    match job.state {
        _ if publishing => Verdict {
            outcome: Outcome::Passed,
            summary: format!("{file} passed all {passed} stages that ran"),
            failed_stage: None,
            error: None,
        },
        crate::domain::JobState::Succeeded => Verdict {
            outcome: Outcome::Passed,
            summary: format!("{file} passed all {passed} stages that ran"),
            failed_stage: None,
            error: None,
        },
        crate::domain::JobState::Cancelled => {
            let during = stages
                .iter()
                .find(|s| s.outcome == StageOutcome::Cancelled)
                .map(|s| format!(" during {}", s.name))
                .unwrap_or_default();
            Verdict {
                outcome: Outcome::Cancelled,
                summary: format!("the scan of {file} was cancelled{during}"),
                failed_stage: None,
                error: job.error.clone(),
            }
        }
        _ => Verdict {
            outcome: Outcome::Failed,
            summary: match failed {
                Some(f) => format!("{file} failed at {}", f.name),
                None => format!("the scan of {file} failed"),
            },
            failed_stage: failed.map(|f| f.name.clone()),
            error: failed
                .and_then(|f| f.error.clone())
                .or_else(|| job.error.clone()),
        },
    }
}

fn image_facts(job: &Job, runs: &Runs) -> ImageFacts {
    let fetch = runs.detail(StageName::Fetch);
    let extract = runs.detail(StageName::Extract);
    let inspect = runs.detail(StageName::Inspect);
    let extracted = extract.get("extracted").and_then(Value::as_bool) == Some(true);
    ImageFacts {
        source_url: s(&fetch, "source").unwrap_or_else(|| redact_url(&job.url)),
        file_name: s(&fetch, "file_name"),
        format: s(&inspect, "format"),
        virtual_size_bytes: u(&inspect, "virtual_size"),
        file_size_bytes: u(&fetch, "size"),
        disk_file_size_bytes: if extracted {
            u(&inspect, "file_size")
        } else {
            None
        },
        sha256: s(&fetch, "sha256"),
        checksum: checksum(job, runs),
    }
}

fn checksum(job: &Job, runs: &Runs) -> ChecksumEvidence {
    let Some(run) = runs.last(StageName::Checksum) else {
        return ChecksumEvidence {
            verified: false,
            method: ChecksumMethod::NotChecked,
            algorithm: None,
            expected: None,
            actual: None,
            source: None,
            verified_file: None,
        };
    };
    let d = &run.detail;
    let verified = run.state == StageState::Succeeded
        && d.get("verified").and_then(Value::as_bool) == Some(true);
    let method = match job.checksum.as_deref() {
        None => ChecksumMethod::NotGiven,
        Some(c) if c.trim_start().starts_with("file:") => ChecksumMethod::SumsFile,
        Some(_) => ChecksumMethod::GivenDigest,
    };
    ChecksumEvidence {
        verified,
        method,
        algorithm: s(d, "algorithm"),
        expected: s(d, "expected"),
        actual: s(d, "actual").or_else(|| s(d, "sha256")),
        source: s(d, "source"),
        verified_file: s(d, "verified_file"),
    }
}

fn cluster(input: &ReportInput, runs: &Runs) -> Option<String> {
    s(&runs.detail(StageName::VmCreate), "cluster")
        .or_else(|| s(&runs.detail(StageName::ClusterUpload), "cluster"))
        .or_else(|| s(&input.job.options, "cluster"))
        .or_else(|| {
            // Only jobs that reached the scan stages ran on a cluster.
            runs.last(StageName::ClusterUpload)
                .and(input.default_cluster.clone())
        })
}

fn guest_os(job: &Job, runs: &Runs) -> GuestOs {
    let inspected = runs.passed(StageName::Inspect).map(|r| &r.detail);
    let (family, source, evidence) = crate::domain::effective_os(&job.options, inspected);
    let vm = runs.detail(StageName::VmCreate);
    let release = vm.get("os_release").cloned().unwrap_or(Value::Null);
    GuestOs {
        family,
        family_source: source.to_string(),
        disk_evidence: evidence,
        name: s(&vm, "os"),
        id: s(&release, "ID"),
        version_id: s(&release, "VERSION_ID"),
        hostname: s(&vm, "hostname"),
    }
}

fn agent(runs: &Runs) -> Option<AgentEvidence> {
    let install = runs.last(StageName::AgentInstall)?;
    let d = &install.detail;
    let services = match d.get("services").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|sv| match sv {
                // Linux: each unit with the state systemctl (or ps) gave.
                Value::Object(_) => Some(ServiceState {
                    name: s(sv, "name")?,
                    state: s(sv, "state").unwrap_or_default(),
                }),
                // Windows: the names the service check found running.
                Value::String(n) if s(d, "service_check").as_deref() == Some("passed") => {
                    Some(ServiceState {
                        name: n.clone(),
                        state: "Running".into(),
                    })
                }
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let logs = runs.detail(StageName::LogCheck);
    let matched = logs
        .get("excerpts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| LogMatch {
                    pattern: s(e, "pattern").unwrap_or_default(),
                    file: s(e, "file").unwrap_or_default(),
                    line: s(e, "line").unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(AgentEvidence {
        package: s(d, "package"),
        package_reason: s(d, "package_reason"),
        installer: s(d, "installer").map(|i| redact_url(&i)),
        version: s(d, "agent_version"),
        version_note: s(d, "agent_version_note"),
        install_exit_status: i(d, "exit_status"),
        services,
        service_manager: s(d, "service_manager"),
        inventory_command: s(d, "inventory_command"),
        inventory_exit_status: i(d, "inventory_exit_status"),
        matched_log_lines: matched,
        upload_confirmed: logs.get("upload_confirmed").and_then(Value::as_bool),
    })
}

fn inventory(runs: &Runs) -> Option<InventoryEvidence> {
    let all = Runs::of(StageName::ReportCheck, runs);
    let last = all.last()?;
    let d = &last.detail;
    let found = last.state == StageState::Succeeded
        && d.get("found").and_then(Value::as_bool) == Some(true);
    Some(InventoryEvidence {
        system: s(d, "system"),
        hostname: s(d, "hostname"),
        found,
        found_at: if found {
            i(d, "found_at").or(last.finished_at).map(fmt_millis)
        } else {
            None
        },
        first_check_at: all.first().map(|r| fmt_millis(r.started_at)),
        checks: all.len() as u32,
        rows: d
            .get("rows")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    })
}

fn teardown(input: &ReportInput, runs: &Runs, stages: &[StageFacts]) -> TeardownEvidence {
    let facts = stages
        .iter()
        .find(|s| s.name == StageName::Teardown.as_str());
    let outcome = facts.map(|f| f.outcome).unwrap_or(StageOutcome::LeftOut);
    let resources: Vec<ResourceFacts> = input
        .resources
        .iter()
        .map(|r| ResourceFacts {
            kind: r.kind.clone(),
            provider: r.provider.clone(),
            id: r.external_id.clone(),
            name: s(&r.detail, "name"),
            created_at: fmt_millis(r.created_at),
            deleted_at: r.deleted_at.map(fmt_millis),
            state: if r.deleted_at.is_some() {
                "deleted".into()
            } else {
                "present".into()
            },
        })
        .collect();
    TeardownEvidence {
        outcome,
        finished_at: runs
            .last(StageName::Teardown)
            .and_then(|r| r.finished_at)
            .map(fmt_millis),
        all_removed: outcome == StageOutcome::Passed
            && resources.iter().all(|r| r.deleted_at.is_some()),
        resources,
    }
}

/// Reads what the store holds about `job` and builds its report.
pub async fn load(
    store: &crate::store::DynStore,
    job: &Job,
    cfg: &crate::config::Config,
    default_cluster: Option<String>,
    ending: Ending,
) -> crate::store::StoreResult<Result<ScanReport, NotFinished>> {
    let runs = store.stage_runs(job.id).await?;
    let resources = store.resources(job.id).await?;
    let requester_name = store.requester_name(job.id).await?;
    let omitted = crate::pipeline::scan::omitted(cfg);
    Ok(build(&ReportInput {
        job,
        configured: &cfg.pipeline.stages,
        omitted: &omitted,
        runs: &runs,
        resources: &resources,
        requester_name,
        generator: Generator::of(cfg),
        default_cluster,
        ending,
        now: crate::domain::now_millis(),
    }))
}
