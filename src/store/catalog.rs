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
}

impl ImageState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ImageState::Current => "current",
            ImageState::Deprecated => "deprecated",
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
    /// Records a version as current; publishing the same name and version again replaces it.
    async fn upsert_image(&self, image: &NewImage) -> StoreResult<Image>;
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

const IMAGE_COLS: &str = "id, name, version, description, format, size_bytes, sha256, sha1, md5, store, repo, path, url, \
     properties, job_id, state, published_at, deprecated_at, archived_at, purged_at, deleted_at";

macro_rules! image_cols {
    () => {
        "id, name, version, description, format, size_bytes, sha256, sha1, md5, store, repo, path, url, \
         properties, job_id, state, published_at, deprecated_at, archived_at, purged_at, deleted_at"
    };
}

const UPSERT_IMAGE: &str = concat!(
    "INSERT INTO images (name, version, description, format, size_bytes, sha256, sha1, md5, store, repo, path, url, \
     properties, job_id, state, published_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'current', $15) \
     ON CONFLICT (name, version) DO UPDATE SET description = excluded.description, format = excluded.format, \
     size_bytes = excluded.size_bytes, sha256 = excluded.sha256, sha1 = excluded.sha1, md5 = excluded.md5, \
     store = excluded.store, repo = excluded.repo, path = excluded.path, url = excluded.url, \
     properties = excluded.properties, job_id = excluded.job_id, state = 'current', \
     published_at = excluded.published_at, deprecated_at = NULL, archived_at = NULL, purged_at = NULL, \
     deleted_at = NULL RETURNING ",
    image_cols!()
);

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
        })
    }
}

macro_rules! catalog_impl {
    ($store:ty, $db:ty) => {
        #[async_trait]
        impl CatalogStore for $store {
            async fn upsert_image(&self, i: &NewImage) -> StoreResult<Image> {
                let row: ImageRow = sqlx::query_as(UPSERT_IMAGE)
                    .bind(&i.name)
                    .bind(&i.version)
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
                    .bind(i.job_id.to_string())
                    .bind(now_millis())
                    .fetch_one(&self.pool)
                    .await?;
                Image::try_from(row)
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
