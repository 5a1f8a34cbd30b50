//! `meshlimit simulate`: a dry run of a token bucket over a trace of arrivals, so a limit can
//! be seen before it goes live. The bucket is the real engine (`meshlimit_bucket::Bucket`),
//! driven by the trace's offsets instead of a clock.
//!
//! The bucket comes either from flags ([`bucket_settings`]) or, with `--policy`, from the
//! effective HTTP limit (or, with `--connections`, TCP limit) of one inbound after matching
//! and merging the policy files ([`policy::limit`]).

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use meshlimit_bucket::{Bucket, Refill, Settings};
use meshlimit_policy::duration::parse_go;

mod policy;
mod trace;

use policy::{PolicyError, PolicyFlags};
use trace::{Arrival, TraceError};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  meshlimit simulate --rate 5/10s --arrivals trace.txt\n  \
    meshlimit simulate --policy examples/policies --dataplane backend-1 --inbound 18080 --arrivals examples/trace.txt\n  \
    meshlimit simulate --policy examples/policies --dataplane redis-1 --inbound 16379 --connections --arrivals examples/trace.txt\n\
    The trace holds one arrival per line: an offset in milliseconds from the start \
    (decimals allowed, non-decreasing). Blank lines and lines starting with # are skipped."
)]
pub struct Args {
    #[command(flatten)]
    pub bucket: BucketFlags,
    #[command(flatten)]
    pub policy: PolicyFlags,
    /// File of arrivals, one offset in milliseconds per line; `-` reads standard input.
    #[arg(long, value_name = "FILE|-")]
    pub arrivals: String,
}

/// A bucket given directly on the command line: `--rate`, or the three token-bucket numbers.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "bucket_flags", multiple = true, required = false)]
pub struct BucketFlags {
    /// Most tokens the bucket holds (it starts full).
    #[arg(long, value_name = "N", requires_all = ["tokens_per_fill", "fill_interval"])]
    pub max_tokens: Option<u64>,
    /// Tokens added per fill interval.
    #[arg(long, value_name = "N", requires_all = ["max_tokens", "fill_interval"])]
    pub tokens_per_fill: Option<u64>,
    /// Fill interval, a Go-style duration (500ms, 10s, 1m30s).
    #[arg(
        long,
        value_name = "DUR",
        value_parser = crate::cmd::parse_duration,
        requires_all = ["max_tokens", "tokens_per_fill"]
    )]
    pub fill_interval: Option<Duration>,
    /// MeshRateLimit shorthand NUM/DUR (e.g. 5/10s): max = per fill = NUM, interval = DUR.
    #[arg(
        long,
        value_name = "NUM/DUR",
        value_parser = parse_rate,
        conflicts_with_all = ["max_tokens", "tokens_per_fill", "fill_interval"]
    )]
    pub rate: Option<(u64, Duration)>,
    /// How tokens come back: smooth (continuous, like Envoy) or interval (whole intervals).
    /// With --policy, the refill is smooth, as Envoy enforces a MeshRateLimit.
    #[arg(long, value_name = "MODE", default_value = "smooth", value_parser = parse_refill)]
    pub refill: Refill,
}

/// A problem with what the user gave us: reported on stderr with exit status 2.
#[derive(Debug)]
enum UsageError {
    NoBucket,
    Settings(meshlimit_bucket::SettingsError),
    Policy(PolicyError),
    BothFromStdin,
    Trace(TraceError),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::NoBucket => f.write_str(
                "no bucket given: pass --rate NUM/DUR, or --max-tokens N --tokens-per-fill N \
                 --fill-interval DUR, or --policy PATH... --dataplane NAME --inbound PORT",
            ),
            UsageError::Settings(err) => write!(f, "invalid bucket: {err}"),
            UsageError::Policy(err) => err.fmt(f),
            UsageError::BothFromStdin => f.write_str(
                "--policy - and --arrivals - both read standard input: put one of them in a file",
            ),
            UsageError::Trace(err) => err.fmt(f),
        }
    }
}

impl From<meshlimit_bucket::SettingsError> for UsageError {
    fn from(err: meshlimit_bucket::SettingsError) -> Self {
        UsageError::Settings(err)
    }
}

impl From<TraceError> for UsageError {
    fn from(err: TraceError) -> Self {
        UsageError::Trace(err)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (settings, header) = if args.policy.policy.is_empty() {
        match bucket_settings(&args.bucket) {
            Ok(settings) => (vec![settings], None),
            Err(err) => return Ok(usage_error(&err)),
        }
    } else {
        let stdin = |p: &std::path::PathBuf| p.as_os_str() == "-";
        if args.arrivals == "-" && args.policy.policy.iter().any(stdin) {
            return Ok(usage_error(&UsageError::BothFromStdin));
        }
        match policy::limit(&args.policy)? {
            Ok(limit) => (limit.buckets, Some(limit.description)),
            Err(err) => return Ok(usage_error(&UsageError::Policy(err))),
        }
    };
    let arrivals = match trace::read(&args.arrivals) {
        Ok(arrivals) => arrivals,
        Err(err) => return Ok(usage_error(&UsageError::from(err))),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = header
        .map_or(Ok(()), |line| writeln!(out, "{line}"))
        .and_then(|()| simulate(&settings, &arrivals, &mut out))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A reader that stopped early (`| head`) is not a failure.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(anyhow::Error::new(err).context("writing the simulation")),
    }
}

/// The settings of the bucket to simulate, from the flags.
fn bucket_settings(flags: &BucketFlags) -> Result<Settings, UsageError> {
    let (max, per_fill, interval) = match (flags.rate, flags.max_tokens) {
        (Some((num, interval)), _) => (num, num, interval),
        (None, Some(max)) => match (flags.tokens_per_fill, flags.fill_interval) {
            (Some(per_fill), Some(interval)) => (max, per_fill, interval),
            _ => return Err(UsageError::NoBucket),
        },
        (None, None) => return Err(UsageError::NoBucket),
    };
    Ok(Settings::new(max, per_fill, interval, flags.refill)?)
}

/// Feeds every arrival to buckets that are full at offset 0, checked in order as the proxy does
/// (an arrival one of them rejects takes no token from the later ones); prints one line per
/// arrival and the total.
fn simulate(settings: &[Settings], arrivals: &[Arrival], out: &mut impl Write) -> io::Result<()> {
    let buckets: Vec<Bucket> = settings.iter().map(|s| Bucket::new(*s, 0)).collect();
    let mut admitted = 0u64;
    for arrival in arrivals {
        let allowed = buckets
            .iter()
            .all(|bucket| bucket.check(arrival.offset_ns).admitted());
        admitted += u64::from(allowed);
        let verdict = if allowed { "allow" } else { "deny" };
        writeln!(out, "{} {verdict}", arrival.text)?;
    }
    writeln!(out, "admitted {admitted} of {}", arrivals.len())
}

fn usage_error(err: &UsageError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let (num, dur) = text
        .split_once('/')
        .ok_or_else(|| format!("expected NUM/DUR such as 5/10s, got {text:?}"))?;
    let num = num
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a whole number of tokens before '/', got {num:?}"))?;
    let interval = parse_go(dur.trim())?;
    Ok((num, interval))
}

fn parse_refill(text: &str) -> Result<Refill, String> {
    text.parse::<Refill>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(rate: Option<&str>) -> BucketFlags {
        BucketFlags {
            max_tokens: None,
            tokens_per_fill: None,
            fill_interval: None,
            rate: rate.map(|r| parse_rate(r).unwrap()),
            refill: Refill::Smooth,
        }
    }

    #[test]
    fn rate_is_the_mesh_rate_limit_shorthand() {
        let s = bucket_settings(&flags(Some("5/10s"))).unwrap();
        assert_eq!(
            (s.max_tokens(), s.tokens_per_fill(), s.fill_interval()),
            (5, 5, Duration::from_secs(10))
        );
        assert!(matches!(
            bucket_settings(&flags(None)),
            Err(UsageError::NoBucket)
        ));
        assert!(parse_rate("5").is_err());
        assert!(parse_rate("x/1s").is_err());
        assert!(parse_rate("5/10").is_err());
        assert!(matches!(
            bucket_settings(&flags(Some("0/1s"))),
            Err(UsageError::Settings(_))
        ));
    }

    #[test]
    fn simulation_prints_each_arrival_and_the_total() {
        let s = Settings::new(1, 1, Duration::from_secs(1), Refill::Smooth).unwrap();
        let arrivals = trace::parse(
            "t",
            ["0", "500", "1000.5"].iter().map(|l| Ok(l.to_string())),
        )
        .unwrap();
        let mut out = Vec::new();
        simulate(&[s], &arrivals, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 allow\n500 deny\n1000.5 allow\nadmitted 2 of 3\n"
        );
    }
}
