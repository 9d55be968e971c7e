//! `vmscan watch …`: watched sources on the configured database, as the
//! shell user (the daemon's scheduler does the checking).

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::cli_accounts::{audit, shell_user};
use crate::cluster::Clusters;
use crate::config::Config;
use crate::domain::{fmt_millis, redact_url};
use crate::store::auth::AuditAction;
use crate::store::DynStore;
use crate::submit::validate;
use crate::watch::request::{self, WatchRequest};

// Parsed once per run; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum WatchAction {
    /// Watch a source: its current image is scanned at the first check,
    /// and each new one after that.
    Add {
        url: String,
        /// url (the image itself), pointer (its first line names the
        /// image) or listing (a directory listing plus --pattern).
        #[arg(long, default_value = "url")]
        kind: String,
        /// File-name pattern for a listing (`*` and `?`).
        #[arg(long)]
        pattern: Option<String>,
        /// A SUMS file, as file:URL: its entry identifies and verifies the image.
        #[arg(long)]
        checksum: Option<String>,
        /// Check interval: seconds, or 30m, 6h, 1d.
        #[arg(long)]
        every: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        os: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// Grow each scanned image's disk to this size (20G = 20 GiB).
        #[arg(long)]
        size: Option<String>,
    },
    /// List watches.
    List,
    /// One watch and its last checks.
    Show {
        id: String,
    },
    /// Check a watch at once.
    Check {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Delete a watch (the scans it queued stay).
    Rm {
        id: String,
    },
}

pub async fn watch(
    store: &DynStore,
    cfg: &Config,
    action: WatchAction,
) -> anyhow::Result<ExitCode> {
    match action {
        WatchAction::Add {
            url,
            kind,
            pattern,
            checksum,
            every,
            name,
            description,
            cluster,
            os,
            note,
            size,
        } => {
            let req = WatchRequest {
                url: Some(url),
                kind: Some(kind),
                pattern,
                checksum,
                interval: every.map(serde_json::Value::String),
                name,
                description,
                cluster,
                os,
                note,
                size: size.map(serde_json::Value::String),
                ..Default::default()
            };
            let (checked, scan) = request::check(req, &cfg.watch).map_err(anyhow::Error::msg)?;
            let scan = validate(scan, &Clusters::configured(cfg))?;
            let owner = shell_user();
            let w = store
                .create_watch(&checked.into_watch(&owner, scan))
                .await?;
            audit(
                store,
                AuditAction::WatchCreated,
                Some(w.id.clone()),
                Some(redact_url(&w.url)),
            )
            .await;
            println!("{}", w.id);
        }
        WatchAction::List => {
            println!(
                "{:<36}  {:<8}  {:<10}  {:<20}  URL",
                "ID", "KIND", "LAST", "NEXT CHECK"
            );
            for w in store.list_watches(None).await? {
                println!(
                    "{:<36}  {:<8}  {:<10}  {:<20}  {}",
                    w.id,
                    w.kind.as_str(),
                    w.last_outcome.map(|o| o.as_str()).unwrap_or("-"),
                    if w.enabled {
                        fmt_millis(w.next_check_at)
                    } else {
                        "paused".into()
                    },
                    redact_url(&w.url)
                );
            }
        }
        WatchAction::Show { id } => {
            let w = store
                .get_watch(&id)
                .await?
                .with_context(|| format!("watch {id} not found"))?;
            println!("watch    {}\nurl      {}\nkind     {}\nowner    {}\nevery    {} s\nimage    {}\nchecks   {}  scans {}", w.id, redact_url(&w.url), w.kind, w.owner, w.interval_secs, w.image_url.as_deref().unwrap_or("-"), w.checks, w.scans);
            for c in store.watch_checks(&id, 20).await? {
                println!(
                    "  {}  {:<9}  {}{}",
                    fmt_millis(c.ts),
                    c.outcome.as_str(),
                    c.message,
                    c.job_id.map(|j| format!("  job {j}")).unwrap_or_default()
                );
            }
        }
        WatchAction::Check { id } => {
            if !store.check_watch_now(&id).await? {
                bail!("watch {id} not found");
            }
            audit(
                store,
                AuditAction::WatchChanged,
                Some(id),
                Some("check now".into()),
            )
            .await;
        }
        WatchAction::Pause { id } => set_enabled(store, id, false).await?,
        WatchAction::Resume { id } => set_enabled(store, id, true).await?,
        WatchAction::Rm { id } => {
            if !store.delete_watch(&id).await? {
                bail!("watch {id} not found");
            }
            audit(store, AuditAction::WatchDeleted, Some(id), None).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_enabled(store: &DynStore, id: String, enabled: bool) -> anyhow::Result<()> {
    if !store.set_watch_enabled(&id, enabled).await? {
        bail!("watch {id} not found");
    }
    let what = if enabled { "resumed" } else { "paused" };
    audit(
        store,
        AuditAction::WatchChanged,
        Some(id),
        Some(what.into()),
    )
    .await;
    Ok(())
}
