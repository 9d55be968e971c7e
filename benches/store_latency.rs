//! Store latency benchmark (issue 2): how the API, the dashboard and the queue
//! behave once the store holds 100,000 finished jobs, compared with the same
//! measurements on an empty store, on the same machine, in the same run.
//!
//!   cargo bench --bench store_latency        # SQLite only
//!   scripts/bench.sh                         # SQLite and a throwaway PostgreSQL
//!
//! Per backend and per store (empty, then filled) it starts the real app
//! (`Application::build`, port 0, 2 workers, a fetch → extract → checksum
//! pipeline on a small local `file://` image) and measures over HTTP:
//!   - `GET /api/v1/jobs?limit=50`: first page, a keyset page from the middle
//!     (`before=`), and `state=failed`;
//!   - `GET /` and `GET /jobs/{id}`; `GET /insights` and its JSON;
//!     `GET /metrics` as an extra;
//!   - submit→claimed: sequential `POST /api/v1/jobs`, each waited on until it
//!     is final; latency = `jobs.started_at - jobs.created_at` from the store
//!     (both stamped by vmscan, millisecond resolution), plus the latency seen
//!     by the client (POST sent → `get_job` no longer `queued`, polled every 1 ms).
//!
//! The filled store is written with direct multi-row INSERTs: 100,000 jobs
//! (90 % succeeded, 10 % failed), 3 stage runs and 4 log lines each.
//! The "empty" store holds a single finished job, so `/jobs/{id}` has
//! something to show.
//!
//! Environment: `VMSCAN_BENCH_PG_URL` (an admin URL; a fresh database is
//! created per store and dropped afterwards), `VMSCAN_BENCH_JOBS` (default
//! 100000), `VMSCAN_BENCH_REQUESTS` (default 300), `VMSCAN_BENCH_SUBMITS`
//! (default 200), `VMSCAN_BENCH_KEEP=1` keeps the databases for inspection
//! (EXPLAIN) and prints where they are.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use sqlx::Executor;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vmscan::app::{Application, Role};
use vmscan::config::Config;
use vmscan::domain::{JobId, JobState, StageName};
use vmscan::store::DynStore;

mod support;
use support::{drop_pg_database, env_usize, fresh_pg_database, loadavg, Stats};

/// Jobs per multi-row INSERT batch. Keeps every statement under SQLite's
/// 32,766 bind parameters (job_log: 4 rows × 5 columns per job).
const BATCH: usize = 500;
const WARMUP: usize = 20;

#[derive(Clone, Debug)]
enum Backend {
    Sqlite,
    Postgres { admin_url: String },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    jobs: usize,
    requests: usize,
    submits: usize,
    keep: bool,
}

/// One store's measurements, in table order.
struct Scenario {
    label: String,
    jobs: usize,
    fill_secs: f64,
    rows: Vec<(&'static str, Stats)>,
    notes: Vec<String>,
}

fn main() {
    support::run_bench("store_latency", run());
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = Settings {
        jobs: env_usize("VMSCAN_BENCH_JOBS", 100_000)?,
        requests: env_usize("VMSCAN_BENCH_REQUESTS", 300)?,
        submits: env_usize("VMSCAN_BENCH_SUBMITS", 200)?,
        keep: std::env::var("VMSCAN_BENCH_KEEP").is_ok_and(|v| v == "1"),
    };
    ensure!(
        settings.jobs >= 2 && settings.requests >= 1 && settings.submits >= 1,
        "VMSCAN_BENCH_JOBS must be at least 2, REQUESTS and SUBMITS at least 1"
    );
    let mut backends = vec![Backend::Sqlite];
    match std::env::var("VMSCAN_BENCH_PG_URL") {
        Ok(u) if !u.trim().is_empty() => backends.push(Backend::Postgres {
            admin_url: u.trim().to_string(),
        }),
        _ => println!(
            "note: VMSCAN_BENCH_PG_URL is not set: SQLite only \
             (scripts/bench.sh starts a throwaway PostgreSQL and sets it)"
        ),
    }
    println!(
        "store_latency: {} finished jobs vs an empty store; {} requests per endpoint, \
         {} sequential submissions; backends: {}",
        settings.jobs,
        settings.requests,
        settings.submits,
        backends
            .iter()
            .map(Backend::name)
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Other work on the machine shows up in p99: say how busy it was.
    println!("load average at start: {}", loadavg());
    let mut results = Vec::new();
    for backend in &backends {
        let empty = run_scenario(backend, 1, "empty store", settings).await?;
        print_scenario(backend, &empty, None);
        let label = format!("{} jobs", settings.jobs);
        let filled = run_scenario(backend, settings.jobs, &label, settings).await?;
        print_scenario(backend, &filled, Some(&empty));
        results.push((backend.clone(), empty, filled));
    }

    println!();
    println!("{}", table(&results));
    println!(
        "total bench time: {:.0} s (fills included); load average at end: {} ({} CPUs)",
        started.elapsed().as_secs_f64(),
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

fn ratio(x: f64, base: f64) -> String {
    if base <= 0.0 {
        if x <= 0.0 {
            "x1.0".into()
        } else {
            "n/a".into()
        }
    } else {
        format!("x{:.1}", x / base)
    }
}

fn print_scenario(backend: &Backend, s: &Scenario, base: Option<&Scenario>) {
    println!(
        "\n[{}] {} ({} finished job{}{})",
        backend.name(),
        s.label,
        s.jobs,
        if s.jobs == 1 { "" } else { "s" },
        if s.fill_secs > 0.05 {
            format!(", filled in {:.1} s", s.fill_secs)
        } else {
            String::new()
        }
    );
    for (name, st) in &s.rows {
        let vs = |x: f64, pick: fn(&Stats) -> f64| {
            base.and_then(|b| b.rows.iter().find(|(n, _)| n == name))
                .map(|(_, b)| format!(" ({} vs empty store)", ratio(x, pick(b))))
                .unwrap_or_default()
        };
        println!(
            "  {name:<34} p50 {:>7.2} ms{}  p99 {:>7.2} ms{}  max {:>7.2} ms  n={}",
            st.p50,
            vs(st.p50, |b| b.p50),
            st.p99,
            vs(st.p99, |b| b.p99),
            st.max,
            st.n
        );
    }
    for n in &s.notes {
        println!("  note: {n}");
    }
}

fn table(results: &[(Backend, Scenario, Scenario)]) -> String {
    let mut out = String::new();
    let filled_label = results
        .first()
        .map(|(_, _, f)| format!("{} jobs", f.jobs))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| backend  | measurement (ms)                   | empty p50 | empty p99 | {filled_label:>9} p50 | {filled_label:>9} p99 | p50 ratio | p99 ratio |"
    );
    let _ = writeln!(
        out,
        "|----------|------------------------------------|----------:|----------:|--------------:|--------------:|----------:|----------:|"
    );
    for (backend, empty, filled) in results {
        for (name, f) in &filled.rows {
            let Some((_, e)) = empty.rows.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {:<8} | {:<34} | {:>9.2} | {:>9.2} | {:>13.2} | {:>13.2} | {:>9} | {:>9} |",
                backend.name(),
                name,
                e.p50,
                e.p99,
                f.p50,
                f.p99,
                ratio(f.p50, e.p50),
                ratio(f.p99, e.p99)
            );
        }
    }
    out
}

async fn run_scenario(
    backend: &Backend,
    jobs: usize,
    label: &str,
    settings: Settings,
) -> anyhow::Result<Scenario> {
    let tmp = tempfile::Builder::new().prefix("vmscan-bench").tempdir()?;
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images)?;
    let image = images.join("disk.raw");
    // A small raw "image": fetch (in place), extract (not an archive) and
    // checksum all run for real, in milliseconds.
    std::fs::write(
        &image,
        (0..64 * 1024u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )?;

    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse()?;
    cfg.storage.data_dir = tmp.path().join("data");
    cfg.worker.pool_size = 2;
    // 200 sequential submissions by one user: latency is measured here, the
    // per-user limit (issue 16) by scripts/bench-load.sh and the API tests.
    cfg.server.max_submissions_per_minute = 1_000_000;
    // The intake stages only: quick, real, and no VM to boot per job.
    cfg.pipeline.stages = vec![StageName::Fetch, StageName::Extract, StageName::Checksum];
    cfg.fetch.allowed_roots = vec![images.clone()];
    let mut pg_db = None;
    if let Backend::Postgres { admin_url } = backend {
        let (url, name) = fresh_pg_database(admin_url).await?;
        cfg.storage.database_url = Some(url.into());
        pg_db = Some(name);
    }
    let db_url = cfg.database_url();

    eprintln!("[{}] {label}: starting the app", backend.name());
    let app = Application::build(cfg, Role::Serve)
        .await
        .context("Application::build")?;
    let base = format!("http://{}", app.addr().context("no listen address")?);
    let store = app.store.clone();

    eprintln!("[{}] {label}: writing {jobs} finished jobs", backend.name());
    let fill_start = Instant::now();
    let ids = match backend {
        Backend::Sqlite => fill_sqlite(&db_url, jobs).await?,
        Backend::Postgres { .. } => fill_postgres(&db_url, jobs).await?,
    };
    // The rows went in behind the daemon's back; its reaper folds the
    // per-state count deltas (migration 0008) within seconds, as here.
    store.fold_job_counts().await.context("fold_job_counts")?;
    store
        .fold_daily_outcomes()
        .await
        .context("fold_daily_outcomes")?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    eprintln!("[{}] {label}: filled in {fill_secs:.1} s", backend.name());

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until(shutdown.clone()));
    let result = measure(&base, &store, &image, &ids, jobs, settings).await;

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    drop(store);
    if settings.keep {
        let kept = tmp.keep();
        eprintln!(
            "[{}] {label}: kept {} ({})",
            backend.name(),
            kept.display(),
            vmscan::config::redact_url(&db_url)
        );
    } else if let (Some(name), Backend::Postgres { admin_url }) = (&pg_db, backend) {
        if let Err(e) = drop_pg_database(admin_url, name).await {
            eprintln!("warning: cannot drop {name}: {e:#}");
        }
    }
    let (rows, notes) = result?;
    Ok(Scenario {
        label: label.to_string(),
        jobs,
        fill_secs,
        rows,
        notes,
    })
}

type Measured = (Vec<(&'static str, Stats)>, Vec<String>);

/// The API needs a login (issue 12): an admin's token, made through the store.
async fn admin_client(store: &DynStore) -> anyhow::Result<reqwest::Client> {
    use vmscan::domain::Role;
    use vmscan::identity::accounts::{add_local_user, issue_token, TokenRequest};
    add_local_user(store, "bench", Role::Admin, None, None, None).await?;
    let (secret, _) = issue_token(
        store,
        &TokenRequest {
            user: "bench",
            role: None,
            name: "store_latency bench",
            expires_days: None,
            created_by: "bench",
            ceiling: Role::Admin,
            max_days: 0,
        },
    )
    .await?;
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {secret}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn measure(
    base: &str,
    store: &DynStore,
    image: &Path,
    ids: &[String],
    jobs: usize,
    settings: Settings,
) -> anyhow::Result<Measured> {
    let client = admin_client(store).await?;
    // Wait until the server answers.
    let ready = Instant::now();
    loop {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if ready.elapsed() > Duration::from_secs(10) => bail!("server never answered"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }

    let mid = &ids[ids.len() / 2];
    let deep_rows = ids.len() / 2;
    let endpoints: Vec<(&'static str, String, Option<usize>, usize)> = vec![
        (
            "GET /api/v1/jobs?limit=50",
            "/api/v1/jobs?limit=50".into(),
            Some(50.min(jobs)),
            settings.requests,
        ),
        (
            "  … &before=<middle id>",
            format!("/api/v1/jobs?limit=50&before={mid}"),
            Some(50.min(deep_rows)),
            settings.requests,
        ),
        (
            "  … &state=failed",
            "/api/v1/jobs?limit=50&state=failed".into(),
            Some(50.min(failed_count(jobs))),
            settings.requests,
        ),
        ("GET / (dashboard)", "/".into(), None, settings.requests),
        (
            "GET /jobs/{id} (job page)",
            format!("/jobs/{mid}"),
            None,
            settings.requests,
        ),
        ("GET /insights", "/insights".into(), None, settings.requests),
        (
            "GET /api/v1/insights",
            "/api/v1/insights".into(),
            None,
            settings.requests,
        ),
        (
            "GET /metrics (extra)",
            "/metrics".into(),
            None,
            (settings.requests / 3).max(1),
        ),
    ];

    let mut rows = Vec::new();
    for (name, path, expect_jobs, n) in &endpoints {
        let url = format!("{base}{path}");
        let mut ms = Vec::with_capacity(*n);
        for i in 0..(WARMUP + n) {
            let t = Instant::now();
            let r = client.get(&url).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            let elapsed = t.elapsed();
            ensure!(
                status.is_success(),
                "GET {path} → {status}: {}",
                String::from_utf8_lossy(&body)
            );
            if i == 0 {
                if let Some(want) = expect_jobs {
                    let v: Value = serde_json::from_slice(&body)?;
                    let got = v["jobs"].as_array().map(Vec::len).unwrap_or(0);
                    ensure!(
                        got == *want,
                        "GET {path} returned {got} jobs, expected {want}"
                    );
                }
            }
            if i >= WARMUP {
                ms.push(elapsed.as_secs_f64() * 1000.0);
            }
        }
        rows.push((*name, Stats::of(ms)));
    }

    let (claim_rows, notes) = submit_to_claimed(&client, base, store, image, settings).await?;
    rows.extend(claim_rows);
    Ok((rows, notes))
}

/// Sequential submissions, each waited on until final, so the workers are
/// idle (waiting for work) whenever a job arrives.
async fn submit_to_claimed(
    client: &reqwest::Client,
    base: &str,
    store: &DynStore,
    image: &Path,
    settings: Settings,
) -> anyhow::Result<Measured> {
    let url = format!("file://{}", image.display());
    let mut stamped = Vec::with_capacity(settings.submits);
    let mut seen = Vec::with_capacity(settings.submits);
    let mut post_ms = Vec::with_capacity(settings.submits);
    let mut run_ms = Vec::with_capacity(settings.submits);
    let mut not_succeeded = 0usize;
    let mut first_error = None;
    for i in 0..settings.submits {
        let t0 = Instant::now();
        let r = client
            .post(format!("{base}/api/v1/jobs"))
            .json(&json!({"url": url, "note": format!("bench {i}")}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.as_u16() == 201, "submit → {status}: {body}");
        post_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let id = JobId::from_str(body["id"].as_str().context("no id in the response")?)?;

        // Claimed: state leaves `queued` (polled every 1 ms).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job = store.get_job(id).await?.context("job vanished")?;
            if job.state != JobState::Queued {
                seen.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            ensure!(Instant::now() < deadline, "job {id} not claimed in 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Then final, so the next submission finds idle workers.
        let job = loop {
            let job = store.get_job(id).await?.context("job vanished")?;
            if job.state.is_final() {
                break job;
            }
            ensure!(Instant::now() < deadline, "job {id} not final in 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let started = job.started_at.context("final job without started_at")?;
        stamped.push((started - job.created_at) as f64);
        if let Some(f) = job.finished_at {
            run_ms.push((f - started) as f64);
        }
        if job.state != JobState::Succeeded {
            not_succeeded += 1;
            first_error.get_or_insert_with(|| format!("{}: {:?}", job.state, job.error));
        }
        // Let the workers go back to waiting for work.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut notes = Vec::new();
    if not_succeeded > 0 {
        notes.push(format!(
            "{not_succeeded} of {} bench jobs did not succeed (first: {})",
            settings.submits,
            first_error.unwrap_or_default()
        ));
    }
    Ok((
        vec![
            ("POST /api/v1/jobs (201)", Stats::of(post_ms)),
            ("submit→claimed (started-created)", Stats::of(stamped)),
            ("submit→claimed (seen by client)", Stats::of(seen)),
            ("job run (finished-started)", Stats::of(run_ms)),
        ],
        notes,
    ))
}

// ---------------------------------------------------------------------------
// Filling the store with finished jobs.

fn failed_count(jobs: usize) -> usize {
    (0..jobs).filter(|i| is_failed(*i)).count()
}

fn is_failed(i: usize) -> bool {
    i % 10 == 3
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One synthetic finished job, as the pipeline would have left it.
struct Synth {
    url: String,
    checksum: Option<String>,
    who: String,
    note: Option<String>,
    state: &'static str,
    error: Option<String>,
    created: i64,
    started: i64,
    finished: i64,
    size: i64,
}

fn synth(i: usize, n: usize, now: i64) -> Synth {
    // Spread over the past, one job a second, newest last.
    let created = now - ((n - i) as i64) * 1000 - 60_000;
    let started = created + 40 + (i % 13) as i64;
    let finished = started + 15_000 + (i % 97) as i64 * 100;
    let failed = is_failed(i);
    Synth {
        url: format!("https://images.example.com/templates/build-{i}/disk-{i}.qcow2"),
        checksum: i
            .is_multiple_of(2)
            .then(|| format!("sha256:{:064x}", i * 7919)),
        who: format!("user{}@example.com", i % 25),
        note: i.is_multiple_of(3).then(|| format!("nightly build {i}")),
        state: if failed { "failed" } else { "succeeded" },
        error: failed.then(|| {
            format!(
                "checksum: sha256 mismatch: expected {:064x}, got {:064x}",
                i * 7919,
                i
            )
        }),
        created,
        started,
        finished,
        size: 2_000_000_000 + (i as i64 % 1000) * 1_000_000,
    }
}

/// (stage, state, started, finished, detail, error)
type StageRow = (&'static str, &'static str, i64, i64, String, Option<String>);

fn stage_rows(i: usize, s: &Synth) -> [StageRow; 3] {
    let t1 = s.started + (s.finished - s.started) * 7 / 10;
    let t2 = t1 + (s.finished - s.started) / 10;
    [
        (
            "fetch",
            "succeeded",
            s.started,
            t1,
            json!({"size": s.size, "path": format!("/var/lib/vmscan/jobs/{i}/disk.qcow2"), "in_place": false, "sha256": format!("{:064x}", i)}).to_string(),
            None,
        ),
        (
            "extract",
            "succeeded",
            t1,
            t2,
            json!({"archive": null, "path": format!("/var/lib/vmscan/jobs/{i}/disk.qcow2")})
                .to_string(),
            None,
        ),
        (
            "checksum",
            if s.error.is_some() { "failed" } else { "succeeded" },
            t2,
            s.finished,
            json!({"verified": s.checksum.is_some(), "algorithm": "sha256"}).to_string(),
            s.error.clone(),
        ),
    ]
}

/// (ts, stage, level, message)
fn log_rows(s: &Synth) -> [(i64, Option<&'static str>, &'static str, String); 4] {
    [
        (
            s.created,
            None,
            "info",
            format!("submitted by {}: {}", s.who, s.url),
        ),
        (
            s.started + 5,
            Some("fetch"),
            "info",
            format!("fetching {} ({} bytes)", s.url, s.size),
        ),
        (
            s.started + 10_000,
            Some("checksum"),
            "info",
            "computing sha256 of the image".to_string(),
        ),
        (
            s.finished,
            None,
            if s.error.is_some() { "error" } else { "info" },
            match &s.error {
                Some(e) => format!("job failed: {e}"),
                None => "job succeeded".to_string(),
            },
        ),
    ]
}

/// Writes `n` finished jobs with their stage runs and log; returns their ids
/// (UUID v7, increasing). One transaction per batch of `BATCH` jobs.
macro_rules! fill_batches {
    ($pool:expr, $db:ty, $n:expr) => {{
        let pool = $pool;
        let n: usize = $n;
        let now = now_ms();
        let ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
        ensure!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "Uuid::now_v7() ids are not increasing"
        );
        for (chunk_no, chunk) in ids.chunks(BATCH).enumerate() {
            let first = chunk_no * BATCH;
            let jobs: Vec<(usize, &String, Synth)> = chunk
                .iter()
                .enumerate()
                .map(|(k, id)| (first + k, id, synth(first + k, n, now)))
                .collect();
            let mut tx = pool.begin().await?;

            let mut q = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO jobs (id, url, checksum, requested_by, email, note, options, state, \
                 error, attempt, run_base_attempt, created_at, updated_at, started_at, finished_at) ",
            );
            q.push_values(&jobs, |mut b, (_, id, s)| {
                b.push_bind((*id).clone())
                    .push_bind(s.url.clone())
                    .push_bind(s.checksum.clone())
                    .push_bind(s.who.clone())
                    .push_bind(s.who.clone())
                    .push_bind(s.note.clone())
                    .push_bind("{}")
                    .push_bind(s.state)
                    .push_bind(s.error.clone())
                    .push_bind(1i64)
                    .push_bind(1i64)
                    .push_bind(s.created)
                    .push_bind(s.finished)
                    .push_bind(s.started)
                    .push_bind(s.finished);
            });
            q.build().execute(&mut *tx).await.context("INSERT INTO jobs")?;

            let runs: Vec<(&String, StageRow)> = jobs
                .iter()
                .flat_map(|(i, id, s)| stage_rows(*i, s).map(|r| (*id, r)))
                .collect();
            let mut q = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO stage_runs (job_id, attempt, stage, state, started_at, finished_at, \
                 duration_ms, detail, error) ",
            );
            q.push_values(runs, |mut b, (id, (stage, state, t0, t1, detail, error))| {
                b.push_bind(id.clone())
                    .push_bind(1i64)
                    .push_bind(stage)
                    .push_bind(state)
                    .push_bind(t0)
                    .push_bind(t1)
                    .push_bind(t1 - t0)
                    .push_bind(detail)
                    .push_bind(error);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .context("INSERT INTO stage_runs")?;

            let lines: Vec<_> = jobs
                .iter()
                .flat_map(|(_, id, s)| log_rows(s).map(|l| (*id, l)))
                .collect();
            let mut q = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO job_log (job_id, ts, stage, level, message) ",
            );
            q.push_values(lines, |mut b, (id, (ts, stage, level, message))| {
                b.push_bind(id.clone())
                    .push_bind(ts)
                    .push_bind(stage)
                    .push_bind(level)
                    .push_bind(message);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .context("INSERT INTO job_log")?;
            tx.commit().await?;
        }
        // The daemon keeps these totals as stages finish; rows written
        // behind its back get them the way migration 0007 backfills.
        sqlx::query("DELETE FROM stage_totals").execute(pool).await?;
        sqlx::query(
            "INSERT INTO stage_totals (stage, state, runs, total_ms) \
             SELECT stage, state, COUNT(*), COALESCE(SUM(duration_ms), 0) \
             FROM stage_runs WHERE finished_at IS NOT NULL GROUP BY stage, state",
        )
        .execute(pool)
        .await
        .context("INSERT INTO stage_totals")?;
        ids
    }};
}

async fn fill_sqlite(url: &str, n: usize) -> anyhow::Result<Vec<String>> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let opts = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let ids = fill_batches!(&pool, sqlx::Sqlite, n);
    // As a long-running daemon's file would be: WAL folded back in.
    // (vmscan never runs ANALYZE on SQLite, so neither does the bench.)
    pool.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    pool.close().await;
    Ok(ids)
}

async fn fill_postgres(url: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let ids = fill_batches!(&pool, sqlx::Postgres, n);
    // What autovacuum does after a bulk of inserts: statistics and the
    // visibility map (index-only scans). Steady state, not a cold table.
    pool.execute("VACUUM ANALYZE").await?;
    pool.close().await;
    Ok(ids)
}
