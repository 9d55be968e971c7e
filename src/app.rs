//! Wires the parts together: store, pipeline, workers and the web server.
//! Tests use `Application::build` with port 0 and drive the real app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Clusters;
use crate::config::Config;
use crate::pipeline::{self, Pipeline};
use crate::store::{self, DynStore};
use crate::web::{self, AppState};
use crate::worker::events::JobEvents;
use crate::worker::{self, RunEnv, WorkerPool, WorkerPoolHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Web server and workers.
    Serve,
    /// Workers only (extra replicas).
    Worker,
}

pub struct Application {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub pipeline: Pipeline,
    pub clusters: Arc<Clusters>,
    /// Followers of job life (notifiers), called by the runner.
    pub events: Arc<Vec<Arc<dyn JobEvents>>>,
    /// Checks user names and passwords for the web layer.
    pub login: Arc<dyn crate::identity::LoginBackend>,
    /// The secret image pull keys derive from (shared through the database).
    image_key_secret: secrecy::SecretString,
    /// Set when this start created the first admin: print it once.
    pub first_admin_password: Option<String>,
    listener: Option<tokio::net::TcpListener>,
    addr: Option<SocketAddr>,
}

pub async fn open_store(config: &Config) -> anyhow::Result<DynStore> {
    let url = config.database_url();
    if url.starts_with("sqlite:") {
        tokio::fs::create_dir_all(&config.storage.data_dir).await?;
    }
    let store = store::open(&url, config.storage.max_connections)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the database {}: {e}",
                crate::domain::redact_url(&url)
            )
        })?;
    store
        .log_cap()
        .set(config.storage.max_log_lines, config.storage.log_head_lines);
    Ok(store)
}

impl Application {
    pub async fn build(config: Config, role: Role) -> anyhow::Result<Self> {
        Self::build_with_pipeline(config, role, None).await
    }

    /// `pipeline` overrides the configured one (tests of the runner itself).
    pub async fn build_with_pipeline(
        config: Config,
        role: Role,
        pipeline: Option<Pipeline>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut config = config;
        let store = open_store(&config).await?;
        // Every replica reads the same secret: the first start writes it.
        let image_key_secret = store
            .server_secret("image_key", &crate::identity::secret::random_id())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the server secret: {e}"))?;
        for n in config.cluster.nutanix.values_mut() {
            n.image_key_secret = Some(image_key_secret.clone().into());
        }
        let login: Arc<dyn crate::identity::LoginBackend> = match config.auth.backend {
            crate::config::AuthBackendKind::Local => {
                Arc::new(crate::identity::LocalBackend::new(store.clone()))
            }
            crate::config::AuthBackendKind::Ldap => Arc::new(
                crate::identity::LdapBackend::new(&config.auth.ldap)
                    .map_err(|e| anyhow::anyhow!("auth.ldap: {e}"))?,
            ),
        };
        let first_admin_password = if role == Role::Serve {
            crate::identity::accounts::create_first_admin(&store)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the first admin: {e}"))?
        } else {
            None
        };
        let clusters = Arc::new(Clusters::from_config(&config)?);
        let pipeline = pipeline.unwrap_or_else(|| pipeline::build_on(&config, clusters.clone()));
        // Notifiers only record what to send; the delivery loop sends it.
        let mut events: Vec<Arc<dyn JobEvents>> = Vec::new();
        if config.notify.any_enabled() {
            events.push(Arc::new(crate::notify::Outbox::new(
                store.clone(),
                &config.notify,
            )));
        }
        let (listener, addr) = if role == Role::Serve {
            let l = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
            let a = l.local_addr()?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        Ok(Application {
            config: Arc::new(config),
            store,
            pipeline,
            clusters,
            events: Arc::new(events),
            login,
            image_key_secret: image_key_secret.into(),
            first_admin_password,
            listener,
            addr,
        })
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.map(|a| a.port()).unwrap_or(0)
    }

    pub fn run_env(&self, hard_stop: CancellationToken) -> RunEnv {
        RunEnv {
            store: self.store.clone(),
            config: self.config.clone(),
            pipeline: self.pipeline.clone(),
            hard_stop,
            events: self.events.clone(),
        }
    }

    pub fn start_workers(&self) -> Option<WorkerPoolHandle> {
        (self.config.worker.pool_size > 0).then(|| {
            WorkerPool::start(
                self.run_env(CancellationToken::new()),
                &worker::worker_name(),
            )
        })
    }

    /// Runs until `shutdown` fires: stops accepting, then drains workers.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let pool = self.start_workers();
        // Leftover VMs and images of ended jobs are removed now and then.
        let janitor = (self.config.worker.pool_size > 0).then(|| {
            tokio::spawn(worker::janitor::run(
                self.store.clone(),
                self.clusters.clone(),
                self.config.storage.clone(),
                Duration::from_secs(self.config.worker.janitor_secs.max(10)),
                shutdown.clone(),
            ))
        });
        // Watched sources; every replica may run it, one at a time holds the lease.
        let watches = self.config.watch.scheduler.then(|| {
            let s = crate::watch::scheduler::Scheduler::new(
                self.store.clone(),
                self.config.clone(),
                worker::worker_name(),
            );
            tokio::spawn(s.run(shutdown.clone()))
        });
        // Email and Jira deliveries; safe in every replica (rows are leased).
        let notifier = if self.config.notify.any_enabled() {
            let d = crate::notify::Deliverer::from_config(self.store.clone(), self.config.clone())?;
            Some(tokio::spawn(Arc::new(d).run(shutdown.clone())))
        } else {
            None
        };
        let server = self.listener.take().map(|listener| {
            let state = AppState {
                login: self.login.clone(),
                image_keys: Arc::new(web::ImageKeys::new(self.image_key_secret.clone())),
                streams: Arc::default(),
                clusters: Arc::new(self.clusters.info()),
                store: self.store.clone(),
                config: self.config.clone(),
                stages: Arc::new(self.pipeline.iter().map(|s| s.name()).collect()),
                notes: Arc::new(
                    pipeline::scan::omitted(&self.config)
                        .into_iter()
                        .filter(|(s, _)| self.config.pipeline.stages.contains(s))
                        .map(|(s, why)| format!("{s} is left out: {why}"))
                        .collect(),
                ),
            };
            let router = web::router(state);
            let header_timeout =
                Duration::from_secs(self.config.server.header_read_timeout_secs.max(1));
            let stop = shutdown.clone();
            tokio::spawn(
                async move { web::serve::serve(listener, router, header_timeout, stop).await },
            )
        });
        shutdown.cancelled().await;
        tracing::info!(
            "shutting down: no new claims; running stages get {} s",
            self.config.worker.shutdown_grace_secs
        );
        if let Some(pool) = pool {
            pool.shutdown(Duration::from_secs(self.config.worker.shutdown_grace_secs))
                .await;
        }
        if let Some(j) = janitor {
            j.abort();
        }
        if let Some(w) = watches {
            // A check in flight is abandoned: nothing of it is recorded, so
            // whoever holds the lease next simply checks again.
            let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
        }
        if let Some(n) = notifier {
            // Outstanding rows stay in the outbox for the next start.
            let _ = tokio::time::timeout(Duration::from_secs(5), n).await;
        }
        if let Some(server) = server {
            // SSE streams keep connections open; do not wait on them forever.
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
        Ok(())
    }
}

/// Fires on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        t.cancel();
    });
    token
}
