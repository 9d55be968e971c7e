//! Storage of the image catalog (published images). Its SQL lives here.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::Serialize;

use super::rows::job_id;
use super::{PgStore, SqliteStore, StoreError, StoreResult};
use crate::domain::{now_millis, JobId, Millis};

/// Whether a published version is the one to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    Current,
    Deprecated,
    /// Reserved by a publish that is still deploying; hidden from lists.
    Pending,
}

impl ImageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageState::Current => "current",
            ImageState::Deprecated => "deprecated",
            ImageState::Pending => "pending",
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "current" => Ok(ImageState::Current),
            "deprecated" => Ok(ImageState::Deprecated),
            "pending" => Ok(ImageState::Pending),
            other => Err(format!(
                "unknown image state {other:?} (current or deprecated)"
            )),
        }
    }
}

/// A published image version as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Image {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub format: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    /// "local" or "artifactory".
    pub store: String,
    pub repo: String,
    pub path: String,
    pub url: String,
    pub properties: serde_json::Value,
    pub job_id: Option<JobId>,
    pub state: ImageState,
    pub published_at: Millis,
    pub deprecated_at: Option<Millis>,
    /// Moved to the archive repository.
    pub archived_at: Option<Millis>,
    /// Deleted from the store by the retention rule.
    pub purged_at: Option<Millis>,
    /// Hidden by a person (soft delete); the artifact stays.
    pub deleted_at: Option<Millis>,
    pub deleted: bool,
    /// The user whose job published it.
    pub published_by: Option<String>,
}

/// What the publish stage records.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub format: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub store: String,
    pub repo: String,
    pub path: String,
    pub url: String,
    pub properties: serde_json::Value,
    pub job_id: JobId,
}

/// Who owns an image name: only they (a user, or members of a group) and
/// admins may publish versions of it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageName {
    pub name: String,
    pub owner_user: Option<String>,
    pub owner_group: Option<String>,
    pub created_by: Option<String>,
    pub created_at: Millis,
}

/// The outcome of reserving a `name/version` before deploying it.
#[derive(Clone, Debug)]
pub enum Reservation {
    /// This job holds the version now (or already did, on a retried publish).
    Reserved(i64),
    /// Another record has it: published versions are immutable.
    Taken(Box<Image>),
}

#[derive(Clone, Debug, Default)]
pub struct ImageFilter {
    /// Exact image name.
    pub name: Option<String>,
    pub state: Option<ImageState>,
    /// Case-insensitive substring of name, version or description.
    pub q: Option<String>,
    pub include_deleted: bool,
    pub limit: i64,
}

/// Published-image records.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Reserves `name/version` for a job before anything is deployed; a
    /// version published (or being published) by another job is `Taken`.
    async fn reserve_image(
        &self,
        name: &str,
        version: &str,
        job: JobId,
        published_by: Option<&str>,
    ) -> StoreResult<Reservation>;
    /// Fills in a reserved record once deployed; it becomes current.
    async fn complete_image(&self, id: i64, image: &NewImage) -> StoreResult<Image>;
    /// Drops a reservation whose deploy failed (only while still pending).
    async fn release_image(&self, id: i64) -> StoreResult<()>;
    /// Makes a version current again (an admin's promote).
    async fn promote_image(&self, id: i64) -> StoreResult<Option<Image>>;
    async fn image_name(&self, name: &str) -> StoreResult<Option<ImageName>>;
    /// Records the owner of a name on its first publish; returns whoever owns it.
    async fn claim_image_name(
        &self,
        name: &str,
        owner_user: Option<&str>,
        owner_group: Option<&str>,
    ) -> StoreResult<ImageName>;
    async fn set_image_name_owner(
        &self,
        name: &str,
        owner_user: Option<&str>,
        owner_group: Option<&str>,
    ) -> StoreResult<Option<ImageName>>;
    async fn get_image(&self, id: i64) -> StoreResult<Option<Image>>;
    /// Newest first.
    async fn list_images(&self, filter: &ImageFilter) -> StoreResult<Vec<Image>>;
    async fn deprecate_image(&self, id: i64) -> StoreResult<()>;
    /// The artifact moved (archive repository).
    async fn image_moved(&self, id: i64, repo: &str, url: &str) -> StoreResult<()>;
    /// The retention rule deleted the artifact.
    async fn image_purged(&self, id: i64) -> StoreResult<()>;
    /// Soft delete (`true`) or restore (`false`); `None` if there is no such record.
    async fn set_image_deleted(&self, id: i64, deleted: bool) -> StoreResult<Option<Image>>;
}

macro_rules! image_cols {
    () => {
        "id, name, version, description, format, size_bytes, sha256, sha1, md5, store, repo, path, url, \
         properties, job_id, state, published_at, deprecated_at, archived_at, purged_at, deleted_at, published_by"
    };
}

const IMAGE_COLS: &str = image_cols!();

const RESERVE_IMAGE: &str =
    "INSERT INTO images (name, version, format, size_bytes, sha256, sha1, md5, store, repo, \
     path, url, job_id, state, published_at, published_by) \
     VALUES ($1, $2, '', 0, '', '', '', '', '', '', '', $3, 'pending', $4, $5) \
     ON CONFLICT (name, version) DO NOTHING RETURNING id";

const IMAGE_BY_NAME_VERSION: &str = concat!(
    "SELECT ",
    image_cols!(),
    " FROM images WHERE name = $1 AND version = $2"
);

const COMPLETE_IMAGE: &str = concat!(
    "UPDATE images SET description = $2, format = $3, size_bytes = $4, sha256 = $5, sha1 = $6, md5 = $7, \
     store = $8, repo = $9, path = $10, url = $11, properties = $12, state = 'current', published_at = $13 \
     WHERE id = $1 AND state = 'pending' RETURNING ",
    image_cols!()
);

const RELEASE_IMAGE: &str = "DELETE FROM images WHERE id = $1 AND state = 'pending'";

const PROMOTE_IMAGE: &str = "UPDATE images SET state = 'current', deprecated_at = NULL \
     WHERE id = $1 AND state = 'deprecated'";

const IMAGE_NAME: &str =
    "SELECT name, owner_user, owner_group, created_by, created_at FROM image_names WHERE name = $1";

const CLAIM_IMAGE_NAME: &str =
    "INSERT INTO image_names (name, owner_user, owner_group, created_by, created_at) \
     VALUES ($1, $2, $3, $2, $4) ON CONFLICT (name) DO NOTHING";

const SET_IMAGE_NAME_OWNER: &str =
    "UPDATE image_names SET owner_user = $2, owner_group = $3 WHERE name = $1";

const GET_IMAGE: &str = concat!("SELECT ", image_cols!(), " FROM images WHERE id = $1");

const DEPRECATE_IMAGE: &str = "UPDATE images SET state = 'deprecated', deprecated_at = $2 \
     WHERE id = $1 AND state = 'current'";

const IMAGE_MOVED: &str = "UPDATE images SET repo = $2, url = $3, archived_at = $4 WHERE id = $1";

const IMAGE_PURGED: &str = "UPDATE images SET purged_at = $2 WHERE id = $1";

const IMAGE_DELETED: &str = "UPDATE images SET deleted_at = $2 WHERE id = $1";

#[derive(sqlx::FromRow)]
struct ImageRow {
    id: i64,
    name: String,
    version: String,
    description: Option<String>,
    format: String,
    size_bytes: i64,
    sha256: String,
    sha1: String,
    md5: String,
    store: String,
    repo: String,
    path: String,
    url: String,
    properties: String,
    job_id: Option<String>,
    state: String,
    published_at: i64,
    deprecated_at: Option<i64>,
    archived_at: Option<i64>,
    purged_at: Option<i64>,
    deleted_at: Option<i64>,
    published_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ImageNameRow {
    name: String,
    owner_user: Option<String>,
    owner_group: Option<String>,
    created_by: Option<String>,
    created_at: i64,
}

impl From<ImageNameRow> for ImageName {
    fn from(r: ImageNameRow) -> ImageName {
        ImageName {
            name: r.name,
            owner_user: r.owner_user,
            owner_group: r.owner_group,
            created_by: r.created_by,
            created_at: r.created_at,
        }
    }
}

impl TryFrom<ImageRow> for Image {
    type Error = StoreError;
    fn try_from(r: ImageRow) -> StoreResult<Image> {
        Ok(Image {
            id: r.id,
            name: r.name,
            version: r.version,
            description: r.description,
            format: r.format,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            sha1: r.sha1,
            md5: r.md5,
            store: r.store,
            repo: r.repo,
            path: r.path,
            url: r.url,
            properties: serde_json::from_str(&r.properties).unwrap_or(serde_json::Value::Null),
            job_id: r.job_id.as_deref().map(job_id).transpose()?,
            state: r.state.parse().map_err(StoreError::Corrupt)?,
            published_at: r.published_at,
            deprecated_at: r.deprecated_at,
            archived_at: r.archived_at,
            purged_at: r.purged_at,
            deleted_at: r.deleted_at,
            deleted: r.deleted_at.is_some(),
            published_by: r.published_by,
        })
    }
}

macro_rules! catalog_impl {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl CatalogStore for $store {
            async fn reserve_image(
                &self,
                name: &str,
                version: &str,
                job: JobId,
                published_by: Option<&str>,
            ) -> StoreResult<Reservation> {
                let id: Option<(i64,)> = sqlx::query_as(RESERVE_IMAGE)
                    .bind(name)
                    .bind(version)
                    .bind(job.to_string())
                    .bind(now_millis())
                    .bind(published_by)
                    .fetch_optional(&self.pool)
                    .await?;
                if let Some((id,)) = id {
                    return Ok(Reservation::Reserved(id));
                }
                let row: ImageRow = sqlx::query_as(IMAGE_BY_NAME_VERSION)
                    .bind(name)
                    .bind(version)
                    .fetch_one(&self.pool)
                    .await?;
                let image = Image::try_from(row)?;
                // A retried publish of the same job finds its own reservation.
                if image.state == ImageState::Pending && image.job_id == Some(job) {
                    return Ok(Reservation::Reserved(image.id));
                }
                Ok(Reservation::Taken(Box::new(image)))
            }

            async fn complete_image(&self, id: i64, i: &NewImage) -> StoreResult<Image> {
                let row: Option<ImageRow> = sqlx::query_as(COMPLETE_IMAGE)
                    .bind(id)
                    .bind(&i.description)
                    .bind(&i.format)
                    .bind(i.size_bytes)
                    .bind(&i.sha256)
                    .bind(&i.sha1)
                    .bind(&i.md5)
                    .bind(&i.store)
                    .bind(&i.repo)
                    .bind(&i.path)
                    .bind(&i.url)
                    .bind(i.properties.to_string())
                    .bind(now_millis())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Image::try_from).transpose()?.ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "image record {id} is no longer reserved for this publish"
                    ))
                })
            }

            async fn release_image(&self, id: i64) -> StoreResult<()> {
                sqlx::query(RELEASE_IMAGE)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn promote_image(&self, id: i64) -> StoreResult<Option<Image>> {
                sqlx::query(PROMOTE_IMAGE)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                self.get_image(id).await
            }

            async fn image_name(&self, name: &str) -> StoreResult<Option<ImageName>> {
                let row: Option<ImageNameRow> = sqlx::query_as(IMAGE_NAME)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(ImageName::from))
            }

            async fn claim_image_name(
                &self,
                name: &str,
                owner_user: Option<&str>,
                owner_group: Option<&str>,
            ) -> StoreResult<ImageName> {
                sqlx::query(CLAIM_IMAGE_NAME)
                    .bind(name)
                    .bind(owner_user)
                    .bind(owner_group)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                self.image_name(name)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("image name {name:?} vanished")))
            }

            async fn set_image_name_owner(
                &self,
                name: &str,
                owner_user: Option<&str>,
                owner_group: Option<&str>,
            ) -> StoreResult<Option<ImageName>> {
                sqlx::query(SET_IMAGE_NAME_OWNER)
                    .bind(name)
                    .bind(owner_user)
                    .bind(owner_group)
                    .execute(&self.pool)
                    .await?;
                self.image_name(name).await
            }

            async fn get_image(&self, id: i64) -> StoreResult<Option<Image>> {
                let row: Option<ImageRow> = sqlx::query_as(GET_IMAGE)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(Image::try_from).transpose()
            }

            async fn list_images(&self, f: &ImageFilter) -> StoreResult<Vec<Image>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT ");
                q.push(IMAGE_COLS).push(" FROM images WHERE 1 = 1");
                // A reservation is not a published image yet.
                q.push(" AND state <> 'pending'");
                if !f.include_deleted {
                    q.push(" AND deleted_at IS NULL");
                }
                if let Some(name) = &f.name {
                    q.push(" AND name = ").push_bind(name.clone());
                }
                if let Some(state) = f.state {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(text) = f.q.as_ref().filter(|t| !t.is_empty()) {
                    let escaped = text
                        .to_lowercase()
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_");
                    let like = format!("%{escaped}%");
                    q.push(" AND (LOWER(name) LIKE ")
                        .push_bind(like.clone())
                        .push(" ESCAPE '\\' OR LOWER(version) LIKE ")
                        .push_bind(like.clone())
                        .push(" ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE ")
                        .push_bind(like)
                        .push(" ESCAPE '\\')");
                }
                q.push(" ORDER BY published_at DESC, id DESC LIMIT ")
                    .push_bind(f.limit.clamp(1, 1000));
                let rows: Vec<ImageRow> = q.build_query_as().fetch_all(&self.pool).await?;
                rows.into_iter().map(Image::try_from).collect()
            }

            async fn deprecate_image(&self, id: i64) -> StoreResult<()> {
                sqlx::query(DEPRECATE_IMAGE)
                    .bind(id)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn image_moved(&self, id: i64, repo: &str, url: &str) -> StoreResult<()> {
                sqlx::query(IMAGE_MOVED)
                    .bind(id)
                    .bind(repo)
                    .bind(url)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn image_purged(&self, id: i64) -> StoreResult<()> {
                sqlx::query(IMAGE_PURGED)
                    .bind(id)
                    .bind(now_millis())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_image_deleted(
                &self,
                id: i64,
                deleted: bool,
            ) -> StoreResult<Option<Image>> {
                sqlx::query(IMAGE_DELETED)
                    .bind(id)
                    .bind(deleted.then(now_millis))
                    .execute(&self.pool)
                    .await?;
                self.get_image(id).await
            }
        }
    };
}

catalog_impl!(SqliteStore, sqlx::Sqlite);
catalog_impl!(PgStore, sqlx::Postgres);
