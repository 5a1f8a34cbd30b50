//! `meshlimit run`: the all-in-one. One process holds the control plane (its store, by default
//! in the user's data directory) and the local data planes: a proxy for every Dataplane in the
//! store and, when the machine allows it, the kernel limiter for every `RateLimit`.
//!
//! One listener (`--admin`, default `127.0.0.1:5681`, the control plane's own default, so
//! `meshlimit apply/get/delete/...` reach it without `--cp`) serves the control plane's REST API
//! and the admin routes `/metrics` (proxy and kernel counters), `/ready` and `/config`. On a
//! non-loopback address it needs `--token-file`, and every request a bearer token.
//!
//! Every committed store version is enforced at once: the proxies get the effective limits of
//! every Dataplane (buckets whose settings did not change keep their tokens) and the kernel its
//! destinations. So `meshlimit apply -f` against a running `meshlimit run` changes enforcement
//! live.
//!
//! `--resources DIR` seeds the store at start (one all-or-nothing write: an invalid directory
//! stops `run` with every problem) and is followed afterwards: once an edit has settled, the
//! directory's resources are written to the store, and those an earlier load of DIR had put
//! there and that are no longer in it are deleted, in the same write. An edit that does not
//! validate is reported and ignored (the store is unchanged). Resources written through the API
//! and never part of DIR are left alone.
//!
//! Without `--no-kernel`, the kernel limiter is attached to `--cgroup` (default: the cgroup v2
//! root); when that is not possible, one line says why and `run` carries on without it. It is
//! detached on SIGTERM or Ctrl-C.

pub mod connections;
mod directory;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_bucket::MonotonicClock;
use meshlimit_control_plane::{
    ApiConfig, ControlPlane, CpError, DEFAULT_API_ADDR, default_store_path, follow, needs_token,
};
use meshlimit_kernel::LimiterOptions;
use meshlimit_policy::Versioned;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_proxy::{Admin, Proxy, ProxyOptions};
use tokio::sync::watch;

use crate::cmd::{parse_duration, parse_positive_duration};
use crate::kernel::{Enforced, Kernel};
use crate::watch::Watcher;
use directory::Directory;

#[derive(clap::Args)]
#[command(after_help = "\
The all-in-one: the control plane (store, REST API) and the local data planes (a proxy for every \
Dataplane in the store, the kernel limiter for every RateLimit) in one process. Every change to \
the store (meshlimit apply or delete against --admin, or an edit of --resources) is enforced at \
once.

--resources DIR seeds the store at start and is followed: once an edit settles, the directory's \
resources are written to the store and those an earlier load of DIR had put there and that are \
gone from it are deleted, in one write. An edit that does not validate is reported and ignored. \
Resources applied through the API and not from DIR are left alone.")]
pub struct Args {
    /// Directory (or file) of resources (*.yaml, *.yml) that seeds the store and is followed.
    #[arg(long, value_name = "DIR")]
    resources: Option<PathBuf>,
    /// The store file [default: with --resources DIR, one store per directory under
    /// $XDG_DATA_HOME/meshlimit/run/ (else ~/.local/share/meshlimit/run/); without it,
    /// $XDG_DATA_HOME/meshlimit/store.redb, else ~/.local/share/meshlimit/store.redb].
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// The one listener: the control plane's REST API plus /metrics (Prometheus), /ready and
    /// /config (effective limits as JSON).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_API_ADDR)]
    admin: SocketAddr,
    /// File holding the API token; required when --admin is not a loopback address.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Write the listener's URL to this file once listening (useful with port 0).
    #[arg(long, value_name = "FILE")]
    address_file: Option<PathBuf>,
    /// Do not attach the kernel limiter (RateLimit resources are then not enforced here).
    #[arg(long)]
    no_kernel: bool,
    /// cgroup v2 directory the kernel limiter attaches to [default: the cgroup v2 root].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Kernel buckets kept at most (client network namespace × destination).
    #[arg(long, value_name = "N", default_value_t = LimiterOptions::default().bucket_capacity)]
    kernel_buckets: u32,
    /// Redis holding the buckets of MeshGlobalRateLimit totals shared by every instance
    /// (`redis://host:port`). Without it, each instance enforces its share of the total.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    #[command(flatten)]
    connections: connections::ConnectionArgs,
    /// How long shutdown (SIGTERM, Ctrl-C) waits for in-flight requests, e.g. `10s`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the resource directory is checked for edits, e.g. `250ms`.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    watch_interval: Duration,
    /// How often the counters are reported to the control plane's stats, e.g. `1s`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    report_interval: Duration,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (fd_limit, line) = connections::raise_and_describe_fd_limit();
    tracing::info!("{line}");
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None if needs_token(&args.admin) => anyhow::bail!(
            "refusing to serve on {} without --token-file: only loopback addresses may be used \
             without a token",
            args.admin
        ),
        None => None,
    };
    let store = match (&args.store, &args.resources) {
        (Some(store), _) => store.clone(),
        (None, Some(dir)) => directory::default_store_for(dir, &default_store_path()),
        (None, None) => default_store_path(),
    };
    let existed = store.exists();
    let cp = open_store(&store)?;

    let mut seeded = None;
    if args.resources.is_none() {
        let state = cp.snapshot();
        tracing::info!(
            "store {}: {}",
            store.display(),
            if existed {
                format!(
                    "version {}, {} resource(s)",
                    state.version,
                    state.entries.len()
                )
            } else {
                "new".to_string()
            }
        );
    }
    if let Some(dir) = &args.resources {
        // Taken before the load, so that an edit made while loading is still noticed.
        let watcher = Watcher::new(dir);
        let mut directory = Directory::new(dir, &store);
        tracing::info!(
            "store {}: {}",
            store.display(),
            if existed {
                directory.describe_store(&cp.snapshot())
            } else {
                "new".to_string()
            }
        );
        let result = directory.load(&cp).map_err(|problems| {
            anyhow::anyhow!("{} does not validate:\n{problems}", dir.display())
        })?;
        tracing::info!(
            "{} loaded into the store: {}",
            dir.display(),
            directory::summary(&result)
        );
        seeded = Some((directory, watcher));
    }

    let kernel = if args.no_kernel {
        tracing::info!(
            "kernel limits off (--no-kernel): RateLimit resources are not enforced here"
        );
        None
    } else {
        let options = LimiterOptions {
            bucket_capacity: args.kernel_buckets,
        };
        match Kernel::attach(args.cgroup.clone(), options) {
            Ok(kernel) => {
                if let Some(cgroup) = kernel.cgroup() {
                    tracing::info!("kernel limiter attached to cgroup {}", cgroup.display());
                }
                Some(kernel)
            }
            Err(reason) => {
                tracing::warn!(
                    "kernel limits not enforced: {reason}; run as root on a kernel with cgroup \
                     v2 and BPF, or pass --no-kernel"
                );
                None
            }
        }
    };

    // The control plane, the admin endpoint and the accept loops; traffic is served on the
    // proxy's worker threads (or here too, with one).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let served = runtime.block_on(serve(
        &args,
        cp,
        token,
        seeded,
        kernel.clone(),
        &store,
        fd_limit,
    ));
    if let Some(kernel) = kernel
        && kernel.detach()
    {
        tracing::info!("kernel limiter detached");
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

fn open_store(store: &Path) -> anyhow::Result<ControlPlane> {
    if let Some(parent) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the store directory {}", parent.display()))?;
    }
    ControlPlane::open(store).map_err(|e| match e {
        CpError::Invalid(problems) => anyhow::anyhow!(
            "the store {} holds resources that no longer validate:\n{}",
            store.display(),
            directory::lines(&problems)
        ),
        other => {
            anyhow::Error::new(other).context(format!("opening the store {}", store.display()))
        }
    })
}

/// The phases of `meshlimit run` once the store is open: the data paths follow the store, one
/// listener serves the API and the admin routes, the counters are reported, the resource
/// directory is followed; then it waits for a signal and drains.
async fn serve(
    args: &Args,
    cp: ControlPlane,
    token: Option<String>,
    seeded: Option<(Directory, Watcher)>,
    kernel: Option<Kernel>,
    store: &Path,
    fd_limit: meshlimit_proxy::FdLimit,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin))?;
    let bound = listener.local_addr()?;

    let limits = follow::dataplanes(&cp);
    let shared = args
        .redis
        .as_deref()
        .map(crate::global::redis)
        .transpose()?;
    let proxy = start_proxy(args, &shared, &cp, limits.clone(), fd_limit)?;
    let kernel_enforced = start_kernel(&cp, kernel.as_ref());
    let server = {
        let router = router(&cp, &proxy, kernel.as_ref(), token);
        announce(args, bound, store)?;
        tokio::spawn(meshlimit_control_plane::serve(listener, router))
    };
    let reporting = start_reporting(args, &cp, &proxy, limits, kernel.clone(), kernel_enforced);
    let stop_watching = Arc::new(AtomicBool::new(false));
    if let Some((directory, watcher)) = seeded {
        let (cp, stop) = (cp.clone(), Arc::clone(&stop_watching));
        let interval = args.watch_interval;
        std::thread::Builder::new()
            .name("resource-watch".into())
            .spawn(move || directory::follow(directory, watcher, interval, &cp, &stop))
            .context("starting the resource watcher")?;
    }

    tokio::select! {
        signal = shutdown_signal() => signal?,
        served = server => {
            served.context("the API server stopped")?.context("serving the API")?;
        }
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    reporting.abort();
    proxy.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The proxies follow every store version: each Dataplane's effective limits.
fn start_proxy(
    args: &Args,
    shared: &Option<Arc<dyn meshlimit_proxy::SharedBuckets>>,
    cp: &ControlPlane,
    limits: watch::Receiver<Versioned<Vec<DataplaneLimits>>>,
    fd_limit: meshlimit_proxy::FdLimit,
) -> anyhow::Result<Proxy> {
    let mut options = ProxyOptions {
        drain_timeout: args.drain_timeout,
        shared: shared.clone(),
        ..ProxyOptions::default()
    };
    args.connections.apply(&mut options, fd_limit)?;
    let first = limits.borrow().clone();
    let snapshot = cp.snapshot();
    tracing::info!(
        version = first.version,
        resources = snapshot.entries.len(),
        dataplanes = first.value.len(),
        kernel_destinations = snapshot.kernel.len(),
        "enforcing the store"
    );
    let mut changes = limits.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let now = changes.borrow_and_update().clone();
            tracing::info!(
                version = now.version,
                dataplanes = now.value.len(),
                "store changed: enforcing"
            );
        }
    });
    Proxy::spawn(options, Arc::new(MonotonicClock), limits)
        .context("starting the proxy's worker threads")
}

/// The kernel limiter follows every store version's `RateLimit` destinations; without it, says
/// what goes unenforced. Returns what the kernel enforces.
fn start_kernel(cp: &ControlPlane, kernel: Option<&Kernel>) -> watch::Receiver<Enforced> {
    let limits = follow::kernel(cp);
    match kernel {
        Some(kernel) => {
            let enforced = kernel.enforce(limits);
            let mut changes = enforced.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(refused) = &changes.borrow_and_update().refused {
                        tracing::error!(
                            "kernel limits of store version {}: {}; the previous ones stay",
                            refused.version,
                            refused.reason
                        );
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            });
            enforced
        }
        None => {
            let mut limits = limits;
            let unenforced = |version| Enforced {
                version,
                ..Enforced::default()
            };
            let (tx, rx) = watch::channel(unenforced(limits.borrow().version));
            tokio::spawn(async move {
                loop {
                    let now = limits.borrow_and_update().clone();
                    if !now.value.is_empty() {
                        tracing::warn!(
                            "{} kernel destination(s) of RateLimit resources are not enforced \
                             here: the kernel limiter is not attached",
                            now.value.len()
                        );
                    }
                    tx.send_replace(unenforced(now.version));
                    if limits.changed().await.is_err() {
                        return;
                    }
                }
            });
            rx
        }
    }
}

/// The control plane's REST API and the admin routes (`/metrics`, `/ready`, `/config`) on one
/// listener, behind one token.
fn router(
    cp: &ControlPlane,
    proxy: &Proxy,
    kernel: Option<&Kernel>,
    token: Option<String>,
) -> axum::Router {
    let config = ApiConfig {
        token: token.clone(),
        ..ApiConfig::default()
    };
    // One /metrics and one /ready for the whole process: the proxy's, the kernel limiter's
    // and the control plane's (its API, streams and store).
    let control_plane = Arc::new(ControlPlaneOps {
        cp: cp.clone(),
        metrics: config.metrics.clone(),
    });
    let mut admin = Admin::for_proxy(proxy)
        .with_token(token)
        .with_metrics(control_plane.clone())
        .with_readiness(control_plane);
    if let Some(kernel) = kernel {
        admin = admin.with_metrics(Arc::new(kernel.clone()));
    }
    meshlimit_control_plane::router(cp.clone(), config).merge(admin.router())
}

/// The control plane's series and readiness on the all-in-one's admin routes.
struct ControlPlaneOps {
    cp: ControlPlane,
    metrics: meshlimit_control_plane::ops::Metrics,
}

impl meshlimit_proxy::MetricsSource for ControlPlaneOps {
    fn register(
        &self,
        registry: &mut meshlimit_proxy::exposition::prometheus_client::registry::Registry,
    ) {
        self.metrics.register(
            registry.sub_registry_with_prefix("meshlimit"),
            &self.cp,
            None,
        );
    }
}

impl meshlimit_proxy::ReadinessSource for ControlPlaneOps {
    fn ready(&self) -> Result<(), String> {
        self.cp.ready()
    }
}

/// Says where the listener is, in the log and (with `--address-file`) in a file.
fn announce(args: &Args, bound: SocketAddr, store: &Path) -> anyhow::Result<()> {
    if let Some(path) = &args.address_file {
        // Write then rename, so a reader never sees half a URL.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, format!("http://{bound}\n"))
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(address = %bound, store = %store.display(), "admin listening");
    Ok(())
}

/// Every `--report-interval`, the counters of what is enforced go to the control plane's stats.
fn start_reporting(
    args: &Args,
    cp: &ControlPlane,
    proxy: &Proxy,
    limits: watch::Receiver<Versioned<Vec<DataplaneLimits>>>,
    kernel: Option<Kernel>,
    kernel_enforced: watch::Receiver<Enforced>,
) -> tokio::task::JoinHandle<()> {
    let mut reporter = report::Reporter::new(
        cp.clone(),
        proxy.stats(),
        kernel.map(|k| (report::agent_name(), k)),
    );
    if args.no_kernel {
        reporter = reporter.kernel_off(
            report::agent_name(),
            "meshlimit run --no-kernel: RateLimit resources are not enforced on this host".into(),
        );
    }
    let status = proxy.status();
    let interval = args.report_interval;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // What the proxy applied last, with the limits of that version.
            let version = status.borrow().version.unwrap_or_default();
            let kernel_version = kernel_enforced.borrow().version;
            let limits = limits.borrow().value.clone();
            reporter.report(version, kernel_version, &limits);
        }
    })
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

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}
