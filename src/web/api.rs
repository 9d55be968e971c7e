//! The JSON API under `/api/v1`. Other tools drive these names; keep them.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::{Extension, Json};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use super::audit::record;
use super::auth::{Access, Denied, Identity};
use super::routes::Routes;
use super::views::{self, JobView, LogView};
use super::{ApiError, ApiResult, AppState};
use crate::domain::{JobId, JobState, Role};
use crate::store::auth::{AuditAction, Outcome};
use crate::store::Job;
use crate::store::{CancelOutcome, JobFilter, LogLevel};
use crate::submit::blank_to_none;
use crate::submit::{validate, SubmitRequest};

pub fn routes(r: Routes) -> Routes {
    use Role::*;
    r.post("/api/v1/jobs", Access::Role(Requester), create_job)
        .get("/api/v1/jobs", Access::Role(Viewer), list_jobs)
        .get("/api/v1/clusters", Access::Role(Viewer), list_clusters)
        .get("/api/v1/jobs/{id}", Access::Role(Viewer), get_job)
        .get("/api/v1/jobs/{id}/log", Access::Role(Viewer), get_log)
        .get(
            "/api/v1/jobs/{id}/log.txt",
            Access::Role(Viewer),
            download_log,
        )
        .get("/api/v1/jobs/{id}/events", Access::Role(Viewer), events)
        .post(
            "/api/v1/jobs/{id}/cancel",
            Access::Role(Requester),
            cancel_job,
        )
        .post(
            "/api/v1/jobs/{id}/retry",
            Access::Role(Requester),
            retry_job,
        )
}

/// Reads a JSON body with errors that say what is wrong. The gate already
/// refused bodies that are not `Content-Type: application/json`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> ApiResult<T> {
    let body = read_body(body, limit)?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; send a JSON object such as {\"url\": \"https://…\"}".into(),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

/// A request body, or the error that says why it could not be read.
pub fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read request body: {e}"))
        }
    })
}

/// The clusters a job can target; `default` marks the one used when none is named.
async fn list_clusters(State(st): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "clusters": *st.clusters }))
}

async fn create_job(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let req: SubmitRequest = parse_json(body, st.config.server.max_body_bytes)?;
    if let Err(e) = submission_limits(&st, &me, 1).await {
        record(
            &st,
            &me,
            AuditAction::Submit,
            None,
            Outcome::Refused,
            Some(e.to_string()),
        )
        .await;
        return Err(e);
    }
    let new = match submit_as(&st, &me, req).await {
        Ok(n) => n,
        Err(e) => {
            record(
                &st,
                &me,
                AuditAction::Submit,
                None,
                Outcome::Refused,
                Some(e.to_string()),
            )
            .await;
            return Err(e);
        }
    };
    let job = st.store.create_job(new).await?;
    let name = me.display_name.clone();
    if let Some(n) = &name {
        st.store.set_requester_name(job.id, n).await?;
    }
    st.store
        .append_system_log(
            job.id,
            LogLevel::Info,
            &format!(
                "submitted by {}: {}",
                me.user,
                views::summary(&job, &[]).url
            ),
        )
        .await?;
    record(
        &st,
        &me,
        AuditAction::Submit,
        Some(job.id.to_string()),
        Outcome::Ok,
        Some(views::summary(&job, &[]).url),
    )
    .await;
    let mut view = views::job_view(&job, &st.stages, &[], vec![]);
    view.notes = st.notes.to_vec();
    view.requester_name = name;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, view.links.api.clone())],
        Json(view),
    ))
}

/// A full queue, or a user submitting faster than `server.max_submissions_per_minute`: 429.
/// A batch counts as its `n` jobs: one that does not fit is refused whole.
pub async fn submission_limits(st: &AppState, me: &Identity, n: i64) -> ApiResult<()> {
    let cfg = &st.config.server;
    let batch = |n: i64| {
        if n > 1 {
            format!("; this batch of {n} scans does not fit")
        } else {
            String::new()
        }
    };
    let queued = st.store.count_queued().await?;
    if queued + n > cfg.max_queued_jobs {
        let what = if queued >= cfg.max_queued_jobs {
            "the queue is full"
        } else {
            "the queue has no room"
        };
        return Err(ApiError::TooMany(
            format!(
                "{what}: {queued} jobs are waiting for a worker (server.max_queued_jobs = {}){}; try again later",
                cfg.max_queued_jobs,
                batch(n)
            ),
            60,
        ));
    }
    let since = crate::domain::now_millis() - 60_000;
    let mine = st.store.count_recent_jobs(&me.user, since).await?;
    if mine + n > cfg.max_submissions_per_minute {
        return Err(ApiError::TooMany(
            format!(
                "{} submitted {mine} scans in the last minute (server.max_submissions_per_minute = {}){}; try again in a minute",
                me.user,
                cfg.max_submissions_per_minute,
                batch(n)
            ),
            60,
        ));
    }
    Ok(())
}

/// Validates a submission as `me`: the requester is the login, the email is
/// theirs, extra addresses only in the configured domains, and the catalog
/// name must be one they may publish to.
pub async fn submit_as(
    st: &AppState,
    me: &Identity,
    mut req: SubmitRequest,
) -> ApiResult<crate::store::NewJob> {
    let unprocessable = |m: String| ApiError::Unprocessable(m);
    if let Some(r) = blank_to_none(req.requested_by.take()) {
        if r != me.user {
            return Err(unprocessable(format!(
                "requested_by: is taken from your login ({}); a scan cannot be filed as {r:?}",
                me.user
            )));
        }
    }
    let also = crate::submit::also_notify(
        blank_to_none(req.email.take()),
        me.email.as_deref(),
        &st.config.auth.notify_domains,
    )
    .map_err(|e| unprocessable(e.to_string()))?;
    let mut new = validate(req, &st.clusters).map_err(|e| unprocessable(e.to_string()))?;
    new.requested_by = Some(me.user.clone());
    new.email = me.email.clone();
    if !also.is_empty() {
        new.options["also_notify"] = json!(also);
    }
    if let Some(name) = new.options.get("name").and_then(|v| v.as_str()) {
        let owner = st.store.image_name(name).await?;
        let publisher = crate::pipeline::publish::Publisher {
            user: &me.user,
            role: me.user_role,
            groups: &me.groups,
        };
        crate::pipeline::publish::may_publish(
            &publisher,
            name,
            owner.as_ref(),
            st.config.auth.new_image_names,
        )
        .map_err(|e| unprocessable(format!("name: {e}")))?;
        if let Some(v) = new.options.get("version").and_then(|v| v.as_str()) {
            let taken = st
                .store
                .list_images(&crate::store::catalog::ImageFilter {
                    name: Some(name.to_string()),
                    include_deleted: true,
                    limit: 1000,
                    ..Default::default()
                })
                .await?
                .into_iter()
                .any(|i| i.version == v);
            if taken {
                return Err(unprocessable(format!(
                    "version: {name} {v} is already published, and published versions never change; choose another version"
                )));
            }
        }
    }
    Ok(new)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub requested_by: Option<String>,
    pub cluster: Option<String>,
    pub os: Option<String>,
    /// Free text over URL, note, image name, version and description.
    pub q: Option<String>,
    pub before: Option<String>,
    pub limit: Option<i64>,
}

pub fn parse_filter(q: ListQuery, default_limit: i64) -> ApiResult<JobFilter> {
    let state = blank_to_none(q.state)
        .map(|s| s.parse::<JobState>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("state: {e}")))?;
    let before = blank_to_none(q.before)
        .map(|s| s.parse::<JobId>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("before: {e}")))?;
    let limit = q.limit.unwrap_or(default_limit);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 500)"
        )));
    }
    let text = blank_to_none(q.q).map(|t| t.trim().to_string());
    if text.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(ApiError::BadRequest(
            "q: at most 200 characters".to_string(),
        ));
    }
    Ok(JobFilter {
        state,
        requested_by: blank_to_none(q.requested_by),
        cluster: blank_to_none(q.cluster),
        os: blank_to_none(q.os),
        text,
        before,
        limit,
    })
}

async fn list_jobs(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = parse_filter(q, 50)?;
    let jobs = st.store.list_jobs(&filter).await?;
    let next = (jobs.len() as i64 == filter.limit)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    let summaries: Vec<_> = jobs.iter().map(|j| views::summary(j, &st.stages)).collect();
    Ok(Json(json!({"jobs": summaries, "next_before": next})))
}

pub fn parse_id(s: &str) -> ApiResult<JobId> {
    s.parse::<JobId>()
        .map_err(|e| ApiError::NotFound(e.to_string()))
}

pub async fn load_view(st: &AppState, id: JobId) -> ApiResult<JobView> {
    let job = st
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let runs = st.store.stage_runs(id).await?;
    let resources = st.store.resources(id).await?;
    let mut view = views::job_view(&job, &st.stages, &runs, resources);
    view.notes = st.notes.to_vec();
    view.requester_name = st.store.requester_name(id).await?;
    view.jira = st.store.jira_issue(id).await?;
    view.notifications = st
        .store
        .job_notifications(id)
        .await?
        .iter()
        .map(views::NotificationView::from)
        .collect();
    Ok(view)
}

async fn get_job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(load_view(&st, parse_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

async fn get_log(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = parse_id(&id)?;
    let job = job_or_404(&st, id).await?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 5000)"
        )));
    }
    let lines = st.store.log_lines(id, q.after.unwrap_or(0), limit).await?;
    let next = lines.last().map(|l| l.id).or(q.after).unwrap_or(0);
    let views: Vec<LogView> = lines.iter().map(LogView::from).collect();
    let dropped = job.log_dropped;
    Ok(Json(
        json!({"lines": views, "next_after": next, "dropped": dropped}),
    ))
}

async fn job_or_404(st: &AppState, id: JobId) -> ApiResult<Job> {
    st.store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))
}

/// The whole kept log as a text file ("download log"), read from the store
/// a page at a time while it is sent, so memory stays one page.
async fn download_log(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let job = job_or_404(&st, id).await?;
    let store = st.store.clone();
    let dropped = job.log_dropped;
    let body = async_stream::stream! {
        let mut after = 0;
        loop {
            let lines = match store.log_lines(id, after, 2000).await {
                Ok(l) => l,
                Err(e) => {
                    yield Ok::<_, std::io::Error>(format!("-- log read failed: {e}\n"));
                    break;
                }
            };
            let Some(last) = lines.last() else { break };
            after = last.id;
            let mut chunk = String::new();
            for l in &lines {
                let v = LogView::from(l);
                chunk.push_str(&format!(
                    "{} {}{} {}\n",
                    v.ts,
                    v.stage.map(|s| format!("[{s}] ")).unwrap_or_default(),
                    v.level,
                    v.message
                ));
            }
            yield Ok(chunk);
        }
        if dropped > 0 {
            yield Ok(format!("-- {dropped} lines were dropped between the first and the newest (storage.max_log_lines)\n"));
        }
    };
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"vmscan-{id}.log\""),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// A requester acts on their own jobs only; operators on anyone's. A refusal
/// is recorded in the audit trail under `action`.
async fn own_job(st: &AppState, me: &Identity, id: JobId, action: AuditAction) -> ApiResult<Job> {
    let r = check_owner(st, me, id, action.as_str()).await;
    if let Err(e) = &r {
        record(
            st,
            me,
            action,
            Some(id.to_string()),
            Outcome::Refused,
            Some(e.to_string()),
        )
        .await;
    }
    r
}

async fn check_owner(st: &AppState, me: &Identity, id: JobId, what: &str) -> ApiResult<Job> {
    let job = st
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    owner_or_operator(me, job.requested_by.as_deref(), &format!("job {id}"), what)?;
    Ok(job)
}

/// The rule for acting on a job or a batch: its requester, or an operator.
/// `thing` is "job …" / "batch …"; `what` the action ("cancel").
pub fn owner_or_operator(
    me: &Identity,
    requested_by: Option<&str>,
    thing: &str,
    what: &str,
) -> ApiResult<()> {
    if requested_by == Some(me.user.as_str()) || me.may(Role::Operator) {
        return Ok(());
    }
    let owner = requested_by.unwrap_or("nobody");
    let kind = thing.split(' ').next().unwrap_or(thing);
    Err(ApiError::Denied(Denied {
        required_role: Some(Role::Operator),
        ..Denied::forbidden(format!(
            "{thing} was requested by {owner}; to {what} someone else's {kind} you need the operator role ({} has {})",
            me.user, me.role
        ))
    }))
}

async fn cancel_job(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    own_job(&st, &me, id, AuditAction::Cancel).await?;
    let outcome = st.store.request_cancel(id).await?;
    let (status, msg) = match outcome {
        CancelOutcome::Cancelled => (StatusCode::OK, "cancelled before it started".to_string()),
        CancelOutcome::Requested => {
            st.store
                .append_system_log(
                    id,
                    LogLevel::Warn,
                    &format!("cancel requested by {}", me.user),
                )
                .await?;
            (
                StatusCode::ACCEPTED,
                "cancel requested; the running stage stops and teardown runs".to_string(),
            )
        }
        CancelOutcome::AlreadyFinal(s) => {
            return Err(ApiError::Conflict(format!(
                "job {id} already {s}; nothing to cancel"
            )))
        }
    };
    record(
        &st,
        &me,
        AuditAction::Cancel,
        Some(id.to_string()),
        Outcome::Ok,
        Some(msg.clone()),
    )
    .await;
    let view = load_view(&st, id).await?;
    Ok((status, Json(json!({"message": msg, "job": view}))))
}

async fn retry_job(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    own_job(&st, &me, id, AuditAction::Retry).await?;
    st.store.retry_job(id).await?;
    st.store
        .append_system_log(
            id,
            LogLevel::Info,
            &format!(
                "retry requested by {}: the job runs again from the first stage",
                me.user
            ),
        )
        .await?;
    record(
        &st,
        &me,
        AuditAction::Retry,
        Some(id.to_string()),
        Outcome::Ok,
        None,
    )
    .await;
    let view = load_view(&st, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "job queued again", "job": view})),
    ))
}

/// Live updates: `log` events (id = log line id, so a reconnect resumes),
/// `job` events with the whole job view, and `end` when the job is final.
async fn events(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_id(&id)?;
    load_view(&st, id).await?;
    // Held by the stream: dropping it (the client went away) frees the slot.
    let slot = st.streams.open(
        &me.user,
        st.config.server.max_event_streams,
        st.config.server.max_event_streams_per_user,
    )?;
    let mut after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut last_job = String::new();
        loop {
            if let Ok(lines) = st.store.log_lines(id, after, 500).await {
                for l in &lines {
                    after = l.id;
                    let data = serde_json::to_string(&LogView::from(l)).unwrap_or_default();
                    yield Ok(Event::default().event("log").id(l.id.to_string()).data(data));
                }
            }
            match load_view(&st, id).await {
                Ok(view) => {
                    let data = serde_json::to_string(&view).unwrap_or_default();
                    if data != last_job {
                        yield Ok(Event::default().event("job").data(data.clone()));
                        last_job = data;
                    }
                    if view.state.is_final() {
                        // The last lines (the job's summary) are written before
                        // the state: read once more so none is left behind.
                        if let Ok(lines) = st.store.log_lines(id, after, 5000).await {
                            for l in &lines {
                                let data = serde_json::to_string(&LogView::from(l)).unwrap_or_default();
                                yield Ok(Event::default().event("log").id(l.id.to_string()).data(data));
                            }
                        }
                        yield Ok(Event::default().event("end").data(view.state.as_str()));
                        break;
                    }
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
