//! `/healthz` (process up), `/readyz` (database reachable) and `/metrics`.

use std::fmt::Write;

use super::auth::Access;
use super::routes::Routes;
use super::{ApiResult, AppState};
use crate::domain::JobState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

pub fn routes(r: Routes) -> Routes {
    r.get("/healthz", Access::Public, healthz)
        .get("/readyz", Access::Public, readyz)
        .get("/metrics", Access::Metrics, metrics)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, format!("ready ({})\n", st.store.backend())),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}\n"),
        ),
    }
}

/// Prometheus text format, computed from the store so every replica agrees.
async fn metrics(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    let counts = st.store.count_by_state().await?;
    let stats = st.store.stage_stats().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP vmscan_jobs Jobs by state.\n# TYPE vmscan_jobs gauge"
    );
    for state in JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "vmscan_jobs{{state=\"{state}\"}} {n}");
    }
    let depth: i64 = counts
        .iter()
        .filter(|(s, _)| matches!(s, JobState::Queued))
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        out,
        "# HELP vmscan_queue_depth Jobs waiting for a worker.\n# TYPE vmscan_queue_depth gauge"
    );
    let _ = writeln!(out, "vmscan_queue_depth {depth}");
    let _ = writeln!(
        out,
        "# HELP vmscan_stage_duration_seconds Time spent in finished stage runs.\n# TYPE vmscan_stage_duration_seconds summary"
    );
    for s in &stats {
        let labels = format!("stage=\"{}\",state=\"{}\"", s.stage, s.state);
        let _ = writeln!(
            out,
            "vmscan_stage_duration_seconds_sum{{{labels}}} {:.3}",
            s.total_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "vmscan_stage_duration_seconds_count{{{labels}}} {}",
            s.count
        );
    }
    let data_dir = &st.config.storage.data_dir;
    if let Some((total, free)) = crate::worker::workdir::fs_usage(data_dir) {
        let _ = writeln!(
            out,
            "# HELP vmscan_data_dir_bytes The data directory's file system (this replica).\n# TYPE vmscan_data_dir_bytes gauge"
        );
        let _ = writeln!(out, "vmscan_data_dir_bytes{{kind=\"total\"}} {total}");
        let _ = writeln!(out, "vmscan_data_dir_bytes{{kind=\"free\"}} {free}");
    }
    let work = crate::worker::workdir::du(&crate::worker::workdir::jobs_dir(data_dir)).await;
    let _ = writeln!(
        out,
        "# HELP vmscan_work_dir_bytes Bytes held by job work directories (this replica).\n# TYPE vmscan_work_dir_bytes gauge"
    );
    let _ = writeln!(out, "vmscan_work_dir_bytes {work}");
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
