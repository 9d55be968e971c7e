//! The web layer: JSON API under `/api/v1`, the dashboard pages, health and
//! metrics. It talks to the store only; it never runs a stage. Every route
//! is added with its access rule (`routes.rs`); `auth.rs` says who is asking.

mod accounts;
mod api;
mod audit;
pub mod auth;
mod batches;
mod catalog;
mod charts;
mod error;
mod health;
pub mod image;
mod insights;
mod login;
mod pages;
mod report;
pub mod routes;
pub mod serve;
mod stage_text;
pub mod streams;
pub mod views;
mod watches;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::domain::StageName;
use crate::identity::LoginBackend;
use crate::store::DynStore;

pub use error::{ApiError, ApiResult};
pub use image::ImageKeys;
pub use routes::Rule;

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
    /// Checks user names and passwords (local users or the directory).
    pub login: Arc<dyn LoginBackend>,
    /// Derives the key a cluster needs to pull a job's image.
    pub image_keys: Arc<image::ImageKeys>,
    /// Live event streams open now.
    pub streams: Arc<streams::Streams>,
}

fn all_routes(state: AppState) -> routes::Routes {
    let r = routes::Routes::new(state);
    let r = api::routes(r);
    let r = batches::routes(r);
    let r = report::routes(r);
    let r = catalog::routes(r);
    let r = watches::routes(r);
    let r = image::routes(r);
    let r = insights::routes(r);
    let r = pages::routes(r);
    let r = login::routes(r);
    let r = accounts::routes(r);
    let r = audit::routes(r);
    health::routes(r)
}

/// Every route with its rule, in the order they were added.
pub fn rules(state: AppState) -> Vec<Rule> {
    all_routes(state).finish().1
}

pub fn router(state: AppState) -> Router {
    let static_dir = std::env::var("VMSCAN_STATIC_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/static").to_string());
    let limit = state.config.server.max_body_bytes;
    let body_timeout = state.config.server.body_read_timeout_secs.max(1);
    let (routes, _) = all_routes(state.clone()).finish();
    routes
        .fallback(|| async { ApiError::NotFound("no such page or API route".into()) })
        .nest_service("/static", ServeDir::new(static_dir))
        .layer(middleware::from_fn_with_state(state.clone(), auth::gate))
        .layer(middleware::from_fn(auth::security_headers))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(body_timeout),
        ))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
