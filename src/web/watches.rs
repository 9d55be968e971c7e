//! Watched sources: the JSON API under `/api/v1/watches` and the
//! `/watches` pages. A watch is made as its owner (the same checks as a
//! submission) and each scan it queues is filed in their name.

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{owner_or_operator, parse_json, submit_as};
use super::audit::record;
use super::auth::{Access, Identity};
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiError, ApiResult, AppState};
use crate::domain::{fmt_millis, redact_url, Role};
use crate::store::auth::{AuditAction, Outcome};
use crate::store::watch::{NewWatch, Watch, WatchCheck};
use crate::watch::request::{self, WatchRequest};

pub fn routes(r: Routes) -> Routes {
    use Role::*;
    r.post("/api/v1/watches", Access::Role(Requester), create_watch)
        .get("/api/v1/watches", Access::Role(Viewer), list_watches)
        .get("/api/v1/watches/{id}", Access::Role(Viewer), get_watch)
        .patch("/api/v1/watches/{id}", Access::Role(Requester), patch_watch)
        .delete(
            "/api/v1/watches/{id}",
            Access::Role(Requester),
            delete_watch,
        )
        .post(
            "/api/v1/watches/{id}/check",
            Access::Role(Requester),
            check_now,
        )
        .get("/watches", Access::Role(Viewer), watches_page)
        .get("/watches/{id}", Access::Role(Viewer), watch_page)
}

fn unprocessable(m: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(m.into())
}

/// Validates a watch request as `me`; the scan template goes through the
/// same checks as a submission, as `me`.
async fn new_watch(st: &AppState, me: &Identity, req: WatchRequest) -> ApiResult<NewWatch> {
    let (checked, scan) = request::check(req, &st.config.watch).map_err(ApiError::Unprocessable)?;
    let new = submit_as(st, me, scan).await?;
    Ok(checked.into_watch(&me.user, new))
}

/// A watch as the API shows it.
#[derive(Serialize)]
pub struct WatchView {
    #[serde(flatten)]
    pub watch: Watch,
    pub url_redacted: String,
    pub interval: String,
    pub next_check: String,
    pub last_check: Option<String>,
    pub links: WatchLinks,
}

#[derive(Serialize)]
pub struct WatchLinks {
    pub page: String,
    pub api: String,
}

fn human_interval(secs: i64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{} d", s / 86400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn view(w: Watch) -> WatchView {
    WatchView {
        url_redacted: redact_url(&w.url),
        interval: human_interval(w.interval_secs),
        next_check: fmt_millis(w.next_check_at),
        last_check: w.last_check_at.map(fmt_millis),
        links: WatchLinks {
            page: format!("/watches/{}", w.id),
            api: format!("/api/v1/watches/{}", w.id),
        },
        watch: w,
    }
}

async fn create_watch(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let req: WatchRequest = parse_json(body, st.config.server.max_body_bytes)?;
    let refused = |e: ApiError| async {
        record(
            &st,
            &me,
            AuditAction::WatchCreated,
            None,
            Outcome::Refused,
            Some(e.to_string()),
        )
        .await;
        e
    };
    let mine = st.store.count_watches(&me.user).await?;
    if mine >= st.config.watch.max_per_user {
        let e = ApiError::TooMany(
            format!(
                "{} owns {mine} watches (watch.max_per_user = {}); delete one first",
                me.user, st.config.watch.max_per_user
            ),
            3600,
        );
        return Err(refused(e).await);
    }
    let new = match new_watch(&st, &me, req).await {
        Ok(n) => n,
        Err(e) => return Err(refused(e).await),
    };
    let w = st.store.create_watch(&new).await?;
    record(
        &st,
        &me,
        AuditAction::WatchCreated,
        Some(w.id.clone()),
        Outcome::Ok,
        Some(format!(
            "{} ({}), every {}",
            redact_url(&w.url),
            w.kind,
            human_interval(w.interval_secs)
        )),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(w))))
}

async fn list_watches(State(st): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let all = st.store.list_watches(None).await?;
    Ok(Json(
        json!({"watches": all.into_iter().map(view).collect::<Vec<_>>()}),
    ))
}

async fn load(st: &AppState, id: &str) -> ApiResult<Watch> {
    st.store
        .get_watch(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("watch {id} not found")))
}

async fn get_watch(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let w = load(&st, &id).await?;
    let checks = st.store.watch_checks(&id, 100).await?;
    Ok(Json(json!({"watch": view(w), "checks": checks})))
}

/// The owner, or an operator, may change a watch.
async fn own_watch(
    st: &AppState,
    me: &Identity,
    id: &str,
    action: AuditAction,
) -> ApiResult<Watch> {
    let w = load(st, id).await?;
    if let Err(e) = owner_or_operator(me, Some(&w.owner), &format!("watch {id}"), "change") {
        record(
            st,
            me,
            action,
            Some(id.to_string()),
            Outcome::Refused,
            Some(e.to_string()),
        )
        .await;
        return Err(e);
    }
    Ok(w)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchPatch {
    enabled: Option<bool>,
}

async fn patch_watch(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let patch: WatchPatch = parse_json(body, st.config.server.max_body_bytes)?;
    own_watch(&st, &me, &id, AuditAction::WatchChanged).await?;
    let Some(enabled) = patch.enabled else {
        return Err(unprocessable(
            "nothing to change: send {\"enabled\": true|false}",
        ));
    };
    st.store.set_watch_enabled(&id, enabled).await?;
    let what = if enabled { "resumed" } else { "paused" };
    record(
        &st,
        &me,
        AuditAction::WatchChanged,
        Some(id.clone()),
        Outcome::Ok,
        Some(what.into()),
    )
    .await;
    Ok(Json(
        json!({"message": format!("watch {what}"), "watch": view(load(&st, &id).await?)}),
    ))
}

async fn delete_watch(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let w = own_watch(&st, &me, &id, AuditAction::WatchDeleted).await?;
    st.store.delete_watch(&id).await?;
    record(
        &st,
        &me,
        AuditAction::WatchDeleted,
        Some(id.clone()),
        Outcome::Ok,
        Some(redact_url(&w.url)),
    )
    .await;
    Ok(Json(
        json!({"message": format!("watch {id} deleted; the scans it queued stay")}),
    ))
}

async fn check_now(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    own_watch(&st, &me, &id, AuditAction::WatchChanged).await?;
    st.store.check_watch_now(&id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": "a check is due now; the scheduler runs it within seconds"})),
    ))
}

struct CheckRow {
    when: String,
    check: WatchCheck,
}

#[derive(Template, WebTemplate)]
#[template(path = "watches.html")]
struct WatchesPage {
    me: Viewer,
    watches: Vec<WatchView>,
    min_interval: String,
    default_interval: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "watch.html")]
struct WatchPage {
    me: Viewer,
    w: WatchView,
    may_change: bool,
    checks: Vec<CheckRow>,
}

async fn watches_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
) -> ApiResult<Response> {
    let watches = st.store.list_watches(None).await?;
    Ok(WatchesPage {
        me: Viewer::of(&me),
        watches: watches.into_iter().map(view).collect(),
        min_interval: human_interval(st.config.watch.min_interval_secs as i64),
        default_interval: human_interval(st.config.watch.default_interval_secs as i64),
    }
    .into_response())
}

async fn watch_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let w = load(&st, &id).await?;
    let checks = st.store.watch_checks(&id, 100).await?;
    let viewer = Viewer::of(&me);
    Ok(WatchPage {
        // The same rule as the API's: the owner (a requester) or an operator.
        may_change: viewer.may_act_on(&Some(w.owner.clone())),
        me: viewer,
        w: view(w),
        checks: checks
            .into_iter()
            .map(|c| CheckRow {
                when: fmt_millis(c.ts),
                check: c,
            })
            .collect(),
    }
    .into_response())
}
