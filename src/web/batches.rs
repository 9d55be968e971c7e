//! Batches over the web: `POST /api/v1/batches` takes a manifest (YAML or
//! JSON) and queues all of its images or none; the batch page and
//! `GET /api/v1/batches/{id}` show every job with a summary.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{owner_or_operator, read_body, submission_limits, submit_as};
use super::audit::record;
use super::auth::{Access, Identity};
use super::routes::Routes;
use super::views::{self, Viewer};
use super::{ApiError, ApiResult, AppState};
use crate::batches::{BatchJob, Summary};
use crate::domain::{fmt_millis, BatchId, Role};
use crate::manifest::{self, ManifestErrors, Syntax};
use crate::store::auth::{AuditAction, Outcome};
use crate::store::batch::{Batch, NewBatch};
use crate::store::{CancelOutcome, LogLevel};

pub const CREATE_PATH: &str = "/api/v1/batches";

pub fn routes(r: Routes) -> Routes {
    use Role::*;
    r.post(CREATE_PATH, Access::Role(Requester), create_batch)
        .get("/api/v1/batches", Access::Role(Viewer), list_batches)
        .get("/api/v1/batches/{id}", Access::Role(Viewer), get_batch)
        .post(
            "/api/v1/batches/{id}/cancel",
            Access::Role(Requester),
            cancel_batch,
        )
        .get("/batches", Access::Role(Viewer), batches_page)
        .get("/batches/{id}", Access::Role(Viewer), batch_page)
        .get("/batches/{id}/panel", Access::Role(Viewer), batch_panel)
}

#[derive(Clone, Debug, Serialize)]
pub struct BatchJobView {
    pub key: String,
    pub id: String,
    pub short_id: String,
    pub url: String,
    pub state: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub status_text: String,
    pub page: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BatchView {
    pub id: String,
    pub owner: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: String,
    /// When the summary was recorded (the last job had ended).
    pub closed_at: Option<String>,
    pub summary: Summary,
    pub jobs: Vec<BatchJobView>,
    pub jira: Option<crate::store::notify::JiraIssue>,
    pub api: String,
    pub page: String,
    /// Manifest fields read and ignored (on the submission's answer only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn batch_view(batch: &Batch, jobs: &[BatchJob]) -> BatchView {
    let text = |j: &BatchJob, k: &str| {
        j.job
            .options
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let id = batch.id.to_string();
    BatchView {
        owner: batch.owner.clone(),
        requested_by: batch.requested_by.clone(),
        created_at: fmt_millis(batch.created_at),
        closed_at: batch.closed_at.map(fmt_millis),
        summary: Summary::of(jobs),
        jobs: jobs
            .iter()
            .map(|j| {
                let s = views::summary(&j.job, &[]);
                BatchJobView {
                    key: j.key.clone(),
                    page: format!("/jobs/{}", s.id),
                    id: s.id,
                    short_id: s.short_id,
                    url: s.url,
                    state: j.job.state.as_str().to_string(),
                    name: text(j, "name"),
                    version: text(j, "version"),
                    failed_stage: j.failed_stage.clone(),
                    error: j.job.error.clone(),
                    status_text: s.status_text,
                }
            })
            .collect(),
        jira: batch.jira.clone(),
        api: format!("/api/v1/batches/{id}"),
        page: format!("/batches/{id}"),
        id,
        warnings: Vec::new(),
    }
}

fn parse_batch_id(s: &str) -> ApiResult<BatchId> {
    s.parse::<BatchId>()
        .map_err(|e| ApiError::NotFound(e.to_string()))
}

async fn load(st: &AppState, id: BatchId) -> ApiResult<BatchView> {
    let (batch, jobs) = crate::batches::load(&st.store, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("batch {id} not found")))?;
    Ok(batch_view(&batch, &jobs))
}

/// Checks the whole manifest (its shape, then each image as a single
/// submission by `me`) and queues every image or none.
async fn create_batch(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let refused = |e: ApiError| {
        let st = st.clone();
        let me = me.clone();
        async move {
            record(
                &st,
                &me,
                AuditAction::Submit,
                None,
                Outcome::Refused,
                Some(format!("batch: {e}")),
            )
            .await;
            e
        }
    };
    let body = read_body(body, st.config.server.max_body_bytes)?;
    let syntax = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Syntax::from_content_type)
        .unwrap_or(Syntax::Json);
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the manifest is not UTF-8 text".into()))?;
    let mut m = match manifest::parse(text, syntax) {
        Ok(m) => m,
        Err(e) => return Err(refused(ApiError::Manifest(e)).await),
    };
    if let Err(e) = submission_limits(&st, &me, m.images.len() as i64).await {
        return Err(refused(e).await);
    }
    // The shape's errors and each image's own, in one answer.
    let mut errors = std::mem::take(&mut m.errors);
    let mut jobs = Vec::new();
    for img in &mut m.images {
        let mut req = std::mem::take(&mut img.request);
        req.email = m.email.clone();
        match submit_as(&st, &me, req).await {
            Ok(mut new) => {
                new.options["batch_key"] = json!(img.key);
                jobs.push(new);
            }
            Err(ApiError::Unprocessable(msg)) => errors.push(img.locate(&msg)),
            Err(e) => return Err(e),
        }
    }
    if !errors.is_empty() {
        return Err(refused(ApiError::Manifest(ManifestErrors(errors))).await);
    }
    let (batch, jobs) = st
        .store
        .create_batch(NewBatch {
            requested_by: Some(me.user.clone()),
            owner: m.owner.clone(),
            requester_name: me.display_name.clone(),
            jobs,
        })
        .await?;
    for (j, img) in jobs.iter().zip(&m.images) {
        st.store
            .append_system_log(
                j.id,
                LogLevel::Info,
                &format!(
                    "submitted by {} in batch {} (image {}): {}",
                    me.user,
                    batch.id,
                    img.key,
                    views::summary(j, &[]).url
                ),
            )
            .await?;
    }
    record(
        &st,
        &me,
        AuditAction::Submit,
        Some(batch.id.to_string()),
        Outcome::Ok,
        Some(format!("batch of {} images", jobs.len())),
    )
    .await;
    let loaded = crate::batches::load(&st.store, batch.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("batch {} not found", batch.id)))?;
    let mut view = batch_view(&loaded.0, &loaded.1);
    view.warnings = m.warnings;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, view.api.clone())],
        Json(view),
    ))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    requested_by: Option<String>,
    limit: Option<i64>,
}

async fn list_batches(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 100)"
        )));
    }
    let who = crate::submit::blank_to_none(q.requested_by);
    let mut out = Vec::new();
    for b in st.store.list_batches(who.as_deref(), limit).await? {
        out.push(load(&st, b.id).await?);
    }
    Ok(Json(json!({ "batches": out })))
}

async fn get_batch(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchView>> {
    Ok(Json(load(&st, parse_batch_id(&id)?).await?))
}

/// Cancels every job of the batch that has not ended. As for a job: a
/// requester acts on their own batches, an operator on anyone's.
async fn cancel_batch(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_batch_id(&id)?;
    let batch = st
        .store
        .get_batch(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("batch {id} not found")))?;
    if let Err(e) = owner_or_operator(
        &me,
        batch.requested_by.as_deref(),
        &format!("batch {id}"),
        "cancel",
    ) {
        record(
            &st,
            &me,
            AuditAction::Cancel,
            Some(id.to_string()),
            Outcome::Refused,
            Some(e.to_string()),
        )
        .await;
        return Err(e);
    }
    let (mut cancelled, mut requested) = (0, 0);
    for job in st.store.batch_jobs(id).await? {
        if job.state.is_final() {
            continue;
        }
        match st.store.request_cancel(job.id).await? {
            CancelOutcome::Cancelled => cancelled += 1,
            CancelOutcome::Requested => {
                requested += 1;
                st.store
                    .append_system_log(
                        job.id,
                        LogLevel::Warn,
                        &format!("cancel requested by {} (batch {id})", me.user),
                    )
                    .await?;
            }
            CancelOutcome::AlreadyFinal(_) => {}
        }
    }
    let message = format!(
        "{cancelled} jobs cancelled before they started; {requested} running jobs stop and tear down"
    );
    record(
        &st,
        &me,
        AuditAction::Cancel,
        Some(id.to_string()),
        Outcome::Ok,
        Some(message.clone()),
    )
    .await;
    let view = load(&st, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": message, "batch": view})),
    ))
}

#[derive(Template, WebTemplate)]
#[template(path = "batch.html")]
struct BatchPage {
    me: Viewer,
    panel: BatchPanel,
}

#[derive(Template, WebTemplate)]
#[template(path = "batch_panel.html")]
struct BatchPanel {
    batch: BatchView,
    /// Whether the viewer may cancel this batch.
    can_act: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "batches.html")]
struct BatchesPage {
    me: Viewer,
    batches: Vec<BatchView>,
}

/// The newest batches with their summaries (each links its page).
async fn batches_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
) -> ApiResult<Response> {
    let mut batches = Vec::new();
    for b in st.store.list_batches(None, 50).await? {
        batches.push(load(&st, b.id).await?);
    }
    Ok(BatchesPage {
        me: Viewer::of(&me),
        batches,
    }
    .into_response())
}

async fn batch_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let batch = load(&st, parse_batch_id(&id)?).await?;
    let me = Viewer::of(&me);
    Ok(BatchPage {
        panel: BatchPanel {
            can_act: me.may_act_on(&batch.requested_by),
            batch,
        },
        me,
    }
    .into_response())
}

async fn batch_panel(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let batch = load(&st, parse_batch_id(&id)?).await?;
    let can_act = Viewer::of(&me).may_act_on(&batch.requested_by);
    Ok(BatchPanel { batch, can_act }.into_response())
}
