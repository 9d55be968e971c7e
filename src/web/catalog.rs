//! The image catalog: JSON API under `/api/v1/images` and the `/images`
//! dashboard pages (list and search, one image's history, soft delete).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, ApiResult, AppState};
use crate::domain::{fmt_bytes, fmt_millis};
use crate::store::catalog::{Image, ImageFilter, ImageState};
use crate::submit::blank_to_none;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/images", get(list_images))
        // GET takes an image name (its history), DELETE a record id.
        .route(
            "/api/v1/images/{key}",
            get(image_history).delete(delete_image),
        )
        .route("/api/v1/images/{key}/restore", post(restore_image))
        .route("/images", get(images_page))
        .route("/images/{name}", get(history_page))
}

#[derive(Debug, Default, Deserialize)]
pub struct ImageQuery {
    pub name: Option<String>,
    pub state: Option<String>,
    pub q: Option<String>,
    /// `true`: soft-deleted records too.
    pub deleted: Option<bool>,
    pub limit: Option<i64>,
}

fn parse_query(q: ImageQuery) -> ApiResult<ImageFilter> {
    let state = blank_to_none(q.state)
        .map(|s| s.parse::<ImageState>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("state: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 1000)"
        )));
    }
    Ok(ImageFilter {
        name: blank_to_none(q.name),
        state,
        q: blank_to_none(q.q),
        include_deleted: q.deleted.unwrap_or(false),
        limit,
    })
}

/// An image record as the API and pages show it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: Image,
    pub size_human: String,
    pub published: String,
    pub links: ImageLinks,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageLinks {
    pub history: String,
    pub job: Option<String>,
    pub artifact: String,
}

fn view(image: Image) -> ImageView {
    ImageView {
        size_human: fmt_bytes(image.size_bytes.max(0) as u64),
        published: fmt_millis(image.published_at),
        links: ImageLinks {
            history: format!("/images/{}", image.name),
            job: image.job_id.map(|j| format!("/jobs/{j}")),
            artifact: image.url.clone(),
        },
        image,
    }
}

async fn list_images(
    State(st): State<AppState>,
    Query(q): Query<ImageQuery>,
) -> ApiResult<impl IntoResponse> {
    let filter = parse_query(q)?;
    let images = st.store.list_images(&filter).await?;
    Ok(Json(
        json!({"images": images.into_iter().map(view).collect::<Vec<_>>()}),
    ))
}

/// Every version of one image name, newest first (soft-deleted ones flagged).
async fn history(st: &AppState, name: &str) -> ApiResult<Vec<ImageView>> {
    let images = st
        .store
        .list_images(&ImageFilter {
            name: Some(name.to_string()),
            include_deleted: true,
            limit: 1000,
            ..Default::default()
        })
        .await?;
    if images.is_empty() {
        return Err(ApiError::NotFound(format!("no image named {name:?}")));
    }
    Ok(images.into_iter().map(view).collect())
}

async fn image_history(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let versions = history(&st, &name).await?;
    let current = versions
        .iter()
        .find(|v| v.image.state == ImageState::Current && !v.image.deleted)
        .map(|v| v.image.version.clone());
    Ok(Json(
        json!({"name": name, "current": current, "versions": versions}),
    ))
}

fn parse_image_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .map_err(|_| ApiError::NotFound(format!("image record {s:?} not found (ids are numbers)")))
}

async fn set_deleted(st: &AppState, key: &str, deleted: bool) -> ApiResult<Json<ImageView>> {
    let id = parse_image_id(key)?;
    let image = st
        .store
        .set_image_deleted(id, deleted)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("image record {id} not found")))?;
    if let Some(job) = image.job_id {
        let what = if deleted {
            "hidden (soft delete)"
        } else {
            "restored"
        };
        st.store
            .append_system_log(
                job,
                crate::store::LogLevel::Info,
                &format!("catalog: {} {} {what}", image.name, image.version),
            )
            .await?;
    }
    Ok(Json(view(image)))
}

/// Soft delete: the record is hidden from lists, the artifact stays.
async fn delete_image(
    State(st): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<ImageView>> {
    set_deleted(&st, &key, true).await
}

async fn restore_image(
    State(st): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<ImageView>> {
    set_deleted(&st, &key, false).await
}

#[derive(Template, WebTemplate)]
#[template(path = "images.html")]
struct ImagesPage {
    images: Vec<ImageView>,
    q: String,
    state: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "image.html")]
struct HistoryPage {
    name: String,
    versions: Vec<ImageView>,
}

async fn images_page(
    State(st): State<AppState>,
    Query(q): Query<ImageQuery>,
) -> ApiResult<Response> {
    let filter = parse_query(q)?;
    let images = st.store.list_images(&filter).await?;
    Ok(ImagesPage {
        images: images.into_iter().map(view).collect(),
        q: filter.q.unwrap_or_default(),
        state: filter.state.map(|s| s.to_string()).unwrap_or_default(),
    }
    .into_response())
}

async fn history_page(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let versions = history(&st, &name).await?;
    Ok(HistoryPage { name, versions }.into_response())
}
