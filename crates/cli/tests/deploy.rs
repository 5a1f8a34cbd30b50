//! The files an operator installs, checked with the tools that read them: the systemd units by
//! `systemd-analyze verify` and `security` (on copies whose `ExecStart` is the binary just
//! built), the Kubernetes manifests against the Kubernetes OpenAPI schemas
//! (`kubernetes-validate`, installed by `scripts/setup kubeschema`), and both against the binary:
//! every command line they hold must parse. The Dockerfile is checked against the tree: what it
//! copies exists and is in the build context, the toolchain and binary are the workspace's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The workspace's `key = "value"` in Cargo.toml (or any TOML file of the tree).
fn toml_value(path: &str, key: &str) -> String {
    read(path)
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{path}: no {key}"))
}

/// `meshlimit ARGS --help` exits 0 only when every flag before it exists and every value
/// parses: a command line from a unit or a manifest, checked without running it.
fn assert_command_line_parses(origin: &str, args: &[String]) {
    let out = run(Command::new(BIN).args(args).arg("--help"));
    assert!(
        out.status.success(),
        "{origin}: `meshlimit {}` does not parse:\n{}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// Environment variables the subcommand reads (`[env: NAME...]` in its help).
fn assert_reads_env(origin: &str, subcommand: &str, name: &str) {
    let help = text(&run(Command::new(BIN).args([subcommand, "--help"])).stdout);
    assert!(
        help.contains(&format!("[env: {name}")),
        "{origin}: `meshlimit {subcommand}` does not read {name}"
    );
}

#[test]
fn the_licence_is_the_apache_2_text_cargo_toml_names() {
    assert_eq!(toml_value("Cargo.toml", "license"), "Apache-2.0");
    // Debian's copy of the standard text (base-files, on every Debian system).
    let standard = std::fs::read_to_string("/usr/share/common-licenses/Apache-2.0").unwrap();
    assert!(
        read("LICENSE") == standard,
        "LICENSE is not the Apache 2.0 text"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

const UNITS: [(&str, &str); 3] = [
    ("meshlimit-control-plane.service", "control-plane"),
    ("meshlimit-dataplane@.service", "dataplane"),
    ("meshlimit-agent.service", "agent"),
];
const INSTALLED_BIN: &str = "/usr/local/bin/meshlimit";

/// `[Section] Key=value` entries of a unit, in order.
fn unit_entries(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            entries.push((section.clone(), key.to_string(), value.to_string()));
        }
    }
    entries
}

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit_entries(unit)
        .into_iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v)
        .collect()
}

/// The units, with `ExecStart` pointing at the binary under test, in a directory of their own.
fn units_for_the_built_binary() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, _) in UNITS {
        let unit = read(&format!("deploy/systemd/{name}"));
        assert!(
            unit.contains(INSTALLED_BIN),
            "{name}: ExecStart is not {INSTALLED_BIN}"
        );
        std::fs::write(dir.path().join(name), unit.replace(INSTALLED_BIN, BIN)).unwrap();
    }
    // A template is verified as a sample instance too.
    std::fs::copy(
        dir.path().join("meshlimit-dataplane@.service"),
        dir.path().join("meshlimit-dataplane@backend-1.service"),
    )
    .unwrap();
    dir
}

#[test]
fn systemd_analyze_verifies_every_unit() {
    let dir = units_for_the_built_binary();
    let mut names: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
    names.push("meshlimit-dataplane@backend-1.service");
    for name in names {
        let out = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join(name)));
        // Unknown keys and bad values are only warnings: the unit must be silent too.
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "systemd-analyze verify {name}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn every_unit_is_sandboxed() {
    let dir = units_for_the_built_binary();
    // systemd's exposure level (0.0 safest, 10.0 unprotected; the threshold in tenths): the
    // agent runs as root with three capabilities and may load BPF, the others have none.
    for (name, threshold) in [
        ("meshlimit-control-plane.service", "20"),
        ("meshlimit-dataplane@backend-1.service", "20"),
        ("meshlimit-agent.service", "30"),
    ] {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={threshold}"))
            .arg(dir.path().join(name)));
        assert!(
            out.status.success(),
            "{name}: exposure above {threshold} tenths:\n{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn every_unit_starts_its_command_as_a_notify_service() {
    for (name, subcommand) in UNITS {
        let unit = read(&format!("deploy/systemd/{name}"));
        assert_eq!(unit_values(&unit, "Type"), ["notify"], "{name}");
        let exec = unit_values(&unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}: one ExecStart");
        let mut words = exec[0]
            .split_whitespace()
            .map(|w| w.replace("%i", "backend-1"));
        assert_eq!(words.next().as_deref(), Some(INSTALLED_BIN), "{name}");
        let args: Vec<String> = words.collect();
        assert_eq!(args.first().map(String::as_str), Some(subcommand), "{name}");
        assert_command_line_parses(name, &args);
        for assignment in unit_values(&unit, "Environment")
            .iter()
            .flat_map(|line| line.split_whitespace())
        {
            let variable = assignment.split('=').next().unwrap();
            if variable.starts_with("MESHLIMIT_") {
                assert_reads_env(name, subcommand, variable);
            }
        }
    }
    let agent = read("deploy/systemd/meshlimit-agent.service");
    assert_eq!(
        unit_values(&agent, "CapabilityBoundingSet"),
        ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"]
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

const MANIFESTS: [&str; 4] = [
    "deploy/kubernetes/00-namespace.yaml",
    "deploy/kubernetes/10-control-plane.yaml",
    "deploy/kubernetes/20-agent.yaml",
    "deploy/kubernetes/examples/dataplane-sidecar.yaml",
];

/// `scripts/setup kubeschema` installs it; scripts/test says where.
fn venv_tool(name: &str) -> PathBuf {
    let path = match std::env::var_os("MESHLIMIT_KUBERNETES_VALIDATE") {
        Some(validate) => Path::new(&validate).with_file_name(name),
        None => repo().join(".venv-kubeschema/bin").join(name),
    };
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup kubeschema",
        path.display()
    );
    path
}

fn validate(files: &[PathBuf], version: &str) -> Output {
    run(Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .args(files))
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|m| repo().join(m)).collect();
    // 1.29: the first release with native sidecars on by default; 1.37: the newest known.
    for version in ["1.29.0", "1.37.0"] {
        let out = validate(&files, version);
        assert!(
            out.status.success(),
            "Kubernetes {version}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // The validator does reject what Kubernetes would.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let manifest = read("deploy/kubernetes/10-control-plane.yaml");
    std::fs::write(&bad, manifest.replace("replicas: 1", "replicas: one")).unwrap();
    assert!(
        !validate(std::slice::from_ref(&bad), "1.37.0")
            .status
            .success()
    );
    std::fs::write(&bad, manifest.replace("strategy:", "strategies:")).unwrap();
    assert!(!validate(&[bad], "1.37.0").status.success());
}

/// Every document of the manifests, as JSON (read by the Python YAML parser the validator
/// brings).
fn documents() -> Vec<(String, Value)> {
    let python = venv_tool("python");
    let mut all = Vec::new();
    for manifest in MANIFESTS {
        let out = run(Command::new(&python)
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(repo().join(manifest)));
        assert!(out.status.success(), "{manifest}: {}", text(&out.stderr));
        let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.extend(docs.into_iter().map(|d| (manifest.to_string(), d)));
    }
    all
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| Some(v.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The containers (init containers too) of every pod template, with the pod spec.
fn containers(docs: &[(String, Value)]) -> Vec<(String, Value, Value)> {
    let mut found = Vec::new();
    for (manifest, doc) in docs {
        let pod = &doc["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for container in pod[list].as_array().into_iter().flatten() {
                let origin = format!(
                    "{manifest}: {} {} container {}",
                    doc["kind"].as_str().unwrap(),
                    doc["metadata"]["name"].as_str().unwrap(),
                    container["name"].as_str().unwrap()
                );
                found.push((origin, pod.clone(), container.clone()));
            }
        }
    }
    found
}

#[test]
fn every_meshlimit_container_runs_a_command_line_the_binary_takes() {
    let docs = documents();
    let version = toml_value("Cargo.toml", "version");
    let mut commands = Vec::new();
    for (origin, pod, container) in containers(&docs) {
        let image = container["image"].as_str().unwrap();
        let Some(tag) = image.strip_prefix("meshlimit:") else {
            continue;
        };
        assert_eq!(tag, version, "{origin}: the image of this version");
        // Values the kubelet fills in ($(VAR)) are given a sample.
        let args: Vec<String> = strings(&container["args"])
            .iter()
            .map(|a| {
                a.replace("$(NODE_NAME)", "node-1")
                    .replace("$(POD_NAME)", "backend-0")
            })
            .collect();
        assert_command_line_parses(&origin, &args);
        let subcommand = args[0].clone();
        let mut env: BTreeMap<String, Value> = BTreeMap::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_string();
            if name.starts_with("MESHLIMIT_") {
                assert_reads_env(&origin, &subcommand, &name);
            }
            env.insert(name, var.clone());
        }
        for arg in strings(&container["args"]) {
            if let Some(var) = arg.strip_prefix("$(").and_then(|a| a.strip_suffix(')')) {
                assert!(env.contains_key(var), "{origin}: {arg} is not defined");
            }
        }
        // The control plane these components follow is the Service of 10-control-plane.yaml.
        if let Some(cp) = env.get("MESHLIMIT_CP") {
            assert_eq!(
                cp["value"], "http://meshlimit-control-plane.meshlimit.svc:5681",
                "{origin}"
            );
        }
        // Probes name ports the container has.
        let ports: Vec<&str> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let probe = &container[probe];
            for port in [&probe["httpGet"]["port"], &probe["tcpSocket"]["port"]] {
                if let Some(port) = port.as_str() {
                    assert!(ports.contains(&port), "{origin}: probe port {port}");
                }
            }
        }
        let security = &container["securityContext"];
        assert_eq!(
            strings(&security["capabilities"]["drop"]),
            ["ALL"],
            "{origin}"
        );
        assert_eq!(security["allowPrivilegeEscalation"], false, "{origin}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{origin}");
        if subcommand == "agent" {
            // Root with exactly what loading and attaching the programs takes.
            assert_eq!(security["runAsUser"], 0, "{origin}");
            assert_ne!(security["privileged"], true, "{origin}");
            assert_eq!(
                strings(&security["capabilities"]["add"]),
                ["BPF", "NET_ADMIN", "PERFMON"],
                "{origin}"
            );
            // --cgroup is the node's hierarchy, mounted read-only.
            let cgroup = &args[args.iter().position(|a| a == "--cgroup").unwrap() + 1];
            let mount = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"] == cgroup.as_str())
                .unwrap_or_else(|| panic!("{origin}: nothing mounted at {cgroup}"));
            assert_eq!(mount["readOnly"], true, "{origin}");
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            assert_eq!(volume["hostPath"]["path"], "/sys/fs/cgroup", "{origin}");
        } else {
            let non_root =
                pod["securityContext"]["runAsNonRoot"] == true || security["runAsNonRoot"] == true;
            assert!(non_root, "{origin}: runs as root");
            assert!(security["capabilities"]["add"].is_null(), "{origin}");
        }
        commands.push(subcommand);
    }
    commands.sort();
    assert_eq!(commands, ["agent", "apply", "control-plane", "dataplane"]);

    // The Service reaches the control plane's API port.
    let cp = find(&docs, "Deployment", "meshlimit-control-plane");
    let container = &cp["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    let api = &args[args.iter().position(|a| a == "--api").unwrap() + 1];
    assert_eq!(api, "0.0.0.0:5681");
    assert_eq!(container["ports"][0]["containerPort"], 5681);
    let service = find(&docs, "Service", "meshlimit-control-plane");
    assert_eq!(service["spec"]["ports"][0]["port"], 5681);
    assert_eq!(
        service["spec"]["selector"],
        cp["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .map(|n| serde_json::json!({ "app.kubernetes.io/name": n }))
            .unwrap()
    );
}

#[test]
fn the_sidecar_example_applies_a_dataplane_for_every_pod() {
    let docs = documents();
    let resources = find(&docs, "ConfigMap", "backend-resources")["data"]["backend.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backend.yaml");
    std::fs::write(&file, &resources).unwrap();
    let out = run(Command::new(BIN).args(["validate", "-f"]).arg(&file));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "warnings: {}", text(&out.stderr));

    // Pods of a StatefulSet are <name>-0, <name>-1, ...: each has its Dataplane, whose inbound
    // is the port the sidecar exposes and the Service targets.
    let set = find(&docs, "StatefulSet", "backend");
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    for i in 0..replicas {
        let out = run(Command::new(BIN)
            .args([
                "inspect",
                "-o",
                "json",
                "--dataplane",
                &format!("backend-{i}"),
                "-f",
            ])
            .arg(&file));
        assert!(out.status.success(), "backend-{i}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("8080"), "{}", text(&out.stdout));
    }
    let sidecar = &set["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["ports"][0]["name"], "http");
    assert_eq!(sidecar["ports"][0]["containerPort"], 8080);
    let service = find(&docs, "Service", "backend");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    // The application listens on loopback only, at the Dataplane's servicePort.
    let app = strings(&set["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert!(
        app.windows(2).any(|w| w == ["--bind", "127.0.0.1"]),
        "{app:?}"
    );
    assert!(app.contains(&"8081".to_string()), "{app:?}");
}

// ---------------------------------------------------------------------------------------------
// Docker

/// The Dockerfile's instructions (continuation lines joined, comments dropped).
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (op, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                instructions.push((op.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside an instruction"
    );
    instructions
}

#[test]
fn the_dockerfile_builds_this_tree() {
    let instructions = dockerfile();
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    for (op, _) in &instructions {
        assert!(KNOWN.contains(&op.as_str()), "unknown instruction {op}");
    }
    assert!(read("Dockerfile").starts_with("# syntax=docker/dockerfile:1\n"));

    // Two stages: the pinned toolchain on a Debian release, then the same release, slim.
    let stages: Vec<Vec<&str>> = instructions
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    let channel = toml_value("rust-toolchain.toml", "channel");
    let build = stages[0][0].strip_prefix(&format!("rust:{channel}-slim-"));
    let runtime = stages[1][0]
        .strip_prefix("debian:")
        .and_then(|t| t.strip_suffix("-slim"));
    assert!(build.is_some() && build == runtime, "{stages:?}");
    assert_eq!(stages[0][1..], ["AS", "build"]);

    let ignore = read(".dockerignore");
    let ignore: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(ignore.first(), Some(&"*"), "the context is an allow list");

    let bin = toml_value("crates/cli/Cargo.toml", "name");
    let bin_name = read("crates/cli/Cargo.toml")
        .split("[[bin]]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|n| n.trim_matches('"').to_string())
        .unwrap();
    let mut stage = 0;
    let mut copied_binary = None;
    let mut user = None;
    let mut entrypoint = None;
    for (op, rest) in &instructions {
        match op.as_str() {
            "FROM" => stage += 1,
            "COPY" if rest.starts_with("--from=") => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                assert_eq!(words[0], "--from=build", "{rest}");
                if words[1].ends_with(&format!("/{bin_name}")) {
                    copied_binary = Some(words[2].to_string());
                }
            }
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                for source in &words[..words.len() - 1] {
                    let source = source.trim_start_matches("./").trim_end_matches('/');
                    assert!(repo().join(source).exists(), "COPY {source}: no such file");
                    assert!(
                        ignore.contains(&format!("!{source}").as_str()),
                        "COPY {source}: not in the build context (.dockerignore)"
                    );
                }
            }
            "RUN" if stage == 1 && rest.contains("cargo build") => {
                assert!(rest.contains(&format!("-p {bin}")), "{rest}");
                assert!(rest.contains(&format!("--bin {bin_name}")), "{rest}");
                assert!(rest.contains("--locked"), "{rest}");
                assert!(
                    rest.contains(&format!("target/release/{bin_name}")),
                    "{rest}"
                );
            }
            "RUN" if stage == 1 && rest.contains("apt-get install") => {
                // What the BPF program's build needs, as scripts/setup installs it.
                for package in ["clang", "libbpf-dev"] {
                    assert!(rest.split_whitespace().any(|w| w == package), "{package}");
                    assert!(read("scripts/setup").contains(package));
                }
            }
            "USER" if stage == 2 => user = Some(rest.clone()),
            "ENTRYPOINT" => entrypoint = Some(rest.clone()),
            _ => {}
        }
    }
    let copied_binary = copied_binary.expect("the final stage copies the binary");
    assert_eq!(entrypoint, Some(format!("[\"{copied_binary}\"]")));
    let user = user.expect("the image names its user");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "runs as {user}"
    );
}
