//! `vmscan submit -f manifest.yml [--wait]`: a manifest queued as one batch
//! from the command line, on the configured store (no daemon needed).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::batches::Summary;
use crate::cluster::Clusters;
use crate::config::Config;
use crate::manifest::{self, ManifestErrors, Syntax};
use crate::store::auth::AuditAction;
use crate::store::batch::NewBatch;
use crate::store::DynStore;
use crate::submit::{validate, SubmitRequest};

/// Checks every image; prints each problem with its image and field and
/// queues nothing, or queues all and prints each job's id.
pub async fn submit(
    cfg: &Config,
    store: &DynStore,
    file: &Path,
    defaults: SubmitRequest,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the manifest {}", file.display()))?;
    let fail = |e: ManifestErrors| {
        eprintln!("{}: nothing was queued:", file.display());
        for f in &e.0 {
            eprintln!("  {f}");
        }
        Ok(ExitCode::from(2))
    };
    let mut m = match manifest::parse(&text, Syntax::from_path(file)) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    for w in &m.warnings {
        eprintln!("warning: {w}");
    }
    let clusters = Clusters::configured(cfg);
    let mut jobs = Vec::new();
    let mut errors = std::mem::take(&mut m.errors);
    for img in &mut m.images {
        let mut req = std::mem::take(&mut img.request);
        // Flags fill in what the manifest leaves out.
        req.email = req.email.or_else(|| defaults.email.clone());
        req.note = req.note.or_else(|| defaults.note.clone());
        req.cluster = req.cluster.or_else(|| defaults.cluster.clone());
        req.os = req.os.or_else(|| defaults.os.clone());
        match validate(req, &clusters) {
            Ok(mut new) => {
                new.options["batch_key"] = serde_json::json!(img.key);
                jobs.push(new);
            }
            Err(e) => errors.push(img.locate(&e.0)),
        }
    }
    if !errors.is_empty() {
        return fail(ManifestErrors(errors));
    }
    let requested_by = jobs.first().and_then(|j| j.requested_by.clone());
    let (batch, jobs) = store
        .create_batch(NewBatch {
            requested_by,
            owner: m.owner.clone(),
            requester_name: None,
            jobs,
        })
        .await?;
    crate::cli_accounts::audit(
        store,
        AuditAction::Submit,
        Some(batch.id.to_string()),
        Some(format!("batch of {} images", jobs.len())),
    )
    .await;
    println!("batch {}", batch.id);
    for (j, img) in jobs.iter().zip(&m.images) {
        println!("{}  {}", j.id, img.key);
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, jobs) = crate::batches::load(store, batch.id)
            .await?
            .context("the batch vanished")?;
        let summary = Summary::of(&jobs);
        if !summary.ended {
            continue;
        }
        println!();
        for j in &jobs {
            let how = match (&j.failed_stage, &j.job.error) {
                (Some(st), Some(e)) => format!("failed at {st}: {e}"),
                (None, Some(e)) if !j.job.state.as_str().eq("succeeded") => {
                    format!("{}: {e}", j.job.state)
                }
                _ => j.job.state.to_string(),
            };
            println!("{:<24} {}  {how}", j.key, j.job.id);
        }
        println!("{}", summary.text);
        return Ok(if summary.succeeded == summary.total {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
}
