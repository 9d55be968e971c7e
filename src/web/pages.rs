//! Server-rendered dashboard pages (askama). Small hand-written JS in
//! `static/app.js` submits through the JSON API and follows live events.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::api::{load_view, parse_filter, parse_id, ListQuery};
use super::auth::{Access, Identity};
use super::routes::Routes;
use super::views::{self, JobSummary, JobView, LogView, Viewer};
use super::{ApiResult, AppState};
use crate::domain::{fmt_bytes, JobState, Role};

pub fn routes(r: Routes) -> Routes {
    let viewer = Access::Role(Role::Viewer);
    r.get("/", viewer, index)
        .get("/jobs", viewer, index)
        .get("/jobs/table", viewer, table)
        .get("/jobs/{id}", viewer, job_page)
        .get("/jobs/{id}/panel", viewer, job_panel)
}

pub struct StateCount {
    pub state: &'static str,
    pub count: i64,
}

#[derive(Template, WebTemplate)]
#[template(path = "index.html")]
struct IndexPage {
    me: Viewer,
    /// "12.3 GiB free of 50.0 GiB; job files 1.2 GiB".
    disk: String,
    table: JobTable,
    counts: Vec<StateCount>,
    backend: &'static str,
    clusters: Vec<crate::cluster::ClusterInfo>,
}

#[derive(Template, WebTemplate)]
#[template(path = "job_table.html")]
struct JobTable {
    jobs: Vec<JobSummary>,
    state: String,
    requested_by: String,
    cluster: String,
    os: String,
    q: String,
    /// The viewer's own user name, for the "mine" filter.
    me: String,
    clusters: Vec<String>,
    next_before: Option<String>,
    /// Query string (without paging) for the filter in effect.
    filter_qs: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "job.html")]
struct JobPage {
    me: Viewer,
    panel: JobPanel,
    log: Vec<LogView>,
}

#[derive(Template, WebTemplate)]
#[template(path = "job_panel.html")]
struct JobPanel {
    job: JobView,
    /// Whether the viewer may cancel or retry this job.
    can_act: bool,
}

fn qs_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn load_table(st: &AppState, me: &Identity, q: ListQuery) -> ApiResult<JobTable> {
    let filter = parse_filter(q, 25)?;
    let jobs = st.store.list_jobs(&filter).await?;
    let next_before = (jobs.len() as i64 == filter.limit)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    let state = filter
        .state
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut filter_qs = format!("state={}", qs_escape(&state));
    for (k, v) in [
        ("requested_by", &filter.requested_by),
        ("cluster", &filter.cluster),
        ("os", &filter.os),
        ("q", &filter.text),
    ] {
        if let Some(v) = v {
            filter_qs.push_str(&format!("&{k}={}", qs_escape(v)));
        }
    }
    Ok(JobTable {
        jobs: jobs.iter().map(|j| views::summary(j, &st.stages)).collect(),
        state,
        requested_by: text(&filter.requested_by),
        cluster: text(&filter.cluster),
        os: text(&filter.os),
        q: text(&filter.text),
        me: me.user.clone(),
        clusters: st.clusters.iter().map(|c| c.name.clone()).collect(),
        next_before,
        filter_qs,
    })
}

async fn index(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let table = load_table(&st, &me, q).await?;
    let raw = st.store.count_by_state().await?;
    let counts = JobState::ALL
        .iter()
        .map(|s| StateCount {
            state: s.as_str(),
            count: raw
                .iter()
                .find(|(r, _)| r == s)
                .map(|(_, n)| *n)
                .unwrap_or(0),
        })
        .collect();
    let data_dir = &st.config.storage.data_dir;
    let work = crate::worker::workdir::du(&crate::worker::workdir::jobs_dir(data_dir)).await;
    let disk = match crate::worker::workdir::fs_usage(data_dir) {
        Some((total, free)) => format!(
            "data directory: {} free of {}; job work files {}",
            fmt_bytes(free),
            fmt_bytes(total),
            fmt_bytes(work)
        ),
        None => format!("job work files {}", fmt_bytes(work)),
    };
    Ok(IndexPage {
        me: Viewer::of(&me),
        disk,
        table,
        counts,
        backend: st.store.backend(),
        clusters: st.clusters.as_ref().clone(),
    }
    .into_response())
}

async fn table(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    Ok(load_table(&st, &me, q).await?.into_response())
}

async fn job_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let viewer = Viewer::of(&me);
    let job = load_view(&st, id).await?;
    let log = st
        .store
        .log_tail(id, 500)
        .await?
        .iter()
        .map(LogView::from)
        .collect();
    Ok(JobPage {
        panel: JobPanel {
            can_act: viewer.may_act_on(&job.requested_by),
            job,
        },
        me: viewer,
        log,
    }
    .into_response())
}

async fn job_panel(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = load_view(&st, parse_id(&id)?).await?;
    let can_act = Viewer::of(&me).may_act_on(&job.requested_by);
    Ok(JobPanel { job, can_act }.into_response())
}
