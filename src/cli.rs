//! The `vmscan` command line. Client commands (submit, jobs, job, cancel,
//! retry) work on the store the config names, so they need no running daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{open_store, shutdown_on_signals, Application, Role};
use crate::cluster::Clusters;
use crate::config::Config;
use crate::domain::{fmt_bytes, fmt_millis, JobId, JobState};
use crate::pipeline::inspect_file;
use crate::store::auth::AuditAction;
use crate::store::{CancelOutcome, JobFilter};
use crate::submit::{validate, SubmitRequest};
use crate::web::views;

#[derive(Parser, Debug)]
#[command(
    name = "vmscan",
    version,
    about = "Scan VM template images for license-tracking readiness"
)]
pub struct Cli {
    /// TOML config file (settings also come from VMSCAN_… variables).
    #[arg(long, global = true, env = "VMSCAN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the dashboard, API and workers.
    Serve {
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run workers only (an extra replica on a shared PostgreSQL).
    Worker {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Queue a scan of an image URL, or (-f) of every image of a manifest.
    Submit {
        /// The image's URL (not with -f).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        url: Option<String>,
        /// A manifest (YAML, or JSON by its .json name) in gen-vm-image's
        /// architecture.yml shape: every image is checked, then all are
        /// queued as one batch, or none.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Grow the disk to this size before upload (20G = 20 GiB; never shrinks).
        #[arg(long, conflicts_with = "file")]
        size: Option<String>,
        /// ALGO:HEX, bare hex, or file:URL of a SUMS file (a manifest
        /// gives each image its own).
        #[arg(long, conflicts_with = "file")]
        checksum: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        note: Option<String>,
        /// Target cluster (`vmscan config check` lists them); default: the configured default.
        #[arg(long)]
        cluster: Option<String>,
        /// Guest OS family: linux (SSH), windows (WinRM), or auto (detected
        /// from the image's partitions; the default).
        #[arg(long)]
        os: Option<String>,
        /// Wait for the job (every job of the batch) to finish; exit 0 only
        /// if it (each of them) succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first.
    Jobs {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show one job: stages and the last log lines.
    Job { id: String },
    /// Cancel a job (its teardown still runs).
    Cancel { id: String },
    /// Queue a failed or cancelled job again.
    Retry { id: String },
    /// Inspect a disk image by hand: format, sizes and the verdict. Exits 0
    /// when it passes, 1 when it is refused, 2 when it cannot be read.
    Inspect {
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Local users (on the configured database; no daemon needed).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// API tokens (on the configured database; no daemon needed).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Watched sources (on the configured database; the daemon checks them).
    Watch {
        #[command(subcommand)]
        action: crate::cli_watch::WatchAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Add a local user. Without --password-stdin the account has no
    /// password (tokens only), unless a terminal asks for one.
    Add {
        name: String,
        /// viewer, requester, operator or admin.
        #[arg(long)]
        role: String,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Set a local user's password (read from the terminal, or one line of stdin).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Change a user's role.
    Role { name: String, role: String },
    /// Disable a user: no login, no token works, sessions end.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Create an API token and print it (only it) on stdout. A user that
    /// does not exist yet is added as a token-only local user with ROLE.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List tokens (of one user, or everyone's).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by its id.
    Revoke { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Load and validate the configuration, print it with secrets hidden.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. } | Command::Worker { .. }) {
        // A client command piped into `head` ends quietly, as other Unix
        // tools do, instead of panicking on the closed pipe. (Not the
        // daemon: a peer closing a socket must never kill it.)
        // SAFETY: set before any thread exists; SIG_DFL is a valid action.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("VMSCAN_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// How often `submit --wait` looks at its job.
const WAIT_POLL: Duration = Duration::from_millis(100);

fn load(cli_config: &Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli_config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.storage.data_dir = d;
    }
    Ok(cfg)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { listen, data_dir } => {
            let mut cfg = load(&cli.config, data_dir)?;
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            let app = Application::build(cfg, Role::Serve).await?;
            let url = format!("http://{}/", app.addr().context("no listen address")?);
            println!("vmscan dashboard: {url}");
            if let Some(pw) = &app.first_admin_password {
                // Shown once, like Jenkins and Grafana do; only its hash is kept.
                println!("first start: created user \"admin\" with password: {pw}");
                println!("  (log in and make your own accounts; change it with `vmscan user passwd admin`)");
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            println!(
                "database: {} · workers: {} · stages: {}",
                app.store.backend(),
                app.config.worker.pool_size,
                app.pipeline
                    .iter()
                    .map(|s| s.name().as_str())
                    .collect::<Vec<_>>()
                    .join(" → ")
            );
            app.run_until(shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { data_dir } => {
            let cfg = load(&cli.config, data_dir)?;
            let app = Application::build(cfg, Role::Worker).await?;
            println!(
                "vmscan worker: {} workers on {}",
                app.config.worker.pool_size,
                app.store.backend()
            );
            app.run_until(shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file, json } => inspect(&cli.config, &file, json).await,
        Command::Migrate => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            println!("database schema is up to date ({})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let cfg = load(&cli.config, None)?;
            println!("{}", cfg.to_redacted_json());
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::User { action } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            crate::cli_accounts::user(&store, action).await
        }
        Command::Watch { action } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            crate::cli_watch::watch(&store, &cfg, action).await
        }
        Command::Token { action } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            crate::cli_accounts::token(&store, &cfg, action).await
        }
        Command::Submit {
            url,
            file,
            size,
            checksum,
            email,
            note,
            cluster,
            os,
            wait,
        } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            if let Some(file) = file {
                let defaults = SubmitRequest {
                    email,
                    note,
                    cluster,
                    os,
                    ..SubmitRequest::default()
                };
                return crate::cli_batch::submit(&cfg, &store, &file, defaults, wait).await;
            }
            let new = validate(
                SubmitRequest {
                    url,
                    checksum,
                    email,
                    note,
                    cluster,
                    os,
                    size: size.map(serde_json::Value::String),
                    ..SubmitRequest::default()
                },
                &Clusters::configured(&cfg),
            )?;
            let job = store.create_job(new).await?;
            crate::cli_accounts::audit(&store, AuditAction::Submit, Some(job.id.to_string()), None)
                .await;
            println!("{}", job.id);
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                // One row read by key: cheap enough that the end shows at once.
                tokio::time::sleep(WAIT_POLL).await;
                let j = store.get_job(job.id).await?.context("job vanished")?;
                if j.state.is_final() {
                    print_job(&cfg, &store, j.id).await?;
                    return Ok(if j.state == JobState::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
            }
        }
        Command::Jobs { state, limit } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            let state = state.map(|s| s.parse::<JobState>()).transpose()?;
            let jobs = store
                .list_jobs(&JobFilter {
                    state,
                    limit,
                    ..Default::default()
                })
                .await?;
            println!(
                "{:<36}  {:<9}  {:<20}  {:<20}  URL",
                "ID", "STATE", "STAGE", "CREATED"
            );
            for j in &jobs {
                let s = views::summary(j, &[]);
                println!(
                    "{:<36}  {:<9}  {:<20}  {:<20}  {}",
                    s.id,
                    s.state,
                    s.current_stage.unwrap_or_default(),
                    s.created_at,
                    s.url
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job { id } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            print_job(&cfg, &store, id.parse()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            let id: JobId = id.parse()?;
            crate::cli_accounts::audit(&store, AuditAction::Cancel, Some(id.to_string()), None)
                .await;
            match store.request_cancel(id).await? {
                CancelOutcome::Cancelled => println!("job {id} cancelled"),
                CancelOutcome::Requested => {
                    println!("cancel requested: job {id} stops and tears down")
                }
                CancelOutcome::AlreadyFinal(s) => {
                    anyhow::bail!("job {id} already {s}; nothing to cancel")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { id } => {
            let cfg = load(&cli.config, None)?;
            let store = open_store(&cfg).await?;
            let job = store.retry_job(id.parse()?).await?;
            crate::cli_accounts::audit(&store, AuditAction::Retry, Some(job.id.to_string()), None)
                .await;
            println!("job {} queued again", job.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `vmscan inspect`: the inspect stage's checks on one file, no database.
async fn inspect(config: &Option<PathBuf>, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    const UNREADABLE: u8 = 2;
    let cfg = match load(config, None) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(UNREADABLE));
        }
    };
    let report = match inspect_file(file, &cfg.inspect).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(UNREADABLE));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let size = |n: Option<u64>| match n {
            Some(n) => format!("{} ({n} bytes)", fmt_bytes(n)),
            None => "unknown".to_string(),
        };
        println!("file          {}", report.path);
        println!(
            "format        {}",
            report.format.as_deref().unwrap_or("unknown")
        );
        println!("virtual size  {}", size(report.virtual_size));
        println!("actual size   {}", size(report.actual_size));
        if let Some(b) = report.bootable {
            println!("bootable      {}", if b { "yes" } else { "no" });
        }
        if let Some(os) = &report.guest_os {
            let why = report.guest_os_evidence.as_deref().unwrap_or("");
            println!("guest OS      {os} ({why})");
        }
        match &report.reason {
            None => println!("verdict       {}", report.verdict),
            Some(r) => println!("verdict       {}: {r}", report.verdict),
        }
    }
    Ok(if report.accepted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn print_job(cfg: &Config, store: &crate::store::DynStore, id: JobId) -> anyhow::Result<()> {
    let job = store
        .get_job(id)
        .await?
        .with_context(|| format!("job {id} not found"))?;
    let runs = store.stage_runs(id).await?;
    let stages: Vec<_> = cfg.pipeline.stages.clone();
    let v = views::job_view(&job, &stages, &runs, store.resources(id).await?);
    println!("job {}  {}", v.id, v.status_text);
    println!("url      {}", v.url);
    if let Some(e) = &v.error {
        println!("error    {e}");
    }
    println!();
    println!("{:<16} {:<12} {:>10}  DETAIL", "STAGE", "STATE", "DURATION");
    for s in &v.stages {
        let facts: Vec<String> = s.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<12} {:>10}  {}{}",
            s.name,
            s.state,
            s.duration.clone().unwrap_or_default(),
            facts.join(" "),
            s.error
                .as_ref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        );
    }
    println!();
    for l in store.log_tail(id, 20).await? {
        println!(
            "{} {:<5} {}{}",
            fmt_millis(l.ts),
            l.level.as_str(),
            l.stage.map(|s| format!("[{s}] ")).unwrap_or_default(),
            l.message
        );
    }
    Ok(())
}
