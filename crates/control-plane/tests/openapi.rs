//! `openapi.yaml` against the API as served: the same routes and methods both ways, every path
//! parameter declared, every `$ref` resolving, the error responses each operation can give
//! documented; an inbound's effective limits, as the policy crate serializes them, match
//! their schema; and the live router, probed over a real socket, answers exactly the
//! documented methods on each path (and 401 to all of them without the token it was given).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meshlimit_control_plane::{ApiConfig, ControlPlane, api};
use meshlimit_control_plane_client::{Client, ClientError};
use meshlimit_testkit::fixtures::{Target, http_limit_yaml};
use serde_yaml_ng::Value;

const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("openapi.yaml is readable");
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML")
}

/// `(METHOD, path)` of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_mapping().expect("a paths mapping");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("paths are strings");
        for (key, _) in item.as_mapping().expect("a path item mapping") {
            let key = key.as_str().expect("keys are strings");
            if METHODS.contains(&key.to_uppercase().as_str()) {
                out.insert((key.to_uppercase(), path.to_string()));
            }
        }
    }
    out
}

fn served() -> BTreeSet<(String, String)> {
    api::routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect()
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference
                .strip_prefix("#/")
                .unwrap_or_else(|| panic!("{reference}: only local references are used"));
            let target = pointer.split('/').fold(doc, |node, key| &node[key]);
            assert!(!target.is_null(), "{reference} resolves to nothing");
            target
        }
        None => value,
    }
}

fn every_ref(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                if key.as_str() == Some("$ref") {
                    out.push(child.as_str().expect("a $ref is a string").to_string());
                }
                every_ref(child, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| every_ref(v, out)),
        _ => {}
    }
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let doc = document();
    let documented = documented(&doc);
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}\nin openapi.yaml but not served: {unserved:?}"
    );
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
}

#[test]
fn the_document_is_complete_and_its_references_resolve() {
    let doc = document();
    let mut refs = Vec::new();
    every_ref(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in &refs {
        let value: Value =
            serde_yaml_ng::from_str(&format!("$ref: '{reference}'")).expect("a ref mapping");
        resolve(&doc, &value);
    }

    let mut operation_ids = BTreeSet::new();
    for (method, path) in documented(&doc) {
        let item = &doc["paths"][path.as_str()];
        let operation = &item[method.to_lowercase().as_str()];
        let what = format!("{method} {path}");
        let id = operation["operationId"].as_str().expect("an operationId");
        assert!(operation_ids.insert(id.to_string()), "{what}: {id} twice");

        // Every `{param}` of the path is declared as a path parameter.
        let mut declared = BTreeMap::new();
        for list in [&item["parameters"], &operation["parameters"]] {
            for parameter in list.as_sequence().into_iter().flatten() {
                let parameter = resolve(&doc, parameter);
                let name = parameter["name"].as_str().expect("a parameter name");
                let place = parameter["in"].as_str().expect("a parameter place");
                declared.insert(name.to_string(), place.to_string());
            }
        }
        for segment in path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                assert_eq!(
                    declared.get(name).map(String::as_str),
                    Some("path"),
                    "{what}: path parameter {name} is not declared"
                );
            }
        }

        // The errors each operation can give.
        let responses = operation["responses"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        let codes: BTreeSet<&str> = responses.keys().filter_map(Value::as_str).collect();
        assert!(codes.contains("401"), "{what}: 401 (token) is undocumented");
        assert!(
            codes.iter().any(|c| c.starts_with('2')),
            "{what}: no success response"
        );
        let body = &operation["requestBody"];
        if !body.is_null() {
            for code in ["400", "413", "415"] {
                assert!(codes.contains(code), "{what}: has a body but no {code}");
            }
            let media = resolve(&doc, body)["content"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{what}: a body without content"));
            assert!(
                media.contains_key("application/json"),
                "{what}: JSON body undocumented"
            );
        }
        if method == "PUT" {
            let media = &resolve(&doc, body)["content"];
            assert!(
                !media["application/yaml"].is_null(),
                "{what}: YAML body undocumented"
            );
            assert!(codes.contains("409"), "{what}: 409 undocumented");
            assert!(codes.contains("201"), "{what}: 201 undocumented");
        }
        if (path.contains("{name}") && method == "GET") || method == "DELETE" {
            assert!(codes.contains("404"), "{what}: 404 undocumented");
        }
        let lists = operation["parameters"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| resolve(&doc, p)["name"].as_str().unwrap_or_default())
            .collect::<Vec<_>>();
        if path == "/meshes" || path.ends_with("{collection}") {
            assert!(
                lists.contains(&"size") && lists.contains(&"offset"),
                "{what}: pagination undocumented"
            );
        }
    }
    let error = &doc["components"]["schemas"]["Error"]["properties"];
    assert!(!error["invalid_parameters"].is_null());
    assert!(
        !doc["components"]["schemas"]["InvalidParameter"]["properties"]["field"].is_null(),
        "the field path of a 400"
    );
}

/// A concrete URL path for a route (`{mesh}` → `default`, ...).
fn concrete(path: &str) -> String {
    path.replace("{mesh}", "default")
        .replace("{collection}", "dataplanes")
        .replace("{name}", "web-1")
}

async fn serve(token: Option<&str>) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::open(&dir.path().join("store.redb")).expect("the store opens");
    let config = ApiConfig {
        token: token.map(str::to_string),
        serve_ops: true,
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
    (Client::new(&url, None).expect("a valid URL"), dir)
}

/// The status of one request; `None` when the router fell through to "no route".
async fn probe(client: &Client, method: &str, path: &str) -> Option<u16> {
    let media = (method == "PUT" || method == "POST").then_some("application/json");
    let answer = client
        .call(
            method.parse().expect("a method"),
            &concrete(path),
            media,
            "application/json",
            "{}".into(),
        )
        .await;
    match answer {
        Ok((status, _)) => Some(status.as_u16()),
        Err(ClientError::Api { body, .. }) if body.detail.starts_with("no route for") => None,
        Err(ClientError::Api { status, .. }) => Some(status),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[tokio::test]
async fn the_router_answers_exactly_the_documented_methods() {
    let (client, _dir) = serve(None).await;
    let documented = documented(&document());
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let status = probe(&client, method, path).await;
            if documented.contains(&(method.to_string(), path.clone())) {
                assert!(
                    status.is_some_and(|s| s != 405),
                    "{method} {path}: documented but answered {status:?}"
                );
            } else {
                assert_eq!(
                    status,
                    Some(405),
                    "{method} {path}: served but undocumented"
                );
            }
        }
    }

    let (locked, _dir) = serve(Some("s3cret")).await;
    for (method, path) in &documented {
        assert_eq!(
            probe(&locked, method, path).await,
            Some(401),
            "{method} {path} without the token"
        );
    }
}

#[tokio::test]
async fn the_documented_400_is_what_an_invalid_apply_gets() {
    let doc = document();
    let example = &doc["components"]["responses"]["BadRequest"]["content"]["application/problem+json"]
        ["example"];
    let (client, _dir) = serve(None).await;
    let body = http_limit_yaml("web", Target::Service("web"), 0, "1s");
    let refused = client
        .call(
            "POST".parse().expect("a method"),
            "/apply?file=policy.yaml",
            Some("application/yaml"),
            "application/json",
            body.into(),
        )
        .await
        .expect_err("refused");
    let ClientError::Api { status, body } = refused else {
        panic!("an API error: {refused}")
    };
    let answered: Value = serde_yaml_ng::to_value(&body).expect("serializable");
    assert_eq!(status, 400);
    assert_eq!(
        &answered, example,
        "openapi.yaml's example differs from the answer"
    );
}

/// Where `value` deviates from `schema` (`$ref`, `allOf`, `nullable`, `type`, `enum`,
/// `required` and `properties`: what the document uses), each as `path: problem`.
fn deviations(doc: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema["allOf"].as_sequence() {
        if value.is_null() && schema["nullable"].as_bool() == Some(true) {
            return;
        }
        for part in all {
            deviations(doc, part, value, path, out);
        }
    }
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            out.push(format!("{path}: null, and the schema is not nullable"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_sequence()
        && !allowed.contains(value)
    {
        out.push(format!("{path}: {value:?} is not one of {allowed:?}"));
    }
    let kind_ok = match schema["type"].as_str() {
        Some("object") => value.is_mapping(),
        Some("array") => value.is_sequence(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_bool(),
        _ => true,
    };
    if !kind_ok {
        out.push(format!(
            "{path}: {value:?} is not of type {:?}",
            schema["type"]
        ));
        return;
    }
    if let Some(items) = value.as_sequence() {
        for (i, item) in items.iter().enumerate() {
            deviations(doc, &schema["items"], item, &format!("{path}[{i}]"), out);
        }
    }
    if let Some(fields) = value.as_mapping()
        && let Some(properties) = schema["properties"].as_mapping()
    {
        for required in schema["required"].as_sequence().into_iter().flatten() {
            if !fields.contains_key(required) {
                out.push(format!("{path}: required {required:?} is missing"));
            }
        }
        for (key, field) in fields {
            let name = key.as_str().unwrap_or_default();
            match properties.get(key) {
                Some(property) => deviations(doc, property, field, &format!("{path}.{name}"), out),
                None => out.push(format!("{path}: {name} is not documented")),
            }
        }
    }
}

#[test]
fn an_inbound_with_spiffe_id_routes_and_a_global_limit_is_as_documented() {
    let doc = document();
    // Through the policy crate's serde both ways: its names and values, not this test's.
    let inbound: meshlimit_policy::InboundLimits = serde_yaml_ng::from_str(
        r#"
port: 8080
servicePort: 9000
service: web
protocol: http
http:
  requestRate: { num: 5, interval: 1s }
  policy: local
  status: 429
  headers: { set: [{ name: x-limited, value: "yes" }], add: [] }
tcp: null
policies: [local]
global:
  service: web
  key: mgrl/default/web-total/web
  requestRate: { num: 10, interval: 1s }
  share: { num: 5, interval: 1s }
  instances: 2
  index: 0
  mode: Shadow
  status: 503
  headers: { set: [], add: [{ name: x-note, value: total }] }
  rateLimitService: http://127.0.0.1:8081
  timeout: 1m30s
  failureMode: LocalShare
  policy: web-total
  policies: [web-total]
sources:
  - spiffeId: { type: Exact, value: "spiffe://default/api" }
    sni: web.mesh
    http:
      requestRate: { num: 50, interval: 1s }
      status: 429
      headers: { set: [], add: [] }
  - spiffeId: { type: Prefix, value: "spiffe://default/" }
    http: null
"#,
    )
    .expect("an inbound the policy crate reads");
    let value = serde_yaml_ng::to_value(&inbound).expect("serializable");
    assert!(
        !value["global"].is_null()
            && value["sources"].as_sequence().map(Vec::len) == Some(2)
            && value["http"]["policy"].as_str() == Some("local")
            && value["global"]["policy"].as_str() == Some("web-total"),
        "{value:?}"
    );
    let schema: Value = serde_yaml_ng::from_str("$ref: '#/components/schemas/InboundLimits'")
        .expect("a ref mapping");
    let mut out = Vec::new();
    deviations(&doc, &schema, &value, "inbound", &mut out);
    assert!(
        out.is_empty(),
        "InboundLimits as served:\n{}",
        out.join("\n")
    );
}
