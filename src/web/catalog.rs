//! The image catalog: JSON API under `/api/v1/images` and the `/images`
//! dashboard pages (list and search, one image's history, soft delete).

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit::record;
use super::auth::{Access, Identity};
use super::routes::Routes;
use super::views::Viewer;
use super::{ApiError, ApiResult, AppState};
use crate::domain::{fmt_bytes, fmt_millis, Role};
use crate::store::auth::{AuditAction, Outcome};
use crate::store::catalog::{Image, ImageFilter, ImageName, ImageState};
use crate::submit::blank_to_none;

pub fn routes(r: Routes) -> Routes {
    use Role::*;
    r.get("/api/v1/images", Access::Role(Viewer), list_images)
        // GET takes an image name (its history), DELETE a record id.
        .get("/api/v1/images/{key}", Access::Role(Viewer), image_history)
        .delete("/api/v1/images/{key}", Access::Role(Admin), delete_image)
        .post(
            "/api/v1/images/{key}/restore",
            Access::Role(Admin),
            restore_image,
        )
        .post(
            "/api/v1/images/{key}/promote",
            Access::Role(Admin),
            promote_image,
        )
        .put("/api/v1/images/{key}/owner", Access::Role(Admin), set_owner)
        .get("/images", Access::Role(Viewer), images_page)
        .get("/images/{name}", Access::Role(Viewer), history_page)
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

/// The filter, and whether only soft-deleted records are wanted (`state=deleted`).
fn parse_query(q: ImageQuery) -> ApiResult<(ImageFilter, bool)> {
    let state = blank_to_none(q.state);
    let only_deleted = state.as_deref() == Some("deleted");
    let state = state
        .filter(|_| !only_deleted)
        .map(|s| s.parse::<ImageState>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("state: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is out of range (1 to 1000)"
        )));
    }
    Ok((
        ImageFilter {
            name: blank_to_none(q.name),
            state,
            q: blank_to_none(q.q),
            include_deleted: only_deleted || q.deleted.unwrap_or(false),
            limit,
        },
        only_deleted,
    ))
}

async fn find(st: &AppState, q: ImageQuery) -> ApiResult<(ImageFilter, bool, Vec<Image>)> {
    let (filter, only_deleted) = parse_query(q)?;
    let mut images = st.store.list_images(&filter).await?;
    if only_deleted {
        images.retain(|i| i.deleted);
    }
    Ok((filter, only_deleted, images))
}

/// An image record as the API and pages show it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageView {
    #[serde(flatten)]
    pub image: Image,
    pub size_human: String,
    pub published: String,
    pub shown_state: &'static str,
    pub links: ImageLinks,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageLinks {
    pub history: String,
    pub job: Option<String>,
    pub artifact: String,
    /// The scan report vmscan serves for the job (HTML; `.json`, `.xml` beside it).
    pub report: Option<String>,
    pub report_json: Option<String>,
    pub report_xml: Option<String>,
    /// The report published next to the image in the artifact store.
    pub published_report: Option<String>,
}

/// current | deprecated | deleted | removed (by retention), for people.
fn shown_state(image: &Image) -> &'static str {
    if image.deleted {
        "deleted"
    } else if image.purged_at.is_some() {
        "removed"
    } else {
        image.state.as_str()
    }
}

fn view(image: Image) -> ImageView {
    let published_report = image
        .properties
        .get(crate::pipeline::publish::REPORT_HTML_PROPERTY)
        .and_then(|v| v.as_str())
        .filter(|_| image.purged_at.is_none())
        .map(|_| crate::report::published_url(&image.url, &image.name, &image.version, "html"));
    ImageView {
        size_human: fmt_bytes(image.size_bytes.max(0) as u64),
        published: fmt_millis(image.published_at),
        shown_state: shown_state(&image),
        links: ImageLinks {
            history: format!("/images/{}", image.name),
            job: image.job_id.map(|j| format!("/jobs/{j}")),
            artifact: image.url.clone(),
            report: image
                .job_id
                .map(|j| format!("/api/v1/jobs/{j}/report.html")),
            report_json: image
                .job_id
                .map(|j| format!("/api/v1/jobs/{j}/report.json")),
            report_xml: image.job_id.map(|j| format!("/api/v1/jobs/{j}/report.xml")),
            published_report,
        },
        image,
    }
}

/// One image name with its versions, newest first (the catalog page).
#[derive(Clone, Debug, Serialize)]
pub struct NameGroup {
    pub name: String,
    pub current: Option<String>,
    pub versions: Vec<ImageView>,
}

fn by_name(views: Vec<ImageView>) -> Vec<NameGroup> {
    let mut groups: Vec<NameGroup> = Vec::new();
    for v in views {
        match groups.iter_mut().find(|g| g.name == v.image.name) {
            Some(g) => g.versions.push(v),
            None => groups.push(NameGroup {
                name: v.image.name.clone(),
                current: None,
                versions: vec![v],
            }),
        }
    }
    for g in &mut groups {
        g.current = g
            .versions
            .iter()
            .find(|v| v.image.state == ImageState::Current && !v.image.deleted)
            .map(|v| v.image.version.clone());
    }
    groups
}

async fn list_images(
    State(st): State<AppState>,
    Query(q): Query<ImageQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, _, images) = find(&st, q).await?;
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
    let owner = st.store.image_name(&name).await?;
    Ok(Json(
        json!({"name": name, "current": current, "owner": owner, "versions": versions}),
    ))
}

fn parse_image_id(s: &str) -> ApiResult<i64> {
    s.parse::<i64>()
        .map_err(|_| ApiError::NotFound(format!("image record {s:?} not found (ids are numbers)")))
}

async fn set_deleted(
    st: &AppState,
    me: &Identity,
    key: &str,
    deleted: bool,
) -> ApiResult<Json<ImageView>> {
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
                &format!(
                    "catalog: {} {} {what} by {}",
                    image.name, image.version, me.user
                ),
            )
            .await?;
    }
    let action = if deleted {
        AuditAction::ImageDeleted
    } else {
        AuditAction::ImageRestored
    };
    record(
        st,
        me,
        action,
        Some(format!("image:{id}")),
        Outcome::Ok,
        Some(format!("{} {}", image.name, image.version)),
    )
    .await;
    Ok(Json(view(image)))
}

/// Soft delete: the record is hidden from lists, the artifact stays.
async fn delete_image(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(key): Path<String>,
) -> ApiResult<Json<ImageView>> {
    set_deleted(&st, &me, &key, true).await
}

async fn restore_image(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(key): Path<String>,
) -> ApiResult<Json<ImageView>> {
    set_deleted(&st, &me, &key, false).await
}

/// Makes a deprecated version current again; the other current versions of
/// the name become deprecated (in the catalog; the artifact store's `state`
/// property follows at the next publish of the name).
async fn promote_image(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(key): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_image_id(&key)?;
    let image = st
        .store
        .get_image(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("image record {id} not found")))?;
    if image.purged_at.is_some() || image.deleted || image.state == ImageState::Pending {
        return Err(ApiError::Conflict(format!(
            "{} {} cannot become current: it is {}",
            image.name,
            image.version,
            if image.purged_at.is_some() {
                "purged (its artifact was deleted)"
            } else if image.deleted {
                "deleted (restore it first)"
            } else {
                "still being published"
            }
        )));
    }
    let mut demoted = Vec::new();
    for other in st
        .store
        .list_images(&ImageFilter {
            name: Some(image.name.clone()),
            state: Some(ImageState::Current),
            include_deleted: true,
            limit: 1000,
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|o| o.id != id)
    {
        st.store.deprecate_image(other.id).await?;
        demoted.push(other.version);
    }
    let image = st
        .store
        .promote_image(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("image record {id} not found")))?;
    let what = format!(
        "{} {} is current{}",
        image.name,
        image.version,
        if demoted.is_empty() {
            String::new()
        } else {
            format!("; deprecated {}", demoted.join(", "))
        }
    );
    record(
        &st,
        &me,
        AuditAction::ImagePromoted,
        Some(format!("image:{id}")),
        Outcome::Ok,
        Some(what.clone()),
    )
    .await;
    Ok(Json(
        json!({"message": what, "image": view(image), "deprecated": demoted}),
    ))
}

#[derive(Debug, Deserialize)]
struct OwnerBody {
    user: Option<String>,
    group: Option<String>,
}

/// Assigns who owns an image name (a user, a directory group DN, or both).
async fn set_owner(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ImageName>> {
    let b: OwnerBody = super::api::parse_json(body, st.config.server.max_body_bytes)?;
    let user = blank_to_none(b.user);
    let group = blank_to_none(b.group);
    if user.is_none() && group.is_none() {
        return Err(ApiError::Unprocessable(
            "owner: name a user, a group, or both".into(),
        ));
    }
    if let Some(u) = &user {
        if st.store.get_user(u).await?.is_none() {
            return Err(ApiError::Unprocessable(format!(
                "user: no user named {u:?}"
            )));
        }
    }
    crate::artifacts::check_label("name", &name).map_err(ApiError::Unprocessable)?;
    st.store
        .claim_image_name(&name, user.as_deref(), group.as_deref())
        .await?;
    let owner = st
        .store
        .set_image_name_owner(&name, user.as_deref(), group.as_deref())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no image name {name:?}")))?;
    record(
        &st,
        &me,
        AuditAction::ImageOwnerChanged,
        Some(format!("image-name:{name}")),
        Outcome::Ok,
        Some(format!(
            "user {:?}, group {:?}",
            owner.owner_user, owner.owner_group
        )),
    )
    .await;
    Ok(Json(owner))
}

#[derive(Template, WebTemplate)]
#[template(path = "images.html")]
struct ImagesPage {
    me: Viewer,
    names: Vec<NameGroup>,
    q: String,
    state: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "image.html")]
struct HistoryPage {
    me: Viewer,
    owner: Option<ImageName>,
    name: String,
    versions: Vec<ImageView>,
}

async fn images_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Query(q): Query<ImageQuery>,
) -> ApiResult<Response> {
    let (filter, only_deleted, images) = find(&st, q).await?;
    Ok(ImagesPage {
        me: Viewer::of(&me),
        names: by_name(images.into_iter().map(view).collect()),
        q: filter.q.unwrap_or_default(),
        state: if only_deleted {
            "deleted".into()
        } else {
            filter.state.map(|s| s.to_string()).unwrap_or_default()
        },
    }
    .into_response())
}

async fn history_page(
    State(st): State<AppState>,
    Extension(me): Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let versions = history(&st, &name).await?;
    let owner = st.store.image_name(&name).await?;
    Ok(HistoryPage {
        me: Viewer::of(&me),
        owner,
        name,
        versions,
    }
    .into_response())
}
