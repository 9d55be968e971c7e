//! A finished job's scan report: `GET /api/v1/jobs/{id}/report.html`,
//! `…/report.json` and `…/report.xml` (JUnit). Readable by whoever may read
//! the job; a job that has not ended yet is `409`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::auth::Access;
use super::routes::Routes;
use super::{ApiError, ApiResult, AppState};
use crate::domain::Role;
use crate::report::{self, Ending, ScanReport};

pub fn routes(r: Routes) -> Routes {
    r.get(
        "/api/v1/jobs/{id}/report.html",
        Access::Role(Role::Viewer),
        report_html,
    )
    .get(
        "/api/v1/jobs/{id}/report.json",
        Access::Role(Role::Viewer),
        report_json,
    )
    .get(
        "/api/v1/jobs/{id}/report.xml",
        Access::Role(Role::Viewer),
        report_xml,
    )
}

async fn load(st: &AppState, id: &str) -> ApiResult<ScanReport> {
    let id = super::api::parse_id(id)?;
    let job = st
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let default_cluster = st
        .clusters
        .iter()
        .find(|c| c.default)
        .map(|c| c.name.clone());
    report::load(
        &st.store,
        &job,
        &st.config,
        default_cluster,
        Ending::Finished,
    )
    .await?
    .map_err(|e| ApiError::Conflict(e.to_string()))
}

/// A download name: `vmscan-report-<job>.<ext>`.
fn disposition(r: &ScanReport, ext: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "inline; filename=\"vmscan-report-{}.{ext}\"",
        r.job.id
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("inline"))
}

async fn report_html(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = load(&st, &id).await?;
    let page = report::render_html(&r).map_err(|e| ApiError::Internal(e.into()))?;
    let mut resp = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition(&r, "html")),
        ],
        page,
    )
        .into_response();
    // The page's inline style sheet, by hash; the site-wide policy keeps this one.
    if let Ok(v) = HeaderValue::from_str(&report::REPORT_CSP) {
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(resp)
}

async fn report_json(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = load(&st, &id).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_DISPOSITION, disposition(&r, "json")),
        ],
        report::render_json(&r),
    )
        .into_response())
}

async fn report_xml(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let r = load(&st, &id).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition(&r, "xml")),
        ],
        report::render_junit(&r),
    )
        .into_response())
}
