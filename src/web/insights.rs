//! `/insights`: where scans spend their time and why they fail, across jobs
//! (server-rendered SVG), and the same numbers as JSON at `/api/v1/insights`.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::{Access, Identity};
use super::charts;
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiResult, AppState};
use crate::domain::{fmt_duration_ms, Role};
use crate::insights::{self, DurationSeries, Insights};

pub fn routes(r: Routes) -> Routes {
    let viewer = Access::Role(Role::Viewer);
    r.get("/insights", viewer, page)
        .get("/api/v1/insights", viewer, api)
}

/// One row of a duration table: the key, its latest week, and its sparkline.
struct DurationRow {
    key: String,
    latest_week: String,
    runs: i64,
    p50: String,
    p95: String,
    spark: String,
}

fn rows(series: &[DurationSeries]) -> Vec<DurationRow> {
    series
        .iter()
        .filter_map(|s| {
            let last = s.weeks.last()?;
            Some(DurationRow {
                key: s.key.clone(),
                latest_week: last.week_start.clone(),
                runs: last.runs,
                p50: fmt_duration_ms(last.p50_ms),
                p95: fmt_duration_ms(last.p95_ms),
                spark: charts::sparkline(s),
            })
        })
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "insights.html")]
struct InsightsPage {
    me: Viewer,
    i: Insights,
    outcomes_svg: String,
    stages_svg: String,
    errors_svg: String,
    queue_svg: String,
    stage_rows: Vec<DurationRow>,
    boot_rows: Vec<DurationRow>,
}

async fn page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
) -> ApiResult<Response> {
    let i = insights::load(&st.store).await?;
    let by_stage: Vec<(String, i64)> = i
        .failures
        .by_stage
        .iter()
        .map(|c| (c.label.clone(), c.count))
        .collect();
    let errors: Vec<(String, i64)> = i
        .failures
        .top_errors
        .iter()
        .map(|e| {
            let label = match &e.stage {
                Some(s) => format!("{s}: {}", e.class),
                None => e.class.clone(),
            };
            (label, e.count)
        })
        .collect();
    Ok(InsightsPage {
        me: Viewer::of(&me),
        outcomes_svg: charts::outcomes_per_day(&i.days),
        stages_svg: charts::bars(
            "chart-failed-stages",
            "failures by stage",
            &by_stage,
            "#c0392b",
        ),
        errors_svg: charts::bars("chart-errors", "top error classes", &errors, "#e07b6f"),
        queue_svg: charts::queue(&i.queue.samples),
        stage_rows: rows(&i.stage_durations),
        boot_rows: rows(&i.boot_to_login),
        i,
    }
    .into_response())
}

async fn api(State(st): State<AppState>) -> ApiResult<Json<Insights>> {
    Ok(Json(insights::load(&st.store).await?))
}
