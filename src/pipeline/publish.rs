//! publish: after every earlier stage passed, puts the image into the artifact
//! store with its properties, records it in the catalog as the current
//! version, and demotes (optionally archives, or deletes past retention) the
//! versions it replaces.

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::artifacts::{
    self, check_label, name_from_file, render_path, split_version, ArtifactError, Checksums,
    DeployRequest, DynArtifactStore, Properties, STATE_PROPERTY,
};
use crate::config::{NameRule, NewNames, PublishConfig};
use crate::domain::{fmt_bytes, Role, StageName};
use crate::pipeline::{current_image, Stage, StageCtx, StageError, StageFailure, StageOutcome};
use crate::store::catalog::{Image, ImageFilter, ImageName, ImageState, NewImage, Reservation};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no image to publish: no earlier stage recorded one")]
    NoImage,
    #[error("not publishing: the scan did not pass ({0})")]
    NotPassed(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Label(String),
    #[error("not publishing: {0}")]
    NotAllowed(String),
    #[error("not publishing: {name} {version} is already published (record {id}, by {by}, job {job}); published versions never change, so choose another version")]
    Immutable {
        name: String,
        version: String,
        id: i64,
        by: String,
        job: String,
    },
    #[error("publish: {0}")]
    Store(#[from] ArtifactError),
    #[error("publish: {0}")]
    Report(#[from] crate::report::ReportError),
}

impl StageFailure for PublishError {
    fn is_retryable(&self) -> bool {
        matches!(self, PublishError::Store(e) if e.is_retryable())
    }
}

pub struct PublishStage {
    cfg: PublishConfig,
    store: Result<DynArtifactStore, String>,
}

impl PublishStage {
    pub fn new(cfg: &crate::config::Config) -> Self {
        PublishStage {
            cfg: cfg.publish.clone(),
            store: artifacts::from_config(cfg).map_err(|e| e.to_string()),
        }
    }

    /// With a given store (tests, other wiring).
    pub fn with_store(cfg: PublishConfig, store: DynArtifactStore) -> Self {
        PublishStage {
            cfg,
            store: Ok(store),
        }
    }
}

/// Who is publishing: the job's requester, as vmscan knows them now.
#[derive(Clone, Copy, Debug)]
pub struct Publisher<'a> {
    pub user: &'a str,
    pub role: Role,
    pub groups: &'a [String],
}

/// Group DNs compared the way directories do: case-insensitive, no spaces after commas.
fn same_dn(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

/// The catalog's name rule. A name belongs to whoever first published it
/// (or to a group an admin assigned); only they and admins publish further
/// versions. New names: any requester, or only admins (`auth.new_image_names`).
pub fn may_publish(
    p: &Publisher,
    name: &str,
    owner: Option<&ImageName>,
    new_names: NewNames,
) -> Result<(), String> {
    if p.role < Role::Requester {
        return Err(format!(
            "{} has the {} role; publishing needs requester or above",
            p.user, p.role
        ));
    }
    if p.role >= Role::Admin {
        return Ok(());
    }
    let Some(owner) = owner else {
        return match new_names {
            NewNames::Requesters => Ok(()),
            NewNames::Admins => Err(format!(
                "{name:?} is a new image name, and only admins may publish new names"
            )),
        };
    };
    if owner.owner_user.as_deref() == Some(p.user) {
        return Ok(());
    }
    if let Some(g) = &owner.owner_group {
        if p.groups.iter().any(|m| same_dn(m, g)) {
            return Ok(());
        }
    }
    let whose = match (&owner.owner_user, &owner.owner_group) {
        (Some(u), Some(g)) => format!("belongs to {u} and group {g}"),
        (Some(u), None) => format!("belongs to {u}"),
        (None, Some(g)) => format!("belongs to group {g}"),
        (None, None) => "has no owner yet (an admin can assign one)".into(),
    };
    Err(format!(
        "the image name {name:?} {whose}; only its owner or an admin may publish versions of it ({} may not)",
        p.user
    ))
}

fn text<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
    v?.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// Name and version: the submitter's, else derived from the downloaded file
/// name by the configured rule; the version defaults to the job's UTC creation time.
pub fn name_and_version(ctx: &StageCtx, rule: NameRule) -> Result<(String, String), PublishError> {
    let opts = Some(&ctx.job.options);
    let file_name = text(ctx.output_of(StageName::Fetch), "file_name")
        .map(str::to_string)
        .unwrap_or_else(|| {
            ctx.job
                .url
                .rsplit('/')
                .next()
                .unwrap_or("image")
                .to_string()
        });
    let mut name = name_from_file(&file_name);
    let mut version = None;
    if rule == NameRule::StemWithoutVersion {
        if let Some((n, v)) = split_version(&name) {
            name = n;
            version = Some(v);
        }
    }
    let name = text(opts, "name").map(str::to_string).unwrap_or(name);
    let version = text(opts, "version")
        .map(str::to_string)
        .or(version)
        .unwrap_or_else(|| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ctx.job.created_at)
                .unwrap_or_default()
                .format("%Y%m%dT%H%M%SZ")
                .to_string()
        });
    check_label("name", &name).map_err(PublishError::Label)?;
    check_label("version", &version).map_err(PublishError::Label)?;
    Ok((name, version))
}

/// What the earlier stages proved, as item properties.
fn properties(
    ctx: &StageCtx,
    deployed_by: &str,
    name: &str,
    version: &str,
    sums: &Checksums,
) -> Properties {
    let out = |s| ctx.output_of(s);
    let mut p = Properties::new();
    let mut put = |k: &str, v: String| {
        p.insert(format!("vmscan.{k}"), v);
    };
    put("name", name.into());
    put("version", version.into());
    if let Some(d) = text(Some(&ctx.job.options), "description") {
        put("description", d.into());
    }
    if let Some(os) = text(out(StageName::VmCreate), "os") {
        put("os", os.into());
    }
    let source = text(out(StageName::Fetch), "source")
        .map(str::to_string)
        .unwrap_or_else(|| crate::domain::redact_url(&ctx.job.url));
    put("source_url", source);
    put("sha256", sums.sha256.clone());
    put("job_id", ctx.job.id.to_string());
    let ran: Vec<&str> = ctx
        .config
        .pipeline
        .stages
        .iter()
        .filter(|s| **s != StageName::Publish && out(**s).is_some())
        .map(|s| s.as_str())
        .collect();
    put("scan_result", format!("passed ({})", ran.join(", ")));
    let verified = out(StageName::Checksum)
        .and_then(|d| d.get("verified"))
        .and_then(Value::as_bool);
    put(
        "checksum_verified",
        match verified {
            Some(true) => "true",
            Some(false) => "false (no checksum given)",
            None => "not checked",
        }
        .into(),
    );
    let agent = if out(StageName::LogCheck).is_some() {
        "installed, logs checked"
    } else if out(StageName::AgentInstall).is_some() {
        "installed"
    } else {
        "not checked"
    };
    put("agent", agent.into());
    let inventory = match out(StageName::ReportCheck)
        .and_then(|d| d.get("found"))
        .and_then(Value::as_bool)
    {
        Some(true) => "found",
        Some(false) => "not found",
        None => "not checked",
    };
    put("inventory", inventory.into());
    put("deployed_by", deployed_by.to_string());
    put(
        "deployed_at",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    put("state", ImageState::Current.as_str().into());
    p
}

/// The image's disk format: what convert made, else what inspect read, else the extension.
fn image_format(ctx: &StageCtx, path: &std::path::Path) -> String {
    text(ctx.output_of(StageName::Convert), "format")
        .or_else(|| text(ctx.output_of(StageName::Inspect), "format"))
        .map(str::to_string)
        .or_else(|| {
            path.extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
        })
        .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric()) && !f.is_empty())
        .unwrap_or_else(|| "img".into())
}

impl PublishStage {
    /// Marks the other current versions of `image.name` deprecated, archives
    /// them if configured, and deletes versions beyond the retention count.
    async fn demote(
        &self,
        ctx: &StageCtx,
        store: &DynArtifactStore,
        image: &Image,
    ) -> Result<Value, StageError> {
        let all = ctx
            .store()
            .list_images(&ImageFilter {
                name: Some(image.name.clone()),
                include_deleted: true,
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let mut deprecated = Vec::new();
        let mut archived = Vec::new();
        let mut purged = Vec::new();
        let state = Properties::from([(
            STATE_PROPERTY.to_string(),
            ImageState::Deprecated.as_str().to_string(),
        )]);
        for old in all.iter().filter(|o| o.id != image.id) {
            if old.state == ImageState::Current && old.purged_at.is_none() {
                match store.set_properties(&old.repo, &old.path, &state).await {
                    Ok(()) => {}
                    Err(ArtifactError::Refused { status: 404, .. }) => {
                        ctx.warn(format!(
                            "{} {}: artifact {}/{} is gone; marking it deprecated in the catalog only",
                            old.name, old.version, old.repo, old.path
                        ))
                        .await?;
                    }
                    Err(e) => return Err(PublishError::Store(e).into()),
                }
                ctx.store().deprecate_image(old.id).await?;
                ctx.info(format!(
                    "{} {} is now deprecated ({} {} is current)",
                    old.name, old.version, image.name, image.version
                ))
                .await?;
                deprecated.push(old.version.clone());
            }
            if let Some(archive) = &self.cfg.archive_repo {
                if old.archived_at.is_none() && old.purged_at.is_none() && &old.repo != archive {
                    let url = store
                        .move_to(&old.repo, &old.path, archive)
                        .await
                        .map_err(PublishError::Store)?;
                    // Its scan report stays next to it.
                    for report in report_paths(old) {
                        match store.move_to(&old.repo, &report, archive).await {
                            Ok(_) | Err(ArtifactError::Refused { status: 404, .. }) => {}
                            Err(e) => return Err(PublishError::Store(e).into()),
                        }
                    }
                    ctx.store().image_moved(old.id, archive, &url).await?;
                    ctx.info(format!(
                        "moved {} {} to {archive}: {url}",
                        old.name, old.version
                    ))
                    .await?;
                    archived.push(old.version.clone());
                }
            }
        }
        if self.cfg.retention > 0 {
            // `all` is newest first; the new version counts towards the kept ones.
            let keep = self.cfg.retention as usize;
            let mut kept = 1;
            for old in all.iter().filter(|o| o.id != image.id) {
                if kept < keep {
                    kept += 1;
                    continue;
                }
                if old.purged_at.is_some() {
                    continue;
                }
                let repo = self
                    .cfg
                    .archive_repo
                    .clone()
                    .filter(|_| old.archived_at.is_some())
                    .unwrap_or_else(|| old.repo.clone());
                store
                    .delete(&repo, &old.path)
                    .await
                    .map_err(PublishError::Store)?;
                for report in report_paths(old) {
                    match store.delete(&repo, &report).await {
                        Ok(()) | Err(ArtifactError::Refused { status: 404, .. }) => {}
                        Err(e) => return Err(PublishError::Store(e).into()),
                    }
                }
                ctx.store().image_purged(old.id).await?;
                ctx.info(format!(
                    "deleted {} {} ({repo}/{}): beyond the retention of {keep} versions",
                    old.name, old.version, old.path
                ))
                .await?;
                purged.push(old.version.clone());
            }
        }
        Ok(json!({"deprecated": deprecated, "archived": archived, "purged": purged}))
    }
}

#[async_trait]
impl Stage for PublishStage {
    fn name(&self) -> StageName {
        StageName::Publish
    }

    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        // The runner never gets here after a failure; this guards other wiring.
        if let Some(e) = &ctx.job.error {
            return Err(PublishError::NotPassed(e.clone()).into());
        }
        let store = self
            .store
            .as_ref()
            .map_err(|e| PublishError::Store(ArtifactError::Config(e.clone())))?;
        let file = current_image(
            ctx,
            &[StageName::Convert, StageName::Extract, StageName::Fetch],
        )
        .ok_or(PublishError::NoImage)?;
        let (name, version) = name_and_version(ctx, self.cfg.name_rule)?;
        let publisher = self.publisher(ctx).await?;
        let (user, role, groups) = &publisher;
        let who = Publisher {
            user,
            role: *role,
            groups,
        };
        let rule = ctx.config.auth.new_image_names;
        let owner = ctx.store().image_name(&name).await?;
        may_publish(&who, &name, owner.as_ref(), rule).map_err(PublishError::NotAllowed)?;
        let reserved = match ctx
            .store()
            .reserve_image(&name, &version, ctx.job.id, Some(user))
            .await?
        {
            Reservation::Reserved(id) => id,
            Reservation::Taken(img) => {
                return Err(PublishError::Immutable {
                    name,
                    version,
                    id: img.id,
                    by: img.published_by.clone().unwrap_or_else(|| "unknown".into()),
                    job: img
                        .job_id
                        .map(|j| j.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                }
                .into())
            }
        };
        // The first publish of a name makes it the requester's; re-check in
        // case someone else claimed it since the check above.
        let owner = ctx
            .store()
            .claim_image_name(&name, Some(user), None)
            .await?;
        if let Err(e) = may_publish(&who, &name, Some(&owner), rule) {
            ctx.store().release_image(reserved).await?;
            return Err(PublishError::NotAllowed(e).into());
        }
        match self
            .deploy(ctx, store, &file, &name, &version, user, reserved)
            .await
        {
            Ok(()) => Ok(StageOutcome::Done),
            Err(e) => {
                // Nothing was recorded as published: free the version for a retry.
                ctx.store().release_image(reserved).await?;
                Err(e)
            }
        }
    }
}

/// Image properties naming its scan report's paths (next to the image).
pub const REPORT_HTML_PROPERTY: &str = "vmscan.scan_report_html";
pub const REPORT_JSON_PROPERTY: &str = "vmscan.scan_report_json";

/// The scan reports published next to a catalog record's artifact.
fn report_paths(image: &Image) -> Vec<String> {
    [REPORT_HTML_PROPERTY, REPORT_JSON_PROPERTY]
        .iter()
        .filter_map(|k| image.properties.get(*k)?.as_str().map(str::to_string))
        .collect()
}

/// The two published report files.
struct Reports {
    html: crate::artifacts::Deployed,
    json: crate::artifacts::Deployed,
}

impl PublishStage {
    /// Writes the scan report (HTML and JSON) as it stands now, every other
    /// stage passed and the image deployed, and deploys it next to the image
    /// as `{name}-{version}.scan-report.{html,json}`.
    #[allow(clippy::too_many_arguments)]
    async fn publish_reports(
        &self,
        ctx: &StageCtx,
        store: &DynArtifactStore,
        image: &crate::artifacts::Deployed,
        name: &str,
        version: &str,
        format: &str,
        size: u64,
        sums: &Checksums,
    ) -> Result<Reports, StageError> {
        use crate::report::{self, Ending, Publication};
        let publication = Publication {
            name: name.into(),
            version: version.into(),
            store: Some(store.kind().into()),
            repo: Some(image.repo.clone()),
            path: Some(image.path.clone()),
            url: Some(image.url.clone()),
            sha256: Some(sums.sha256.clone()),
            size_bytes: Some(size),
            format: Some(format.into()),
        };
        let built = report::load(
            ctx.store(),
            &ctx.job,
            &ctx.config,
            None,
            Ending::Publishing(Box::new(publication)),
        )
        .await?
        .map_err(|e| PublishError::NotPassed(e.to_string()))?;
        let html = report::render_html(&built).map_err(PublishError::from)?;
        let json = report::render_json(&built);
        let mut out = Vec::new();
        for (ext, body) in [("html", html), ("json", json)] {
            let file = ctx.work_dir.join(format!("scan-report.{ext}"));
            tokio::fs::write(&file, body.as_bytes())
                .await
                .map_err(|e| ArtifactError::io(format!("cannot write {}", file.display()), e))
                .map_err(PublishError::Store)?;
            let (checksums, size) =
                Checksums::of_file(&file)
                    .await
                    .map_err(|source| PublishError::Read {
                        path: file.display().to_string(),
                        source,
                    })?;
            let path = report::published_path(&image.path, name, version, ext);
            let properties = Properties::from([
                ("vmscan.name".to_string(), name.to_string()),
                ("vmscan.version".to_string(), version.to_string()),
                ("vmscan.job_id".to_string(), ctx.job.id.to_string()),
                ("vmscan.kind".to_string(), "scan-report".to_string()),
            ]);
            let deployed = store
                .deploy(&DeployRequest {
                    path,
                    file,
                    size,
                    checksums,
                    properties,
                    // A copy: a retried publish rewrites the work file.
                    may_link: false,
                })
                .await
                .map_err(PublishError::Store)?;
            ctx.info(format!("published the scan report: {}", deployed.url))
                .await?;
            out.push(deployed);
        }
        let json = out.pop().expect("two reports");
        let html = out.pop().expect("two reports");
        Ok(Reports { html, json })
    }

    /// The job's requester with their role and groups as stored now. A job
    /// with no requester was queued from the server's own shell (`vmscan
    /// submit`), whose user holds the database itself.
    async fn publisher(&self, ctx: &StageCtx) -> Result<(String, Role, Vec<String>), StageError> {
        let Some(name) = ctx.job.requested_by.clone() else {
            return Ok((self.cfg.deployed_by.clone(), Role::Admin, Vec::new()));
        };
        match ctx.store().get_user(&name).await? {
            Some(u) if !u.disabled => Ok((u.name, u.role, u.groups)),
            Some(_) => {
                Err(PublishError::NotAllowed(format!("the requester {name} is disabled")).into())
            }
            None => Err(PublishError::NotAllowed(format!(
                "the requester {name:?} is not a vmscan user"
            ))
            .into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy(
        &self,
        ctx: &StageCtx,
        store: &DynArtifactStore,
        file: &std::path::Path,
        name: &str,
        version: &str,
        user: &str,
        reserved: i64,
    ) -> Result<(), StageError> {
        let (name, version) = (name.to_string(), version.to_string());
        let file = file.to_path_buf();
        let format = image_format(ctx, &file);
        let path = render_path(&self.cfg.path_template, &name, &version, &format);
        ctx.set_detail(
            json!({"name": name, "version": version, "format": format, "store": store.kind(), "repo": store.repo(), "path": path, "step": "hashing"}),
            true,
        )
        .await?;
        let (sums, size) =
            Checksums::of_file(&file)
                .await
                .map_err(|source| PublishError::Read {
                    path: file.display().to_string(),
                    source,
                })?;
        let props = properties(ctx, user, &name, &version, &sums);
        ctx.set_detail(
            json!({"step": "deploying", "size": size, "size_human": fmt_bytes(size), "checksums": sums}),
            true,
        )
        .await?;
        ctx.info(format!(
            "publishing {name} {version} ({}, sha256 {}) to {} {}/{path}",
            fmt_bytes(size),
            sums.sha256,
            store.kind(),
            store.repo()
        ))
        .await?;
        let deployed = store
            .deploy(&DeployRequest {
                path: path.clone(),
                file: file.clone(),
                size,
                checksums: sums.clone(),
                properties: props.clone(),
                may_link: file.starts_with(&ctx.work_dir),
            })
            .await
            .map_err(PublishError::Store)?;
        let reports = self
            .publish_reports(ctx, store, &deployed, &name, &version, &format, size, &sums)
            .await?;
        let mut props = props;
        let report_props = Properties::from([
            (REPORT_HTML_PROPERTY.to_string(), reports.html.path.clone()),
            (REPORT_JSON_PROPERTY.to_string(), reports.json.path.clone()),
        ]);
        store
            .set_properties(&deployed.repo, &deployed.path, &report_props)
            .await
            .map_err(PublishError::Store)?;
        props.extend(report_props);
        ctx.set_detail(
            json!({"report_html_url": reports.html.url, "report_json_url": reports.json.url}),
            true,
        )
        .await?;
        ctx.info(if deployed.reused {
            format!(
                "{} already held these bytes (checksum deploy): nothing uploaded; {}",
                store.kind(),
                deployed.url
            )
        } else {
            format!("deployed {}", deployed.url)
        })
        .await?;
        let image = ctx
            .store()
            .complete_image(
                reserved,
                &NewImage {
                    name: name.clone(),
                    version: version.clone(),
                    description: text(Some(&ctx.job.options), "description").map(str::to_string),
                    format,
                    size_bytes: size as i64,
                    sha256: sums.sha256.clone(),
                    sha1: sums.sha1.clone(),
                    md5: sums.md5.clone(),
                    store: store.kind().into(),
                    repo: deployed.repo.clone(),
                    path: deployed.path.clone(),
                    url: deployed.url.clone(),
                    properties: serde_json::to_value(&props).unwrap_or_default(),
                    job_id: ctx.job.id,
                },
            )
            .await?;
        ctx.set_detail(
            json!({"step": "demoting", "url": deployed.url, "reused": deployed.reused, "image_id": image.id, "properties": props}),
            true,
        )
        .await?;
        let demoted = self.demote(ctx, store, &image).await?;
        ctx.set_detail(json!({"step": "done", "demoted": demoted}), true)
            .await?;
        Ok(())
    }
}
