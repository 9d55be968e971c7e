//! Storage of notifications (email, Jira) and their delivery state. Its SQL lives here.

use async_trait::async_trait;

use super::{PgStore, SqliteStore};

/// Notification outbox (issue: notify). Methods are added with the notifiers.
#[async_trait]
pub trait NotifyStore: Send + Sync {}

impl NotifyStore for SqliteStore {}
impl NotifyStore for PgStore {}
