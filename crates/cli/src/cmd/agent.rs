//! `meshlimit agent`: enforce kernel limits at `connect()` with eBPF; `/metrics` and `/stats`
//! on the admin address. The limits come from one of two sources:
//!
//! - `--resources DIR`: the `RateLimit` resources of a directory, following edits live;
//! - `--cp URL`: a control plane's kernel-limits stream. Each change is applied as it arrives;
//!   while the control plane is unreachable the agent keeps the last limits it had and
//!   reconnects with jittered, capped exponential backoff. Every `--report-interval` it reports
//!   the store version it enforces and its counters per destination, which `get
//!   ratelimit-stats`, `top` and `diagnose` show.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_control_plane::client::{Client, FollowConfig, Followed, follow_kernel};
use meshlimit_control_plane::wire::{AgentReport, DestinationCounters};
use meshlimit_kernel::LimiterOptions;
use meshlimit_kernel::agent::{self, Agent, AgentConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::dataplane::{cp_on_command_line, global_options};

#[derive(clap::Args)]
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
    /// Buckets kept at most (client network namespace × destination); the least recently
    /// used is evicted beyond it.
    #[arg(long, default_value_t = 65_536)]
    buckets: u32,
    /// How often the resources are checked for changes, in milliseconds (with --resources).
    #[arg(long, default_value_t = 250, value_name = "MS")]
    poll_ms: u64,
    /// Seconds between status reports to the control plane (with --cp).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    report_interval: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cp_given = cp_on_command_line(std::env::args().skip(1));
    let cp_from_env = std::env::var_os("MESHLIMIT_CP").is_some_and(|v| !v.is_empty());
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
    let cgroup = match &args.cgroup {
        Some(path) => path.clone(),
        None => meshlimit_kernel::cgroup2_root()?,
    };
    let options = LimiterOptions {
        bucket_capacity: args.buckets,
    };
    match &args.resources {
        Some(resources) => from_directory(resources.clone(), cgroup, &args, options),
        None => from_control_plane(cgroup, &args, options),
    }
}

fn from_directory(
    resources: PathBuf,
    cgroup: PathBuf,
    args: &Args,
    limiter: LimiterOptions,
) -> anyhow::Result<ExitCode> {
    let config = AgentConfig {
        resources,
        cgroup,
        admin: args.admin,
        poll: Duration::from_millis(args.poll_ms.max(10)),
        limiter,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    agent::shutdown_on_signals(&shutdown).context("installing signal handlers")?;
    agent::run(&config, &shutdown, &mut |event| say(&event.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

fn from_control_plane(
    cgroup: PathBuf,
    args: &Args,
    limiter: LimiterOptions,
) -> anyhow::Result<ExitCode> {
    let ctx = global_options(std::env::args().skip(1));
    let client = Client::new(&ctx.cp, ctx.token)?;
    let report_interval = Duration::try_from_secs_f64(args.report_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--report-interval must be a positive number of seconds"))?;
    let name = match &args.name {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        Some(_) => anyhow::bail!("--name must not be empty"),
        None => host_name(),
    };
    let agent = Agent::start(&cgroup, args.admin, limiter)?;
    say(&format!(
        "attached to cgroup {}; following {} as {name:?}; admin on http://{}",
        cgroup.display(),
        client.base(),
        agent.admin_addr()
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(follow(agent, client, name, report_interval))
}

/// What the agent enforces now, as the control plane should hear it.
struct Enforcing {
    /// The store version of the limits in the kernel (`None` before the first).
    version: Option<u64>,
    /// The last limits the stream sent could not be applied: heartbeats do not move `version`.
    behind: bool,
}

async fn follow(
    agent: Agent,
    client: Client,
    name: String,
    report_interval: Duration,
) -> anyhow::Result<ExitCode> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    {
        let (client, name) = (client.clone(), name.clone());
        tokio::spawn(async move {
            follow_kernel(&client, &name, &FollowConfig::default(), |event| {
                let _ = events_tx.send(event);
            })
            .await;
        });
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut enforcing = Enforcing {
        version: None,
        behind: false,
    };
    let mut ticker = tokio::time::interval(report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                Followed::Limits { version, limits } => {
                    // A few map writes: done inline, so the limits are in the kernel before
                    // the next event is read.
                    match agent.apply(&limits.unwrap_or_default()) {
                        Ok(destinations) => {
                            say(&format!(
                                "enforcing store version {version}: limits on {destinations} destination(s)"
                            ));
                            enforcing = Enforcing { version: Some(version), behind: false };
                        }
                        Err(err) => {
                            say(&format!(
                                "store version {version} not applied, previous limits kept: {err}"
                            ));
                            enforcing.behind = true;
                        }
                    }
                    send_report(&client, &agent, &name, enforcing.version, true);
                }
                Followed::Version(version) => {
                    if !enforcing.behind && enforcing.version.is_some_and(|v| v != version) {
                        enforcing.version = Some(version);
                        send_report(&client, &agent, &name, enforcing.version, true);
                    }
                }
                Followed::Disconnected { error, retry_in } => say(&format!(
                    "control plane unreachable ({error}); enforcing the last limits (store \
                     version {}); retrying in {retry_in:?}",
                    enforcing.version.map_or_else(|| "none".to_string(), |v| v.to_string())
                )),
            },
            _ = ticker.tick() => send_report(&client, &agent, &name, enforcing.version, true),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    // Tell the control plane the programs are going away (best effort), then detach.
    let last = report(&agent, enforcing.version, false);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.report_agent(&name, &last)).await;
    agent.stop();
    say("detached");
    Ok(ExitCode::SUCCESS)
}

fn report(agent: &Agent, version: Option<u64>, attached: bool) -> AgentReport {
    let destinations = agent
        .stats()
        .map(|rows| {
            rows.into_iter()
                .map(|row| DestinationCounters {
                    service: row.service,
                    address: row.address,
                    port: row.port,
                    total: row.total,
                    allowed: row.allowed,
                    limited: row.limited,
                    tokens_available: Some(row.tokens_available),
                })
                .collect()
        })
        .unwrap_or_default();
    AgentReport {
        version,
        attached,
        destinations,
    }
}

/// Reports in the background: a slow or absent control plane never delays enforcement.
fn send_report(client: &Client, agent: &Agent, name: &str, version: Option<u64>, attached: bool) {
    let report = report(agent, version, attached);
    let (client, name) = (client.clone(), name.to_string());
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), client.report_agent(&name, &report)).await;
    });
}

/// The kernel's host name, else `agent`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

/// Every line the agent writes is an event, on stderr (stdout stays free for nothing else).
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "meshlimit agent: {line}");
    let _ = err.flush();
}
