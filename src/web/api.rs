//! The JSON API under `/api/v1`. Other tools drive these names; keep them.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use super::views::{self, JobView, LogView};
use super::{ApiError, ApiResult, AppState};
use crate::domain::{JobId, JobState};
use crate::store::{CancelOutcome, JobFilter, LogLevel};
use crate::submit::blank_to_none;
use crate::submit::{validate, SubmitRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/clusters", get(list_clusters))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/log", get(get_log))
        .route("/api/v1/jobs/{id}/events", get(events))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .fallback(|| async { ApiError::NotFound("no such page or API route".into()) })
}

/// Reads a JSON body with errors that say what is wrong.
/// Content-Type is not enforced (curl -d sends form encoding); the body must be JSON.
fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read request body: {e}"))
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; send a JSON object such as {\"url\": \"https://…\"}".into(),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

/// The clusters a job can target; `default` marks the one used when none is named.
async fn list_clusters(State(st): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "clusters": *st.clusters }))
}

async fn create_job(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let raw = body.as_ref().ok().cloned();
    let req: SubmitRequest = parse_json(body, st.config.server.max_body_bytes)?;
    let new = validate(req, &st.clusters).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    // The requester's name (optional) is kept beside `requested_by`.
    let name = raw
        .and_then(|b| serde_json::from_slice::<RequesterName>(&b).ok())
        .and_then(|r| blank_to_none(r.requester_name));
    if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err(ApiError::Unprocessable(
            "requester_name: longer than 200 characters".into(),
        ));
    }
    let job = st.store.create_job(new).await?;
    if let Some(n) = &name {
        st.store.set_requester_name(job.id, n).await?;
    }
    let who = job.requested_by.as_deref().unwrap_or("anonymous");
    st.store
        .append_system_log(
            job.id,
            LogLevel::Info,
            &format!("submitted by {who}: {}", views::summary(&job).url),
        )
        .await?;
    let mut view = views::job_view(&job, &st.stages, &[], vec![]);
    view.notes = st.notes.to_vec();
    view.requester_name = name;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, view.links.api.clone())],
        Json(view),
    ))
}

#[derive(Deserialize)]
struct RequesterName {
    requester_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub requested_by: Option<String>,
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
    Ok(JobFilter {
        state,
        requested_by: blank_to_none(q.requested_by),
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
    let summaries: Vec<_> = jobs.iter().map(views::summary).collect();
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
    st.store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 5000)"
        )));
    }
    let lines = st.store.log_lines(id, q.after.unwrap_or(0), limit).await?;
    let next = lines.last().map(|l| l.id).or(q.after).unwrap_or(0);
    let views: Vec<LogView> = lines.iter().map(LogView::from).collect();
    Ok(Json(json!({"lines": views, "next_after": next})))
}

async fn cancel_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    let outcome = st.store.request_cancel(id).await?;
    let (status, msg) = match outcome {
        CancelOutcome::Cancelled => (StatusCode::OK, "cancelled before it started".to_string()),
        CancelOutcome::Requested => {
            st.store
                .append_system_log(id, LogLevel::Warn, "cancel requested by user")
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
    let view = load_view(&st, id).await?;
    Ok((status, Json(json!({"message": msg, "job": view}))))
}

async fn retry_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    st.store.retry_job(id).await?;
    st.store
        .append_system_log(
            id,
            LogLevel::Info,
            "retry requested: the job runs again from the first stage",
        )
        .await?;
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
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = parse_id(&id)?;
    load_view(&st, id).await?;
    let mut after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = async_stream::stream! {
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
