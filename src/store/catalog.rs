//! Storage of the image catalog (published images). Its SQL lives here.

use async_trait::async_trait;

use super::{PgStore, SqliteStore};

/// Published-image records (issue: publish). Methods are added with the catalog.
#[async_trait]
pub trait CatalogStore: Send + Sync {}

impl CatalogStore for SqliteStore {}
impl CatalogStore for PgStore {}
