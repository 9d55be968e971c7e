//! The audit trail: `record` for every handler that acts, `GET /api/v1/audit`
//! and the `/audit` page for admins.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Access, Identity};
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiError, ApiResult, AppState};
use crate::domain::{fmt_millis, Role};
use crate::store::auth::{AuditAction, AuditEntry, AuditFilter, AuditRecord, Outcome};
use crate::submit::blank_to_none;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/audit", Access::Role(Role::Admin), list).get(
        "/audit",
        Access::Role(Role::Admin),
        page,
    )
}

/// Appends to the audit trail; a failure to write is logged, never hidden.
pub async fn record(
    st: &AppState,
    me: &Identity,
    action: AuditAction,
    object: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
) {
    record_as(
        st,
        Some(me.user.clone()),
        me.address.clone(),
        action,
        object,
        outcome,
        detail,
    )
    .await
}

pub async fn record_as(
    st: &AppState,
    actor: Option<String>,
    address: Option<String>,
    action: AuditAction,
    object: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
) {
    let e = AuditEntry {
        actor,
        address,
        action,
        object,
        outcome,
        detail,
    };
    if let Err(err) = st.store.append_audit(&e).await {
        tracing::error!(error = %err, action = %e.action, "cannot write the audit trail");
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub object: Option<String>,
    /// RFC 3339 time or milliseconds since the epoch.
    pub since: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

fn parse(q: AuditQuery) -> ApiResult<AuditFilter> {
    let action = blank_to_none(q.action)
        .map(|a| {
            AuditAction::parse(&a).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "action: {a:?} is not an audit action ({})",
                    AuditAction::ALL.map(|a| a.as_str()).join(", ")
                ))
            })
        })
        .transpose()?;
    let outcome = blank_to_none(q.outcome)
        .map(|o| match o.as_str() {
            "ok" => Ok(Outcome::Ok),
            "refused" => Ok(Outcome::Refused),
            "failed" => Ok(Outcome::Failed),
            _ => Err(ApiError::BadRequest(format!(
                "outcome: {o:?} is not ok, refused or failed"
            ))),
        })
        .transpose()?;
    let since = blank_to_none(q.since)
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .or_else(|| {
                    chrono::DateTime::parse_from_rfc3339(&s)
                        .ok()
                        .map(|t| t.timestamp_millis())
                })
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "since: {s:?} is neither RFC 3339 nor milliseconds"
                    ))
                })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 1000)"
        )));
    }
    Ok(AuditFilter {
        actor: blank_to_none(q.actor),
        action,
        outcome,
        object: blank_to_none(q.object),
        since,
        before: q.before,
        limit,
    })
}

async fn list(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let f = parse(q)?;
    let entries = st.store.list_audit(&f).await?;
    let next = (entries.len() as i64 == f.limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({"entries": entries, "next_before": next})))
}

pub struct AuditRow {
    pub e: AuditRecord,
    pub when: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "audit.html")]
struct AuditPage {
    me: Viewer,
    rows: Vec<AuditRow>,
    actor: String,
    action: String,
    outcome: String,
    actions: Vec<&'static str>,
    next_before: Option<i64>,
    filter_qs: String,
}

async fn page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Response> {
    let actor = q.actor.clone().unwrap_or_default();
    let action = q.action.clone().unwrap_or_default();
    let outcome = q.outcome.clone().unwrap_or_default();
    let f = parse(q)?;
    let entries = st.store.list_audit(&f).await?;
    let next_before = (entries.len() as i64 == f.limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let filter_qs = format!(
        "actor={}&action={}&outcome={}",
        enc(&actor),
        enc(&action),
        enc(&outcome)
    );
    Ok(AuditPage {
        me: Viewer::of(&me),
        rows: entries
            .into_iter()
            .map(|e| AuditRow {
                when: fmt_millis(e.ts),
                e,
            })
            .collect(),
        actor,
        action,
        outcome,
        actions: AuditAction::ALL.map(|a| a.as_str()).to_vec(),
        next_before,
        filter_qs,
    }
    .into_response())
}
