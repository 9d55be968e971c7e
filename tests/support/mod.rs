//! Test helpers: start the real app against a fresh database (SQLite or
//! PostgreSQL) and drive it over HTTP; a file server with Range support,
//! throttling and hit counting for fetch tests.
#![allow(dead_code)]

pub mod artifactory;
pub mod daemon;
pub mod fileserver;
pub mod flexera;
pub mod guest;
pub mod jira;
pub mod nutanix;
pub mod openstack;
pub mod report;
pub mod slapd;
pub mod smtp;
pub mod source;
pub mod sshd;
pub mod tls;
pub mod trap;
pub mod vcsim;

use std::path::{Path, PathBuf};

/// The file as clusters are given it: format, virtual size and sha256 read from it.
pub async fn image_of(path: &Path) -> vmscan::cluster::ImageFile {
    vmscan::cluster::ImageFile::read(path).await.unwrap()
}
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vmscan::app::{Application, Role};
use vmscan::config::Config;
use vmscan::pipeline::Pipeline;
use vmscan::store::DynStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends to test: SQLite always; PostgreSQL when the test script
/// started one (`VMSCAN_TEST_PG_URL`). Under CI a missing PostgreSQL is an error.
/// Run as root, QEMU runs as `nobody` (cluster.qemu.run_as): it must be able
/// to enter a test's temporary directory (created 0700) to reach its images.
pub fn share_with_qemu(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if pg_admin_url().is_some() {
        v.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok() {
        panic!("VMSCAN_TEST_PG_URL is not set under CI: run the tests through scripts/test.sh");
    } else {
        eprintln!(
            "note: VMSCAN_TEST_PG_URL not set; PostgreSQL tests skipped (scripts/test.sh sets it)"
        );
    }
    v
}

pub fn pg_admin_url() -> Option<String> {
    std::env::var("VMSCAN_TEST_PG_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A fresh, empty PostgreSQL database for one test; returns its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let admin = pg_admin_url().expect("VMSCAN_TEST_PG_URL");
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// A config for tests: fresh data dir, fast leases and polling, port 0.
pub async fn test_config(backend: Backend, data_dir: &std::path::Path) -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.storage.data_dir = data_dir.to_path_buf();
    cfg.storage.database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_pg_database().await.into()),
    };
    cfg.worker.poll_interval_ms = 100;
    cfg.worker.cancel_check_ms = 100;
    cfg.worker.lease_secs = 5;
    cfg.worker.shutdown_grace_secs = 5;
    cfg.pipeline.retry_backoff_secs = 1;
    // Tests look at a finished job's files; tests/api/runner.rs checks the deletion.
    cfg.storage.keep_work_secs = 3600;
    // The fake servers listen on 127.0.0.1: re-allow loopback, the explicit way
    // an operator would (the built-in deny list stays).
    cfg.fetch.deny_cidrs = Vec::new();
    // Tests name requesters' colleagues at example.com as "also tell".
    cfg.auth.notify_domains = vec!["example.com".into()];
    cfg
}

pub struct TestApp {
    pub base: String,
    /// Sends the first admin's API token with every request.
    pub client: reqwest::Client,
    /// The first admin's password, as `vmscan serve` prints it.
    pub admin_password: Option<String>,
    pub store: DynStore,
    pub config: Config,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_with(backend, tweak, None).await
    }

    /// `pipeline` replaces the configured stages (tests of the runner itself).
    pub async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
        pipeline: Option<Pipeline>,
    ) -> TestApp {
        let tmp = tempfile::tempdir().expect("temp dir");
        share_with_qemu(tmp.path());
        let data_dir = tmp.path().join("data");
        let mut cfg = test_config(backend, &data_dir).await;
        tweak(&mut cfg);
        let app = Application::build_with_pipeline(cfg.clone(), Role::Serve, pipeline)
            .await
            .expect("app starts");
        let base = format!("http://{}", app.addr().unwrap());
        let store = app.store.clone();
        let admin_password = app.first_admin_password.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        // The suite drives the API as the first admin, through a real token.
        let token = issue_token(&store, "admin", "admin").await;
        TestApp {
            base,
            client: client_with_token(&token),
            admin_password,
            store,
            config: cfg,
            data_dir,
            _tmp: tmp,
            shutdown,
            task: Some(task),
        }
    }

    /// A token for `user` with `role`; the user is added (token-only,
    /// with that role) if it does not exist.
    pub async fn token_for(&self, user: &str, role: &str) -> String {
        issue_token(&self.store, user, role).await
    }

    /// A local user with a display name and mail, and a client acting as them.
    pub async fn person(&self, user: &str, display: &str, role: &str) -> reqwest::Client {
        vmscan::identity::accounts::add_local_user(
            &self.store,
            user,
            role.parse().expect("role"),
            None,
            Some(format!("{user}@example.com")),
            Some(display.to_string()),
        )
        .await
        .expect("add user");
        self.client_as(user, role).await
    }

    /// Submits as whoever `client` is; expects 201.
    pub async fn submit_with(&self, client: &reqwest::Client, body: Value) -> Value {
        let r = client
            .post(self.url("/api/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let job: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "submit {body} → {status} {job}");
        job
    }

    /// A client acting as `user` with `role`.
    pub async fn client_as(&self, user: &str, role: &str) -> reqwest::Client {
        client_with_token(&self.token_for(user, role).await)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a job and expects 201; returns the job JSON.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, job) = self.post("/api/v1/jobs", body.clone()).await;
        assert_eq!(status, 201, "submit {body} → {status} {job}");
        job
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "GET job {id}: {job}");
        job
    }

    /// Polls the job until `pred` holds; panics with the last state after `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if pred(&job) {
                return job;
            }
            if start.elapsed() > timeout {
                let (_, log) = self.get(&format!("/api/v1/jobs/{id}/log")).await;
                panic!("job {id} did not reach the expected state in {timeout:?}: {job:#}\nlog: {log:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, timeout, |j| {
            matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    pub async fn log_text(&self, id: &str) -> String {
        let (_, log) = self.get(&format!("/api/v1/jobs/{id}/log?limit=5000")).await;
        log["lines"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .map(|l| l["message"].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Issues an API token the way `vmscan token create` does.
pub async fn issue_token(store: &DynStore, user: &str, role: &str) -> String {
    use vmscan::domain::Role;
    use vmscan::identity::accounts::{self, TokenRequest};
    let role: Role = role.parse().expect("role");
    if store.get_user(user).await.expect("user lookup").is_none() {
        accounts::add_local_user(
            store,
            user,
            role,
            None,
            Some(format!("{user}@example.com")),
            None,
        )
        .await
        .expect("add user");
    }
    let (token, _) = accounts::issue_token(
        store,
        &TokenRequest {
            user,
            role: Some(role),
            name: "test",
            expires_days: None,
            created_by: "tests",
            ceiling: Role::Admin,
            max_days: 0,
        },
    )
    .await
    .expect("issue token");
    token
}

pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .expect("client")
}

/// The stage named `name` in a job JSON.
pub fn stage<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {job:#}"))
}

/// The SHA-256 of a file, read in 1 MiB pieces (images are large).
pub fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// "name state" for each service an agent-install stage recorded.
pub fn service_states(agent_detail: &Value) -> Vec<String> {
    agent_detail["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["name"].as_str().unwrap(),
                s["state"].as_str().unwrap()
            )
        })
        .collect()
}
