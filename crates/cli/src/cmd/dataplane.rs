//! `meshlimit dataplane --cp URL --name DP [--mesh M]`: a proxy that follows the control
//! plane. It receives its effective limits as a stream and applies each change as it arrives;
//! while the control plane is unreachable it keeps enforcing the last limits it had and
//! reconnects with jittered, capped exponential backoff. Every second it reports the store
//! version it enforces and its counters (read from its own admin endpoint) to the control plane.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_bucket::MonotonicClock;
use meshlimit_control_plane::client::{Client, FollowConfig, Followed, follow_dataplane};
use meshlimit_control_plane::wire::DataplaneReport;
use meshlimit_policy::effective::DataplaneLimits;
use meshlimit_proxy::{Admin, Proxy, ProxyOptions};
use tokio::sync::{mpsc, watch};

use super::Context;

mod report;

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
    /// Seconds between status reports to the control plane.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub report_interval: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ctx = global_options(std::env::args().skip(1));
    let client = Client::new(&ctx.cp, ctx.token.clone())?;
    let report_interval = Duration::try_from_secs_f64(args.report_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--report-interval must be a positive number of seconds"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(client, args, report_interval))
}

/// What the data plane enforces now, as the control plane should hear it.
#[derive(Default)]
struct Enforcing {
    version: Option<u64>,
    limits: Option<DataplaneLimits>,
}

async fn serve(client: Client, args: Args, report_interval: Duration) -> anyhow::Result<ExitCode> {
    let (limits_tx, limits_rx) = watch::channel(Vec::<DataplaneLimits>::new());
    let proxy = Proxy::spawn(ProxyOptions::default(), Arc::new(MonotonicClock), limits_rx);
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin endpoint to {}", args.admin))?;
    let admin_url = format!("http://{}", admin_listener.local_addr()?);
    tokio::spawn(Admin::for_proxy(&proxy).serve(admin_listener, std::future::pending()));
    say(&format!(
        "meshlimit dataplane {}/{}: admin listening on {admin_url}; following {}",
        args.mesh,
        args.name,
        client.base()
    ));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    {
        let client = client.clone();
        let (mesh, name) = (args.mesh.clone(), args.name.clone());
        tokio::spawn(async move {
            follow_dataplane(&client, &mesh, &name, &FollowConfig::default(), |event| {
                let _ = events_tx.send(event);
            })
            .await;
        });
    }
    let admin = Client::new(&admin_url, None)?;
    let mut enforcing = Enforcing::default();
    let mut status = proxy.status();
    let mut ticker = tokio::time::interval(report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                Followed::Limits { version, limits } => {
                    let wanted: Vec<DataplaneLimits> = limits.iter().cloned().collect();
                    if *limits_tx.borrow() != wanted {
                        let before = status.borrow_and_update().generation;
                        limits_tx.send_replace(wanted);
                        // Acknowledge only what the proxy has applied.
                        let applied = tokio::time::timeout(
                            Duration::from_secs(5),
                            status.wait_for(|s| s.generation > before),
                        )
                        .await;
                        if let Ok(Ok(s)) = applied {
                            for problem in &s.problems {
                                eprintln!("warning: {problem}");
                            }
                        }
                    }
                    let inbounds = limits.as_ref().map_or(0, |l| l.inbounds.len());
                    say(&format!("enforcing store version {version}: {inbounds} inbound(s)"));
                    enforcing = Enforcing { version: Some(version), limits };
                    send_report(&client, &admin, &args, &enforcing);
                }
                Followed::Version(version) => {
                    if enforcing.version != Some(version) {
                        enforcing.version = Some(version);
                        send_report(&client, &admin, &args, &enforcing);
                    }
                }
                Followed::Disconnected { error, retry_in } => {
                    say(&format!(
                        "control plane unreachable ({error}); enforcing the last limits \
                         (store version {}); retrying in {retry_in:?}",
                        enforcing.version.map_or_else(|| "none".to_string(), |v| v.to_string())
                    ));
                }
            },
            _ = ticker.tick() => send_report(&client, &admin, &args, &enforcing),
            _ = tokio::signal::ctrl_c() => break,
            () = terminated() => break,
        }
    }
    proxy.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Reports in the background: a slow or absent control plane never delays enforcement.
fn send_report(client: &Client, admin: &Client, args: &Args, enforcing: &Enforcing) {
    let (client, admin) = (client.clone(), admin.clone());
    let (mesh, name) = (args.mesh.clone(), args.name.clone());
    let version = enforcing.version;
    let limits = enforcing.limits.clone();
    tokio::spawn(async move {
        let inbounds = match (&limits, admin.get_text("/metrics").await) {
            (Some(limits), Ok(text)) => {
                report::counters(limits, &report::parse_metrics(&text, &mesh, &name))
            }
            _ => Vec::new(),
        };
        let report = DataplaneReport { version, inbounds };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            client.report_dataplane(&mesh, &name, &report),
        )
        .await;
    });
}

/// The global `--cp` and `--token` (with their environment variables), read from the command
/// line that clap has already validated: this subcommand's entry point is not handed them.
pub(super) fn global_options(args: impl Iterator<Item = String>) -> Context {
    let mut ctx = Context {
        cp: std::env::var("MESHLIMIT_CP")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| format!("http://{}", meshlimit_control_plane::DEFAULT_API_ADDR)),
        token: std::env::var("MESHLIMIT_TOKEN")
            .ok()
            .filter(|v| !v.is_empty()),
    };
    let args: Vec<String> = args.collect();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let next = args.get(i + 1).cloned();
        if arg == "--" {
            break;
        } else if let Some(v) = arg.strip_prefix("--cp=") {
            ctx.cp = v.to_string();
        } else if let Some(v) = arg.strip_prefix("--token=") {
            ctx.token = Some(v.to_string());
        } else if arg == "--cp" && next.is_some() {
            ctx.cp = next.unwrap_or_default();
            i += 1;
        } else if arg == "--token" && next.is_some() {
            ctx.token = next;
            i += 1;
        }
        i += 1;
    }
    ctx
}

/// Whether `--cp` itself is on the command line (not only its default or `MESHLIMIT_CP`).
pub(super) fn cp_on_command_line(args: impl Iterator<Item = String>) -> bool {
    args.take_while(|arg| arg != "--")
        .any(|arg| arg == "--cp" || arg.starts_with("--cp="))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_options_are_read_from_anywhere_on_the_line() {
        let args = [
            "--cp",
            "http://127.0.0.1:1",
            "dataplane",
            "--name",
            "web-1",
            "--token=t",
        ];
        let ctx = global_options(args.iter().map(|s| s.to_string()));
        assert_eq!(ctx.cp, "http://127.0.0.1:1");
        assert_eq!(ctx.token.as_deref(), Some("t"));
        assert!(cp_on_command_line(args.iter().map(|s| s.to_string())));
        assert!(!cp_on_command_line(
            ["agent", "--resources", "d", "--", "--cp"]
                .iter()
                .map(|s| s.to_string())
        ));
    }
}
