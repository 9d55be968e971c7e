//! Load and soak benchmark (issue 16): two real `vmscan serve` replicas on
//! one PostgreSQL, many concurrent API clients, and one replica killed with
//! SIGKILL and restarted every minute.
//!
//!   scripts/bench-load.sh        # starts a throwaway PostgreSQL, runs this
//!
//! Each client is a user of the API: it submits a small image (a 16 MiB raw
//! disk in a tar.gz, fetched from `file://`, unpacked and hashed for real)
//! about every 30 s, follows half of its jobs with SSE until they end, and in
//! between lists jobs, reads a job, its log, the dashboard and a job page,
//! with a short think time. A "load balancer" in the bench sends each request
//! to a live replica; before a kill it stops routing to the victim for one
//! second (as a health-checking balancer would), so what the kill cuts is
//! the victim's workers mid-job and its open SSE streams (those reconnect to
//! the other replica with `Last-Event-ID`).
//!
//! It reports requests/s and p50/p99 per endpoint, every non-2xx answer
//! (429 is documented and counted apart), whether every submitted job ended
//! exactly once, and per process the peak RSS and the open file descriptors
//! (after warm-up and at the end).
//!
//! Environment: `VMSCAN_BENCH_PG_URL` (admin URL; a fresh database is made
//! and dropped), `VMSCAN_LOAD_SECS` (300), `VMSCAN_LOAD_CLIENTS` (200),
//! `VMSCAN_LOAD_USERS` (20), `VMSCAN_LOAD_KILL_SECS` (60, 0 = never),
//! `VMSCAN_LOAD_THINK_MS` (mean think time, 100), `VMSCAN_LOAD_SUBMIT_SECS`
//! (30).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use rand::RngExt;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

mod support;
use support::{drop_pg_database, env_usize, fresh_pg_database, loadavg, Stats};

const BIN: &str = env!("CARGO_BIN_EXE_vmscan");
/// Only the replica with this index is killed; the other runs the whole
/// time, so its file descriptors and memory show growth, if any.
const VICTIM: usize = 0;
const WARMUP: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Settings {
    secs: u64,
    clients: usize,
    users: usize,
    kill_secs: u64,
    think_ms: u64,
    submit_secs: u64,
}

fn main() {
    support::run_bench("load", run());
}

async fn run() -> anyhow::Result<()> {
    let s = Settings {
        secs: env_usize("VMSCAN_LOAD_SECS", 300)? as u64,
        clients: env_usize("VMSCAN_LOAD_CLIENTS", 200)?,
        users: env_usize("VMSCAN_LOAD_USERS", 20)?,
        kill_secs: env_usize("VMSCAN_LOAD_KILL_SECS", 60)? as u64,
        think_ms: env_usize("VMSCAN_LOAD_THINK_MS", 100)? as u64,
        submit_secs: env_usize("VMSCAN_LOAD_SUBMIT_SECS", 30)?.max(1) as u64,
    };
    ensure!(s.clients >= 1 && s.users >= 1, "need clients and users");
    let admin = std::env::var("VMSCAN_BENCH_PG_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .context("VMSCAN_BENCH_PG_URL is not set (scripts/bench-load.sh starts a PostgreSQL)")?;
    let (db_url, db_name) = fresh_pg_database(&admin).await?;
    let tmp = tempfile::Builder::new().prefix("vmscan-load").tempdir()?;
    let result = soak(s, &db_url, tmp.path()).await;
    if let Err(e) = drop_pg_database(&admin, &db_name).await {
        eprintln!("warning: cannot drop {db_name}: {e:#}");
    }
    result
}

async fn soak(s: Settings, db_url: &str, dir: &Path) -> anyhow::Result<()> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let image = images.join("disk.tar.gz");
    write_image(&image)?;
    let url = format!("file://{}", image.display());

    let env = ReplicaEnv {
        db_url: db_url.to_string(),
        images,
        dir: dir.to_path_buf(),
    };
    println!(
        "load: {} clients as {} users for {} s, 2 replicas on PostgreSQL, replica {VICTIM} \
         killed every {} s; load average at start: {}",
        s.clients,
        s.users,
        s.secs,
        s.kill_secs,
        loadavg()
    );
    // The first replica migrates the database; the second starts after it.
    let mut procs = vec![Replica::start(&env, 0, 0)?];
    procs.push(Replica::start(&env, 1, 0)?);
    let tokens = (0..s.users)
        .map(|u| env.token(&format!("load-{u}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let lb = Arc::new(Balancer::default());
    for p in &procs {
        lb.up(p.index, &p.base);
    }
    let rec = Arc::new(Recorder::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(s.secs);

    let mut clients = Vec::new();
    for c in 0..s.clients {
        let client = api_client(&tokens[c % s.users])?;
        let (lb, rec, url) = (lb.clone(), rec.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            user_loop(c, s, client, lb, rec, url, deadline).await
        }));
    }
    let scraper = {
        let (lb, rec) = (lb.clone(), rec.clone());
        let client = reqwest::Client::new();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                timed(&client, &lb, &rec, "GET /metrics", "/metrics").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    // The soak: sample every process each second, kill the victim on time.
    let mut samples: Vec<ProcSample> = Vec::new();
    let mut kills: Vec<f64> = Vec::new();
    let mut next_kill = (s.kill_secs > 0).then(|| started + Duration::from_secs(s.kill_secs));
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for p in &procs {
            samples.push(p.sample(started));
        }
        if next_kill.is_some_and(|t| Instant::now() >= t && t < deadline) {
            let victim = &mut procs[VICTIM];
            lb.down(victim.index);
            tokio::time::sleep(Duration::from_secs(1)).await;
            samples.push(victim.sample(started));
            victim.kill();
            let t0 = Instant::now();
            let gen = victim.generation + 1;
            *victim = Replica::start(&env, VICTIM, gen)?;
            kills.push(t0.elapsed().as_secs_f64());
            lb.up(victim.index, &victim.base);
            next_kill = next_kill.map(|t| t + Duration::from_secs(s.kill_secs));
        }
    }
    let mut submitted = Vec::new();
    for c in clients {
        submitted.extend(c.await?);
    }
    scraper.await?;
    let elapsed = started.elapsed().as_secs_f64();
    for p in &procs {
        samples.push(p.sample(started));
    }

    // Every submitted job must end, and end once.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(db_url)
        .await?;
    let drain = wait_for_all_final(&pool, Duration::from_secs(300)).await?;
    for p in &procs {
        samples.push(p.sample(started));
    }
    let ends = check_jobs(&pool, &submitted).await?;
    let totals_agree = metrics_totals_agree(&pool).await?;
    pool.close().await;
    for p in &mut procs {
        p.kill();
    }

    let r = rec.snapshot();
    println!();
    println!("{}", endpoint_table(&r, elapsed));
    println!("{}", process_table(&samples));
    println!(
        "kills: {} (victim back and serving in {})",
        kills.len(),
        if kills.is_empty() {
            "-".to_string()
        } else {
            let st = Stats::of(kills.iter().map(|k| k * 1000.0).collect());
            format!("p50 {:.0} ms, max {:.0} ms", st.p50, st.max)
        }
    );
    println!(
        "SSE: {} streams followed to their end, {} cut by a kill and resumed elsewhere",
        r.followed, r.resumed
    );
    println!("{ends}");
    println!(
        "queue drained {:.1} s after the load stopped; /metrics stage totals {} the stage runs",
        drain,
        if totals_agree {
            "match"
        } else {
            "DO NOT match"
        }
    );
    if !r.errors.is_empty() {
        println!("errors (first of each kind):");
        for (k, (n, example)) in &r.errors {
            println!("  {n:>6} × {k}: {example}");
        }
    }
    println!(
        "load average at end: {} ({} CPUs)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let failed = !r.errors.is_empty() || !ends.ok() || !totals_agree;
    if failed {
        bail!("the soak found errors (above)");
    }
    Ok(())
}

/// A 16 MiB raw disk (xorshift bytes: gzip cannot shrink them) in a tar.gz,
/// so each job's intake takes long enough for a kill to land mid-job.
fn write_image(path: &Path) -> anyhow::Result<()> {
    let mut raw = vec![0u8; 16 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in raw.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = (x >> 24) as u8;
    }
    let gz =
        flate2::write::GzEncoder::new(std::fs::File::create(path)?, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(raw.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "disk.raw", raw.as_slice())?;
    tar.into_inner()?.finish()?.flush()?;
    Ok(())
}

struct ReplicaEnv {
    db_url: String,
    images: PathBuf,
    dir: PathBuf,
}

impl ReplicaEnv {
    fn vars(&self, index: usize) -> Vec<(String, String)> {
        let v = |k: &str, x: String| (k.to_string(), x);
        vec![
            v("VMSCAN_LOG", "warn".into()),
            v("VMSCAN_STORAGE__DATABASE_URL", self.db_url.clone()),
            v(
                "VMSCAN_STORAGE__DATA_DIR",
                self.dir.join(format!("data-{index}")).display().to_string(),
            ),
            v("VMSCAN_SERVER__LISTEN", "127.0.0.1:0".into()),
            // The intake stages: real work on every job, no VM per job.
            v(
                "VMSCAN_PIPELINE__STAGES",
                r#"["fetch","extract","checksum"]"#.into(),
            ),
            v(
                "VMSCAN_FETCH__ALLOWED_ROOTS",
                format!("[\"{}\"]", self.images.display()),
            ),
            // A killed replica's jobs come back within seconds.
            v("VMSCAN_WORKER__LEASE_SECS", "10".into()),
        ]
    }

    /// `vmscan` configured as replica `index`: the bench's own `VMSCAN_*`
    /// knobs would be unknown configuration keys to it.
    fn command(&self, index: usize) -> Command {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VMSCAN_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.vars(index));
        cmd
    }

    /// A requester token from the CLI (making the token-only user).
    fn token(&self, user: &str) -> anyhow::Result<String> {
        let out = self
            .command(0)
            .args(["token", "create", "--user", user, "--role", "requester"])
            .output()?;
        ensure!(
            out.status.success(),
            "vmscan token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }
}

/// One `vmscan serve` process.
struct Replica {
    index: usize,
    generation: u32,
    child: Child,
    base: String,
    /// "replica 0.2": replica 0 after its second restart.
    label: String,
}

struct ProcSample {
    label: String,
    at: f64,
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
}

impl Replica {
    fn start(env: &ReplicaEnv, index: usize, generation: u32) -> anyhow::Result<Replica> {
        let log_path = env.dir.join(format!("replica-{index}-{generation}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut child = env
            .command(index)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("start vmscan serve")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let base = line
            .trim()
            .strip_prefix("vmscan dashboard: ")
            .with_context(|| {
                format!(
                    "replica {index}: unexpected first line {line:?}; its stderr: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            })?
            .trim_end_matches('/')
            .to_string();
        Ok(Replica {
            index,
            generation,
            child,
            base,
            label: format!("replica {index}.{generation}"),
        })
    }

    fn sample(&self, started: Instant) -> ProcSample {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        ProcSample {
            label: self.label.clone(),
            at: started.elapsed().as_secs_f64(),
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            fds,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which replica serves new requests: the bench's load balancer.
#[derive(Default)]
struct Balancer {
    live: Mutex<BTreeMap<usize, String>>,
}

impl Balancer {
    fn up(&self, index: usize, base: &str) {
        self.live.lock().unwrap().insert(index, base.to_string());
    }
    fn down(&self, index: usize) {
        self.live.lock().unwrap().remove(&index);
    }
    fn pick(&self) -> Option<String> {
        let live = self.live.lock().unwrap();
        let n = live.len();
        if n == 0 {
            return None;
        }
        let i = rand::rng().random_range(0..n);
        live.values().nth(i).cloned()
    }
    fn is_live(&self, base: &str) -> bool {
        self.live.lock().unwrap().values().any(|b| b == base)
    }
}

#[derive(Default)]
struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Clone, Default)]
struct Recorded {
    /// Latency (ms) of every 2xx answer, per endpoint.
    ok: HashMap<&'static str, Vec<f64>>,
    limited: HashMap<&'static str, usize>,
    /// Requests the balancer had routed to a replica that was then killed.
    cut: HashMap<&'static str, usize>,
    /// "endpoint: HTTP 500" (or a transport error) → count, one example.
    errors: BTreeMap<String, (usize, String)>,
    followed: usize,
    resumed: usize,
}

impl Recorder {
    fn ok(&self, ep: &'static str, ms: f64) {
        self.inner
            .lock()
            .unwrap()
            .ok
            .entry(ep)
            .or_default()
            .push(ms);
    }
    fn limited(&self, ep: &'static str) {
        *self.inner.lock().unwrap().limited.entry(ep).or_default() += 1;
    }
    fn cut(&self, ep: &'static str) {
        *self.inner.lock().unwrap().cut.entry(ep).or_default() += 1;
    }
    fn error(&self, ep: &'static str, kind: String, example: String) {
        let mut g = self.inner.lock().unwrap();
        let e = g
            .errors
            .entry(format!("{ep}: {kind}"))
            .or_insert((0, example));
        e.0 += 1;
    }
    fn snapshot(&self) -> Recorded {
        self.inner.lock().unwrap().clone()
    }
}

fn api_client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(30))
        .build()?)
}

enum Answer {
    Ok(Value),
    /// Limited, cut by a kill, or an error: already recorded.
    Other,
}

/// One request to a live replica, recorded under `ep`.
async fn call(
    req: impl Fn(&str) -> reqwest::RequestBuilder,
    lb: &Balancer,
    rec: &Recorder,
    ep: &'static str,
) -> Answer {
    let Some(base) = lb.pick() else {
        rec.error(ep, "no live replica".into(), String::new());
        return Answer::Other;
    };
    let t0 = Instant::now();
    let res = req(&base).send().await;
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            classify_transport(lb, rec, ep, &base, &e);
            return Answer::Other;
        }
    };
    let status = res.status();
    let body = res.bytes().await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match body {
        Ok(b) if status.is_success() => {
            rec.ok(ep, ms);
            Answer::Ok(serde_json::from_slice(&b).unwrap_or(Value::Null))
        }
        Ok(_) if status == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            rec.limited(ep);
            Answer::Other
        }
        Ok(b) => {
            rec.error(
                ep,
                format!("HTTP {}", status.as_u16()),
                String::from_utf8_lossy(&b).chars().take(200).collect(),
            );
            Answer::Other
        }
        Err(e) => {
            classify_transport(lb, rec, ep, &base, &e);
            Answer::Other
        }
    }
}

fn classify_transport(
    lb: &Balancer,
    rec: &Recorder,
    ep: &'static str,
    base: &str,
    e: &reqwest::Error,
) {
    if lb.is_live(base) {
        rec.error(ep, "transport".into(), format!("{e:#}"));
    } else {
        rec.cut(ep);
    }
}

async fn timed(
    client: &reqwest::Client,
    lb: &Balancer,
    rec: &Recorder,
    ep: &'static str,
    path: &str,
) {
    call(|b| client.get(format!("{b}{path}")), lb, rec, ep).await;
}

/// One client until the deadline; returns the ids of the jobs it submitted.
async fn user_loop(
    c: usize,
    s: Settings,
    client: reqwest::Client,
    lb: Arc<Balancer>,
    rec: Arc<Recorder>,
    url: String,
    deadline: Instant,
) -> Vec<String> {
    let mut mine: Vec<String> = Vec::new();
    let spread = Duration::from_millis(rand::rng().random_range(0..s.submit_secs * 1000));
    let mut next_submit = Instant::now() + spread;
    while Instant::now() < deadline {
        if Instant::now() >= next_submit {
            next_submit += Duration::from_secs(s.submit_secs);
            let body = serde_json::json!({"url": url, "note": format!("load client {c}")});
            let answer = call(
                |b| client.post(format!("{b}/api/v1/jobs")).json(&body),
                &lb,
                &rec,
                "POST /api/v1/jobs",
            )
            .await;
            if let Answer::Ok(job) = answer {
                if let Some(id) = job["id"].as_str() {
                    mine.push(id.to_string());
                    if c.is_multiple_of(2) {
                        follow(&client, &lb, &rec, id, deadline).await;
                    }
                }
            }
        } else {
            let pick = rand::rng().random_range(0..100);
            let some_job =
                (!mine.is_empty()).then(|| mine[rand::rng().random_range(0..mine.len())].clone());
            match (pick, some_job) {
                (0..40, _) | (_, None) => {
                    timed(
                        &client,
                        &lb,
                        &rec,
                        "GET /api/v1/jobs",
                        "/api/v1/jobs?limit=20",
                    )
                    .await
                }
                (40..65, Some(id)) => {
                    let p = format!("/api/v1/jobs/{id}");
                    timed(&client, &lb, &rec, "GET /api/v1/jobs/{id}", &p).await
                }
                (65..80, Some(id)) => {
                    let p = format!("/api/v1/jobs/{id}/log?limit=100");
                    timed(&client, &lb, &rec, "GET /api/v1/jobs/{id}/log", &p).await
                }
                (80..90, _) => timed(&client, &lb, &rec, "GET / (dashboard)", "/").await,
                (_, Some(id)) => {
                    let p = format!("/jobs/{id}");
                    timed(&client, &lb, &rec, "GET /jobs/{id} (page)", &p).await
                }
            }
        }
        let think = rand::rng().random_range(0..=2 * s.think_ms);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    mine
}

/// Follows a job's SSE stream to its `end` event, resuming on the other
/// replica with `Last-Event-ID` when a kill cuts it; gives up at the deadline.
async fn follow(
    client: &reqwest::Client,
    lb: &Balancer,
    rec: &Recorder,
    id: &str,
    deadline: Instant,
) {
    const EP: &str = "SSE first event";
    let mut last_id: Option<String> = None;
    while Instant::now() < deadline {
        let Some(base) = lb.pick() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut req = client
            .get(format!("{base}/api/v1/jobs/{id}/events"))
            .header("accept", "text/event-stream")
            // A stream outlives the client's request timeout.
            .timeout(Duration::from_secs(600));
        if let Some(l) = &last_id {
            req = req.header("last-event-id", l);
        }
        let t0 = Instant::now();
        let res = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                rec.limited(EP);
                return;
            }
            Ok(r) => {
                rec.error(EP, format!("HTTP {}", r.status().as_u16()), String::new());
                return;
            }
            Err(e) => {
                classify_transport(lb, rec, EP, &base, &e);
                continue;
            }
        };
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        let mut first = true;
        let cut = loop {
            let next = tokio::time::timeout_at(deadline.into(), body.next()).await;
            let chunk = match next {
                Err(_) => return,
                Ok(None) => break true,
                Ok(Some(Err(_))) => break true,
                Ok(Some(Ok(c))) => c,
            };
            if first {
                rec.ok(EP, t0.elapsed().as_secs_f64() * 1000.0);
                first = false;
            }
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        last_id = Some(v.trim().to_string());
                    }
                    if line.trim() == "event: end" || line.trim() == "event:end" {
                        rec.inner.lock().unwrap().followed += 1;
                        return;
                    }
                }
            }
        };
        if cut {
            if lb.is_live(&base) {
                rec.error(EP, "stream ended without an end event".into(), base.clone());
                return;
            }
            rec.inner.lock().unwrap().resumed += 1;
        }
    }
}

/// Seconds until no job is queued, waiting or running.
async fn wait_for_all_final(pool: &PgPool, limit: Duration) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    loop {
        let (open,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > limit {
            bail!(
                "{open} jobs still not final {} s after the load",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Ends {
    submitted: usize,
    states: BTreeMap<String, i64>,
    missing: usize,
    summaries_not_one: Vec<(String, i64)>,
    interrupted_runs: i64,
    lease_expiries: i64,
}

impl Ends {
    fn ok(&self) -> bool {
        self.missing == 0
            && self.summaries_not_one.is_empty()
            && self.states.get("succeeded").copied().unwrap_or(0) == self.submitted as i64
    }
}

impl std::fmt::Display for Ends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "jobs: {} submitted (201), {} missing from the store; end states: {}",
            self.submitted,
            self.missing,
            self.states
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        write!(
            f,
            "      {} with other than one end summary{}; {} stage runs interrupted by kills, {} lease expiries",
            self.summaries_not_one.len(),
            self.summaries_not_one
                .iter()
                .take(3)
                .map(|(j, n)| format!(" ({j}: {n})"))
                .collect::<String>(),
            self.interrupted_runs,
            self.lease_expiries
        )
    }
}

async fn check_jobs(pool: &PgPool, submitted: &[String]) -> anyhow::Result<Ends> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, state FROM jobs")
        .fetch_all(pool)
        .await?;
    let known: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let missing = submitted
        .iter()
        .filter(|id| !known.contains(id.as_str()))
        .count();
    let mut states = BTreeMap::new();
    for (_, st) in &rows {
        *states.entry(st.clone()).or_insert(0) += 1;
    }
    // The runner writes one summary line ("job succeeded", "job failed: …")
    // right before it marks the job final.
    let summaries_not_one: Vec<(String, i64)> = sqlx::query_as(
        "SELECT j.id, COUNT(l.id) FROM jobs j LEFT JOIN job_log l ON l.job_id = j.id \
           AND l.stage IS NULL AND (l.message = 'job succeeded' OR l.message LIKE 'job failed: %' \
                OR l.message LIKE 'job cancelled%') \
         GROUP BY j.id HAVING COUNT(l.id) <> 1",
    )
    .fetch_all(pool)
    .await?;
    let (interrupted_runs,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM stage_runs WHERE state = 'interrupted'")
            .fetch_one(pool)
            .await?;
    let (lease_expiries,): (i64,) =
        sqlx::query_as("SELECT CAST(COALESCE(SUM(lease_expiries), 0) AS BIGINT) FROM jobs")
            .fetch_one(pool)
            .await?;
    Ok(Ends {
        submitted: submitted.len(),
        states,
        missing,
        summaries_not_one,
        interrupted_runs,
        lease_expiries,
    })
}

/// The running totals behind `/metrics` against an aggregate of the runs:
/// kills must not make them drift.
async fn metrics_totals_agree(pool: &PgPool) -> anyhow::Result<bool> {
    let (diff,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM ( \
           (SELECT stage, state, runs, total_ms FROM stage_totals \
            EXCEPT SELECT stage, state, COUNT(*), CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) \
            FROM stage_runs WHERE finished_at IS NOT NULL GROUP BY stage, state) \
           UNION ALL \
           (SELECT stage, state, COUNT(*), CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) \
            FROM stage_runs WHERE finished_at IS NOT NULL GROUP BY stage, state \
            EXCEPT SELECT stage, state, runs, total_ms FROM stage_totals)) d",
    )
    .fetch_one(pool)
    .await?;
    Ok(diff == 0)
}

fn endpoint_table(r: &Recorded, secs: f64) -> String {
    let mut eps: Vec<&'static str> =
        r.ok.keys()
            .chain(r.limited.keys())
            .chain(r.cut.keys())
            .copied()
            .collect();
    eps.sort();
    eps.dedup();
    let mut out = format!(
        "{:<28} {:>8} {:>7} {:>9} {:>9} {:>9} {:>6} {:>5} {:>6}\n",
        "endpoint", "ok", "req/s", "p50 ms", "p99 ms", "max ms", "429", "cut", "errors"
    );
    let mut total = 0usize;
    for ep in eps {
        let ok = r.ok.get(ep).cloned().unwrap_or_default();
        let errors: usize = r
            .errors
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ep}: ")))
            .map(|(_, (n, _))| n)
            .sum();
        let (n, p50, p99, max) = if ok.is_empty() {
            (0, f64::NAN, f64::NAN, f64::NAN)
        } else {
            let st = Stats::of(ok);
            (st.n, st.p50, st.p99, st.max)
        };
        total += n;
        out.push_str(&format!(
            "{ep:<28} {n:>8} {:>7.1} {p50:>9.1} {p99:>9.1} {max:>9.1} {:>6} {:>5} {errors:>6}\n",
            n as f64 / secs,
            r.limited.get(ep).unwrap_or(&0),
            r.cut.get(ep).unwrap_or(&0),
        ));
    }
    out.push_str(&format!(
        "all: {total} answered requests in {secs:.0} s = {:.1} req/s",
        total as f64 / secs
    ));
    out
}

fn process_table(samples: &[ProcSample]) -> String {
    let mut by: BTreeMap<&str, Vec<&ProcSample>> = BTreeMap::new();
    for s in samples {
        by.entry(&s.label).or_default().push(s);
    }
    let mut out = format!(
        "{:<14} {:>7} {:>14} {:>13} {:>14} {:>9}\n",
        "process", "alive s", "peak RSS MiB", "fds @warm-up", "fds max / last", "RSS last"
    );
    for (label, v) in by {
        let alive: Vec<&&ProcSample> = v.iter().filter(|s| s.hwm_kib > 0).collect();
        let Some(last) = alive.last() else { continue };
        let first = alive[0].at;
        let warm = alive
            .iter()
            .find(|s| s.at - first >= WARMUP.as_secs_f64())
            .map_or("-".to_string(), |s| s.fds.to_string());
        let peak = alive.iter().map(|s| s.hwm_kib).max().unwrap_or(0);
        let fd_max = alive.iter().map(|s| s.fds).max().unwrap_or(0);
        out.push_str(&format!(
            "{label:<14} {:>7.0} {:>14.1} {warm:>13} {:>14} {:>9.1}\n",
            last.at - first,
            peak as f64 / 1024.0,
            format!("{fd_max} / {}", last.fds),
            last.rss_kib as f64 / 1024.0,
        ));
    }
    out
}
