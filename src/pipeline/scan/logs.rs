//! log-check: polls the agent's log files until every required pattern has
//! appeared and no forbidden one has, and keeps the matching excerpts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use regex::Regex;
use serde_json::json;

use super::shell::{connect_job_vm, read_as_root};
use super::vm::job_os;
use super::ScanEnv;
use crate::domain::{OsFamily, StageName};
use crate::pipeline::{Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::remote::winrm::decode_text;
use crate::remote::RemoteError;

/// Bytes read from each log file per poll (the tail matters most).
const MAX_LOG_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogCheckError {
    #[error("no agent profile is configured for {0} guests ([agent.profiles.{0}])")]
    NoProfile(OsFamily),
    #[error("invalid pattern {pattern:?} in the agent profile: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("forbidden pattern {pattern:?} found in {file}: {line}")]
    Forbidden {
        pattern: String,
        file: String,
        line: String,
    },
    #[error("after {secs} s, the agent logs still lack {}{}", missing.join(", "), absent_files(files))]
    Missing {
        secs: u64,
        missing: Vec<String>,
        files: Vec<String>,
    },
}

fn absent_files(files: &[String]) -> String {
    if files.is_empty() {
        String::new()
    } else {
        format!(" (never found: {})", files.join(", "))
    }
}

impl StageFailure for LogCheckError {
    fn is_retryable(&self) -> bool {
        false
    }
}

pub struct LogCheckStage {
    env: Arc<ScanEnv>,
}

impl LogCheckStage {
    pub fn new(env: Arc<ScanEnv>) -> Self {
        LogCheckStage { env }
    }
}

fn compile(patterns: &[String]) -> Result<Vec<(String, Regex)>, LogCheckError> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p)
                .map(|r| (p.clone(), r))
                .map_err(|e| LogCheckError::Pattern {
                    pattern: p.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// One poll's verdict over the files' contents.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Forbidden {
        pattern: String,
        file: String,
        line: String,
    },
    Incomplete {
        missing: Vec<String>,
    },
    Complete {
        excerpts: Vec<(String, String, String)>,
    },
}

/// Judges log contents: `files` are (path, text).
pub fn judge(
    files: &[(String, String)],
    required: &[(String, Regex)],
    forbidden: &[(String, Regex)],
) -> Verdict {
    for (path, text) in files {
        for line in text.lines() {
            if let Some((p, _)) = forbidden.iter().find(|(_, r)| r.is_match(line)) {
                return Verdict::Forbidden {
                    pattern: p.clone(),
                    file: path.clone(),
                    line: line.trim().to_string(),
                };
            }
        }
    }
    let mut excerpts = Vec::new();
    let mut missing = Vec::new();
    for (p, r) in required {
        let hit = files.iter().find_map(|(path, text)| {
            text.lines()
                .find(|l| r.is_match(l))
                .map(|l| (path.clone(), l.trim().to_string()))
        });
        match hit {
            Some((path, line)) => excerpts.push((p.clone(), path, line)),
            None => missing.push(p.clone()),
        }
    }
    if missing.is_empty() {
        Verdict::Complete { excerpts }
    } else {
        Verdict::Incomplete { missing }
    }
}

#[async_trait]
impl Stage for LogCheckStage {
    fn name(&self) -> StageName {
        StageName::LogCheck
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        let os = job_os(ctx);
        let profile = self
            .env
            .agent_for(os)
            .cloned()
            .ok_or(LogCheckError::NoProfile(os))?;
        let required = compile(&profile.required_patterns)?;
        let forbidden = compile(&profile.forbidden_patterns)?;
        let upload_pattern = if profile.upload_confirmed_pattern.is_empty() {
            None
        } else {
            Some(compile(std::slice::from_ref(
                &profile.upload_confirmed_pattern,
            ))?)
        };
        let shell = connect_job_vm(ctx, &self.env).await?;
        // Agent logs may be root's only: the job's own user reads them with sudo.
        let user = match os {
            OsFamily::Linux => self.env.vm.login_user(ctx.job.id),
            OsFamily::Windows => "root".to_string(),
        };
        let timeout = Duration::from_secs(profile.log_timeout_secs);
        let poll = Duration::from_secs(profile.log_poll_secs.max(1));
        let started = Instant::now();
        ctx.info(format!(
            "watching {} for {} required pattern(s), up to {} s",
            profile.log_files.join(", "),
            required.len(),
            timeout.as_secs()
        ))
        .await?;
        loop {
            let mut files = Vec::new();
            let mut absent = Vec::new();
            for path in &profile.log_files {
                match read_as_root(
                    shell.as_ref(),
                    &user,
                    path,
                    MAX_LOG_BYTES,
                    Duration::from_secs(60),
                )
                .await
                {
                    // Windows logs may be UTF-16 (with a byte-order mark).
                    Ok(bytes) => files.push((path.clone(), decode_text(&bytes))),
                    Err(RemoteError::File { .. }) => absent.push(path.clone()),
                    Err(e) => {
                        shell.close().await;
                        return Err(super::shell::ShellError::from(e).into());
                    }
                }
            }
            let verdict = judge(&files, &required, &forbidden);
            ctx.set_detail(json!({"polls_secs": started.elapsed().as_secs(), "files_found": files.iter().map(|(p, t)| json!({"path": p, "bytes": t.len()})).collect::<Vec<_>>(), "files_missing": absent}), false)
                .await?;
            match verdict {
                Verdict::Forbidden {
                    pattern,
                    file,
                    line,
                } => {
                    ctx.set_detail(
                        json!({"forbidden": {"pattern": pattern, "file": file, "line": line}}),
                        true,
                    )
                    .await?;
                    shell.close().await;
                    return Err(LogCheckError::Forbidden {
                        pattern,
                        file,
                        line,
                    }
                    .into());
                }
                Verdict::Complete { excerpts } if !files.is_empty() => {
                    let upload_confirmed = upload_pattern
                        .as_ref()
                        .map(|u| matches!(judge(&files, u, &[]), Verdict::Complete { .. }));
                    for (p, f, l) in &excerpts {
                        ctx.info(format!("found {p:?} in {f}: {l}")).await?;
                    }
                    ctx.set_detail(
                        json!({
                            "excerpts": excerpts.iter().map(|(p, f, l)| json!({"pattern": p, "file": f, "line": l})).collect::<Vec<_>>(),
                            "upload_confirmed": upload_confirmed,
                            "secs": started.elapsed().as_secs_f64(),
                        }),
                        true,
                    )
                    .await?;
                    shell.close().await;
                    return Ok(StageOutcome::Done);
                }
                Verdict::Complete { .. } | Verdict::Incomplete { .. }
                    if started.elapsed() >= timeout =>
                {
                    let missing = match judge(&files, &required, &[]) {
                        Verdict::Incomplete { missing } => missing,
                        _ => vec!["any log file".to_string()],
                    };
                    shell.close().await;
                    return Err(LogCheckError::Missing {
                        secs: timeout.as_secs(),
                        missing,
                        files: absent,
                    }
                    .into());
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<(String, Regex)> {
        compile(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn needs_every_required_pattern_and_no_forbidden_one() {
        let files = vec![(
            "/var/log/a".to_string(),
            "Installing\nProgram exited successfully\n".to_string(),
        )];
        let req = pats(&["exited successfully", "Upload(ed)? successful"]);
        assert_eq!(
            judge(&files, &req, &[]),
            Verdict::Incomplete {
                missing: vec!["Upload(ed)? successful".into()]
            }
        );
        let more = vec![
            files[0].clone(),
            ("/var/log/b".into(), "Upload successful\n".into()),
        ];
        assert!(
            matches!(judge(&more, &req, &[]), Verdict::Complete { excerpts } if excerpts.len() == 2)
        );
        let bad = vec![(
            "/var/log/a".to_string(),
            "ERROR: cannot reach beacon\n".to_string(),
        )];
        assert!(
            matches!(judge(&bad, &req, &pats(&["(?i)\\berror\\b"])), Verdict::Forbidden { line, .. } if line == "ERROR: cannot reach beacon")
        );
    }
}
