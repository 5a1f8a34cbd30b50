//! `meshlimit agent`: enforce the `RateLimit` resources of a directory at `connect()` with
//! eBPF, following edits live; `/metrics` and `/stats` on the admin address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_kernel::LimiterOptions;
use meshlimit_kernel::agent::{self, AgentConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Directory (or file) of resources; RateLimit services are resolved to the Dataplane
    /// inbounds carrying that kuma.io/service.
    #[arg(long, value_name = "DIR")]
    resources: PathBuf,
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
    /// How often the resources are checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250, value_name = "MS")]
    poll_ms: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cgroup = match args.cgroup {
        Some(path) => path,
        None => meshlimit_kernel::cgroup2_root()?,
    };
    let config = AgentConfig {
        resources: args.resources,
        cgroup,
        admin: args.admin,
        poll: Duration::from_millis(args.poll_ms.max(10)),
        limiter: LimiterOptions {
            bucket_capacity: args.buckets,
        },
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    agent::shutdown_on_signals(&shutdown).context("installing signal handlers")?;
    agent::run(&config, &shutdown, &mut |event| {
        eprintln!("meshlimit agent: {event}")
    })?;
    Ok(ExitCode::SUCCESS)
}
