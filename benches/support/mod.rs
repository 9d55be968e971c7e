//! What the benches share: knobs from the environment, percentiles, the
//! machine's load, and throwaway PostgreSQL databases.

use anyhow::Context;
use sqlx::{Connection, Executor};
use uuid::Uuid;

/// A bench's `main`: runs it on two worker threads and exits 1 with the
/// error when it fails. (`cargo bench` passes `--bench`; nothing to parse.)
pub fn run_bench(name: &str, bench: impl std::future::Future<Output = anyhow::Result<()>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(bench) {
        eprintln!("{name} bench failed: {e:#}");
        std::process::exit(1);
    }
}

pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        _ => Ok(default),
    }
}

/// Percentiles of one measured series, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    pub fn of(mut ms: Vec<f64>) -> Stats {
        assert!(!ms.is_empty(), "no samples");
        ms.sort_by(f64::total_cmp);
        // Nearest rank.
        let pick = |p: f64| {
            let rank = (p * ms.len() as f64).ceil() as usize;
            ms[rank.clamp(1, ms.len()) - 1]
        };
        Stats {
            p50: pick(0.50),
            p99: pick(0.99),
            max: ms[ms.len() - 1],
            n: ms.len(),
        }
    }
}

/// The 1, 5 and 15 minute load averages (Linux), or "?".
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// A fresh PostgreSQL database next to the admin URL's; returns its URL and name.
pub async fn fresh_pg_database(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("vmscan_bench_{}", Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .context("connect to VMSCAN_BENCH_PG_URL")?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .context("CREATE DATABASE")?;
    conn.close().await?;
    let (base, _) = admin
        .rsplit_once('/')
        .context("VMSCAN_BENCH_PG_URL has no /database part")?;
    Ok((format!("{base}/{name}"), name))
}

pub async fn drop_pg_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .await?;
    conn.close().await?;
    Ok(())
}
