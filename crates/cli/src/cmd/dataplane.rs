//! `meshlimit dataplane --cp URL --name DP [--mesh M]`: a proxy that follows the control
//! plane. It receives its effective limits as a stream and applies each change as it arrives;
//! while the control plane is unreachable it keeps enforcing the last limits it had and
//! reconnects with jittered, capped exponential backoff. Every second it reports the store
//! version it enforces and its counters (read from the proxy in this process) to the control
//! plane.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_bucket::MonotonicClock;
use meshlimit_control_plane_client::Client;
use meshlimit_control_plane_client::follow::{FollowConfig, Link, follow_dataplane};
use meshlimit_control_plane_client::wire::DataplaneReport;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_proxy::{Admin, Proxy, ProxyOptions, ProxyStats};

use crate::report;

use super::run::connections::{ConnectionArgs, raise_and_describe_fd_limit};

use super::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The Dataplane resource this proxy is.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Its mesh.
    #[arg(long, value_name = "MESH", default_value = "default")]
    pub mesh: String,
    /// Admin endpoint (/metrics, /ready, /config); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,
    /// Redis holding the buckets of MeshGlobalRateLimit totals shared by every instance
    /// (`redis://host:port`). Without it, this instance enforces its share of the total.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Time between status reports to the control plane.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::cmd::parse_positive_duration)]
    pub report_interval: Duration,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&ctx.cp, ctx.token.clone())?;
    let report_interval = args.report_interval;
    // Following the control plane, the admin endpoint and the accept loops; traffic is served on
    // the proxy's worker threads (or here too, with one).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(client, args, report_interval))
}

/// The follower feeds the proxy; this loop only tells the operator and the control plane what
/// the proxy enforces.
async fn serve(client: Client, args: Args, report_interval: Duration) -> anyhow::Result<ExitCode> {
    let followed = follow_dataplane(&client, &args.mesh, &args.name, FollowConfig::default());
    let limits = followed.limits.clone();
    let mut link = followed.link;
    let (fd_limit, line) = raise_and_describe_fd_limit();
    tracing::info!("{line}");
    let mut options = ProxyOptions {
        shared: args
            .redis
            .as_deref()
            .map(crate::global::redis)
            .transpose()?,
        ..ProxyOptions::default()
    };
    args.connections.apply(&mut options, fd_limit)?;
    let proxy = Proxy::spawn(options, Arc::new(MonotonicClock), followed.limits)
        .context("starting the proxy's worker threads")?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin endpoint to {}", args.admin))?;
    let admin_url = format!("http://{}", admin_listener.local_addr()?);
    tokio::spawn(Admin::for_proxy(&proxy).serve(admin_listener, std::future::pending()));
    super::announce(&format!(
        "meshlimit dataplane {}/{}: admin listening on {admin_url}; following {}",
        args.mesh,
        args.name,
        client.base()
    ));

    let reporter = Reporter {
        client: client.clone(),
        stats: proxy.stats(),
        mesh: args.mesh.clone(),
        name: args.name.clone(),
    };
    let mut status = proxy.status();
    // The proxy may have applied the first limits already: look at what it holds now too.
    status.mark_changed();
    let mut shown = (0, None);
    let mut ticker = tokio::time::interval(report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Ok(()) = status.changed() => {
                let now = status.borrow_and_update().clone();
                let Some(version) = now.version else { continue };
                if shown.1.is_none() || now.generation != shown.0 {
                    for problem in &now.problems {
                        tracing::warn!("{problem}");
                    }
                    let inbounds = limits.borrow().value.first().map_or(0, |l| l.inbounds.len());
                    tracing::info!("enforcing store version {version}: {inbounds} inbound(s)");
                    crate::notify::ready(&format!(
                        "enforcing store version {version}: {inbounds} inbound(s)"
                    ));
                }
                if shown.1 != Some(version) || now.generation != shown.0 {
                    reporter.send(version, &limits.borrow().value);
                }
                shown = (now.generation, Some(version));
            }
            Ok(()) = link.changed() => {
                if let Link::Disconnected { error, retry_in } = link.borrow_and_update().clone() {
                    tracing::warn!(
                        "control plane unreachable ({error}); enforcing the last limits \
                         (store version {}); retrying in {retry_in:?}",
                        shown.1.map_or_else(|| "none".to_string(), |v| v.to_string())
                    );
                }
            }
            _ = ticker.tick() => {
                if let Some(version) = shown.1 {
                    reporter.send(version, &limits.borrow().value);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            () = terminated() => break,
        }
    }
    proxy.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Sends what the proxy enforces to the control plane.
struct Reporter {
    client: Client,
    stats: ProxyStats,
    mesh: String,
    name: String,
}

impl Reporter {
    /// In the background: a slow or absent control plane never delays enforcement.
    fn send(&self, version: u64, limits: &[DataplaneLimits]) {
        let report = match limits.first() {
            Some(limits) => report::dataplane(Some(version), limits, &self.stats),
            None => DataplaneReport {
                version: Some(version),
                inbounds: Vec::new(),
            },
        };
        let (client, mesh, name) = (self.client.clone(), self.mesh.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                client.report_dataplane(&mesh, &name, &report),
            )
            .await;
        });
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
