//! The Grafana dashboard in `deploy/grafana` against what the binary really exports: `meshlimit
//! run` serves an HTTP inbound under a MeshRateLimit and, as root, limits a TCP destination in
//! the kernel (a RateLimit, on a cgroup made for the test); after some traffic its `/metrics` is
//! scraped, and every query of the dashboard (panels and template variables) must name metrics
//! of that scrape and only labels their samples carry (in selectors, `by`/`without` lists and
//! legends); every panel has a title, a unique id, a place on the grid no other panel covers,
//! and the `${datasource}` variable. The same checker is shown to reject wrong names and labels,
//! on the real scrape and on a small one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/net.rs"]
mod net;
#[path = "support/sandbox.rs"]
mod sandbox;

use meshlimit_testkit::fixtures::{backend_limit_yaml, dataplane_yaml};
use net::{backend, free_port};
use sandbox::Sandbox;

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/meshlimit.json")
}

// ---- The scrape ----

/// What a Prometheus text scrape exports: the label names each sample name carries, and each
/// `# TYPE` family with its type.
#[derive(Default)]
struct Scrape {
    samples: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = scrape.samples.entry(line[..end].to_owned()).or_default();
            if line[end..].starts_with('{') {
                labels.extend(label_names(&line[end + 1..]));
            }
        }
        scrape
    }

    /// The label names of the series `name` selects; `None` when nothing exported has that
    /// name (a sample name, a counter or gauge family, or a histogram's `_bucket`, `_sum` or
    /// `_count`).
    fn labels(&self, name: &str) -> Option<BTreeSet<String>> {
        if let Some(labels) = self.samples.get(name) {
            return Some(labels.clone());
        }
        // A family with no sample yet; a histogram's own name is no series.
        if matches!(
            self.types.get(name).map(String::as_str),
            Some("counter" | "gauge" | "untyped" | "unknown")
        ) {
            return Some(BTreeSet::new());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = name.strip_suffix(suffix)?;
            matches!(
                self.types.get(family).map(String::as_str),
                Some("histogram" | "summary" | "gaugehistogram")
            )
            .then(BTreeSet::new)
        })
    }
}

/// The label names of `k="v",...}` (values may hold escaped quotes, commas and braces).
fn label_names(mut rest: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, value)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').trim().to_owned());
        let mut escaped = false;
        let close = value.char_indices().find(|&(_, c)| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end
        });
        let Some((close, _)) = close else { break };
        rest = &value[close + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

// ---- PromQL, as far as the checks need it ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Open(char),
    Close(char),
    /// A string, a number, a `[range]`, an operator or a comma: nothing that names a metric
    /// or a label.
    Other,
}

fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == '$' {
            // A Grafana variable stands for a value, never for a name here.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                i += 1;
            }
            out.push(Tok::Other);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else {
            out.push(match c {
                '(' | '{' => Tok::Open(c),
                ')' | '}' => Tok::Close(c),
                _ => Tok::Other,
            });
            i += 1;
        }
    }
    out
}

/// Words that are not metric names though no `(` follows them: aggregations (before `by`),
/// binary operators, modifiers and numbers. An identifier followed by `(` is a function.
const KEYWORDS: &[&str] = &[
    "and",
    "atan2",
    "avg",
    "bool",
    "bottomk",
    "count",
    "count_values",
    "group",
    "inf",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "nan",
    "offset",
    "or",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
    "unless",
];

/// Label lists: `by`/`without` apply to their aggregation's argument, the others to both
/// sides of a binary operation (checked against every metric of the query).
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The index of the parenthesis matching the one at `at` (searching forward from `(`,
/// backward from `)`).
fn matching(toks: &[Tok], at: usize) -> Option<usize> {
    let forward = toks[at] == Tok::Open('(');
    let mut depth = 0i32;
    let mut i = at;
    loop {
        match &toks[i] {
            Tok::Open('(') => depth += if forward { 1 } else { -1 },
            Tok::Close(')') => depth += if forward { -1 } else { 1 },
            _ => {}
        }
        if depth == 0 {
            return Some(i);
        }
        if forward {
            i += 1;
            if i == toks.len() {
                return None;
            }
        } else {
            i = i.checked_sub(1)?;
        }
    }
}

/// What is wrong with `expr` against `scrape` (empty: nothing): metrics not exported, labels
/// (in `{...}` selectors and `by (...)` lists) their samples do not carry.
fn check_expr(expr: &str, scrape: &Scrape) -> Vec<String> {
    let toks = tokens(expr);
    let mut problems = Vec::new();
    let mut metrics: Vec<(usize, String)> = Vec::new(); // (token index, name)
    let mut groupings = Vec::new(); // (word, labels, token range they apply to)
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Open('{') => {
                let metric = match metrics.last() {
                    Some((at, metric)) if at + 1 == i => metric.clone(),
                    _ => {
                        problems.push(format!("`{expr}`: a selector without a metric name"));
                        i += 1;
                        continue;
                    }
                };
                // A metric not exported is reported below, once.
                let labels = scrape.labels(&metric);
                while i < toks.len() && toks[i] != Tok::Close('}') {
                    if let (Tok::Ident(label), Some(labels)) = (&toks[i], &labels)
                        && !labels.contains(label)
                    {
                        problems.push(format!(
                            "`{expr}`: `{metric}` has no label `{label}` (it has {labels:?})"
                        ));
                    }
                    i += 1;
                }
            }
            Tok::Ident(word) if GROUPING.contains(&word.as_str()) => {
                let open = i + 1;
                let Some(close) = toks
                    .get(open)
                    .filter(|t| **t == Tok::Open('('))
                    .and_then(|_| matching(&toks, open))
                else {
                    if !word.starts_with("group_") {
                        problems.push(format!("`{expr}`: `{word}` without a label list"));
                    }
                    i += 1;
                    continue;
                };
                let labels: Vec<String> = toks[open..close]
                    .iter()
                    .filter_map(|t| match t {
                        Tok::Ident(l) => Some(l.clone()),
                        _ => None,
                    })
                    .collect();
                let scope = if !matches!(word.as_str(), "by" | "without") {
                    Some((0, toks.len()))
                } else if i > 0 && toks[i - 1] == Tok::Close(')') {
                    matching(&toks, i - 1).map(|start| (start, i))
                } else if toks.get(close + 1) == Some(&Tok::Open('(')) {
                    matching(&toks, close + 1).map(|end| (close + 1, end))
                } else {
                    None
                };
                match scope {
                    Some(scope) => groupings.push((word.clone(), labels, scope)),
                    None => problems.push(format!("`{expr}`: `{word}` applies to nothing")),
                }
                i = close;
            }
            Tok::Ident(word)
                if !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                    && toks.get(i + 1) != Some(&Tok::Open('(')) =>
            {
                metrics.push((i, word.clone()));
            }
            _ => {}
        }
        i += 1;
    }
    if metrics.is_empty() {
        problems.push(format!("`{expr}`: names no metric"));
    }
    for (_, metric) in &metrics {
        if scrape.labels(metric).is_none() {
            problems.push(format!("`{expr}`: `{metric}` is not exported"));
        }
    }
    for (word, labels, (start, end)) in &groupings {
        let inside: Vec<&String> = metrics
            .iter()
            .filter(|(at, _)| (*start..*end).contains(at))
            .map(|(_, m)| m)
            .collect();
        if inside.is_empty() {
            problems.push(format!("`{expr}`: `{word}` over no metric"));
        }
        for metric in inside {
            let Some(has) = scrape.labels(metric) else {
                continue;
            };
            for label in labels.iter().filter(|l| !has.contains(*l)) {
                problems.push(format!(
                    "`{expr}`: `{word} ({label})` but `{metric}` has no label `{label}` (it has {has:?})"
                ));
            }
        }
    }
    problems
}

/// `label_values(<query>, <label>)`: the query checked as a panel's, and the label on it.
fn check_label_values(query: &str, scrape: &Scrape) -> Vec<String> {
    let Some(args) = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    else {
        return vec![format!("`{query}`: not label_values(<query>, <label>)")];
    };
    let Some((selector, label)) = args.rsplit_once(',') else {
        return vec![format!("`{query}`: label_values without a metric")];
    };
    check_expr(&format!("sum by ({}) ({selector})", label.trim()), scrape)
}

/// Grafana variables used in `text`: `$name` and `${name}` (with `:format`).
fn variables_used(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for (i, _) in text.match_indices('$') {
        let rest = text[i + 1..].trim_start_matches('{');
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.push(name);
    }
    used
}

// ---- The dashboard ----

/// Every panel, those inside collapsed rows too.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// What is wrong with the dashboard `text` against `scrape` (empty: nothing).
fn check_dashboard(text: &str, scrape: &Scrape) -> Vec<String> {
    let dashboard: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return vec![format!("not JSON: {error}")],
    };
    let mut problems = Vec::new();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut defined: BTreeSet<String> = ["__rate_interval", "__interval", "__range"]
        .map(String::from)
        .into();
    for variable in &variables {
        let name = variable["name"].as_str().unwrap_or_default();
        defined.insert(name.to_owned());
        match variable["type"].as_str() {
            Some("datasource") if variable["query"] == "prometheus" => {}
            Some("query") => {
                let query = variable["query"]["query"]
                    .as_str()
                    .or(variable["query"].as_str())
                    .unwrap_or_default();
                problems.extend(
                    check_label_values(query, scrape)
                        .into_iter()
                        .map(|p| format!("variable {name}: {p}")),
                );
                if variable["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("variable {name}: not on ${{datasource}}"));
                }
            }
            other => problems.push(format!("variable {name}: unexpected type {other:?}")),
        }
    }
    if !defined.contains("datasource") {
        problems.push("no `datasource` variable".into());
    }
    let mut ids = BTreeSet::new();
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let Some(id) = panel["id"].as_u64() else {
            problems.push(format!("panel {title:?}: no id"));
            continue;
        };
        if !ids.insert(id) {
            problems.push(format!("panel {title:?}: id {id} used twice"));
        }
        if title.is_empty() {
            problems.push(format!("panel {id}: no title"));
        }
        let pos = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| pos[k].as_u64());
        match (h, w, x, y) {
            (Some(h), Some(w), Some(x), Some(_)) if h > 0 && w > 0 && x + w <= 24 => {}
            _ => problems.push(format!("panel {title:?}: bad gridPos {pos}")),
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("panel {title:?}: not on ${{datasource}}"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no query"));
        }
        for target in &targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            problems.extend(check_expr(expr, scrape));
            for name in variables_used(expr) {
                if !defined.contains(&name) {
                    problems.push(format!("panel {title:?}: `${name}` is not a variable"));
                }
            }
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            problems.extend(check_legend(legend, expr, scrape));
        }
    }
    problems.extend(overlaps(&dashboard));
    problems
}

/// The `{{label}}`s of a legend must be labels of a metric the query names, or the labels
/// Prometheus adds to every series it scrapes.
fn check_legend(legend: &str, expr: &str, scrape: &Scrape) -> Vec<String> {
    let mut known: BTreeSet<String> = ["instance", "job"].map(String::from).into();
    for tok in tokens(expr) {
        if let Tok::Ident(name) = tok {
            known.extend(scrape.labels(&name).unwrap_or_default());
        }
    }
    legend
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(label, _)| label.trim())
        .filter(|label| !known.contains(*label))
        .map(|label| format!("`{expr}`: the legend names `{label}`, a label it does not have"))
        .collect()
}

/// Panels of the grid (rows' collapsed panels aside) that cover one another.
fn overlaps(dashboard: &serde_json::Value) -> Vec<String> {
    let rects: Vec<(&str, [u64; 4])> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|panel| {
            let pos = &panel["gridPos"];
            let rect = ["x", "y", "w", "h"].map(|k| pos[k].as_u64().unwrap_or_default());
            (panel["title"].as_str().unwrap_or_default(), rect)
        })
        .collect();
    let mut problems = Vec::new();
    for (i, &(a, [ax, ay, aw, ah])) in rects.iter().enumerate() {
        for &(b, [bx, by, bw, bh]) in &rects[i + 1..] {
            if ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah {
                problems.push(format!("panels {a:?} and {b:?} overlap"));
            }
        }
    }
    problems
}

// ---- meshlimit run ----

/// Polls `check` until it holds, failing after a generous deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gave up after 20 s waiting for: {what}");
}

/// One HTTP/1.1 GET on a fresh connection: the status and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, path, "")
}

/// [`get`] with more header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: backend\r\n{headers}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A million requests a second for all of `backend`: it never limits, and its decisions
/// carry its name.
const GLOBAL_POLICY: &str = r#"type: MeshGlobalRateLimit
mesh: default
name: backend-total
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestRate:
            num: 1000000
            interval: 1s
"#;

/// 2 connections an hour to service `web`, in the kernel.
const RATE_LIMIT: &str = "apiVersion: kmesh.net/v1alpha1
kind: RateLimit
metadata:
  name: web-connections
spec:
  service: web
  rules:
    - maxTokens: 2
      tokensPerFill: 1
      fillInterval: 3600000000000
";

struct Run {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Run {
    /// `meshlimit run` on `dir/resources`, its store and address file in `dir`.
    fn start(dir: PathBuf, cgroup: &Path) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshlimit"))
            .args(["run", "--resources"])
            .arg(dir.join("resources"))
            .arg("--store")
            .arg(dir.join("store.redb"))
            .arg("--address-file")
            .arg(dir.join("address"))
            .args(["--admin", "127.0.0.1:0", "--worker-threads", "1"])
            .args(["--watch-interval", "100ms", "--report-interval", "100ms"])
            .arg("--cgroup")
            .arg(cgroup)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Run { child, log, dir }
    }

    fn admin(&self) -> SocketAddr {
        let mut url = String::new();
        eventually("the address file to be written", || {
            url = std::fs::read_to_string(self.dir.join("address")).unwrap_or_default();
            !url.is_empty()
        });
        url.trim().strip_prefix("http://").unwrap().parse().unwrap()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM (which detaches the kernel limiter), then waits for a successful exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut exit = None;
        eventually("meshlimit to exit", || {
            exit = self.child.try_wait().unwrap();
            exit.is_some()
        });
        assert!(exit.unwrap().success(), "{}", self.log_text());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the sample line of `name` holding `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The scrape of a `meshlimit run` that has limited requests of an inbound and connections to
/// a kernel-limited destination: in the Prometheus text format, then in OpenMetrics.
fn scrape_after_traffic() -> (String, String) {
    let dir = std::env::temp_dir().join(format!("meshlimit-dashboard-{}", std::process::id()));
    let resources = dir.join("resources");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&resources).unwrap();
    let (http_port, web_port) = (free_port(), free_port());
    let service_port = backend("hello");
    let write = |name: &str, text: &str| std::fs::write(resources.join(name), text).unwrap();
    write(
        "backend.yaml",
        &dataplane_yaml(
            "backend",
            "backend",
            Some("backend"),
            http_port,
            service_port,
        ),
    );
    write("policy.yaml", &backend_limit_yaml(None));
    write("global.yaml", GLOBAL_POLICY);
    write(
        "web.yaml",
        &dataplane_yaml("web-1", "web", Some("web"), web_port, free_port()),
    );
    write("ratelimit.yaml", RATE_LIMIT);

    let sandbox = Sandbox::new("mldash");
    let mut run = Run::start(dir, &sandbox.cgroup);
    let admin = run.admin();
    eventually("/ready", || {
        get(admin, "/ready").is_ok_and(|(s, _)| s == 200)
    });
    let inbound: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let statuses: Vec<u16> = (0..7).map(|_| get(inbound, "/").unwrap().0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    // The kernel limiter lets 2 through (refused by nobody listening), then EPERM.
    assert_eq!(sandbox.connect(web_port, 3), "CCE", "{}", run.log_text());

    let mut metrics = String::new();
    let labels = format!(r#"inbound="{http_port}",decision="limited""#);
    eventually("the samples of the traffic", || {
        metrics = get(admin, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        sample(&metrics, "meshlimit_http_requests_total", &labels) == Some(2)
            && sample(&metrics, "meshlimit_kernel_connections_total", "limited") == Some(1)
    });
    let (_, open_metrics) = get_with(
        admin,
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    )
    .expect("an OpenMetrics scrape");
    run.stop();
    (metrics, open_metrics)
}

/// `scripts/setup promparse` installs it; scripts/test says where.
fn prometheus_python() -> PathBuf {
    let path = std::env::var_os("MESHLIMIT_PROMETHEUS_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-prometheus/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup promparse",
        path.display()
    );
    path
}

/// Parses `text` with the Prometheus Python client's parser for `format` (`prometheus` or
/// `openmetrics`, the strict one): the families it read, or its error.
fn parse_with_prometheus_client(format: &str, text: &str) -> Result<usize, String> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as prometheus
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else prometheus
families = list(parse(sys.stdin.read()))
assert all(family.samples or family.type for family in families)
print(len(families))
"#;
    let mut child = Command::new(prometheus_python())
        .args(["-c", SCRIPT, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("python ends");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_dashboard_query_names_metrics_and_labels_the_binary_exports() {
    let (text_format, open_metrics) = scrape_after_traffic();
    // Both formats as Prometheus's own client library reads them, every family included.
    let families = text_format
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .count();
    assert!(families > 30, "a whole scrape: {text_format}");
    assert_eq!(
        parse_with_prometheus_client("prometheus", &text_format),
        Ok(families)
    );
    assert_eq!(
        parse_with_prometheus_client("openmetrics", &open_metrics),
        Ok(families)
    );
    // The parsers are not lenient: a broken line is refused.
    let broken = open_metrics.replacen("meshlimit_build_info{", "meshlimit build_info{", 1);
    assert!(parse_with_prometheus_client("openmetrics", &broken).is_err());
    let scrape = Scrape::parse(&text_format);
    for family in ["meshlimit_http_requests_total", "meshlimit_kernel_tokens"] {
        assert!(scrape.labels(family).is_some(), "{family} in the scrape");
    }
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let problems = check_dashboard(&text, &scrape);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The same checks on a dashboard naming one metric wrong, and one label: refused.
    let wrong = text.replace(
        "meshlimit_kernel_bucket_capacity",
        "meshlimit_kernel_capacity",
    );
    let problems = check_dashboard(&wrong, &scrape);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`meshlimit_kernel_capacity` is not exported")),
        "{problems:?}"
    );
    let wrong = text.replace("{{address}}:{{port}} {{decision}}", "{{destination}}");
    let problems = check_dashboard(&wrong, &scrape);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("the legend names `destination`")),
        "{problems:?}"
    );
    let wrong = text.replace(r#""x": 12,"#, r#""x": 6,"#);
    let problems = check_dashboard(&wrong, &scrape);
    assert!(
        problems.iter().any(|p| p.contains("overlap")),
        "{problems:?}"
    );
    let wrong = text.replace("(service, address, port, decision)", "(service, pod)");
    let problems = check_dashboard(&wrong, &scrape);
    assert!(
        problems.iter().any(|p| p.contains("no label `pod`")),
        "{problems:?}"
    );
}

#[test]
fn the_checker_refuses_what_a_scrape_does_not_export() {
    let scrape = Scrape::parse(
        r#"# TYPE meshlimit_requests_total counter
meshlimit_requests_total{mesh="default",inbound="80",decision="allowed"} 3
meshlimit_requests_total{mesh="a\"b,c}",inbound="81",decision="limited"} 1
# TYPE meshlimit_latency_seconds histogram
meshlimit_latency_seconds_bucket{inbound="80",le="+Inf"} 3
meshlimit_latency_seconds_sum{inbound="80"} 0.1
meshlimit_latency_seconds_count{inbound="80"} 3
# TYPE meshlimit_open gauge
meshlimit_open 2
"#,
    );
    let ok = [
        r#"sum by (mesh, decision) (rate(meshlimit_requests_total{inbound=~"$inbound", decision!="x"}[$__rate_interval]))"#,
        "sum(rate(meshlimit_requests_total[5m])) by (inbound) / on() group_left meshlimit_open",
        "histogram_quantile(0.99, sum by (le, inbound) (rate(meshlimit_latency_seconds_bucket[5m])))",
        "meshlimit_latency_seconds_sum / meshlimit_latency_seconds_count",
        "meshlimit_open",
        r#"label_replace(predict_linear(meshlimit_open[1h], 3600), "to", "$1", "from", "(.*)")"#,
        "sum without (decision) (meshlimit_requests_total) > bool 0",
    ];
    for expr in ok {
        assert_eq!(check_expr(expr, &scrape), Vec::<String>::new(), "{expr}");
        let problems = check_expr(expr, &Scrape::parse(""));
        assert!(
            !problems.is_empty(),
            "an empty scrape exports nothing: {expr}"
        );
    }
    let wrong = [
        (
            "rate(meshlimit_request_total[5m])",
            "`meshlimit_request_total` is not exported",
        ),
        (
            "sum(rate(meshlimt_requests_total[5m]))",
            "`meshlimt_requests_total` is not exported",
        ),
        (
            "meshlimit_latency_seconds",
            "`meshlimit_latency_seconds` is not exported",
        ),
        (
            "meshlimit_open_bucket",
            "`meshlimit_open_bucket` is not exported",
        ),
        (
            "sum by (pod) (meshlimit_requests_total)",
            "has no label `pod`",
        ),
        (
            "sum(meshlimit_requests_total) by (pod)",
            "has no label `pod`",
        ),
        (
            r#"meshlimit_open{inbound="80"}"#,
            "`meshlimit_open` has no label `inbound`",
        ),
        (
            r#"{__name__="meshlimit_open"}"#,
            "a selector without a metric name",
        ),
        ("sum(rate(up[5m]))", "`up` is not exported"),
        ("sum without (pod) (meshlimit_open)", "has no label `pod`"),
        (
            "max_over_time(meshlimit_opn[1h])",
            "`meshlimit_opn` is not exported",
        ),
        ("1 + 1", "names no metric"),
        // `ignoring` applies to both sides: meshlimit_open has no `decision`.
        (
            "sum by (decision) (meshlimit_requests_total) / ignoring(decision) meshlimit_open",
            "has no label `decision`",
        ),
    ];
    for (expr, expected) in wrong {
        let problems = check_expr(expr, &scrape);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expr}: {problems:?}"
        );
    }
    assert_eq!(
        check_label_values(
            r#"label_values(meshlimit_requests_total{mesh=~"$mesh"}, inbound)"#,
            &scrape
        ),
        Vec::<String>::new()
    );
    assert!(!check_label_values("label_values(meshlimit_open, inbound)", &scrape).is_empty());
    assert!(!check_label_values("label_values(inbound)", &scrape).is_empty());
}
