//! Generated resources as text for people: the proto3 JSON mapping with Envoy's own conventions
//! (snake_case field names, enum names, `"1.5s"` durations, `@type` in typed configs, fields at
//! their default value left out), which is also what Envoy's `/config_dump` prints.
//!
//! Only the messages and fields [`crate::resources`] fills in are mapped; the integration tests
//! compare this rendering with the `/config_dump` of an Envoy fed over xDS, so the two cannot
//! drift apart unnoticed.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log_filter, comparison_filter};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, HeaderValueOption, RuntimeFractionalPercent, TrafficDirection,
    TransportSocket, address, data_source, grpc_service, header_value_option::HeaderAppendAction,
    socket_address, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RateLimit as RouteRateLimit, Route, RouteConfiguration, VirtualHost, rate_limit, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{
    FilterStateValue, filter_state_value,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as HttpRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, ResponseMapper, http_connection_manager,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    FilterStateMatcher, filter_state_matcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, StatusCode, TokenBucket, fractional_percent::DenominatorType,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use meshlimit_policy::effective::DataplaneLimits;
use prost::{Message, Name};
use serde_yaml_ng::{Mapping, Value};

use crate::resources::{self, Resources};

/// The Envoy resources generated for one Dataplane, as a YAML document for reading (the shape
/// of a bootstrap's `static_resources`, so it can also be pasted into one).
pub fn render_yaml(limits: &DataplaneLimits) -> String {
    let header = format!(
        "# Envoy resources for Dataplane {} in mesh {} (xDS node id {})\n",
        limits.dataplane,
        limits.mesh,
        resources::node_id(&limits.mesh, &limits.dataplane)
    );
    let body = map([(
        "static_resources",
        resources_value(&resources::generate(limits)),
    )]);
    // Serializing a YAML value built from strings, numbers, lists and maps cannot fail.
    header + &serde_yaml_ng::to_string(&body).unwrap_or_default()
}

/// `{listeners: [...], clusters: [...]}` in the proto3 JSON mapping.
pub fn resources_value(resources: &Resources) -> Value {
    map([
        (
            "listeners",
            Value::Sequence(resources.listeners.iter().map(listener_value).collect()),
        ),
        (
            "clusters",
            Value::Sequence(resources.clusters.iter().map(cluster_value).collect()),
        ),
    ])
}

/// A YAML mapping from `(key, value)` pairs, in order.
pub(crate) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

fn text(value: &str) -> Value {
    Value::from(value)
}

pub fn listener_value(listener: &Listener) -> Value {
    Obj::default()
        .str("name", &listener.name)
        .opt("address", listener.address.as_ref().map(address_value))
        .list(
            "filter_chains",
            listener.filter_chains.iter().map(filter_chain_value),
        )
        .enumeration(
            "traffic_direction",
            listener.traffic_direction,
            TrafficDirection::try_from(listener.traffic_direction).map(|d| d.as_str_name()),
        )
        .into()
}

pub fn cluster_value(cluster: &Cluster) -> Value {
    let mut obj = Obj::default().str("name", &cluster.name);
    if let Some(cluster::ClusterDiscoveryType::Type(kind)) = cluster.cluster_discovery_type {
        // `type` is a oneof member: printed even at its default (STATIC).
        obj = obj.set(
            "type",
            enum_value(
                kind,
                cluster::DiscoveryType::try_from(kind).map(|d| d.as_str_name()),
            ),
        );
    }
    let mut options: Vec<_> = cluster.typed_extension_protocol_options.iter().collect();
    options.sort_by(|a, b| a.0.cmp(b.0));
    let options = (!options.is_empty()).then(|| {
        Value::Mapping(
            options
                .into_iter()
                .map(|(name, any)| (text(name), any_value(any)))
                .collect(),
        )
    });
    obj.opt(
        "connect_timeout",
        cluster.connect_timeout.as_ref().map(duration_value),
    )
    .opt(
        "load_assignment",
        cluster.load_assignment.as_ref().map(load_assignment_value),
    )
    .opt(
        "transport_socket",
        cluster
            .transport_socket
            .as_ref()
            .map(transport_socket_value),
    )
    .opt("typed_extension_protocol_options", options)
    .into()
}

fn transport_socket_value(socket: &TransportSocket) -> Value {
    let mut obj = Obj::default().str("name", &socket.name);
    if let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type {
        obj = obj.set("typed_config", any_value(any));
    }
    obj.into()
}

fn http_protocol_options_value(options: &HttpProtocolOptions) -> Value {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let mut obj = Obj::default();
    if let Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
        &options.upstream_protocol_options
    {
        let mut config = Obj::default();
        if let Some(ProtocolConfig::Http2ProtocolOptions(_)) = &explicit.protocol_config {
            // Only the defaults are set: an empty message.
            config = config.set("http2_protocol_options", Value::Mapping(Mapping::new()));
        }
        obj = obj.set("explicit_http_config", config.into());
    }
    obj.into()
}

fn tls_context_value(tls: &UpstreamTlsContext) -> Value {
    Obj::default().str("sni", &tls.sni).into()
}

fn load_assignment_value(assignment: &ClusterLoadAssignment) -> Value {
    Obj::default()
        .str("cluster_name", &assignment.cluster_name)
        .list("endpoints", assignment.endpoints.iter().map(locality_value))
        .into()
}

fn locality_value(locality: &LocalityLbEndpoints) -> Value {
    Obj::default()
        .list(
            "lb_endpoints",
            locality.lb_endpoints.iter().map(lb_endpoint_value),
        )
        .into()
}

fn lb_endpoint_value(endpoint: &LbEndpoint) -> Value {
    let mut obj = Obj::default();
    if let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier {
        obj = obj.set(
            "endpoint",
            Obj::default()
                .opt("address", endpoint.address.as_ref().map(address_value))
                .into(),
        );
    }
    obj.into()
}

fn address_value(address: &Address) -> Value {
    let mut obj = Obj::default();
    if let Some(address::Address::SocketAddress(socket)) = &address.address {
        let mut inner = Obj::default().str("address", &socket.address);
        if let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier {
            inner = inner.set("port_value", Value::from(port));
        }
        obj = obj.set("socket_address", inner.into());
    }
    obj.into()
}

fn filter_chain_value(chain: &FilterChain) -> Value {
    Obj::default()
        .list("filters", chain.filters.iter().map(filter_value))
        .into()
}

fn filter_value(filter: &Filter) -> Value {
    let mut obj = Obj::default().str("name", &filter.name);
    if let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type {
        obj = obj.set("typed_config", any_value(any));
    }
    obj.into()
}

fn http_filter_value(filter: &HttpFilter) -> Value {
    let mut obj = Obj::default().str("name", &filter.name);
    if let Some(http_filter::ConfigType::TypedConfig(any)) = &filter.config_type {
        obj = obj.set("typed_config", any_value(any));
    }
    obj.into()
}

/// A typed config: `@type` followed by the fields of the packed message.
fn any_value(any: &Any) -> Value {
    fn decode<M: Message + Name + Default>(any: &Any, to_value: fn(&M) -> Value) -> Option<Value> {
        (any.type_url == M::type_url())
            .then(|| M::decode(any.value.as_slice()).ok())
            .flatten()
            .map(|m| to_value(&m))
    }
    let fields = decode(any, hcm_value)
        .or_else(|| decode(any, http_local_ratelimit_value))
        .or_else(|| decode(any, |_: &Router| Value::Mapping(Mapping::new())))
        .or_else(|| decode(any, tcp_local_ratelimit_value))
        .or_else(|| decode(any, tcp_proxy_value))
        .or_else(|| decode(any, http_ratelimit_value))
        .or_else(|| decode(any, http_protocol_options_value))
        .or_else(|| decode(any, tls_context_value))
        .or_else(|| decode(any, set_filter_state_value));
    let mut obj = Mapping::new();
    obj.insert(text("@type"), text(&any.type_url));
    match fields {
        Some(Value::Mapping(fields)) => obj.extend(fields),
        _ => {
            obj.insert(text("value_bytes"), Value::from(any.value.len()));
        }
    }
    Value::Mapping(obj)
}

fn hcm_value(hcm: &HttpConnectionManager) -> Value {
    let mut obj = Obj::default().str("stat_prefix", &hcm.stat_prefix);
    if let Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)) = &hcm.route_specifier
    {
        obj = obj.set("route_config", route_config_value(routes));
    }
    obj.list(
        "http_filters",
        hcm.http_filters.iter().map(http_filter_value),
    )
    .opt(
        "local_reply_config",
        hcm.local_reply_config.as_ref().map(local_reply_value),
    )
    .into()
}

fn local_reply_value(config: &LocalReplyConfig) -> Value {
    Obj::default()
        .list("mappers", config.mappers.iter().map(mapper_value))
        .into()
}

/// A response mapper as [`crate::resources`] builds it: a status-code filter and a new status.
fn mapper_value(mapper: &ResponseMapper) -> Value {
    let mut obj = Obj::default();
    if let Some(filter) = &mapper.filter
        && let Some(access_log_filter::FilterSpecifier::StatusCodeFilter(status)) =
            &filter.filter_specifier
    {
        let comparison = status.comparison.as_ref().map(|c| {
            let value = c.value.as_ref().map(|v| {
                Obj::default()
                    .uint("default_value", v.default_value)
                    .str("runtime_key", &v.runtime_key)
                    .into()
            });
            Obj::default()
                .enumeration(
                    "op",
                    c.op,
                    comparison_filter::Op::try_from(c.op).map(|o| o.as_str_name()),
                )
                .opt("value", value)
                .into()
        });
        let status = Obj::default().opt("comparison", comparison).into();
        obj = obj.set(
            "filter",
            Obj::default().set("status_code_filter", status).into(),
        );
    }
    obj.opt(
        "status_code",
        mapper.status_code.map(|v| Value::from(v.value)),
    )
    .list(
        "headers_to_add",
        mapper.headers_to_add.iter().map(header_option_value),
    )
    .into()
}

fn route_config_value(config: &RouteConfiguration) -> Value {
    Obj::default()
        .str("name", &config.name)
        .list(
            "virtual_hosts",
            config.virtual_hosts.iter().map(virtual_host_value),
        )
        .into()
}

fn virtual_host_value(host: &VirtualHost) -> Value {
    Obj::default()
        .str("name", &host.name)
        .list("domains", host.domains.iter().map(|d| text(d)))
        .list("routes", host.routes.iter().map(route_value))
        .into()
}

fn route_value(route: &Route) -> Value {
    let mut obj = Obj::default();
    if let Some(matcher) = &route.r#match {
        let mut m = Obj::default();
        if let Some(route_match::PathSpecifier::Prefix(prefix)) = &matcher.path_specifier {
            // A oneof member: printed even when empty.
            m = m.set("prefix", text(prefix));
        }
        m = m.list(
            "filter_state",
            matcher.filter_state.iter().map(filter_state_matcher_value),
        );
        obj = obj.set("match", m.into());
    }
    if !route.typed_per_filter_config.is_empty() {
        // Printed in key order, as a JSON map.
        let mut configs: Vec<(&String, &Any)> = route.typed_per_filter_config.iter().collect();
        configs.sort_by_key(|(name, _)| *name);
        let mut map = Mapping::new();
        for (name, any) in configs {
            map.insert(text(name), any_value(any));
        }
        obj = obj.set("typed_per_filter_config", Value::Mapping(map));
    }
    if let Some(route::Action::Route(action)) = &route.action {
        let mut a = Obj::default();
        if let Some(route_action::ClusterSpecifier::Cluster(cluster)) = &action.cluster_specifier {
            a = a.set("cluster", text(cluster));
        }
        a = a.list(
            "rate_limits",
            action.rate_limits.iter().map(route_rate_limit_value),
        );
        obj = obj.set("route", a.into());
    }
    obj.into()
}

fn filter_state_matcher_value(m: &FilterStateMatcher) -> Value {
    let mut obj = Obj::default().str("key", &m.key);
    if let Some(filter_state_matcher::Matcher::StringMatch(sm)) = &m.matcher {
        let pattern = match &sm.match_pattern {
            Some(string_matcher::MatchPattern::Exact(v)) => Obj::default().set("exact", text(v)),
            Some(string_matcher::MatchPattern::Prefix(v)) => Obj::default().set("prefix", text(v)),
            _ => Obj::default(),
        };
        obj = obj.set("string_match", pattern.into());
    }
    obj.into()
}

fn set_filter_state_value(config: &SetFilterState) -> Value {
    Obj::default()
        .list(
            "on_downstream_tls_handshake",
            config
                .on_downstream_tls_handshake
                .iter()
                .map(filter_state_value_value),
        )
        .into()
}

fn filter_state_value_value(v: &FilterStateValue) -> Value {
    let mut obj = Obj::default();
    if let Some(filter_state_value::Key::ObjectKey(key)) = &v.key {
        obj = obj.set("object_key", text(key));
    }
    obj = obj.str("factory_key", &v.factory_key);
    if let Some(filter_state_value::Value::FormatString(format)) = &v.value
        && let Some(substitution_format_string::Format::TextFormatSource(source)) = &format.format
        && let Some(data_source::Specifier::InlineString(inline)) = &source.specifier
    {
        obj = obj.set(
            "format_string",
            map([("text_format_source", map([("inline_string", text(inline))]))]),
        );
    }
    if v.skip_if_empty {
        obj = obj.set("skip_if_empty", Value::Bool(true));
    }
    obj.into()
}

/// A route's rate-limit actions as [`crate::resources`] builds them: generic keys.
fn route_rate_limit_value(limit: &RouteRateLimit) -> Value {
    let actions = limit.actions.iter().map(|action| {
        let mut obj = Obj::default();
        if let Some(rate_limit::action::ActionSpecifier::GenericKey(key)) = &action.action_specifier
        {
            obj = obj.set(
                "generic_key",
                Obj::default()
                    .str("descriptor_value", &key.descriptor_value)
                    .str("descriptor_key", &key.descriptor_key)
                    .into(),
            );
        }
        obj.into()
    });
    Obj::default().list("actions", actions).into()
}

fn http_ratelimit_value(rl: &HttpRateLimit) -> Value {
    let service = rl.rate_limit_service.as_ref().map(|service| {
        let grpc = service.grpc_service.as_ref().map(|grpc| {
            let mut obj = Obj::default();
            if let Some(grpc_service::TargetSpecifier::EnvoyGrpc(envoy)) = &grpc.target_specifier {
                obj = obj.set(
                    "envoy_grpc",
                    Obj::default()
                        .str("cluster_name", &envoy.cluster_name)
                        .str("authority", &envoy.authority)
                        .into(),
                );
            }
            obj.into()
        });
        Obj::default()
            .opt("grpc_service", grpc)
            .enumeration(
                "transport_api_version",
                service.transport_api_version,
                ApiVersion::try_from(service.transport_api_version).map(|v| v.as_str_name()),
            )
            .into()
    });
    let mut obj = Obj::default()
        .str("domain", &rl.domain)
        .opt("timeout", rl.timeout.as_ref().map(duration_value));
    if rl.failure_mode_deny {
        obj = obj.set("failure_mode_deny", Value::from(true));
    }
    obj.opt("rate_limit_service", service)
        .opt(
            "rate_limited_status",
            rl.rate_limited_status.as_ref().map(status_value),
        )
        .list(
            "response_headers_to_add",
            rl.response_headers_to_add.iter().map(header_option_value),
        )
        .str("stat_prefix", &rl.stat_prefix)
        .opt(
            "filter_enforced",
            rl.filter_enforced.as_ref().map(runtime_percent_value),
        )
        .into()
}

fn http_local_ratelimit_value(rl: &HttpLocalRateLimit) -> Value {
    Obj::default()
        .str("stat_prefix", &rl.stat_prefix)
        .opt("status", rl.status.as_ref().map(status_value))
        .opt(
            "token_bucket",
            rl.token_bucket.as_ref().map(token_bucket_value),
        )
        .opt(
            "filter_enabled",
            rl.filter_enabled.as_ref().map(runtime_percent_value),
        )
        .opt(
            "filter_enforced",
            rl.filter_enforced.as_ref().map(runtime_percent_value),
        )
        .list(
            "response_headers_to_add",
            rl.response_headers_to_add.iter().map(header_option_value),
        )
        .into()
}

fn tcp_local_ratelimit_value(rl: &TcpLocalRateLimit) -> Value {
    Obj::default()
        .str("stat_prefix", &rl.stat_prefix)
        .opt(
            "token_bucket",
            rl.token_bucket.as_ref().map(token_bucket_value),
        )
        .into()
}

fn tcp_proxy_value(proxy: &TcpProxy) -> Value {
    let mut obj = Obj::default().str("stat_prefix", &proxy.stat_prefix);
    if let Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) = &proxy.cluster_specifier {
        obj = obj.set("cluster", text(cluster));
    }
    obj.into()
}

fn status_value(status: &HttpStatus) -> Value {
    Obj::default()
        .enumeration(
            "code",
            status.code,
            StatusCode::try_from(status.code).map(|c| c.as_str_name()),
        )
        .into()
}

fn token_bucket_value(bucket: &TokenBucket) -> Value {
    Obj::default()
        .uint("max_tokens", bucket.max_tokens)
        .opt(
            "tokens_per_fill",
            bucket.tokens_per_fill.map(|v| Value::from(v.value)),
        )
        .opt(
            "fill_interval",
            bucket.fill_interval.as_ref().map(duration_value),
        )
        .into()
}

fn runtime_percent_value(fraction: &RuntimeFractionalPercent) -> Value {
    Obj::default()
        .opt(
            "default_value",
            fraction.default_value.as_ref().map(fractional_value),
        )
        .str("runtime_key", &fraction.runtime_key)
        .into()
}

fn fractional_value(fraction: &FractionalPercent) -> Value {
    Obj::default()
        .uint("numerator", fraction.numerator)
        .enumeration(
            "denominator",
            fraction.denominator,
            DenominatorType::try_from(fraction.denominator).map(|d| d.as_str_name()),
        )
        .into()
}

fn header_option_value(option: &HeaderValueOption) -> Value {
    let header = option.header.as_ref().map(|h| {
        Obj::default()
            .str("key", &h.key)
            .str("value", &h.value)
            .into()
    });
    Obj::default()
        .opt("header", header)
        .enumeration(
            "append_action",
            option.append_action,
            HeaderAppendAction::try_from(option.append_action).map(|a| a.as_str_name()),
        )
        .into()
}

/// A duration as proto3 JSON writes it: seconds with 0, 3, 6 or 9 fractional digits.
fn duration_value(d: &Duration) -> Value {
    let nanos = d.nanos.unsigned_abs();
    let text = if nanos == 0 {
        format!("{}s", d.seconds)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}.{:03}s", d.seconds, nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}.{:06}s", d.seconds, nanos / 1_000)
    } else {
        format!("{}.{:09}s", d.seconds, nanos)
    };
    Value::String(text)
}

fn enum_value(number: i32, name: Result<&'static str, prost::UnknownEnumValue>) -> Value {
    match name {
        Ok(name) => text(name),
        Err(_) => Value::from(number),
    }
}

/// A JSON object that, like proto3 JSON, leaves out fields at their default value.
#[derive(Default)]
struct Obj(Mapping);

impl Obj {
    fn set(mut self, key: &str, value: Value) -> Self {
        self.0.insert(text(key), value);
        self
    }

    fn str(self, key: &str, value: &str) -> Self {
        if value.is_empty() {
            self
        } else {
            self.set(key, text(value))
        }
    }

    fn uint(self, key: &str, value: u32) -> Self {
        if value == 0 {
            self
        } else {
            self.set(key, Value::from(value))
        }
    }

    fn enumeration(
        self,
        key: &str,
        number: i32,
        name: Result<&'static str, prost::UnknownEnumValue>,
    ) -> Self {
        if number == 0 {
            self
        } else {
            self.set(key, enum_value(number, name))
        }
    }

    fn opt(self, key: &str, value: Option<Value>) -> Self {
        match value {
            Some(value) => self.set(key, value),
            None => self,
        }
    }

    fn list(self, key: &str, values: impl Iterator<Item = Value>) -> Self {
        let values: Vec<Value> = values.collect();
        if values.is_empty() {
            self
        } else {
            self.set(key, Value::Sequence(values))
        }
    }
}

impl From<Obj> for Value {
    fn from(obj: Obj) -> Value {
        Value::Mapping(obj.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use meshlimit_policy::effective::{
        HeaderValue, HttpLimit, InboundLimits, Protocol, Rate, RejectHeaders, TcpLimit,
    };

    use serde_json::json;

    use super::*;

    fn limits() -> DataplaneLimits {
        DataplaneLimits {
            dataplane: "backend-1".into(),
            mesh: "default".into(),
            address: "10.0.0.1".into(),
            inbounds: vec![
                InboundLimits {
                    port: 8080,
                    service_port: 18080,
                    service: "backend".into(),
                    protocol: Protocol::Http,
                    http: Some(HttpLimit {
                        policy: "limit".into(),
                        request_rate: Rate::new(10, StdDuration::from_millis(500))
                            .expect("valid rate"),
                        status: meshlimit_policy::RejectStatus::new(429).expect("an HTTP status"),
                        headers: RejectHeaders {
                            set: vec![HeaderValue::new("x-limited", "yes").expect("valid header")],
                            add: vec![],
                        },
                    }),
                    tcp: None,
                    policies: vec![],
                    global: None,
                    sources: Vec::new(),
                },
                InboundLimits {
                    port: 9000,
                    service_port: 19000,
                    service: "db".into(),
                    protocol: Protocol::Tcp,
                    http: None,
                    tcp: Some(TcpLimit {
                        connection_rate: Rate::new(3, StdDuration::from_secs(60))
                            .expect("valid rate"),
                    }),
                    policies: vec![],
                    global: None,
                    sources: Vec::new(),
                },
            ],
            kernel: vec![],
        }
    }

    #[test]
    fn yaml_names_the_node_and_shows_the_limits() {
        let yaml = render_yaml(&limits());
        assert!(yaml.starts_with("# Envoy resources for Dataplane backend-1 in mesh default (xDS node id default.backend-1)\n"), "{yaml}");
        let doc: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("valid YAML");
        let listeners = &doc["static_resources"]["listeners"];
        let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        let rl = &hcm["http_filters"][0]["typed_config"];
        assert_eq!(
            rl["token_bucket"],
            json!({"max_tokens": 10, "tokens_per_fill": 10, "fill_interval": "0.500s"})
        );
        assert_eq!(rl["status"], json!({"code": "TooManyRequests"}));
        assert_eq!(
            rl["response_headers_to_add"],
            json!([{"header": {"key": "x-limited", "value": "yes"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}])
        );
        assert_eq!(
            rl["filter_enforced"],
            json!({"default_value": {"numerator": 100}, "runtime_key": "local_rate_limit_enforced"})
        );
        assert_eq!(
            hcm["http_filters"][1],
            json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        );
        let tcp = &listeners[1]["filter_chains"][0]["filters"];
        assert_eq!(
            tcp[0]["typed_config"]["token_bucket"],
            json!({"max_tokens": 3, "tokens_per_fill": 3, "fill_interval": "60s"})
        );
        assert_eq!(tcp[1]["typed_config"]["cluster"], "localhost:19000");
        assert_eq!(
            doc["static_resources"]["clusters"][1],
            json!({
                "name": "localhost:19000",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "localhost:19000",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19000}}}}]}]
                }
            })
        );
    }

    #[test]
    fn a_global_limit_renders_its_filter_route_actions_and_service_cluster() {
        use meshlimit_policy::effective::{FailureMode, GlobalLimit, GlobalMode};
        let mut limits = limits();
        let total = Rate::new(5, StdDuration::from_secs(60)).expect("valid rate");
        limits.inbounds[0].global = Some(GlobalLimit {
            policy: "global".into(),
            service: "backend".into(),
            key: "mgrl/default/p/backend".into(),
            request_rate: total,
            share: total,
            instances: 1,
            index: 0,
            mode: GlobalMode::Limit,
            status: meshlimit_policy::RejectStatus::new(503).expect("an HTTP status"),
            headers: RejectHeaders::default(),
            rate_limit_service: Some("http://127.0.0.1:8081".into()),
            timeout: StdDuration::from_millis(25),
            failure_mode: FailureMode::Closed,
            policies: vec![],
        });
        let doc: serde_json::Value =
            serde_yaml_ng::from_str(&render_yaml(&limits)).expect("valid YAML");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let rl = &hcm["http_filters"][1]["typed_config"];
        assert_eq!(rl["domain"], "meshlimit");
        assert_eq!(rl["timeout"], "0.025s");
        assert_eq!(rl["failure_mode_deny"], true);
        assert_eq!(
            rl["rate_limited_status"],
            json!({"code": "ServiceUnavailable"})
        );
        assert_eq!(
            rl["rate_limit_service"],
            json!({"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit:127.0.0.1:8081", "authority": "127.0.0.1:8081"}}, "transport_api_version": "V3"})
        );
        let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
        assert_eq!(
            route["rate_limits"],
            json!([{"actions": [
                {"generic_key": {"descriptor_value": "mgrl/default/p/backend", "descriptor_key": "meshlimit_key"}},
                {"generic_key": {"descriptor_value": "5/60000000000", "descriptor_key": "meshlimit_rate"}},
            ]}])
        );
        let cluster = &doc["static_resources"]["clusters"][2];
        assert_eq!(cluster["name"], "ratelimit:127.0.0.1:8081");
        assert_eq!(
            cluster["typed_extension_protocol_options"],
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }})
        );
    }

    #[test]
    fn durations_use_proto3_json_precision() {
        let d = |seconds, nanos| duration_value(&Duration { seconds, nanos });
        assert_eq!(d(3600, 0), Value::from("3600s"));
        assert_eq!(d(0, 50_000_000), Value::from("0.050s"));
        assert_eq!(d(1, 500), Value::from("1.000000500s"));
        assert_eq!(d(2, 1_000), Value::from("2.000001s"));
    }

    #[test]
    fn unknown_status_codes_render_as_numbers() {
        let status =
            serde_json::to_value(status_value(&HttpStatus { code: 499 })).expect("plain data");
        assert_eq!(status, json!({"code": 499}));
    }
}
