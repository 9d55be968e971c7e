//! What a running stage sees: its job, a place to work, the log, its detail
//! record (progress shown on the job page) and the results of earlier stages.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::StageName;
use crate::store::{DynStore, Job, Lease, LogLevel, StoreResult};

/// Progress writes are throttled to this interval.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

pub struct StageCtx {
    pub job: Job,
    pub lease: Lease,
    pub stage: StageName,
    pub config: Arc<Config>,
    /// This job's scratch directory, kept across attempts (resumable downloads).
    pub work_dir: PathBuf,
    /// Fires when the user cancels; stages with long loops should watch it.
    pub cancel: CancellationToken,
    store: DynStore,
    run_id: i64,
    detail: Mutex<Detail>,
    earlier: HashMap<StageName, Value>,
}

struct Detail {
    value: Map<String, Value>,
    last_flush: Option<Instant>,
}

impl StageCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: Job,
        lease: Lease,
        stage: StageName,
        config: Arc<Config>,
        work_dir: PathBuf,
        cancel: CancellationToken,
        store: DynStore,
        run_id: i64,
        earlier: HashMap<StageName, Value>,
    ) -> Self {
        StageCtx {
            job,
            lease,
            stage,
            config,
            work_dir,
            cancel,
            store,
            run_id,
            detail: Mutex::new(Detail {
                value: Map::new(),
                last_flush: None,
            }),
            earlier,
        }
    }

    /// The detail an earlier stage of this run recorded (its output).
    pub fn output_of(&self, stage: StageName) -> Option<&Value> {
        self.earlier.get(&stage)
    }

    pub async fn log(&self, level: LogLevel, message: impl AsRef<str>) -> StoreResult<()> {
        self.store
            .append_log(&self.lease, Some(self.stage), level, message.as_ref())
            .await
    }

    pub async fn info(&self, message: impl AsRef<str>) -> StoreResult<()> {
        self.log(LogLevel::Info, message).await
    }

    pub async fn warn(&self, message: impl AsRef<str>) -> StoreResult<()> {
        self.log(LogLevel::Warn, message).await
    }

    /// Merges keys into the stage detail; written at most every 500 ms unless `force`.
    pub async fn set_detail(&self, fields: Value, force: bool) -> StoreResult<()> {
        let mut d = self.detail.lock().await;
        if let Value::Object(m) = fields {
            d.value.extend(m);
        }
        let due = d.last_flush.is_none_or(|t| t.elapsed() >= FLUSH_EVERY);
        if force || due {
            d.last_flush = Some(Instant::now());
            let v = Value::Object(d.value.clone());
            drop(d);
            self.store
                .update_stage_detail(&self.lease, self.run_id, &v)
                .await?;
        }
        Ok(())
    }

    /// The detail as it stands (written by the runner when the stage ends).
    pub async fn detail(&self) -> Value {
        Value::Object(self.detail.lock().await.value.clone())
    }

    pub async fn record_resource(
        &self,
        kind: &str,
        provider: &str,
        external_id: &str,
        detail: &Value,
    ) -> StoreResult<()> {
        self.store
            .record_resource(&self.lease, kind, provider, external_id, detail)
            .await
    }

    /// Counts the VM's boot-to-login time for its image family (insights).
    pub async fn record_boot(&self, family: &str, took: Duration) -> StoreResult<()> {
        self.store
            .record_boot(&self.lease, family, took.as_millis() as i64)
            .await
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }
}
