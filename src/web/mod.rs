//! The web layer: JSON API under `/api/v1`, the dashboard pages, health and
//! metrics. It talks to the store only; it never runs a stage.

mod api;
mod catalog;
mod error;
mod health;
mod image;
mod pages;
pub mod views;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::domain::StageName;
use crate::store::DynStore;

pub use error::{ApiError, ApiResult};

#[derive(Clone)]
pub struct AppState {
    pub store: DynStore,
    pub config: Arc<Config>,
    /// The configured pipeline, for showing stages not yet run.
    pub stages: Arc<Vec<StageName>>,
    /// Stages left out of this configuration, with the reason, for job pages.
    pub notes: Arc<Vec<String>>,
    /// The configured clusters (submit form, validation).
    pub clusters: Arc<Vec<crate::cluster::ClusterInfo>>,
}

pub fn router(state: AppState) -> Router {
    let static_dir = std::env::var("VMSCAN_STATIC_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_string());
    let limit = state.config.server.max_body_bytes;
    Router::new()
        .merge(catalog::router())
        .merge(api::router())
        .merge(image::router())
        .merge(pages::router())
        .merge(health::router())
        .nest_service("/static", ServeDir::new(static_dir))
        .layer(DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
