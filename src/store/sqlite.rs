//! SQLite: the zero-setup embedded backend (one file under the data directory).

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::watch;

use super::common::{bind_new_job, fenced, leased, store_impl};
use super::rows::{collect, job_id, JobRow, LogRow, ResourceRow, StageRunRow};
use super::sqlite_wake::{Listener, WakeDir};
use super::{millis, sql};
use super::{
    CancelOutcome, Job, JobFilter, Lease, LogLevel, LogLine, NewJob, ReapReport, Resource,
    StageRun, StageStat, StoreError, StoreResult,
};
use crate::domain::{now_millis, JobId, JobState, Millis, StageName, StageState};

pub struct SqliteStore {
    pub(super) log_cap: super::LogCap,
    pub(super) pool: SqlitePool,
    /// Wakes this process's workers.
    wake: watch::Sender<u64>,
    /// Wakes other processes' workers (None for an in-memory database).
    wake_dir: Option<WakeDir>,
    /// Bound once this process's workers first wait for work.
    listener: OnceLock<Option<Listener>>,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?;
        let wake_dir = if url.contains("mode=memory") {
            None
        } else {
            WakeDir::for_database(opts.get_filename())
        };
        let opts = opts
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
            wake_dir,
            listener: OnceLock::new(),
        })
    }

    pub(super) async fn notify_work(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(dir) = &self.wake_dir {
            let own = self
                .listener
                .get()
                .and_then(|l| l.as_ref().map(|l| l.path()));
            dir.notify(own);
        }
    }

    fn subscribe_work(&self) -> watch::Receiver<u64> {
        self.listener.get_or_init(|| {
            let dir = self.wake_dir.as_ref()?;
            match dir.listen(self.wake.clone()) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot bind the SQLite wake socket; workers find other processes' jobs by polling");
                    None
                }
            }
        });
        self.wake.subscribe()
    }
}

store_impl!(SqliteStore, Sqlite, sql::CLAIM_SQLITE);
