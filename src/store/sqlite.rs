//! SQLite: the zero-setup embedded backend (one file under the data directory).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::watch;

use super::common::{bind_new_job, fenced, leased, store_impl};
use super::rows::{collect, job_id, JobRow, LogRow, ResourceRow, StageRunRow};
use super::{millis, sql};
use super::{
    CancelOutcome, Job, JobFilter, Lease, LogLevel, LogLine, NewJob, ReapReport, Resource,
    StageRun, StageStat, StoreError, StoreResult,
};
use crate::domain::{now_millis, JobId, JobState, Millis, StageName, StageState};

pub struct SqliteStore {
    pub(super) log_cap: super::LogCap,
    pub(super) pool: SqlitePool,
    /// Wakes this process's workers; SQLite has no cross-process notify, so
    /// other processes find work by polling.
    wake: watch::Sender<u64>,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            log_cap: super::LogCap::default(),
            pool,
            wake: watch::Sender::new(0),
        })
    }

    pub(super) async fn notify_work(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

store_impl!(SqliteStore, Sqlite, sql::CLAIM_SQLITE);
