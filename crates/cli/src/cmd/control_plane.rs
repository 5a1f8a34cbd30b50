//! `meshlimit control-plane [--store PATH] [--api ADDR] [--token-file F] [--xds ADDR]
//! [--rls ADDR --redis URL]`: the store, the REST API, the limit streams data planes follow,
//! with `--xds` the ADS server Envoy sidecars follow and with `--rls` the rate-limit service
//! their `MeshGlobalRateLimit`s ask (see [`xds`]).
//!
//! The API listens on loopback (`127.0.0.1:5681`) unless told otherwise; on any other address it
//! refuses to start without `--token-file`, and then every request must carry
//! `Authorization: Bearer <token>`. Once listening it prints `API listening on http://ADDR`
//! (the real port when given port 0) and writes the URL to `--address-file` if asked; likewise
//! `xDS listening on ADDR` and `--xds-address-file`.
//!
//! The API's listener also serves `/ready` (503 while the store refuses writes) and `/metrics`,
//! and bounds its clients: `--api-max-connections` at once, `--api-request-headers-timeout` to
//! send a request head.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use meshlimit_control_plane::listen::{self, ServeOptions};
use meshlimit_control_plane::{
    ApiConfig, ControlPlane, DEFAULT_API_ADDR, default_store_path, needs_token,
};

mod xds;

#[derive(clap::Args)]
pub struct Args {
    /// The store file [default: $XDG_DATA_HOME/meshlimit/store.redb, else
    /// ~/.local/share/meshlimit/store.redb].
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Address of the REST API.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_API_ADDR)]
    pub api: SocketAddr,
    /// File holding the API token; required when --api is not a loopback address.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Write the API's URL to this file once listening (useful with port 0).
    #[arg(long, value_name = "FILE")]
    pub address_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Also serve xDS (ADS over gRPC) at this address, e.g. 127.0.0.1:5678: every Envoy whose
    /// node id is `<mesh>.<dataplane>` (see `meshlimit envoy bootstrap`) gets that Dataplane's
    /// listeners and clusters, updated on every change. What each Envoy accepted or rejected
    /// is shown at `GET /xds` on the API and checked by `meshlimit diagnose rate-limit`.
    /// xDS has no authentication: only loopback addresses unless --xds-allow-remote.
    #[arg(long, value_name = "ADDR")]
    pub xds: Option<SocketAddr>,
    /// Allow --xds on a non-loopback address. Anyone who can reach the port can read every
    /// Dataplane's limits and addresses: restrict it with a firewall or a private network.
    #[arg(long, requires = "xds")]
    pub xds_allow_remote: bool,
    /// Write the xDS server's HOST:PORT to this file once listening (useful with port 0).
    #[arg(long, value_name = "FILE", requires = "xds")]
    pub xds_address_file: Option<PathBuf>,
    /// Also serve Envoy's rate-limit service (gRPC) at this address, e.g. 127.0.0.1:8081: the
    /// `MeshGlobalRateLimit`s whose `rateLimitService.url` points here share exact buckets,
    /// kept in the Redis of --redis. No authentication: only loopback addresses unless
    /// --rls-allow-remote.
    #[arg(long, value_name = "ADDR", requires = "redis")]
    pub rls: Option<SocketAddr>,
    /// The Redis holding the rate-limit service's buckets, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, value_name = "URL", requires = "rls")]
    pub redis: Option<String>,
    /// Allow --rls on a non-loopback address. Anyone who can reach the port can spend any
    /// bucket's tokens: restrict it with a firewall or a private network.
    #[arg(long, requires = "rls")]
    pub rls_allow_remote: bool,
    /// API connections held at once (watch streams hold one per data plane and kernel agent);
    /// beyond it new connections are closed at once, counted in
    /// meshlimit_api_connections_refused_total.
    #[arg(long, value_name = "N", default_value_t = listen::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_count)]
    pub api_max_connections: usize,
    /// How long an API connection may take to send a request head (or stay silent between
    /// requests), e.g. `10s`; past it the connection is closed. `0s` waits forever.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub api_request_headers_timeout: Duration,
}

fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    meshlimit_policy::duration::parse_go(text)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.xds {
        xds::check_address(addr, args.xds_allow_remote)?;
    }
    if let Some(addr) = &args.rls {
        xds::check_rls_address(addr, args.rls_allow_remote)?;
    }
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None if needs_token(&args.api) => anyhow::bail!(
            "refusing to serve the API on {} without --token-file: only loopback addresses may \
             be used without a token",
            args.api
        ),
        None => None,
    };
    let store = args.store.clone().unwrap_or_else(default_store_path);
    if let Some(parent) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the store directory {}", parent.display()))?;
    }
    let cp = ControlPlane::open(&store).map_err(|e| match e {
        meshlimit_control_plane::CpError::Invalid(problems) => anyhow::anyhow!(
            "the store {} holds resources that no longer validate:\n{}",
            store.display(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => anyhow::Error::new(other),
    })?;
    let config = ApiConfig {
        token,
        max_body_bytes: args.max_body_bytes,
        serve_ops: true,
        ..ApiConfig::default()
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(cp, config, args, store))
}

async fn serve(
    cp: ControlPlane,
    mut config: ApiConfig,
    args: Args,
    store: PathBuf,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("binding the API to {}", args.api))?;
    let bound = listener.local_addr()?;
    let url = format!("http://{bound}");
    let xds = match args.xds {
        Some(addr) => Some(xds::Xds::bind(addr).await?),
        None => None,
    };
    let rls = match (args.rls, &args.redis) {
        (Some(addr), Some(redis)) => Some(xds::Rls::bind(addr, redis).await?),
        _ => None,
    };
    if let Some(path) = &args.address_file {
        write_address(path, &url)?;
    }
    if let (Some(path), Some(xds)) = (&args.xds_address_file, &xds) {
        write_address(path, &xds.address.to_string())?;
    }
    let snapshot = cp.snapshot();
    // Where it listens: on stdout, one line each, for scripts; the log (stderr) says it too.
    super::announce(&format!("meshlimit control plane: API listening on {url}"));
    if let Some(xds) = &xds {
        super::announce(&format!("xDS listening on {}", xds.address));
    }
    if let Some(rls) = &rls {
        super::announce(&format!("rate-limit service listening on {}", rls.address));
    }
    tracing::info!(
        "store {} at version {} ({} resources){}",
        store.display(),
        snapshot.version,
        snapshot.entries.len(),
        if config.token.is_some() {
            "; API requires a token"
        } else {
            ""
        }
    );
    crate::notify::ready(&format!(
        "API listening on {url}; store version {}",
        snapshot.version
    ));
    // `GET /xds` shows what each Envoy accepted and rejected, guarded like every route.
    config.xds = xds.as_ref().map(|xds| xds.handle.clone());
    let options = ServeOptions {
        max_connections: args.api_max_connections,
        request_headers_timeout: Some(args.api_request_headers_timeout)
            .filter(|timeout| !timeout.is_zero()),
        metrics: Some(config.metrics.clone()),
    };
    let router = meshlimit_control_plane::router(cp.clone(), config);
    let serve_xds = async move {
        match xds {
            Some(xds) => xds.serve(&cp).await,
            None => std::future::pending().await,
        }
    };
    let serve_rls = async move {
        match rls {
            Some(rls) => rls.serve().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = listen::serve_with(listener, router, options) => {
            served.context("serving the API")?;
        }
        served = serve_xds => served?,
        served = serve_rls => served?,
        _ = tokio::signal::ctrl_c() => {}
        () = terminated() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (every acknowledged write is already durable, so stopping is immediate).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Writes `text` then renames, so a reader never sees half an address.
fn write_address(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{text}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Logs (xDS connections, ACKs, NACKs) on standard error; `RUST_LOG` overrides the level.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}
