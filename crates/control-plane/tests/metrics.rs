//! `/metrics` and `/ready` of the API as the standalone control plane serves them, over a real
//! socket: both text formats pass a strict parse (names, `# HELP`/`# TYPE` before the samples of
//! their family, each sample's name allowed by its family's type, escaped labels, numbers, one
//! `# EOF` closing OpenMetrics), and the series move with what happens: requests by route and
//! status class, stream subscribers, the store version.

use std::collections::{BTreeMap, BTreeSet};

use meshlimit_control_plane::wire::{DataplaneEvent, SourceFile};
use meshlimit_control_plane::{ApiConfig, ControlPlane, api};
use meshlimit_control_plane_client::Client;
use meshlimit_testkit::fixtures::{Target, dataplane_yaml, http_limit_yaml};
use meshlimit_xds::XdsServer;

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses an exposition strictly; panics with the line on the first deviation.
fn parse(text: &str, openmetrics: bool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut families: BTreeSet<String> = BTreeSet::new();
    // The family being read: (name, type, help seen).
    let mut family: Option<(String, String, bool)> = None;
    let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    let mut eof = false;
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        assert!(!eof, "{line:?} after # EOF");
        if line == "# EOF" {
            assert!(openmetrics, "# EOF in Prometheus text");
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').expect("HELP has a text");
            assert!(valid_name(name), "{line:?}");
            assert!(families.insert(name.to_string()), "family {name} twice");
            family = Some((name.to_string(), String::new(), true));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            let current = family.as_mut().expect("HELP before TYPE");
            assert_eq!(current.0, name, "{line:?}: TYPE of another family");
            let kinds: &[&str] = if openmetrics {
                &[
                    "counter",
                    "gauge",
                    "info",
                    "histogram",
                    "summary",
                    "unknown",
                ]
            } else {
                &["counter", "gauge", "histogram", "summary", "untyped"]
            };
            assert!(kinds.contains(&kind), "{line:?}: type {kind}");
            current.1 = kind.to_string();
            continue;
        }
        assert!(!line.starts_with('#'), "{line:?}: an unknown comment");
        let (name, kind) = family
            .as_ref()
            .map(|(n, k, _)| (n.clone(), k.clone()))
            .expect("a sample before any family");
        let sample = sample_line(line);
        let allowed: Vec<String> = match (openmetrics, kind.as_str()) {
            (true, "counter") => vec![format!("{name}_total"), format!("{name}_created")],
            (true, "info") => vec![format!("{name}_info")],
            (_, "histogram") => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
            _ => vec![name.clone()],
        };
        assert!(
            allowed.contains(&sample.name),
            "{line:?}: not a sample of {kind} {name}"
        );
        if kind == "counter" {
            assert!(sample.value >= 0.0, "{line:?}: a negative counter");
        }
        let key = (
            sample.name.clone(),
            sample.labels.clone().into_iter().collect(),
        );
        assert!(seen.insert(key), "{line:?}: the same series twice");
        samples.push(sample);
    }
    assert_eq!(
        eof, openmetrics,
        "OpenMetrics ends with # EOF, Prometheus text does not"
    );
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{a="x",b="y"} value`.
fn sample_line(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}: value {value:?}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("labels close with }");
            (name, labels_of(body, line))
        }
    };
    assert!(valid_name(name), "{line:?}: name {name:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

fn labels_of(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"").expect("label=\"value\"");
        assert!(valid_name(key) && !key.starts_with("__"), "{line:?}: {key}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("an escape") {
                    (_, 'n') => value.push('\n'),
                    (_, c @ ('\\' | '"')) => value.push(c),
                    (_, c) => panic!("{line:?}: escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            labels.insert(key.to_string(), value).is_none(),
            "{line:?}: {key} twice"
        );
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    labels
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
}

async fn scrape(client: &Client, openmetrics: bool) -> (String, Vec<Sample>) {
    let accept = if openmetrics {
        "application/openmetrics-text;version=1.0.0"
    } else {
        "text/plain"
    };
    let (status, body) = client
        .call(
            "GET".parse().expect("a method"),
            "/metrics",
            None,
            accept,
            Default::default(),
        )
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    let samples = parse(&text, openmetrics);
    (text, samples)
}

#[tokio::test]
async fn metrics_parse_strictly_in_both_formats_and_move_with_the_api() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::open(&dir.path().join("store.redb")).expect("the store opens");
    let (_server, xds) = XdsServer::new();
    let config = ApiConfig {
        serve_ops: true,
        xds: Some(xds),
        // A dropped stream is noticed at its next line.
        heartbeat: std::time::Duration::from_millis(50),
        ..ApiConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(meshlimit_control_plane::serve(
        listener,
        api::router(cp, config),
    ));
    let client = Client::new(&url, None).expect("a valid URL");

    let (text, before) = scrape(&client, false).await;
    for family in [
        "meshlimit_store_version",
        "meshlimit_store_writable",
        "meshlimit_store_write_errors_total",
        "meshlimit_api_connections_refused_total",
        "meshlimit_xds_connected_nodes",
        "meshlimit_xds_tracked_nodes",
        "meshlimit_xds_nacks_total",
        "meshlimit_build_info",
    ] {
        assert!(
            before.iter().any(|s| s.name == family),
            "{family} in {text}"
        );
    }
    assert_eq!(value(&before, "meshlimit_store_version", &[]), Some(0.0));
    assert_eq!(value(&before, "meshlimit_store_writable", &[]), Some(1.0));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&before, "meshlimit_build_info", &[("version", version)]),
        Some(1.0)
    );

    client
        .apply(
            vec![SourceFile {
                name: "all.yaml".into(),
                content: format!(
                    "{}---\n{}",
                    http_limit_yaml("web", Target::Sidecars, 5, "1s"),
                    dataplane_yaml("web-1", "web", None, 19000, 19001)
                ),
            }],
            false,
        )
        .await
        .expect("the apply is stored");
    let missing = client
        .get_json::<serde_json::Value>("/meshes/default/meshratelimits/nothing")
        .await;
    assert!(missing.is_err());
    let mut stream = client
        .watch::<meshlimit_policy::effective::DataplaneLimits>(
            "/meshes/default/dataplanes/web-1/limits?watch=true",
        )
        .await
        .expect("the stream opens");
    let first: Option<DataplaneEvent> = stream.next().await.expect("a first line");
    assert!(first.is_some());

    // A made-up method adds no series of its own.
    let odd = client
        .call(
            "BREW".parse().expect("an extension method"),
            "/apply",
            None,
            "application/json",
            Default::default(),
        )
        .await;
    assert!(odd.is_err(), "{odd:?}");

    let (_, after) = scrape(&client, true).await;
    assert!(
        after
            .iter()
            .all(|s| s.labels.get("method").is_none_or(|m| m != "BREW")),
        "a series per made-up method"
    );
    assert_eq!(
        value(
            &after,
            "meshlimit_api_requests_total",
            &[("method", "other"), ("route", "/apply"), ("class", "4xx")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&after, "meshlimit_store_version", &[]), Some(1.0));
    let requests = |method: &str, route: &str, class: &str| {
        value(
            &after,
            "meshlimit_api_requests_total",
            &[("method", method), ("route", route), ("class", class)],
        )
    };
    assert_eq!(requests("POST", "/apply", "2xx"), Some(1.0));
    assert_eq!(
        requests("GET", "/meshes/{mesh}/{collection}/{name}", "4xx"),
        Some(1.0)
    );
    assert_eq!(requests("GET", "/metrics", "2xx"), Some(1.0));
    assert_eq!(
        value(
            &after,
            "meshlimit_api_stream_subscribers",
            &[("stream", "dataplane")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "meshlimit_build_info", &[("version", version)]),
        Some(1.0)
    );

    drop(stream);
    // The stream's end is seen by the server when its next line fails to send: poll.
    let mut open = 1.0;
    for _ in 0..200 {
        let (_, now) = scrape(&client, false).await;
        open = value(
            &now,
            "meshlimit_api_stream_subscribers",
            &[("stream", "dataplane")],
        )
        .expect("the gauge");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0.0, "the subscriber is gone");

    let ready = client.get_text("/ready").await.expect("ready");
    assert_eq!(ready, "ready\n");
}
