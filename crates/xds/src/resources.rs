//! Envoy resources for one Dataplane: pure functions from [`DataplaneLimits`] to listeners and
//! clusters, following Kuma's translation of `MeshRateLimit`.
//!
//! Per inbound, one listener on `address:port` and one cluster to `127.0.0.1:servicePort`:
//! - HTTP inbounds: an HTTP connection manager whose filters are
//!   `envoy.filters.http.local_ratelimit` (when a limit applies) then the router;
//! - TCP inbounds: `envoy.filters.network.local_ratelimit` (when a limit applies) then `tcp_proxy`;
//! - a TCP connection rate on an HTTP inbound puts the network filter in front of the HTTP
//!   connection manager, so it counts connections there too.
//!
//! Envoy's rate-limit filter takes its status from a fixed list of codes (418, 420, 499, 509
//! and others are missing) and at most 10 response headers; Envoy rejects a listener beyond
//! either. For such a limit the filter answers a stand-in 429 with no headers, and the
//! connection manager's local-reply mapper turns its 429s into the policy's status and headers
//! (the rate limiter is the only source of 429 local replies on an inbound).

use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, StatusCodeFilter, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, RuntimeUInt32,
    SocketAddress, TrafficDirection, address, header_value_option::HeaderAppendAction,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, ResponseMapper, http_connection_manager,
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, StatusCode, TokenBucket, fractional_percent::DenominatorType,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use meshlimit_policy::effective::{
    DataplaneLimits, HttpLimit, InboundLimits, Protocol, Rate, TcpLimit,
};
use prost::{Message, Name};

/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const NETWORK_LOCAL_RATELIMIT: &str = "envoy.filters.network.local_ratelimit";
pub const HTTP_LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
pub const ROUTER: &str = "envoy.filters.http.router";

/// The address inbound clusters forward to: the application beside the sidecar.
const APPLICATION_ADDRESS: &str = "127.0.0.1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The status the rate-limit filter answers with when the local-reply mapper finishes the answer.
const STAND_IN_STATUS: u16 = 429;
/// Envoy's limit on the rate-limit filter's `response_headers_to_add`.
const FILTER_MAX_HEADERS: usize = 10;

/// Everything Envoy gets for one Dataplane.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
}

/// The Envoy node id of a Dataplane: `<mesh>.<dataplane>` (as Kuma names its sidecars).
pub fn node_id(mesh: &str, dataplane: &str) -> String {
    format!("{mesh}.{dataplane}")
}

/// Listener name of an inbound: `inbound:<address>:<port>`.
pub fn listener_name(address: &str, port: u16) -> String {
    format!("inbound:{address}:{port}")
}

/// Cluster name of an inbound's application: `localhost:<servicePort>`.
pub fn cluster_name(service_port: u16) -> String {
    format!("localhost:{service_port}")
}

/// Stat prefix of an inbound's filters: `inbound_<port>`. Envoy then counts rate limiting as
/// `inbound_<port>.http_local_rate_limit.{enabled,enforced,ok,rate_limited}` (HTTP) and
/// `local_rate_limit.inbound_<port>.rate_limited` (TCP).
pub fn stat_prefix(port: u16) -> String {
    format!("inbound_{port}")
}

/// Listeners and clusters for one Dataplane, in inbound order. Inbounds sharing a service port
/// share one cluster.
pub fn generate(limits: &DataplaneLimits) -> Resources {
    let mut resources = Resources::default();
    for inbound in &limits.inbounds {
        resources
            .listeners
            .push(inbound_listener(&limits.address, inbound));
        let cluster = inbound_cluster(inbound.service_port);
        if !resources.clusters.iter().any(|c| c.name == cluster.name) {
            resources.clusters.push(cluster);
        }
    }
    resources
}

/// Packs a message as `google.protobuf.Any`.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn inbound_listener(address: &str, inbound: &InboundLimits) -> Listener {
    let mut filters = Vec::new();
    if let Some(tcp) = &inbound.tcp {
        filters.push(typed_filter(
            NETWORK_LOCAL_RATELIMIT,
            &tcp_local_ratelimit(inbound.port, tcp),
        ));
    }
    match inbound.protocol {
        Protocol::Http => filters.push(typed_filter(
            HTTP_CONNECTION_MANAGER,
            &http_connection_manager(inbound),
        )),
        Protocol::Tcp => filters.push(typed_filter(TCP_PROXY, &tcp_proxy(inbound))),
    }
    Listener {
        name: listener_name(address, inbound.port),
        address: Some(socket_address(address, inbound.port)),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

fn inbound_cluster(service_port: u16) -> Cluster {
    let name = cluster_name(service_port);
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(APPLICATION_ADDRESS, service_port)),
            ..Default::default()
        })),
        ..Default::default()
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_connection_manager(inbound: &InboundLimits) -> HttpConnectionManager {
    let mut http_filters = Vec::new();
    if let Some(http) = &inbound.http {
        http_filters.push(HttpFilter {
            name: HTTP_LOCAL_RATELIMIT.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
                &http_local_ratelimit(inbound.port, http),
            ))),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: ROUTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
            &Router::default(),
        ))),
        ..Default::default()
    });
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(
                inbound.service_port,
            ))),
            ..Default::default()
        })),
        ..Default::default()
    };
    let local_reply_config = inbound
        .http
        .as_ref()
        .filter(|http| needs_mapper(http))
        .map(mapper);
    HttpConnectionManager {
        stat_prefix: stat_prefix(inbound.port),
        local_reply_config,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: format!("inbound:{}", inbound.service),
                virtual_hosts: vec![VirtualHost {
                    name: inbound.service.clone(),
                    domains: vec!["*".to_string()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters,
        ..Default::default()
    }
}

/// The HTTP local rate limit of an inbound, enabled and enforced for every request.
fn http_local_ratelimit(port: u16, limit: &HttpLimit) -> HttpLocalRateLimit {
    let (status, headers) = if needs_mapper(limit) {
        (STAND_IN_STATUS, Vec::new())
    } else {
        (limit.status.as_u16(), reject_headers(limit))
    };
    HttpLocalRateLimit {
        stat_prefix: stat_prefix(port),
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        token_bucket: Some(token_bucket(limit.request_rate)),
        filter_enabled: Some(always("local_rate_limit_enabled")),
        filter_enforced: Some(always("local_rate_limit_enforced")),
        response_headers_to_add: headers,
        ..Default::default()
    }
}

/// The policy's headers for a rejected request: `set` overwrites (or adds), `add` appends.
fn reject_headers(limit: &HttpLimit) -> Vec<HeaderValueOption> {
    let header = |name: &str, value: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let set = limit.headers.set.iter().map(|h| {
        header(
            h.name().as_str(),
            h.value_str(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )
    });
    let add = limit.headers.add.iter().map(|h| {
        header(
            h.name().as_str(),
            h.value_str(),
            HeaderAppendAction::AppendIfExistsOrAdd,
        )
    });
    set.chain(add).collect()
}

/// Whether Envoy's `HttpStatus` enum lists `status` (it refuses any other code).
pub fn envoy_knows_status(status: u16) -> bool {
    StatusCode::try_from(i32::from(status)).is_ok_and(|code| code != StatusCode::Empty)
}

/// The rate-limit filter alone cannot answer as the policy says.
fn needs_mapper(limit: &HttpLimit) -> bool {
    let headers = limit.headers.set.len() + limit.headers.add.len();
    !envoy_knows_status(limit.status.as_u16()) || headers > FILTER_MAX_HEADERS
}

/// Turns the rate limiter's stand-in 429 local replies into the policy's status and headers.
fn mapper(limit: &HttpLimit) -> LocalReplyConfig {
    let is_stand_in = AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(
            StatusCodeFilter {
                comparison: Some(ComparisonFilter {
                    op: comparison_filter::Op::Eq as i32,
                    value: Some(RuntimeUInt32 {
                        default_value: u32::from(STAND_IN_STATUS),
                        runtime_key: "meshlimit.rate_limit_stand_in_status".to_string(),
                    }),
                }),
            },
        )),
    };
    LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(is_stand_in),
            status_code: Some(UInt32Value {
                value: u32::from(limit.status.as_u16()),
            }),
            headers_to_add: reject_headers(limit),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tcp_local_ratelimit(port: u16, limit: &TcpLimit) -> TcpLocalRateLimit {
    TcpLocalRateLimit {
        stat_prefix: stat_prefix(port),
        token_bucket: Some(token_bucket(limit.connection_rate)),
        ..Default::default()
    }
}

fn tcp_proxy(inbound: &InboundLimits) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix(inbound.port),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster_name(
            inbound.service_port,
        ))),
        ..Default::default()
    }
}

/// `{num, interval}` as Envoy's bucket: `max_tokens = tokens_per_fill = num`.
fn token_bucket(rate: Rate) -> TokenBucket {
    TokenBucket {
        max_tokens: rate.num().get(),
        tokens_per_fill: Some(UInt32Value {
            value: rate.num().get(),
        }),
        fill_interval: Some(duration(rate.interval())),
    }
}

/// 100% of requests, overridable at runtime under `runtime_key` (as Envoy's examples do).
fn always(runtime_key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: runtime_key.to_string(),
    }
}

fn typed_filter<M: Message + Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(to_any(config))),
    }
}

fn socket_address(address: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        // Policy intervals are far below i64::MAX seconds; saturate rather than wrap.
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use meshlimit_policy::effective::{HeaderValue as PolicyHeader, RejectHeaders};

    use super::*;

    fn rate(num: u32, interval: Duration) -> Rate {
        Rate::new(num, interval).expect("valid rate")
    }

    fn inbound(port: u16, protocol: Protocol) -> InboundLimits {
        InboundLimits {
            port,
            service_port: port + 1000,
            service: "backend".to_string(),
            protocol,
            http: None,
            tcp: None,
            policies: vec![],
            global: None,
        }
    }

    fn dataplane(inbounds: Vec<InboundLimits>) -> DataplaneLimits {
        DataplaneLimits {
            dataplane: "backend-1".to_string(),
            mesh: "default".to_string(),
            address: "10.0.0.1".to_string(),
            inbounds,
            kernel: vec![],
        }
    }

    fn filters(listener: &Listener) -> &[Filter] {
        &listener.filter_chains[0].filters
    }

    fn typed<M: Message + Default>(filter: &Filter) -> M {
        match &filter.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                M::decode(any.value.as_slice()).expect("generated config decodes")
            }
            other => panic!("filter {} has no typed config: {other:?}", filter.name),
        }
    }

    fn http_filter_config<M: Message + Default>(filter: &HttpFilter) -> M {
        match &filter.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => {
                M::decode(any.value.as_slice()).expect("generated config decodes")
            }
            other => panic!("filter {} has no typed config: {other:?}", filter.name),
        }
    }

    #[test]
    fn http_inbound_gets_local_ratelimit_before_router() {
        let mut http = inbound(8080, Protocol::Http);
        http.http = Some(HttpLimit {
            request_rate: rate(7, Duration::from_millis(1500)),
            status: meshlimit_policy::RejectStatus::new(503).expect("an HTTP status"),
            headers: RejectHeaders {
                set: vec![PolicyHeader::new("x-limited", "yes").expect("valid header")],
                add: vec![PolicyHeader::new("x-note", "a").expect("valid header")],
            },
        });
        let resources = generate(&dataplane(vec![http]));
        assert_eq!(resources.listeners.len(), 1);
        let listener = &resources.listeners[0];
        assert_eq!(listener.name, "inbound:10.0.0.1:8080");
        let chain = filters(listener);
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].name, HTTP_CONNECTION_MANAGER);
        let hcm: HttpConnectionManager = typed(&chain[0]);
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [HTTP_LOCAL_RATELIMIT, ROUTER]);

        let rl: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[0]);
        let bucket = rl.token_bucket.expect("token bucket");
        assert_eq!(bucket.max_tokens, 7);
        assert_eq!(bucket.tokens_per_fill, Some(UInt32Value { value: 7 }));
        assert_eq!(
            bucket.fill_interval,
            Some(PbDuration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(rl.status, Some(HttpStatus { code: 503 }));
        for fraction in [&rl.filter_enabled, &rl.filter_enforced] {
            let value = fraction.as_ref().and_then(|f| f.default_value);
            assert_eq!(
                value,
                Some(FractionalPercent {
                    numerator: 100,
                    denominator: DenominatorType::Hundred as i32
                })
            );
        }
        let headers: Vec<_> = rl
            .response_headers_to_add
            .iter()
            .map(|h| {
                let header = h.header.as_ref().expect("header");
                (header.key.as_str(), header.value.as_str(), h.append_action)
            })
            .collect();
        assert_eq!(
            headers,
            [
                (
                    "x-limited",
                    "yes",
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                ),
                (
                    "x-note",
                    "a",
                    HeaderAppendAction::AppendIfExistsOrAdd as i32
                ),
            ]
        );
        assert_eq!(rl.stat_prefix, "inbound_8080");
    }

    #[test]
    fn a_status_envoy_does_not_list_is_mapped_from_a_stand_in() {
        let mut http = inbound(8080, Protocol::Http);
        http.http = Some(HttpLimit {
            request_rate: rate(1, Duration::from_secs(1)),
            status: meshlimit_policy::RejectStatus::new(418).expect("an HTTP status"),
            headers: RejectHeaders::default(),
        });
        let resources = generate(&dataplane(vec![http.clone()]));
        let hcm: HttpConnectionManager = typed(&filters(&resources.listeners[0])[0]);
        let rl: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[0]);
        assert_eq!(rl.status, Some(HttpStatus { code: 429 }));
        let mapper = &hcm.local_reply_config.expect("mapper").mappers[0];
        assert_eq!(mapper.status_code, Some(UInt32Value { value: 418 }));

        http.http.as_mut().expect("limit").status =
            meshlimit_policy::RejectStatus::new(503).expect("an HTTP status");
        let resources = generate(&dataplane(vec![http]));
        let hcm: HttpConnectionManager = typed(&filters(&resources.listeners[0])[0]);
        assert_eq!(hcm.local_reply_config, None, "503 is Envoy's own");
    }

    #[test]
    fn more_headers_than_the_filter_takes_go_to_the_mapper() {
        let mut http = inbound(8080, Protocol::Http);
        let headers = |prefix: &str| {
            (0..6)
                .map(|i| PolicyHeader::new(&format!("{prefix}-{i}"), "v").expect("valid header"))
                .collect()
        };
        http.http = Some(HttpLimit {
            request_rate: rate(1, Duration::from_secs(1)),
            status: meshlimit_policy::RejectStatus::new(503).expect("an HTTP status"),
            headers: RejectHeaders {
                set: headers("x-set"),
                add: headers("x-add"),
            },
        });
        let resources = generate(&dataplane(vec![http]));
        let hcm: HttpConnectionManager = typed(&filters(&resources.listeners[0])[0]);
        let rl: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[0]);
        assert_eq!(rl.status, Some(HttpStatus { code: 429 }));
        assert!(rl.response_headers_to_add.is_empty());
        let mapper = &hcm.local_reply_config.expect("mapper").mappers[0];
        assert_eq!(mapper.status_code, Some(UInt32Value { value: 503 }));
        assert_eq!(mapper.headers_to_add.len(), 12);
        assert_eq!(
            mapper.headers_to_add[6].append_action,
            HeaderAppendAction::AppendIfExistsOrAdd as i32
        );
        assert!(!envoy_knows_status(599) && envoy_knows_status(429));
    }

    #[test]
    fn http_inbound_without_limit_has_only_the_router() {
        let resources = generate(&dataplane(vec![inbound(8080, Protocol::Http)]));
        let hcm: HttpConnectionManager = typed(&filters(&resources.listeners[0])[0]);
        let names: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [ROUTER]);
    }

    #[test]
    fn tcp_inbound_gets_network_ratelimit_before_tcp_proxy() {
        let mut tcp = inbound(9000, Protocol::Tcp);
        tcp.tcp = Some(TcpLimit {
            connection_rate: rate(3, Duration::from_secs(60)),
        });
        let resources = generate(&dataplane(vec![tcp]));
        let chain = filters(&resources.listeners[0]);
        let names: Vec<_> = chain.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [NETWORK_LOCAL_RATELIMIT, TCP_PROXY]);
        let rl: TcpLocalRateLimit = typed(&chain[0]);
        assert_eq!(rl.token_bucket.map(|b| b.max_tokens), Some(3));
        let proxy: TcpProxy = typed(&chain[1]);
        assert_eq!(
            proxy.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster(
                "localhost:10000".into()
            ))
        );
    }

    #[test]
    fn connection_rate_on_http_inbound_precedes_the_connection_manager() {
        let mut http = inbound(8080, Protocol::Http);
        http.tcp = Some(TcpLimit {
            connection_rate: rate(3, Duration::from_secs(60)),
        });
        let resources = generate(&dataplane(vec![http]));
        let names: Vec<_> = filters(&resources.listeners[0])
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, [NETWORK_LOCAL_RATELIMIT, HTTP_CONNECTION_MANAGER]);
    }

    #[test]
    fn clusters_point_at_the_application_once_per_service_port() {
        let a = inbound(8080, Protocol::Http);
        let mut b = inbound(8081, Protocol::Tcp);
        b.service_port = a.service_port;
        let c = inbound(8082, Protocol::Tcp);
        let resources = generate(&dataplane(vec![a, b, c]));
        assert_eq!(resources.listeners.len(), 3);
        let names: Vec<_> = resources.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["localhost:9080", "localhost:9082"]);
        let endpoint = &resources.clusters[0]
            .load_assignment
            .as_ref()
            .expect("load assignment")
            .endpoints[0]
            .lb_endpoints[0];
        let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier
        else {
            panic!("endpoint expected");
        };
        assert_eq!(
            endpoint.address,
            Some(socket_address("127.0.0.1", 9080)),
            "the application is reached on loopback"
        );
    }

    #[test]
    fn node_id_joins_mesh_and_dataplane() {
        assert_eq!(node_id("default", "backend-1"), "default.backend-1");
    }
}
