//! `meshlimit agent`: enforce kernel limits at `connect()` with eBPF; `/metrics` and `/stats`
//! on the admin address. The limits come from one of two sources:
//!
//! - `--resources DIR`: the `RateLimit` resources of a directory, following edits live;
//! - `--cp URL`: a control plane's kernel-limits stream. Each change is applied as it arrives;
//!   while the control plane is unreachable the agent keeps the last limits it had and
//!   reconnects with jittered, capped exponential backoff. Every `--report-interval` it reports
//!   the store version it enforces and its counters per destination, which `get
//!   ratelimit-stats`, `top` and `diagnose` show.
//!
//! The programs' links and maps are pinned in bpffs (`--pin-dir`, unless `--no-pin`), so the
//! limits and buckets outlive the process: a restarted agent adopts them, `--detach` removes
//! them. One agent per cgroup (the kernel crate's cgroup lock refuses a second).
//!
//! One flow either way: the source yields a `watch` of versioned limits, [`Kernel::enforce`]
//! consumes it, and [`follow`] (one loop) prints what is enforced, polls the directory or sends
//! the reports, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use meshlimit_control_plane_client::Client;
use meshlimit_control_plane_client::follow::{FollowConfig, Followed, Link, follow_kernel};
use meshlimit_control_plane_client::wire::AgentReport;
use meshlimit_kernel::LimiterOptions;
use meshlimit_policy::effective::KernelLimit;
use meshlimit_policy::{ResourceSet, Versioned, load_paths};
use meshlimit_proxy::Admin;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use super::Context;
use crate::kernel::{Enforced, Kernel};
use crate::watch::Watcher;

#[derive(clap::Args)]
#[command(after_long_help = PINNING_HELP)]
pub struct Args {
    /// Directory (or file) of resources; RateLimit services are resolved to the Dataplane
    /// inbounds carrying that kuma.io/service. Without it, the limits come from the control
    /// plane given by --cp (or MESHLIMIT_CP).
    #[arg(long, value_name = "DIR")]
    resources: Option<PathBuf>,
    /// The name this agent reports to the control plane [default: the host name].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// cgroup v2 directory to attach to [default: the root of the cgroup v2 hierarchy].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Address of the admin endpoint (/metrics, /stats).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5682")]
    admin: SocketAddr,
    /// Kernel buckets kept at most (client network namespace × destination); the least
    /// recently used is evicted beyond it.
    #[arg(
        long,
        value_name = "N",
        alias = "buckets",
        default_value_t = LimiterOptions::default().bucket_capacity
    )]
    kernel_buckets: u32,
    /// How often the resources are checked for changes (with --resources).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "250ms",
        value_parser = super::parse_positive_duration
    )]
    poll_interval: Duration,
    /// The old --poll-interval, in milliseconds.
    #[arg(long, value_name = "MS", hide = true, conflicts_with = "poll_interval")]
    poll_ms: Option<u64>,
    /// Time between status reports to the control plane (with --cp).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = super::parse_positive_duration
    )]
    report_interval: Duration,
    /// Directory on bpffs where the programs' links and maps are pinned [default:
    /// /sys/fs/bpf/meshlimit/cgroup-<cgroup id>].
    #[arg(long, value_name = "DIR", conflicts_with = "no_pin")]
    pin_dir: Option<PathBuf>,
    /// Do not pin: the programs live only as long as this process (if it dies, every limit
    /// lifts; a restart refills every bucket).
    #[arg(long)]
    no_pin: bool,
    /// Remove the programs and maps an agent pinned for --cgroup (lifting its limits), and
    /// exit. Refused while an agent runs on that cgroup.
    #[arg(long, conflicts_with_all = ["resources", "no_pin", "name"])]
    detach: bool,
}

const PINNING_HELP: &str = "\
Pinning: the agent pins the links that attach its programs to the cgroup, and the maps that \
hold the limits, the buckets and the counters, in bpffs (--pin-dir; bpffs is mounted at \
/sys/fs/bpf if it is not). So enforcement does not depend on the process: if the agent is \
killed, crashes or stops (SIGTERM), connections stay limited with the same buckets; the next \
agent on that cgroup adopts the pins (tokens and counters kept, its own programs swapped in \
without a gap) and applies its limits. `meshlimit agent --detach` removes the pins and lifts \
the limits. One agent per cgroup: a second one exits with an error naming the first.";

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    if args.detach {
        return detach(&args);
    }
    let (cp_given, cp_from_env) = (ctx.cp_on_command_line, ctx.cp_from_env);
    if args.resources.is_some() && cp_given {
        anyhow::bail!(
            "--resources and --cp are mutually exclusive: the agent takes its limits either \
             from a resource directory or from a control plane"
        );
    }
    if args.resources.is_none() && !cp_given && !cp_from_env {
        anyhow::bail!(
            "where do the limits come from? Give --resources DIR (a resource directory) or \
             --cp URL (a control plane)"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(agent(ctx, args))
}

/// The phases: signals, source, attach, enforce, admin endpoint; then follow until a signal
/// and detach.
async fn agent(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    // First, so that a signal at any later point is a clean stop.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;

    let prepared = Prepared::new(ctx, &args)?;
    let options = LimiterOptions {
        bucket_capacity: args.kernel_buckets,
    };
    let kernel = if args.no_pin {
        Kernel::attach(args.cgroup.clone(), options)?
    } else {
        Kernel::attach_pinned(args.cgroup.clone(), options, args.pin_dir.clone())?
    };
    if let Some((dir, adopted)) = kernel.pins() {
        say(&pinned_line(&dir, adopted, args.kernel_buckets));
    }
    let (mut source, limits) = prepared.follow();
    let enforced = kernel.enforce(limits);
    let listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot serve the admin endpoint on {}", args.admin))?;
    let admin_addr = listener.local_addr()?;
    let routes = admin_routes(&kernel);
    let admin = tokio::spawn(async move { axum::serve(listener, routes).await });
    say(&source.attached(&kernel, admin_addr));

    let stop = async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let version = follow(&mut source, &kernel, enforced, stop).await;

    admin.abort();
    let pins = kernel.pins();
    if pins.is_some()
        && let Source::ControlPlane { reports, .. } = &source
    {
        // The last counters; the programs stay attached (best effort).
        reports.send_last(kernel.report(version)).await;
    }
    kernel.detach();
    match pins {
        Some((dir, _)) => say(&format!(
            "stopped; the limits stay enforced from the pins in {} (`meshlimit agent --detach` \
             removes them)",
            dir.display()
        )),
        None => {
            if let Source::ControlPlane { reports, .. } = &source {
                // Tell the control plane the programs are gone (best effort).
                reports.send_last(kernel.report(version)).await;
            }
            say("detached");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the agent found pinned, said once at start.
fn pinned_line(dir: &Path, adopted: Option<meshlimit_kernel::Adopted>, buckets: u32) -> String {
    let Some(adopted) = adopted else {
        return format!("programs and maps pinned in {}", dir.display());
    };
    let mut line = format!(
        "adopted the pins in {}: {} program link(s), {} destination(s), {} bucket(s) with their \
         tokens",
        dir.display(),
        adopted.links,
        adopted.destinations,
        adopted.buckets
    );
    if adopted.bucket_capacity != buckets {
        line.push_str(&format!(
            "; the pinned bucket map keeps its capacity of {} (--kernel-buckets {buckets} \
             applies after --detach)",
            adopted.bucket_capacity
        ));
    }
    line
}

/// `--detach`: removes the pins of the cgroup's agent, which lifts its limits.
fn detach(args: &Args) -> anyhow::Result<ExitCode> {
    let cgroup = match &args.cgroup {
        Some(path) => path.clone(),
        None => meshlimit_kernel::cgroup2_root()?,
    };
    let dir = match &args.pin_dir {
        Some(dir) => dir.clone(),
        None => meshlimit_kernel::default_pin_dir(&cgroup)?,
    };
    if meshlimit_kernel::remove_pins(&cgroup, &dir)? {
        say(&format!(
            "detached: removed the pins in {}; cgroup {} is no longer limited",
            dir.display(),
            cgroup.display()
        ));
    } else {
        say(&format!("nothing was pinned in {}", dir.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// A source before it is followed: what can be refused (the resources, the options of the
/// client) is checked before the kernel is touched.
enum Prepared {
    Directory(Directory),
    // Boxed: the client is large, and there is one of these per process.
    ControlPlane(Box<Reports>),
}

impl Prepared {
    fn new(ctx: &Context, args: &Args) -> anyhow::Result<Prepared> {
        Ok(match &args.resources {
            Some(dir) => {
                let poll = match args.poll_ms {
                    Some(0) => anyhow::bail!("--poll-ms must be more than 0"),
                    Some(ms) => Duration::from_millis(ms),
                    None => args.poll_interval,
                };
                Prepared::Directory(Directory::open(dir, poll)?)
            }
            None => Prepared::ControlPlane(Box::new(Reports::new(ctx, args)?)),
        })
    }

    /// Starts following: the source for the event loop, and the limits for the kernel.
    fn follow(self) -> (Source, watch::Receiver<Versioned<Vec<KernelLimit>>>) {
        match self {
            Prepared::Directory(directory) => {
                let limits = directory.limits.subscribe();
                (Source::Directory(directory), limits)
            }
            Prepared::ControlPlane(reports) => {
                let Followed { limits, link } =
                    follow_kernel(&reports.client, &reports.name, FollowConfig::default());
                (Source::ControlPlane { reports, link }, limits)
            }
        }
    }
}

/// Prints each change of what is enforced, polls the directory or sends the reports, until
/// `stop`. Returns the store version enforced last.
async fn follow(
    source: &mut Source,
    kernel: &Kernel,
    mut enforced: watch::Receiver<Enforced>,
    stop: impl Future<Output = ()>,
) -> Option<u64> {
    tokio::pin!(stop);
    let mut last = Enforced::default();
    loop {
        let now = enforced.borrow_and_update().clone();
        if now != last {
            source.enforced(&last, &now, kernel);
            // systemd's readiness: the first version enforced (again at each later one, which
            // keeps `systemctl status` current).
            if let Some(version) = now.version {
                crate::notify::ready(&format!(
                    "enforcing version {version}: limits on {} destination(s)",
                    now.destinations
                ));
            }
            last = now;
        }
        tokio::select! {
            Ok(()) = enforced.changed() => {}
            () = source.next(kernel, &last) => {}
            () = &mut stop => return last.version,
        }
    }
}

/// Where the limits come from, as the event loop sees it.
enum Source {
    Directory(Directory),
    ControlPlane {
        reports: Box<Reports>,
        link: watch::Receiver<Link>,
    },
}

impl Source {
    /// The line that says the agent is up; the admin address comes last.
    fn attached(&self, kernel: &Kernel, admin: SocketAddr) -> String {
        let cgroup = kernel.cgroup().unwrap_or_default();
        match self {
            Source::Directory(_) => format!(
                "attached to cgroup {}; admin on http://{admin}",
                cgroup.display()
            ),
            Source::ControlPlane { reports, .. } => format!(
                "attached to cgroup {}; following {} as {:?}; admin on http://{admin}",
                cgroup.display(),
                reports.client.base(),
                reports.name
            ),
        }
    }

    /// Says what changed from `last` to `now`; the control plane hears it at once.
    fn enforced(&self, last: &Enforced, now: &Enforced, kernel: &Kernel) {
        let refused = now.refused.as_ref().filter(|_| now.refused != last.refused);
        match self {
            Source::Directory(_) => {
                if let Some(refused) = refused {
                    warn(&format!(
                        "change ignored, previous limits kept:\n  {}",
                        refused.reason
                    ));
                } else if now.version != last.version {
                    say(&format!(
                        "enforcing limits on {} destination(s)",
                        now.destinations
                    ));
                }
            }
            Source::ControlPlane { reports, .. } => {
                if let Some(refused) = refused {
                    warn(&format!(
                        "store version {} not applied, previous limits kept: {}",
                        refused.version, refused.reason
                    ));
                } else if now.applied != last.applied
                    && let Some(version) = now.applied
                {
                    say(&format!(
                        "enforcing store version {version}: limits on {} destination(s)",
                        now.destinations
                    ));
                }
                reports.send(kernel.report(now.version));
            }
        }
    }

    /// Waits for the source's own next step and takes it: a directory poll, a change of the
    /// link to the control plane, or a report.
    async fn next(&mut self, kernel: &Kernel, enforced: &Enforced) {
        match self {
            Source::Directory(directory) => {
                directory.poll.tick().await;
                if let Err(problems) = directory.reload() {
                    warn(&format!(
                        "change ignored, previous limits kept:\n  {}",
                        problems.join("\n  ")
                    ));
                }
            }
            Source::ControlPlane { reports, link } => tokio::select! {
                Ok(()) = link.changed() => {
                    if let Link::Disconnected { error, retry_in } = link.borrow_and_update().clone() {
                        warn(&format!(
                            "control plane unreachable ({error}); enforcing the last limits \
                             (store version {}); retrying in {retry_in:?}",
                            enforced.version.map_or_else(|| "none".to_string(), |v| v.to_string())
                        ));
                    }
                }
                _ = reports.ticker.tick() => reports.send(kernel.report(enforced.version)),
            },
        }
    }
}

/// `--resources DIR`: its `RateLimit`s, reloaded once an edit has settled. Each load that
/// validates is the next local version (1, 2, …); one that does not changes nothing.
struct Directory {
    path: PathBuf,
    watcher: Watcher,
    poll: Interval,
    limits: watch::Sender<Versioned<Vec<KernelLimit>>>,
    version: u64,
}

impl Directory {
    /// Loads `path` as version 1; fails with every problem when it does not validate.
    fn open(path: &Path, poll: Duration) -> anyhow::Result<Directory> {
        // Taken before the load, so that an edit made while loading is still noticed.
        let watcher = Watcher::new(path);
        let first = load(path).map_err(|problems| {
            anyhow::anyhow!(
                "invalid resources in {}:\n  {}",
                path.display(),
                problems.join("\n  ")
            )
        })?;
        let mut poll = tokio::time::interval(poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Directory {
            path: path.to_owned(),
            watcher,
            poll,
            limits: watch::channel(Versioned::new(1, first)).0,
            version: 1,
        })
    }

    /// After a settled edit, publishes the directory's limits as the next version. A few
    /// `stat`s per poll, and a parse after an edit: small enough to run on the runtime.
    fn reload(&mut self) -> Result<(), Vec<String>> {
        if !self.watcher.settled_change() {
            return Ok(());
        }
        let limits = load(&self.path)?;
        self.version += 1;
        self.limits
            .send_replace(Versioned::new(self.version, limits));
        Ok(())
    }
}

/// The kernel limits of the resources at `path`, or every problem.
fn load(path: &Path) -> Result<Vec<KernelLimit>, Vec<String>> {
    let to_strings = |problems: Vec<meshlimit_policy::Problem>| {
        problems.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let parsed = load_paths(&[path]).map_err(to_strings)?;
    let set = ResourceSet::from_parsed(parsed).map_err(to_strings)?;
    Ok(set.kernel_limits())
}

/// `--cp URL`: where and how often the agent reports.
struct Reports {
    client: Client,
    name: String,
    ticker: Interval,
}

impl Reports {
    fn new(ctx: &Context, args: &Args) -> anyhow::Result<Reports> {
        let client = Client::new(&ctx.cp, ctx.token.clone())?;
        let interval = args.report_interval;
        let name = match &args.name {
            Some(name) if !name.trim().is_empty() => name.trim().to_string(),
            Some(_) => anyhow::bail!("--name must not be empty"),
            None => host_name(),
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Reports {
            client,
            name,
            ticker,
        })
    }

    /// In the background: a slow or absent control plane never delays enforcement.
    fn send(&self, report: AgentReport) {
        let (client, name) = (self.client.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), client.report_agent(&name, &report))
                    .await;
        });
    }

    /// The last report, waited for briefly: the process is about to exit.
    async fn send_last(&self, report: AgentReport) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.report_agent(&self.name, &report),
        )
        .await;
    }
}

/// `/metrics` from the same admin routes as `meshlimit run`, and `/stats`: one JSON row per
/// limited destination.
fn admin_routes(kernel: &Kernel) -> axum::Router {
    let stats = kernel.clone();
    Admin::new()
        .with_metrics(Arc::new(kernel.clone()))
        .router()
        .route(
            "/stats",
            axum::routing::get(move || {
                let kernel = stats.clone();
                async move { stats_json(&kernel) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /metrics or /stats\n") })
}

fn stats_json(kernel: &Kernel) -> Response {
    let json = kernel
        .stats()
        .map_err(|error| error.to_string())
        .and_then(|rows| serde_json::to_string_pretty(&rows).map_err(|error| error.to_string()));
    match json {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// The kernel's host name, else `agent`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

/// Every event goes to the process's one log (stderr; `RUST_LOG`, `--log-format`).
fn say(line: &str) {
    tracing::info!("{line}");
}

/// An event that needs the operator: a change not applied, the control plane lost.
fn warn(line: &str) {
    tracing::warn!("{line}");
}
