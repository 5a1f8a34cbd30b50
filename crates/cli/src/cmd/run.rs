//! `meshlimit run`: the all-in-one. Loads a directory of resources, runs a proxy for every
//! Dataplane in it (one process), serves the admin endpoint, and applies edits to the
//! directory live. An edit that does not validate is reported and ignored: the last good
//! configuration stays in force.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use meshlimit_bucket::MonotonicClock;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_policy::{Problem, ResourceSet, load_paths};
use meshlimit_proxy::{Admin, Proxy, ProxyOptions};
use tokio::sync::watch;

#[derive(clap::Args)]
pub struct Args {
    /// Directory (or file) of resources: Dataplanes, MeshRateLimits, Meshes (*.yaml, *.yml).
    #[arg(long, value_name = "DIR")]
    resources: PathBuf,
    /// Admin endpoint: /metrics (Prometheus), /ready, /config (effective limits as JSON).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5681")]
    admin: SocketAddr,
    /// Threads serving traffic; 1 runs the whole proxy on one thread. Default: one per core.
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Also send `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` header fields.
    #[arg(long)]
    rate_limit_headers: bool,
    /// Largest request head a client may send (bytes); larger ones get 431.
    #[arg(long, value_name = "BYTES", default_value_t = ProxyOptions::default().max_request_header_bytes)]
    max_request_header_bytes: usize,
    /// Largest request body forwarded (bytes); larger ones get 413. Default: no limit.
    #[arg(long, value_name = "BYTES")]
    max_request_body_bytes: Option<u64>,
    /// How long shutdown (SIGTERM, Ctrl-C) waits for in-flight requests, e.g. `10s`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the directory is checked for edits, e.g. `250ms`.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    watch_interval: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    meshlimit_policy::duration::parse_go(text)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging();
    let before_load = fingerprint(&args.resources);
    let initial = load(&args.resources).map_err(|problems| {
        anyhow::anyhow!(
            "{} does not validate:\n{problems}",
            args.resources.display()
        )
    })?;
    let mut runtime = match args.worker_threads {
        Some(0) => anyhow::bail!("--worker-threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args, initial, before_load))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    args: Args,
    initial: Vec<DataplaneLimits>,
    loaded: Fingerprint,
) -> anyhow::Result<()> {
    let options = ProxyOptions {
        max_request_header_bytes: args.max_request_header_bytes,
        max_request_body_bytes: args.max_request_body_bytes,
        rate_limit_headers: args.rate_limit_headers,
        drain_timeout: args.drain_timeout,
        ..ProxyOptions::default()
    };
    tracing::info!(
        dataplanes = initial.len(),
        resources = %args.resources.display(),
        "configuration loaded"
    );
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("admin endpoint: cannot listen on {}", args.admin))?;
    let (limits, receiver) = watch::channel(initial);
    let proxy = Proxy::spawn(options, Arc::new(MonotonicClock), receiver);
    tracing::info!(address = %admin_listener.local_addr()?, "admin listening");
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(Admin::for_proxy(&proxy).serve(admin_listener, async {
        let _ = admin_stopped.await;
    }));

    let dir = args.resources.clone();
    let interval = args.watch_interval;
    std::thread::Builder::new()
        .name("resource-watch".into())
        .spawn(move || watch_resources(&dir, loaded, interval, &limits))
        .context("starting the resource watcher")?;

    shutdown_signal().await?;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    proxy.shutdown().await;
    let _ = stop_admin.send(());
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// Parses and validates everything under `path` and compiles the effective limits of every
/// Dataplane; on failure, every problem, one per line.
fn load(path: &Path) -> Result<Vec<DataplaneLimits>, String> {
    let parsed = load_paths(&[path]).map_err(|problems| lines(&problems))?;
    for warning in &parsed.warnings {
        tracing::warn!("{warning}");
    }
    let set = ResourceSet::from_parsed(parsed).map_err(|problems| lines(&problems))?;
    Ok(set.all_effective())
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `dir` and applies a change once the files have stopped changing for one interval
/// (editors write in several steps). Runs on its own thread until the proxy is gone.
fn watch_resources(
    dir: &Path,
    loaded: Fingerprint,
    interval: Duration,
    limits: &watch::Sender<Vec<DataplaneLimits>>,
) {
    let mut applied = loaded;
    loop {
        std::thread::sleep(interval);
        if limits.is_closed() {
            return;
        }
        let mut seen = fingerprint(dir);
        if seen == applied {
            continue;
        }
        // Debounce: wait until two looks in a row agree.
        loop {
            std::thread::sleep(interval);
            let again = fingerprint(dir);
            if again == seen {
                break;
            }
            seen = again;
        }
        applied = seen;
        match load(dir) {
            Ok(config) => {
                tracing::info!(dataplanes = config.len(), "resources changed: applying");
                limits.send_replace(config);
            }
            Err(problems) => tracing::error!(
                "resources changed but do not validate; the change is ignored and the last good configuration stays:\n{problems}"
            ),
        }
    }
}

/// Name, size and modification time of the resource file, or of every file directly inside
/// the resource directory (where `load_paths` looks), sorted.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let mut files: Fingerprint = match std::fs::read_dir(path) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let metadata = std::fs::metadata(entry.path()).ok()?; // follows symlinks
                metadata
                    .is_file()
                    .then(|| (entry.path(), metadata.len(), metadata.modified().ok()))
            })
            .collect(),
        Err(_) => std::fs::metadata(path)
            .map(|m| vec![(path.to_path_buf(), m.len(), m.modified().ok())])
            .unwrap_or_default(),
    };
    files.sort();
    files
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
