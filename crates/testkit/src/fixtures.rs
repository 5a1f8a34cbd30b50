//! Resource YAML the integration tests apply, one builder per fixture: what differs between
//! tests is a parameter, so a change of shape happens in one place.

use std::fmt::Write;

/// A Dataplane on 127.0.0.1 with one HTTP inbound on `port` (forwarding to `service_port`),
/// tagged `kuma.io/service: <service>`, and `app: <app>` when given.
pub fn dataplane_yaml(
    name: &str,
    service: &str,
    app: Option<&str>,
    port: u16,
    service_port: u16,
) -> String {
    let mut yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  \
         inbound:\n    - port: {port}\n      servicePort: {service_port}\n      tags:\n        \
         kuma.io/service: {service}\n"
    );
    if let Some(app) = app {
        let _ = writeln!(yaml, "        app: {app}");
    }
    yaml.push_str("        kuma.io/protocol: http\n");
    yaml
}

/// What a policy's top-level `targetRef` selects.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `kind: MeshService` with this name.
    Service(&'a str),
    /// `kind: Mesh` on sidecars only (Kuma refuses `rules` on a scope that includes gateways).
    Sidecars,
}

/// A MeshRateLimit `name` in mesh `default` whose one rule limits HTTP requests to `num` per
/// `interval` (as written, e.g. `1s`) on `target`.
pub fn http_limit_yaml(name: &str, target: Target<'_>, num: u64, interval: &str) -> String {
    let target = match target {
        Target::Service(service) => format!("    kind: MeshService\n    name: {service}\n"),
        Target::Sidecars => "    kind: Mesh\n    proxyTypes: [Sidecar]\n".to_string(),
    };
    format!(
        "type: MeshRateLimit\nmesh: default\nname: {name}\nspec:\n  targetRef:\n{target}  \
         rules:\n    - default:\n        local:\n          http:\n            requestRate:\n              \
         num: {num}\n              interval: {interval}\n"
    )
}

/// The seed's `backend-rate-limit`: 5 requests an hour from anyone to the sidecars of
/// `app: backend` (so no token comes back while a test runs). With `status`, a rejected
/// request gets it and the header `x-kuma-rate-limited: true`.
pub fn backend_limit_yaml(status: Option<u16>) -> String {
    let mut yaml = String::from(
        r#"type: MeshRateLimit
mesh: default
name: backend-rate-limit
spec:
  targetRef:
    kind: MeshSubset
    proxyTypes: ["Sidecar"]
    tags:
      app: backend
  from:
    - targetRef:
        kind: Mesh
      default:
        local:
          http:
            requestRate:
              num: 5
              interval: 1h
"#,
    );
    if let Some(status) = status {
        let _ = write!(
            yaml,
            r#"            onRateLimit:
              status: {status}
              headers:
                set:
                  - name: "x-kuma-rate-limited"
                    value: "true"
"#
        );
    }
    yaml
}
