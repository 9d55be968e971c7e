//! The watch scheduler: one replica at a time (a lease in the database)
//! checks the watches that are due and queues a scan for each change.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::check::{observe, Observation, Previous, Target};
use crate::artifacts::{check_label, name_from_file, split_version};
use crate::config::Config;
use crate::domain::{now_millis, ChecksumSpec, Millis, Role, SourceUrl};
use crate::pipeline::http::Fetcher;
use crate::pipeline::netpolicy::NetPolicy;
use crate::store::watch::{CheckOutcome, CheckRecord, Recorded, Watch};
use crate::store::{DynStore, NewJob};

/// The lease's name in `leader_leases`.
pub const LEASE: &str = "watch-scheduler";

pub struct Scheduler {
    store: DynStore,
    config: Arc<Config>,
    fetcher: Fetcher,
    holder: String,
}

impl Scheduler {
    pub fn new(store: DynStore, config: Arc<Config>, holder: String) -> Scheduler {
        let fetcher = Fetcher::new(
            &config.fetch,
            Arc::new(NetPolicy::from_config(&config.fetch)),
        );
        Scheduler {
            store,
            config,
            fetcher,
            holder,
        }
    }

    fn lease_ms(&self) -> Millis {
        (self.config.watch.lease_secs * 1000) as Millis
    }

    pub async fn run(self, stop: CancellationToken) {
        let poll = Duration::from_millis(self.config.watch.poll_ms.max(10));
        loop {
            if let Err(e) = self.pass(&stop).await {
                tracing::warn!(error = %e, "watch scheduler pass failed");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        // Hand over at once instead of after the lease runs out.
        let _ = self.store.release_lease(LEASE, &self.holder).await;
    }

    /// One look for due watches, if this process holds (or takes) the lease.
    pub async fn pass(&self, stop: &CancellationToken) -> Result<usize, crate::store::StoreError> {
        let mut checked = 0;
        while !stop.is_cancelled() {
            if !self
                .store
                .acquire_lease(LEASE, &self.holder, now_millis() + self.lease_ms())
                .await?
            {
                return Ok(checked);
            }
            let Some(w) = self.store.due_watches(now_millis(), 1).await?.pop() else {
                return Ok(checked);
            };
            self.check(&w).await?;
            checked += 1;
        }
        Ok(checked)
    }

    /// Checks one watch and records what it found; a change queues its scan
    /// in the same transaction.
    async fn check(&self, w: &Watch) -> Result<(), crate::store::StoreError> {
        let started = now_millis();
        let (outcome, message, obs, job) = match self.observe(w).await {
            Err(e) => (CheckOutcome::Error, e, None, None),
            Ok(obs) if w.fingerprint.as_deref() == Some(obs.fingerprint.as_str()) => (
                CheckOutcome::Unchanged,
                format!("unchanged: {}", obs.identity),
                Some(obs),
                None,
            ),
            // A scan that may not be queued leaves the fingerprint as it
            // was, so the change is picked up once it may.
            Ok(obs) => match self.scan_for(w, &obs).await? {
                Err(why) => (CheckOutcome::Error, why, None, None),
                Ok(job) => {
                    let what = if w.fingerprint.is_none() {
                        "first check"
                    } else {
                        "new image"
                    };
                    (
                        CheckOutcome::Changed,
                        format!("{what}: {}; scan queued", obs.identity),
                        Some(obs),
                        Some(job),
                    )
                }
            },
        };
        let rec = CheckRecord {
            watch_id: &w.id,
            previous: w.fingerprint.as_deref(),
            outcome,
            message: &message,
            image_url: obs.as_ref().map(|o| o.image_url.as_str()),
            fingerprint: obs.as_ref().map(|o| o.fingerprint.as_str()),
            etag: obs.as_ref().and_then(|o| o.etag.as_deref()),
            last_modified: obs.as_ref().and_then(|o| o.last_modified.as_deref()),
            next_check_at: started + w.interval_secs * 1000,
            job,
        };
        match self
            .store
            .record_check(LEASE, &self.holder, now_millis() + self.lease_ms(), rec)
            .await?
        {
            Recorded::Done { job } => {
                tracing::info!(watch = %w.id, %outcome, job = ?job, "watch checked");
            }
            Recorded::Lost => {
                tracing::warn!(watch = %w.id, "watch check not recorded: the scheduler lease or the watch changed meanwhile");
            }
        }
        Ok(())
    }

    /// The scan a change queues, or why none may be.
    async fn scan_for(
        &self,
        w: &Watch,
        obs: &Observation,
    ) -> Result<Result<NewJob, String>, crate::store::StoreError> {
        if let Err(why) = self.owner_may_scan(w).await? {
            return Ok(Err(why));
        }
        Ok(scan_of(w, &obs.image_url, obs.checksum.clone()))
    }

    /// Nobody scans in the name of someone who may no longer: a watch of a
    /// disabled, removed or demoted account queues nothing. (`shell:` owners
    /// made it with the CLI on the database itself.)
    async fn owner_may_scan(
        &self,
        w: &Watch,
    ) -> Result<Result<(), String>, crate::store::StoreError> {
        if w.owner.starts_with("shell:") {
            return Ok(Ok(()));
        }
        Ok(match self.store.get_user(&w.owner).await? {
            None => Err(format!(
                "not scanned: the owner {} no longer exists",
                w.owner
            )),
            Some(u) if u.disabled => Err(format!("not scanned: the owner {} is disabled", w.owner)),
            Some(u) if u.role < Role::Requester => Err(format!(
                "not scanned: the owner {} is now a {} and may not request scans",
                w.owner, u.role
            )),
            Some(_) => Ok(()),
        })
    }

    async fn observe(&self, w: &Watch) -> Result<Observation, String> {
        let url = Url::parse(&w.url).map_err(|e| format!("the watched URL does not parse: {e}"))?;
        let sums = w
            .sums_url
            .as_deref()
            .map(Url::parse)
            .transpose()
            .map_err(|e| format!("the SUMS URL does not parse: {e}"))?;
        let target = Target {
            url: &url,
            kind: &w.kind,
            sums_url: sums.as_ref(),
        };
        let prev = Previous {
            image_url: w.image_url.as_deref(),
            fingerprint: w.fingerprint.as_deref(),
            etag: w.etag.as_deref(),
            last_modified: w.last_modified.as_deref(),
        };
        // Well inside the lease, so a slow server cannot outlive it.
        let limit = Duration::from_millis((self.lease_ms() / 2).max(1000) as u64);
        match tokio::time::timeout(
            limit,
            observe(
                &self.fetcher,
                &target,
                &prev,
                self.config.watch.max_document_bytes,
            ),
        )
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("the check took longer than {} s", limit.as_secs())),
        }
    }
}

/// The scan a change queues: the watch's template with the image it found.
fn scan_of(
    w: &Watch,
    image: &Url,
    checksum: Option<crate::domain::Checksum>,
) -> Result<NewJob, String> {
    let url: SourceUrl = image
        .as_str()
        .parse()
        .map_err(|e| format!("the image URL the watch found cannot be scanned: {e}"))?;
    let mut options = w.template.options.clone();
    options["watch"] = json!(w.id);
    // A new file name that carries a version (`rocky-9-9.4.qcow2`) gives the
    // published version; a file changed in place keeps the default (the
    // scan's time), since published versions never change.
    let renamed = w.image_url.as_deref() != Some(image.as_str());
    if renamed && options.get("version").is_none() {
        let file = url.file_name();
        if let Some((_, v)) = split_version(&name_from_file(&file)) {
            if check_label("version", &v).is_ok() {
                options["version"] = json!(v);
            }
        }
    }
    Ok(NewJob {
        url,
        checksum: checksum.map(ChecksumSpec::Digest),
        requested_by: w.template.requested_by.clone(),
        email: w.template.email.clone(),
        note: w.template.note.clone(),
        options,
    })
}
