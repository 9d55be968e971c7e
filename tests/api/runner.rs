//! The stage runner's promises, with stages defined here: teardown always
//! runs, cancel reaches a running stage and kills its child process, parked
//! jobs come back, retryable failures are retried, shutdown hands work back.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use vmscan::domain::{now_millis, StageName};
use vmscan::pipeline::{Pipeline, Stage, StageCtx, StageError, StageFailure, StageOutcome};

use crate::support::{backends, stage, Backend, TestApp};

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
struct TestFailure {
    msg: String,
    retryable: bool,
}

impl StageFailure for TestFailure {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    Fail {
        retryable: bool,
    },
    /// Fails with a retryable error this many times, then succeeds.
    Flaky(u32),
    /// Runs a child process that would sleep for an hour.
    SpawnSleeper,
    /// Parks the job once, then succeeds.
    ParkOnce,
    /// Panics (a bug in a stage).
    Panic,
    /// Leaves a download, a key and a Windows password in the work directory.
    WriteWorkFiles,
    /// Logs this many numbered lines, and one endless line.
    Chatty(u32),
}

struct TestStage {
    name: StageName,
    always: bool,
    behaviour: Behaviour,
    runs: Arc<AtomicUsize>,
    calls: AtomicU32,
    pid_file: Option<std::path::PathBuf>,
}

fn test_stage(name: StageName, behaviour: Behaviour) -> (Arc<TestStage>, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let s = Arc::new(TestStage {
        name,
        always: name == StageName::Teardown,
        behaviour,
        runs: runs.clone(),
        calls: AtomicU32::new(0),
        pid_file: None,
    });
    (s, runs)
}

#[async_trait]
impl Stage for TestStage {
    fn name(&self) -> StageName {
        self.name
    }
    fn always_runs(&self) -> bool {
        self.always
    }
    async fn run(&self, ctx: &StageCtx) -> Result<StageOutcome, StageError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        ctx.info(format!("{} running", self.name)).await?;
        ctx.set_detail(json!({"call": call}), true).await?;
        match self.behaviour {
            Behaviour::Succeed => Ok(StageOutcome::Done),
            Behaviour::Fail { retryable } => Err(TestFailure {
                msg: format!("{} broke on purpose", self.name),
                retryable,
            }
            .into()),
            Behaviour::Flaky(n) if call < n => Err(TestFailure {
                msg: "flaky network".into(),
                retryable: true,
            }
            .into()),
            Behaviour::Flaky(_) => Ok(StageOutcome::Done),
            Behaviour::ParkOnce if call == 0 => Ok(StageOutcome::Park {
                until: now_millis() + 300,
                reason: "report not ready".into(),
            }),
            Behaviour::ParkOnce => Ok(StageOutcome::Done),
            Behaviour::Chatty(n) => {
                for i in 0..n {
                    ctx.info(format!("line {i}")).await?;
                }
                ctx.info("x".repeat(100_000)).await?;
                Ok(StageOutcome::Done)
            }
            Behaviour::Panic => panic!("index out of bounds in {}", self.name),
            Behaviour::WriteWorkFiles => {
                for (f, n) in [
                    ("download/disk.raw", 1 << 20),
                    ("ssh/id_ed25519", 400),
                    ("winrm/administrator-password", 25),
                ] {
                    let p = ctx.work_dir.join(f);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, vec![1u8; n]).unwrap();
                }
                Ok(StageOutcome::Done)
            }
            Behaviour::SpawnSleeper => {
                let mut child = tokio::process::Command::new("sleep")
                    .arg("3600")
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap();
                if let Some(p) = &self.pid_file {
                    std::fs::write(p, child.id().unwrap().to_string()).unwrap();
                }
                let _ = child.wait().await;
                Ok(StageOutcome::Done)
            }
        }
    }
}

fn pipeline(stages: Vec<Arc<TestStage>>) -> Pipeline {
    Arc::new(stages.into_iter().map(|s| s as Arc<dyn Stage>).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tears_down_after_a_stage_fails() {
    for backend in backends() {
        let (fetch, _) = test_stage(StageName::Fetch, Behaviour::Succeed);
        let (vm, _) = test_stage(StageName::VmCreate, Behaviour::Fail { retryable: false });
        let (agent, agent_runs) = test_stage(StageName::AgentInstall, Behaviour::Succeed);
        let (teardown, teardown_runs) = test_stage(StageName::Teardown, Behaviour::Succeed);
        let p = pipeline(vec![fetch, vm, agent, teardown]);
        let app = TestApp::spawn_with(backend, |_| {}, Some(p)).await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        let done = app.wait_final(id, Duration::from_secs(15)).await;
        assert_eq!(done["state"], "failed");
        assert_eq!(
            done["error"],
            "vm-create failed: vm-create broke on purpose"
        );
        assert_eq!(
            stage(&done, "vm-create")["error"],
            "vm-create broke on purpose"
        );
        assert_eq!(stage(&done, "agent-install")["state"], "skipped");
        assert_eq!(stage(&done, "teardown")["state"], "succeeded");
        assert_eq!(agent_runs.load(Ordering::SeqCst), 0);
        assert_eq!(teardown_runs.load(Ordering::SeqCst), 1);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_stage_and_kills_its_child() {
    for backend in backends() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        let runs = Arc::new(AtomicUsize::new(0));
        let vm = Arc::new(TestStage {
            name: StageName::VmCreate,
            always: false,
            behaviour: Behaviour::SpawnSleeper,
            runs: runs.clone(),
            calls: AtomicU32::new(0),
            pid_file: Some(pid_file.clone()),
        });
        let (after, after_runs) = test_stage(StageName::AgentInstall, Behaviour::Succeed);
        let (teardown, teardown_runs) = test_stage(StageName::Teardown, Behaviour::Succeed);
        let app =
            TestApp::spawn_with(backend, |_| {}, Some(pipeline(vec![vm, after, teardown]))).await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        app.wait_for(id, Duration::from_secs(10), |j| {
            stage(j, "vm-create")["state"] == "running"
        })
        .await;
        let start = std::time::Instant::now();
        while !pid_file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "child never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        let (s, body) = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 202, "{body}");
        let done = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(done["state"], "cancelled");
        assert_eq!(stage(&done, "vm-create")["state"], "cancelled");
        assert_eq!(stage(&done, "teardown")["state"], "succeeded");
        assert_eq!(after_runs.load(Ordering::SeqCst), 0);
        assert_eq!(teardown_runs.load(Ordering::SeqCst), 1);
        // The child process is gone (not even a zombie left running).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        assert!(!alive, "child process {pid} still running after cancel");
        let (s, _) = app
            .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 409, "cancelling a finished job is a conflict");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_job_waits_without_a_worker_and_resumes_where_it_stopped() {
    for backend in backends() {
        let (first, first_runs) = test_stage(StageName::Fetch, Behaviour::Succeed);
        let (report, report_runs) = test_stage(StageName::ReportCheck, Behaviour::ParkOnce);
        let app = TestApp::spawn_with(
            backend,
            |c| c.worker.pool_size = 1,
            Some(pipeline(vec![first, report])),
        )
        .await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        let waiting = app
            .wait_for(id, Duration::from_secs(10), |j| {
                j["state"] == "waiting" || j["state"] == "succeeded"
            })
            .await;
        if waiting["state"] == "waiting" {
            assert!(waiting["status_text"]
                .as_str()
                .unwrap()
                .starts_with("waiting — next check at"));
            assert_eq!(waiting["wait_reason"], "report not ready");
        }
        let done = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(done["state"], "succeeded");
        assert_eq!(
            first_runs.load(Ordering::SeqCst),
            1,
            "finished stages are not run again"
        );
        assert_eq!(report_runs.load(Ordering::SeqCst), 2);
        assert_eq!(done["attempt"], 2);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_with_backoff_then_give_up() {
    for backend in backends() {
        let (flaky, flaky_runs) = test_stage(StageName::Fetch, Behaviour::Flaky(2));
        let app = TestApp::spawn_with(
            backend,
            |c| c.pipeline.retry_limit = 3,
            Some(pipeline(vec![flaky])),
        )
        .await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let done = app
            .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(20))
            .await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
        assert_eq!(flaky_runs.load(Ordering::SeqCst), 3);
        let failed_runs = done["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "failed")
            .count();
        assert_eq!(failed_runs, 2);
        app.stop().await;

        let (broken, broken_runs) =
            test_stage(StageName::Fetch, Behaviour::Fail { retryable: true });
        let app = TestApp::spawn_with(
            backend,
            |c| c.pipeline.retry_limit = 1,
            Some(pipeline(vec![broken])),
        )
        .await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        let done = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "failed");
        assert_eq!(broken_runs.load(Ordering::SeqCst), 2);
        // Retry runs the job again from the start, in a new run.
        let (s, _) = app
            .post(&format!("/api/v1/jobs/{id}/retry"), json!({}))
            .await;
        assert_eq!(s, 202);
        let again = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(again["state"], "failed");
        assert_eq!(broken_runs.load(Ordering::SeqCst), 4);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_a_running_job_back_to_the_queue() {
    let (sleeper, _) = test_stage(StageName::VmCreate, Behaviour::SpawnSleeper);
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        |c| c.worker.shutdown_grace_secs = 1,
        Some(pipeline(vec![sleeper])),
    )
    .await;
    let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_for(&id, Duration::from_secs(10), |j| {
        stage(j, "vm-create")["state"] == "running"
    })
    .await;
    let store = app.store.clone();
    app.stop().await;
    let j = store.get_job(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(j.state.as_str(), "queued", "handed back, not lost");
    assert_eq!(j.lease_expiries, 0);
    let runs = store.stage_runs(j.id).await.unwrap();
    assert_eq!(runs[0].state.as_str(), "interrupted");
}

/// A panicking stage fails its job with "internal error in <stage>" and
/// teardown still runs: the worker survives, and the lease is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_fails_the_job_and_teardown_runs() {
    for backend in backends() {
        let (fetch, _) = test_stage(StageName::Fetch, Behaviour::Panic);
        let (teardown, teardown_runs) = test_stage(StageName::Teardown, Behaviour::Succeed);
        let p = pipeline(vec![fetch, teardown]);
        let app = TestApp::spawn_with(backend, |_| {}, Some(p)).await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        let done = app.wait_final(id, Duration::from_secs(15)).await;
        assert_eq!(done["state"], "failed");
        assert_eq!(
            done["error"],
            "fetch failed: internal error in fetch: index out of bounds in fetch"
        );
        assert_eq!(stage(&done, "teardown")["state"], "succeeded");
        assert_eq!(teardown_runs.load(Ordering::SeqCst), 1);
        // The same worker goes on with the next job.
        let next = app.submit(json!({"url": "https://h.example/b.img"})).await;
        let next = app
            .wait_final(next["id"].as_str().unwrap(), Duration::from_secs(15))
            .await;
        assert_eq!(next["state"], "failed");
        app.stop().await;
    }
}

/// Work files: a succeeded job's go when it ends; a failed job's are kept
/// for `storage.keep_failed_work_secs` but its guest credentials go at once,
/// and the janitor's sweep removes them once the time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_files_are_deleted_when_a_job_ends_and_credentials_after_teardown() {
    for backend in backends() {
        let (fetch, _) = test_stage(StageName::Fetch, Behaviour::WriteWorkFiles);
        let (vm, _) = test_stage(StageName::VmCreate, Behaviour::Succeed);
        let (teardown, _) = test_stage(StageName::Teardown, Behaviour::Succeed);
        let p = pipeline(vec![fetch, vm, teardown]);
        let app = TestApp::spawn_with(
            backend,
            |c| {
                c.storage.keep_work_secs = 0;
                c.storage.keep_failed_work_secs = 3600;
            },
            Some(p),
        )
        .await;
        let jobs = app.data_dir.join("jobs");
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap().to_string();
        let done = app.wait_final(&id, Duration::from_secs(15)).await;
        assert_eq!(done["state"], "succeeded");
        assert!(!jobs.join(&id).exists(), "a succeeded job leaves nothing");
        assert!(
            app.log_text(&id)
                .await
                .contains("work files deleted (1.0 MiB)"),
            "{}",
            app.log_text(&id).await
        );
        app.stop().await;

        // A failing one keeps its files (not its credentials) for debugging.
        let (fetch, _) = test_stage(StageName::Fetch, Behaviour::WriteWorkFiles);
        let (vm, _) = test_stage(StageName::VmCreate, Behaviour::Fail { retryable: false });
        let (teardown, _) = test_stage(StageName::Teardown, Behaviour::Succeed);
        let p = pipeline(vec![fetch, vm, teardown]);
        let app = TestApp::spawn_with(
            backend,
            |c| {
                c.storage.keep_work_secs = 0;
                c.storage.keep_failed_work_secs = 3600;
            },
            Some(p),
        )
        .await;
        let jobs = app.data_dir.join("jobs");
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap().to_string();
        let done = app.wait_final(&id, Duration::from_secs(15)).await;
        assert_eq!(done["state"], "failed");
        let dir = jobs.join(&id);
        assert!(dir.join("download/disk.raw").exists());
        assert!(!dir.join("ssh").exists() && !dir.join("winrm").exists());
        assert!(app
            .log_text(&id)
            .await
            .contains("work files kept for debugging until"));
        // Within the keeping time the sweep leaves it; past it, it goes.
        let mut storage = app.config.storage.clone();
        assert_eq!(
            vmscan::worker::workdir::sweep(&app.store, &storage).await,
            0
        );
        assert!(dir.exists());
        storage.keep_failed_work_secs = 0;
        assert_eq!(
            vmscan::worker::workdir::sweep(&app.store, &storage).await,
            1
        );
        assert!(!dir.exists());
        app.stop().await;
    }
}

/// The job log is capped: the first lines and the newest are kept, the ones
/// between are dropped and counted, and an endless line is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_job_keeps_its_head_and_tail_within_the_log_cap() {
    for backend in backends() {
        let (fetch, _) = test_stage(StageName::Fetch, Behaviour::Chatty(1000));
        let p = pipeline(vec![fetch]);
        let app = TestApp::spawn_with(
            backend,
            |c| {
                c.storage.max_log_lines = 100;
                c.storage.log_head_lines = 10;
            },
            Some(p),
        )
        .await;
        let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
        let id = job["id"].as_str().unwrap();
        app.wait_final(id, Duration::from_secs(60)).await;
        let (_, log) = app.get(&format!("/api/v1/jobs/{id}/log?limit=5000")).await;
        let lines = log["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 100, "{log:#}");
        let text: Vec<&str> = lines
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert!(text[..10].contains(&"line 0"), "the head is kept: {text:?}");
        assert!(!text.contains(&"line 500"), "the middle went");
        assert!(
            text.iter().any(|l| l.starts_with("job succeeded")),
            "the tail is kept"
        );
        let long = text.iter().find(|l| l.starts_with("xxxx")).unwrap();
        assert!(
            long.len() < 9000 && long.ends_with("more bytes cut)"),
            "{}",
            long.len()
        );
        let dropped = log["dropped"].as_i64().unwrap();
        assert!(dropped >= 900, "{dropped}");
        let (_, page) = app.get_text(&format!("/jobs/{id}")).await;
        assert!(
            page.contains(&format!("{dropped} lines dropped")),
            "the page says so"
        );
        app.stop().await;
    }
}
