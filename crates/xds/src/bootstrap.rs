//! The Envoy bootstrap of a sidecar: its node id, an admin listener, and ADS (gRPC over
//! HTTP/2) at meshlimit's xDS server for listeners and clusters.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_yaml_ng::{Mapping, Value};

use crate::render::map;
use crate::resources::node_id;

/// Name of the bootstrap cluster that reaches the xDS server.
pub const XDS_CLUSTER: &str = "meshlimit_xds";

/// Where Envoy finds the xDS server: `host:port`, the host an IP address (`127.0.0.1`,
/// `[::1]`) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xDS address `{input}`: {reason} (expected HOST:PORT, e.g. 127.0.0.1:5678)")]
pub struct AddressError {
    pub input: String,
    pub reason: String,
}

impl FromStr for XdsAddress {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<XdsAddress, AddressError> {
        let error = |reason: &str| AddressError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = input.rsplit_once(':').ok_or_else(|| error("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6
                    .strip_suffix(']')
                    .ok_or_else(|| error("unclosed `[` around an IPv6 address"))?;
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| error("not an IPv6 address inside `[...]`"))?;
                v6
            }
            None if host.contains(':') => {
                return Err(error("write an IPv6 address in brackets, as [::1]:5678"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(error("no host"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| error("the port must be a number from 1 to 65535"))?;
        Ok(XdsAddress {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for XdsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a sidecar's bootstrap needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub mesh: String,
    pub dataplane: String,
    pub xds: XdsAddress,
    /// Address of Envoy's admin listener (loopback: it can change Envoy's state).
    pub admin_address: String,
    /// Port of the admin listener; 0 lets the kernel choose (see `--admin-address-path`).
    pub admin_port: u16,
}

impl Bootstrap {
    /// The bootstrap as YAML, for `envoy -c`.
    pub fn to_yaml(&self) -> String {
        let header = format!(
            "# Envoy bootstrap for Dataplane {} in mesh {}: listeners and clusters come over ADS from {}\n",
            self.dataplane, self.mesh, self.xds
        );
        // Serializing a YAML value built from strings, numbers, lists and maps cannot fail.
        header + &serde_yaml_ng::to_string(&self.to_value()).unwrap_or_default()
    }

    fn to_value(&self) -> Value {
        let ads_source = || map([("ads", empty()), ("resource_api_version", "V3".into())]);
        let is_ip = self.xds.host.parse::<IpAddr>().is_ok();
        let mut xds_cluster = Mapping::new();
        xds_cluster.insert("name".into(), XDS_CLUSTER.into());
        // A DNS name is resolved (and re-resolved) by Envoy; an IP address is used as is.
        xds_cluster.insert(
            "type".into(),
            if is_ip { "STATIC" } else { "STRICT_DNS" }.into(),
        );
        xds_cluster.insert("connect_timeout".into(), "1s".into());
        xds_cluster.insert(
            "typed_extension_protocol_options".into(),
            map([(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                map([
                    (
                        "@type",
                        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                            .into(),
                    ),
                    (
                        "explicit_http_config",
                        map([("http2_protocol_options", empty())]),
                    ),
                ]),
            )]),
        );
        xds_cluster.insert(
            "load_assignment".into(),
            map([
                ("cluster_name", XDS_CLUSTER.into()),
                (
                    "endpoints",
                    Value::Sequence(vec![map([(
                        "lb_endpoints",
                        Value::Sequence(vec![map([(
                            "endpoint",
                            map([("address", socket_address(&self.xds.host, self.xds.port))]),
                        )])]),
                    )])]),
                ),
            ]),
        );
        map([
            (
                "node",
                map([
                    ("id", node_id(&self.mesh, &self.dataplane).into()),
                    ("cluster", self.mesh.as_str().into()),
                ]),
            ),
            (
                "admin",
                map([(
                    "address",
                    socket_address(&self.admin_address, self.admin_port),
                )]),
            ),
            (
                "dynamic_resources",
                map([
                    (
                        "ads_config",
                        map([
                            ("api_type", "GRPC".into()),
                            ("transport_api_version", "V3".into()),
                            ("set_node_on_first_message_only", true.into()),
                            (
                                "grpc_services",
                                Value::Sequence(vec![map([(
                                    "envoy_grpc",
                                    map([("cluster_name", XDS_CLUSTER.into())]),
                                )])]),
                            ),
                        ]),
                    ),
                    ("cds_config", ads_source()),
                    ("lds_config", ads_source()),
                ]),
            ),
            (
                "static_resources",
                map([(
                    "clusters",
                    Value::Sequence(vec![Value::Mapping(xds_cluster)]),
                )]),
            ),
        ])
    }
}

fn socket_address(address: &str, port: u16) -> Value {
    map([(
        "socket_address",
        map([("address", address.into()), ("port_value", port.into())]),
    )])
}

fn empty() -> Value {
    Value::Mapping(Mapping::new())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn addresses_parse_with_clear_errors() {
        let ok = |s: &str| s.parse::<XdsAddress>().expect(s);
        assert_eq!(
            ok("127.0.0.1:5678"),
            XdsAddress {
                host: "127.0.0.1".into(),
                port: 5678
            }
        );
        assert_eq!(ok("[::1]:5678").host, "::1");
        assert_eq!(ok("[::1]:5678").to_string(), "[::1]:5678");
        assert_eq!(ok("cp.mesh.svc:5678").host, "cp.mesh.svc");
        for (bad, reason) in [
            ("localhost", "no port"),
            (":5678", "no host"),
            ("h:0", "from 1 to 65535"),
            ("h:http", "from 1 to 65535"),
            ("::1:5678", "brackets"),
            ("[::1:5678", "unclosed"),
            ("[nope]:5678", "not an IPv6"),
        ] {
            let err = bad.parse::<XdsAddress>().expect_err(bad).to_string();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn bootstrap_points_ads_at_the_server_with_the_node_id() {
        let bootstrap = Bootstrap {
            mesh: "default".into(),
            dataplane: "backend-1".into(),
            xds: "cp.example:5678".parse().expect("address"),
            admin_address: "127.0.0.1".into(),
            admin_port: 9901,
        };
        let yaml = bootstrap.to_yaml();
        let doc: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
        assert_eq!(doc["node"]["id"], "default.backend-1");
        assert_eq!(
            doc["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            XDS_CLUSTER
        );
        assert_eq!(
            doc["dynamic_resources"]["lds_config"],
            json!({"ads": {}, "resource_api_version": "V3"})
        );
        let cluster = &doc["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STRICT_DNS");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"],
            json!({"socket_address": {"address": "cp.example", "port_value": 5678}})
        );
        assert!(
            cluster["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                .get("http2_protocol_options")
                .is_some(),
            "gRPC needs HTTP/2 to the xDS server"
        );
        assert_eq!(
            doc["admin"],
            json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}})
        );
    }
}
