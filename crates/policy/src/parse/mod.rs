//! From YAML text to validated resources: documents, forms (universal or Kubernetes), kinds,
//! and every field. Nothing of a file is accepted when any document in it is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::{
    DEFAULT_MESH, Dataplane, Form, Kind, Mesh, MeshGlobalRateLimit, MeshRateLimit, RateLimit,
    Resource,
};
use crate::problem::Problem;
use crate::tree::{self, Report, field};

mod dataplane;
mod mesh_global_rate_limit;
mod mesh_rate_limit;
mod rate_limit;
mod shared;
mod source_match;
mod target_ref;

/// Files larger than this are refused before parsing: real policy files are a few kilobytes,
/// and the bound keeps memory and time predictable for anything fed to the parser (the YAML
/// parser holds every event of a document in memory, about 100 bytes per node).
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing: the YAML
/// parser's time grows with the square of that depth. Anything past 128 levels is refused by
/// the parser anyway; the margin keeps brackets inside quoted strings from tripping it.
pub const MAX_FLOW_DEPTH: usize = 1000;

/// The label that puts a Kubernetes-form resource in a mesh.
pub const MESH_LABEL: &str = "kuma.io/mesh";

/// The label that gives a policy its role (system, producer, consumer, workload-owner).
const POLICY_ROLE_LABEL: &str = "kuma.io/policy-role";

const MAX_NAME_LEN: usize = 253;

/// Resources read from one or more files, with the warnings about them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub resources: Vec<Resource>,
    /// Accepted, but worth telling the user (`from` is deprecated, ...).
    pub warnings: Vec<Problem>,
    /// Where each resource came from, in the order of `resources`.
    pub origins: Vec<Origin>,
}

/// The file and 1-based document a resource was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: String,
    pub document: usize,
}

impl Parsed {
    fn extend(&mut self, other: Parsed) {
        self.resources.extend(other.resources);
        self.warnings.extend(other.warnings);
        self.origins.extend(other.origins);
    }
}

/// Parses every document of a (multi-document) YAML text. `file` only labels problems.
/// Empty documents are skipped; document numbers count every document in the text.
pub fn parse_documents(file: &str, text: &str) -> Result<Parsed, Vec<Problem>> {
    // A UTF-8 byte order mark (editors on Windows write one) is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![
            Problem::new(
                "",
                format!(
                    "file is {} bytes, more than the {MAX_FILE_BYTES} bytes a resource file may have",
                    text.len()
                ),
            )
            .at(file, 0),
        ]);
    }
    if let Some(line) = too_deep(text) {
        return Err(vec![
            Problem::new(
                "",
                format!(
                    "flow collections ([ ], {{ }}) are nested more than {MAX_FLOW_DEPTH} levels deep at line {line}"
                ),
            )
            .at(file, 0),
        ]);
    }
    let mut parsed = Parsed::default();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error: stop at the first one.
                problems.push(Problem::new("", yaml_error(&e)).at(file, number));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        // A document that is a list of resources (`get -o json` prints one) holds each in
        // turn; problems name the item as `[i]` before the field path.
        let items: Vec<(Option<usize>, &Value)> = match &value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Some(i), v))
                .collect(),
            one => vec![(None, one)],
        };
        for (item, value) in items {
            let mut report = Report::default();
            let (kind, name, resource) = document(&mut report, value);
            let label = |(path, message): (String, String)| {
                let path = match (item, path.is_empty()) {
                    (None, _) => path,
                    (Some(i), true) => format!("[{i}]"),
                    (Some(i), false) => format!("[{i}].{path}"),
                };
                let p = Problem::new(path, message).at(file, number);
                match kind {
                    Some(k) => p.of(k.as_str(), name.clone().unwrap_or_default()),
                    None => p,
                }
            };
            parsed
                .warnings
                .extend(report.warnings.into_iter().map(label));
            problems.extend(report.errors.into_iter().map(label));
            if let Some(r) = resource {
                parsed.resources.push(r);
                parsed.origins.push(Origin {
                    file: file.to_string(),
                    document: number,
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    }
}

/// Whether `load_paths` reads `path` when it lies in a given directory: a `*.yaml` / `*.yml` file.
pub fn is_resource_file(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
}

/// Reads files, and directories (every `*.yaml` / `*.yml` directly inside, in name order).
/// All problems of all files are returned together.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Parsed, Vec<Problem>> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| is_resource_file(p))
                        .collect();
                    found.sort();
                    if found.is_empty() {
                        problems.push(
                            Problem::new("", "directory has no *.yaml or *.yml files")
                                .at(&path.display().to_string(), 0),
                        );
                    }
                    files.extend(found);
                }
                Err(e) => problems.push(
                    Problem::new("", format!("cannot read directory: {e}"))
                        .at(&path.display().to_string(), 0),
                ),
            }
        } else {
            files.push(path.to_path_buf());
        }
    }
    let mut parsed = Parsed::default();
    for file in files {
        let label = file.display().to_string();
        match read_text(&file) {
            Ok(text) => match parse_documents(&label, &text) {
                Ok(p) => parsed.extend(p),
                Err(p) => problems.extend(p),
            },
            Err(message) => problems.push(Problem::new("", message).at(&label, 0)),
        }
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} bytes a resource file may have",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8 text: {e}"))
}

/// Parses one document: which kind it is, its name (for labelling problems), and the
/// resource when everything in it is valid.
fn document(
    report: &mut Report,
    value: &Value,
) -> (Option<Kind>, Option<String>, Option<Resource>) {
    let Value::Mapping(map) = value else {
        report.error(
            "",
            format!(
                "expected a mapping (a resource), found {}",
                tree::describe(value)
            ),
        );
        return (None, None, None);
    };
    if map.contains_key("type") {
        universal(report, value)
    } else if map.contains_key("apiVersion") || map.contains_key("kind") {
        kubernetes(report, value)
    } else {
        report.error(
            "",
            "not a resource: expected 'type' (Kuma universal form) or 'apiVersion' and 'kind' (Kubernetes form)",
        );
        (None, None, None)
    }
}

fn universal(
    report: &mut Report,
    value: &Value,
) -> (Option<Kind>, Option<String>, Option<Resource>) {
    let type_value = value.get("type").unwrap_or(&Value::Null);
    let Some(type_name) = tree::string(report, type_value, "type") else {
        return (None, None, None);
    };
    let kind = match type_name.as_str() {
        "MeshRateLimit" => Kind::MeshRateLimit,
        "MeshGlobalRateLimit" => Kind::MeshGlobalRateLimit,
        "Dataplane" => Kind::Dataplane,
        "Mesh" => Kind::Mesh,
        "RateLimit" => {
            report.error(
                "type",
                "value 'RateLimit' is not supported: a kernel RateLimit is written with apiVersion: kmesh.net/v1alpha1 and kind: RateLimit",
            );
            return (None, None, None);
        }
        other => {
            let hint = tree::nearest(
                other,
                &["MeshRateLimit", "MeshGlobalRateLimit", "Dataplane", "Mesh"],
            )
            .map(|n| format!(" (did you mean '{n}'?)"))
            .unwrap_or_else(|| {
                " (expected MeshRateLimit, MeshGlobalRateLimit, Dataplane or Mesh)".into()
            });
            report.error("type", format!("value '{other}' is not supported{hint}"));
            return (None, None, None);
        }
    };
    let allowed: &[&str] = match kind {
        Kind::MeshRateLimit | Kind::MeshGlobalRateLimit => {
            &["type", "mesh", "name", "labels", "spec"]
        }
        Kind::Dataplane => &["type", "mesh", "name", "labels", "networking"],
        _ => &["type", "name", "labels"],
    };
    let Some(f) = tree::fields(report, value, "", allowed) else {
        return (Some(kind), None, None);
    };
    let name = required_name(report, &f, "name");
    let labels = optional_map(report, &f, "labels");
    let mesh = if kind == Kind::Mesh {
        None
    } else {
        match f.get("mesh") {
            Some((v, p)) => resource_name(report, v, &p),
            None => Some(DEFAULT_MESH.to_string()),
        }
    };
    let resource = match kind {
        Kind::MeshRateLimit => {
            let system = system_role(labels.as_ref());
            let spec = body(report, &f, "spec", |r, v, p| {
                mesh_rate_limit::spec(r, v, p, system)
            });
            (|| {
                Some(Resource::MeshRateLimit(MeshRateLimit {
                    name: name.clone()?,
                    mesh: mesh?,
                    namespace: None,
                    labels: labels?,
                    form: Form::Universal,
                    spec: spec?,
                }))
            })()
        }
        Kind::MeshGlobalRateLimit => {
            let spec = body(report, &f, "spec", mesh_global_rate_limit::spec);
            (|| {
                Some(Resource::MeshGlobalRateLimit(MeshGlobalRateLimit {
                    name: name.clone()?,
                    mesh: mesh?,
                    namespace: None,
                    labels: labels?,
                    form: Form::Universal,
                    spec: spec?,
                }))
            })()
        }
        Kind::Dataplane => {
            let networking = body(report, &f, "networking", dataplane::networking);
            (|| {
                Some(Resource::Dataplane(Dataplane {
                    name: name.clone()?,
                    mesh: mesh?,
                    labels: labels?,
                    networking: networking?,
                }))
            })()
        }
        _ => (|| {
            Some(Resource::Mesh(Mesh {
                name: name.clone()?,
                labels: labels?,
            }))
        })(),
    };
    (Some(kind), name, resource)
}

fn kubernetes(
    report: &mut Report,
    value: &Value,
) -> (Option<Kind>, Option<String>, Option<Resource>) {
    let api = value.get("apiVersion").unwrap_or(&Value::Null);
    let kind_value = value.get("kind").unwrap_or(&Value::Null);
    let api = match api {
        Value::Null => {
            report.error("apiVersion", "must be defined");
            None
        }
        v => tree::string(report, v, "apiVersion"),
    };
    let kind_name = match kind_value {
        Value::Null => {
            report.error("kind", "must be defined");
            None
        }
        v => tree::string(report, v, "kind"),
    };
    let (Some(api), Some(kind_name)) = (api, kind_name) else {
        return (None, None, None);
    };
    let kind = match (api.as_str(), kind_name.as_str()) {
        ("kuma.io/v1alpha1", "MeshRateLimit") => Kind::MeshRateLimit,
        ("kuma.io/v1alpha1", "MeshGlobalRateLimit") => Kind::MeshGlobalRateLimit,
        ("kmesh.net/v1alpha1", "RateLimit") => Kind::RateLimit,
        (_, "MeshRateLimit") => {
            report.error("apiVersion", format!("value '{api}' is not supported for kind MeshRateLimit (expected kuma.io/v1alpha1)"));
            return (Some(Kind::MeshRateLimit), None, None);
        }
        (_, "MeshGlobalRateLimit") => {
            report.error("apiVersion", format!("value '{api}' is not supported for kind MeshGlobalRateLimit (expected kuma.io/v1alpha1)"));
            return (Some(Kind::MeshGlobalRateLimit), None, None);
        }
        (_, "RateLimit") => {
            report.error("apiVersion", format!("value '{api}' is not supported for kind RateLimit (expected kmesh.net/v1alpha1)"));
            return (Some(Kind::RateLimit), None, None);
        }
        (_, other) => {
            let hint = tree::nearest(other, &["MeshRateLimit", "MeshGlobalRateLimit", "RateLimit"])
                .map(|n| format!(" (did you mean '{n}'?)"))
                .unwrap_or_else(|| {
                    " (the Kubernetes form is read for MeshRateLimit, MeshGlobalRateLimit and RateLimit; write Dataplane and Mesh in the universal form with 'type')".into()
                });
            report.error("kind", format!("value '{other}' is not supported{hint}"));
            return (None, None, None);
        }
    };
    let Some(f) = tree::fields(
        report,
        value,
        "",
        &["apiVersion", "kind", "metadata", "spec"],
    ) else {
        return (Some(kind), None, None);
    };
    let (name, namespace, labels) = match f.get("metadata") {
        None => {
            report.error("metadata.name", "must be defined");
            (None, None, None)
        }
        Some((v, p)) => match tree::fields(report, v, &p, &["name", "namespace", "labels"]) {
            Some(m) => {
                let name = required_name(report, &m, "name");
                let namespace = match m.get("namespace") {
                    Some((v, p)) => resource_name(report, v, &p).map(Some),
                    None => Some(None),
                };
                let labels = optional_map(report, &m, "labels");
                (name, namespace, labels)
            }
            None => (None, None, None),
        },
    };
    let mesh = labels
        .as_ref()
        .and_then(|l: &BTreeMap<String, String>| l.get(MESH_LABEL).cloned())
        .unwrap_or_else(|| DEFAULT_MESH.to_string());
    let resource = match kind {
        Kind::MeshRateLimit => {
            let system = system_role(labels.as_ref());
            let spec = body(report, &f, "spec", |r, v, p| {
                mesh_rate_limit::spec(r, v, p, system)
            });
            (|| {
                Some(Resource::MeshRateLimit(MeshRateLimit {
                    name: name.clone()?,
                    mesh,
                    namespace: namespace?,
                    labels: labels?,
                    form: Form::Kubernetes,
                    spec: spec?,
                }))
            })()
        }
        Kind::MeshGlobalRateLimit => {
            let spec = body(report, &f, "spec", mesh_global_rate_limit::spec);
            (|| {
                Some(Resource::MeshGlobalRateLimit(MeshGlobalRateLimit {
                    name: name.clone()?,
                    mesh,
                    namespace: namespace?,
                    labels: labels?,
                    form: Form::Kubernetes,
                    spec: spec?,
                }))
            })()
        }
        _ => {
            let spec = body(report, &f, "spec", rate_limit::spec);
            (|| {
                let (services, listed) = spec?;
                Some(Resource::RateLimit(RateLimit {
                    name: name.clone()?,
                    mesh,
                    namespace: namespace?,
                    labels: labels?,
                    services,
                    listed,
                }))
            })()
        }
    };
    (Some(kind), name, resource)
}

/// A required top-level body (`spec`, `networking`), read by `read`.
fn body<T>(
    report: &mut Report,
    f: &tree::Fields<'_>,
    name: &str,
    read: impl FnOnce(&mut Report, &Value, &str) -> Option<T>,
) -> Option<T> {
    match f.get(name) {
        None => {
            report.error(&field(f.path(), name), "must be defined");
            None
        }
        Some((v, p)) => read(report, v, &p),
    }
}

/// Kuma takes a policy without a `kuma.io/policy-role` label as of the system role when it
/// validates it.
fn system_role(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(POLICY_ROLE_LABEL))
        .is_none_or(|role| role.is_empty() || role == "system")
}

fn required_name(report: &mut Report, f: &tree::Fields<'_>, name: &str) -> Option<String> {
    match f.get(name) {
        None => {
            report.error(&field(f.path(), name), "must be defined");
            None
        }
        Some((v, p)) => resource_name(report, v, &p),
    }
}

fn optional_map(
    report: &mut Report,
    f: &tree::Fields<'_>,
    name: &str,
) -> Option<BTreeMap<String, String>> {
    match f.get(name) {
        None => Some(BTreeMap::new()),
        Some((v, p)) => tree::string_map(report, v, &p),
    }
}

/// Names of resources, meshes and namespaces: a DNS-1123 subdomain, as Kuma and Kubernetes
/// require (`.`, `..` and names starting or ending with `-` would not survive a round trip
/// through either).
fn resource_name(report: &mut Report, value: &Value, path: &str) -> Option<String> {
    let name = tree::nonempty_string(report, value, path)?;
    if name.len() > MAX_NAME_LEN {
        report.error(path, format!("must be at most {MAX_NAME_LEN} characters"));
        return None;
    }
    if !is_dns1123_subdomain(&name) {
        report.error(
            path,
            "invalid name: must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
        );
        return None;
    }
    Some(name)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`, the Kubernetes rule,
/// at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && is_dns1123_subdomain_chars(s)
}

/// The Kubernetes subdomain pattern alone, whatever the length.
pub(crate) fn is_dns1123_subdomain_chars(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            match (b.first(), b.last()) {
                (Some(&first), Some(&last)) => {
                    alnum(first) && alnum(last) && b.iter().all(|&c| alnum(c) || c == b'-')
                }
                _ => false,
            }
        })
}

/// The line where flow brackets first nest deeper than [`MAX_FLOW_DEPTH`], if they do.
/// Brackets are counted everywhere (quotes included): cheap, and only wrong for files with
/// a thousand unbalanced brackets inside strings.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    None
}

/// The parser's message, made plainer where it is cryptic (integers beyond 128 bits).
fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    if text.contains("invalid type: integer")
        && (text.contains("as u128") || text.contains("as i128"))
    {
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        return format!("invalid YAML: integer too large{at}");
    }
    format!("invalid YAML: {text}")
}
