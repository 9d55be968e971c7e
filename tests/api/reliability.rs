//! Crash and concurrency: real `vmscan` processes, killed with SIGKILL or
//! racing on one PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest;
use vmscan::domain::JobState;
use vmscan::store::{self, JobFilter, NewJob};

use crate::support::daemon::Daemon;
use crate::support::fileserver::{Behaviour, FileServer};
use crate::support::{backends, fresh_pg_database, pg_admin_url, Backend};

pub(crate) fn env_for(db: &str, data: &Path, lease_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("VMSCAN_STORAGE__DATABASE_URL", db.to_string()),
        ("VMSCAN_STORAGE__DATA_DIR", data.display().to_string()),
        ("VMSCAN_SERVER__LISTEN", "127.0.0.1:0".into()),
        ("VMSCAN_WORKER__LEASE_SECS", lease_secs.to_string()),
        ("VMSCAN_WORKER__POLL_INTERVAL_MS", "100".into()),
        // The file server listens on loopback: re-allowed the explicit way.
        ("VMSCAN_FETCH__DENY_CIDRS", "[]".into()),
        (
            "VMSCAN_PIPELINE__STAGES",
            "[\"fetch\", \"checksum\"]".into(),
        ),
    ]
}

/// A job for `url` with nothing else asked.
fn plain_job(url: &str) -> NewJob {
    NewJob {
        url: url.parse().unwrap(),
        checksum: None,
        requested_by: None,
        email: None,
        note: None,
        options: json!({}),
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn stage<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9_mid_download_and_resumes_without_running_a_stage_twice() {
    for backend in backends() {
        let tmp = tempfile::tempdir().unwrap();
        let files = tmp.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let content: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(files.join("big.raw"), &content).unwrap();
        let expected = hex::encode(sha2::Sha256::digest(&content));
        let fs = FileServer::start(&files).await;
        fs.set(Behaviour {
            rate: 1_500_000,
            ..Default::default()
        });

        let db = match backend {
            Backend::Sqlite => format!("sqlite:{}", tmp.path().join("vmscan.db").display()),
            Backend::Postgres => fresh_pg_database().await,
        };
        let env = env_for(&db, &tmp.path().join("data"), 3);
        let first = Daemon::start(&["serve"], &env);
        let client = first.admin_client();
        let base = first.base.clone().unwrap();
        let job: Value = client
            .post(format!("{base}/api/v1/jobs"))
            .json(&json!({"url": fs.url("big.raw"), "checksum": format!("sha256:{expected}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = job["id"].as_str().unwrap().to_string();
        let start = Instant::now();
        loop {
            let j = get_json(&client, &format!("{base}/api/v1/jobs/{id}")).await;
            if stage(&j, "fetch")["detail"]["bytes"].as_u64().unwrap_or(0) > 1_000_000 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "download never got going: {j:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(first); // SIGKILL: no chance to clean up.

        let second = Daemon::start(&["serve"], &env);
        let base = second.base.clone().unwrap();
        let start = Instant::now();
        let done = loop {
            let j = get_json(&client, &format!("{base}/api/v1/jobs/{id}")).await;
            if j["state"] != "running" && j["state"] != "queued" {
                break j;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "job stuck: {j:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(done["state"], "succeeded", "{backend:?}: {done:#}");
        assert_eq!(stage(&done, "checksum")["detail"]["verified"], true);
        assert_eq!(
            stage(&done, "checksum")["detail"]["actual"],
            expected.as_str()
        );

        // The fetch ran twice in sequence: interrupted, then succeeded; never overlapping.
        let runs: Vec<&Value> = done["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stage"] == "fetch")
            .collect();
        let states: Vec<&str> = runs.iter().map(|r| r["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["interrupted", "succeeded"], "{backend:?}");
        let store = store::open(&db, 2).await.unwrap();
        let raw = store.stage_runs(id.parse().unwrap()).await.unwrap();
        let fetches: Vec<_> = raw.iter().filter(|r| r.stage == "fetch").collect();
        assert!(
            fetches[0].finished_at.unwrap() <= fetches[1].started_at,
            "stage ran twice in parallel"
        );
        // The second attempt resumed the download with a Range request.
        let hits = fs.hits("big.raw");
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(
            hits[1].as_deref().is_some_and(|r| r.starts_with("bytes=")),
            "{hits:?}"
        );
        let log = get_json(&client, &format!("{base}/api/v1/jobs/{id}/log")).await;
        let text = log.to_string();
        assert!(text.contains("resuming download at"), "{text}");
        assert!(text.contains("lease expired"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_run_500_jobs_exactly_once() {
    let Some(_) = pg_admin_url() else {
        assert!(
            std::env::var("CI").is_err(),
            "PostgreSQL is required under CI"
        );
        eprintln!("skipped: needs PostgreSQL (scripts/test.sh)");
        return;
    };
    const N: usize = 500;
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..N {
        std::fs::write(files.join(format!("f{i}.img")), format!("image {i}")).unwrap();
    }
    let fs = FileServer::start(&files).await;
    let db = fresh_pg_database().await;
    let store = store::open(&db, 4).await.unwrap();
    let mut env = env_for(&db, &tmp.path().join("data"), 10);
    env.push(("VMSCAN_WORKER__POOL_SIZE", "4".into()));
    let workers: Vec<Daemon> = (0..2).map(|_| Daemon::start(&["worker"], &env)).collect();

    let started = Instant::now();
    for i in 0..N {
        store
            .create_job(plain_job(&fs.url(&format!("f{i}.img"))))
            .await
            .unwrap();
    }
    loop {
        let counts: HashMap<JobState, i64> =
            store.count_by_state().await.unwrap().into_iter().collect();
        let done = counts.get(&JobState::Succeeded).copied().unwrap_or(0)
            + counts.get(&JobState::Failed).copied().unwrap_or(0);
        if done as usize == N {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not done in time: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "500 jobs through 2 worker processes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(workers);

    let jobs = store
        .list_jobs(&JobFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), N);
    let mut claimers = HashSet::new();
    for j in &jobs {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert_eq!(j.attempt, 1, "job {} claimed more than once", j.id);
        let runs = store.stage_runs(j.id).await.unwrap();
        assert_eq!(runs.len(), 2, "each stage exactly once: {runs:?}");
        let log = store.log_lines(j.id, 0, 100).await.unwrap();
        let claim = log
            .iter()
            .find(|l| l.message.starts_with("claimed by worker"))
            .unwrap();
        claimers.insert(claim.message.split(':').nth(1).unwrap_or("").to_string());
    }
    // Every file fetched exactly once.
    let hits = fs.all_hits();
    assert_eq!(hits.len(), N);
    assert!(hits.values().all(|h| h.len() == 1), "a job ran twice");
    assert_eq!(
        claimers.len(),
        2,
        "both worker processes took part: {claimers:?}"
    );
}

/// SQLite has no LISTEN/NOTIFY: a job another process queues (here this test,
/// as `vmscan submit` would) reaches an idle worker process through its wake
/// socket, long before the worker's next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_by_another_process_wakes_an_idle_sqlite_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("a.img"), "image").unwrap();
    let fs = FileServer::start(&files).await;
    let db_file = tmp.path().join("vmscan.db");
    let db = format!("sqlite:{}", db_file.display());
    let mut env = env_for(&db, &tmp.path().join("data"), 30);
    env.push(("VMSCAN_WORKER__POLL_INTERVAL_MS", "120000".into()));
    let _worker = Daemon::start(&["worker"], &env);

    // The worker binds its socket once it waits for work.
    let wake_dir = tmp.path().join("vmscan.db.wake");
    let started = Instant::now();
    let socket = loop {
        let found = std::fs::read_dir(&wake_dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "sock"))
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never bound a wake socket in {}",
            wake_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let store = store::open(&db, 2).await.unwrap();
    let queue = || async { store.create_job(plain_job(&fs.url("a.img"))).await.unwrap() };
    let job = queue().await;
    let queued = Instant::now();
    loop {
        let j = store.get_job(job.id).await.unwrap().unwrap();
        if j.state.is_final() {
            assert_eq!(j.state, JobState::Succeeded, "{:?}", j.error);
            break;
        }
        // Polling alone would first look after two minutes.
        assert!(
            queued.elapsed() < Duration::from_secs(60),
            "the idle worker was not woken: job still {:?}",
            j.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(_worker);
    // A killed worker leaves its socket; the next notify clears it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue().await;
    assert!(
        !socket.exists(),
        "the dead worker's socket {} is removed by the next notifier",
        socket.display()
    );
}
