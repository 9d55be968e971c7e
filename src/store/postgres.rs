//! PostgreSQL: the production backend, shared by many vmscan replicas.
//! Claims use `FOR UPDATE SKIP LOCKED`; workers are woken with LISTEN/NOTIFY.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::watch;

use super::common::{bind_new_job, fenced, leased, store_impl};
use super::rows::{collect, job_id, JobRow, LogRow, ResourceRow, StageRunRow};
use super::{millis, sql};
use super::{
    CancelOutcome, Job, JobFilter, Lease, LogLevel, LogLine, NewJob, ReapReport, Resource,
    StageRun, StageStat, StoreError, StoreResult,
};
use crate::domain::{now_millis, JobId, JobState, Millis, StageName, StageState};

pub struct PgStore {
    pub(super) log_cap: super::LogCap,
    pub(super) pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    const BACKEND: &'static str = "postgres";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)?.application_name("vmscan");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let wake = Arc::new(watch::Sender::new(0));
        let listener = tokio::spawn(listen(pool.clone(), wake.clone()));
        Ok(PgStore {
            log_cap: super::LogCap::default(),
            pool,
            wake,
            listener,
        })
    }

    pub(super) async fn notify_work(&self) {
        // Best effort: workers also poll, so a lost notification only costs latency.
        if let Err(e) = sqlx::query(sql::PG_NOTIFY).execute(&self.pool).await {
            tracing::warn!(error = %e, "pg_notify failed");
        }
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe_work(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

/// Forwards NOTIFYs from other replicas to this process's workers, reconnecting on error.
async fn listen(pool: PgPool, wake: Arc<watch::Sender<u64>>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut l) => {
                if let Err(e) = l.listen(sql::PG_CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    while let Ok(_n) = l.recv().await {
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open LISTEN connection"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

store_impl!(PgStore, Postgres, sql::CLAIM_PG);
