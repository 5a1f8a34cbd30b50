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
//! A `MeshGlobalRateLimit` ([`GlobalLimit`]) adds one HTTP filter after the local one (so a
//! request spends a local token first, and one the local limit rejects never reaches the
//! shared bucket), stat prefix `inbound_<port>_global`:
//! - without a rate-limit service, a second `local_ratelimit` enforcing this instance's
//!   `share` (the shares of the live instances add up to the total);
//! - with one, `envoy.filters.http.ratelimit` (domain `meshlimit`) asking it over gRPC, the
//!   route sending one descriptor that names the bucket and its total
//!   ([`meshlimit_policy::global::descriptor`]), and a cluster `ratelimit:<host>:<port>` for
//!   the service (HTTP/2; `https://` adds TLS with the host as SNI). `failureMode: Closed`
//!   becomes `failure_mode_deny`. With `LocalShare` the descriptor also carries this instance's
//!   share, which the service enforces for it while Redis fails (Envoy cannot switch to a
//!   local bucket itself); if the service cannot be reached at all, Envoy admits, as `Open`.
//!
//! Per-client limits ([`InboundLimits::sources`], from `rules[].matches[].spiffeID`) are
//! rendered as Kuma's MeshRateLimit plugin renders them: an `envoy.filters.network.set_filter_state`
//! filter first in the chain stores the client certificate's URI SAN
//! (`%DOWNSTREAM_PEER_URI_SAN%`) under `kuma.mesh_rate_limit.match.spiffe_id` once the TLS
//! handshake is done (and the requested server name under `kuma.mesh_rate_limit.match.sni` when
//! a match names one), and each match gets a copy of the inbound's route, in front of it, that
//! matches that filter state and carries its own `local_ratelimit` in
//! `typed_per_filter_config` (a copy whose limit is disabled carries a config with no bucket).
//! A client without a matching certificate takes the inbound's route and its limit. A copy's
//! answer comes from its own config; when it differs from the inbound's and would need the
//! local-reply mapper (a status Envoy does not list, more than 10 headers, or 429 while the
//! inbound's own answer is mapped), the client gets the inbound's answer instead.
//!
//! `Shadow` keeps either filter enabled but enforcing 0% (`filter_enforced`): Envoy asks and
//! counts (`rate_limited` for the local filter, `over_limit` for the service's) but never
//! rejects, and never fails closed.
//!
//! Envoy's rate-limit filter takes its status from a fixed list of codes (418, 420, 499, 509
//! and others are missing) and at most 10 response headers; Envoy rejects a listener beyond
//! either. For such a limit the filter answers a stand-in 429 with no headers, and the
//! connection manager's local-reply mapper turns its 429s into the policy's status and headers
//! (the rate limiter is the only source of 429 local replies on an inbound). A global limit's
//! filter uses 510 as its stand-in, which Envoy never answers by itself; when either limit of
//! an inbound needs the mapper, both go through it, so neither is taken for the other.

use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, StatusCodeFilter, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, DataSource, GrpcService, HeaderValue, HeaderValueOption,
    Http2ProtocolOptions, RuntimeFractionalPercent, RuntimeUInt32, SocketAddress,
    SubstitutionFormatString, TrafficDirection, TransportSocket, address, data_source,
    grpc_service, header_value_option::HeaderAppendAction, socket_address,
    substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::{
    RateLimit as RouteRateLimit, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    rate_limit as route_rate_limit, route, route_action, route_match,
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
    FilterStateMatcher, StringMatcher, filter_state_matcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, StatusCode, TokenBucket, fractional_percent::DenominatorType,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use meshlimit_policy::effective::{
    DataplaneLimits, FailureMode, GlobalLimit, GlobalMode, HttpLimit, InboundLimits, Protocol,
    Rate, RejectHeaders, RejectStatus, SourceLimit, SpiffeMatchType, TcpLimit,
};
use meshlimit_policy::global::DESCRIPTOR_DOMAIN;
use prost::{Message, Name};

/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const NETWORK_LOCAL_RATELIMIT: &str = "envoy.filters.network.local_ratelimit";
pub const HTTP_LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
/// The `local_ratelimit` filter enforcing a global limit's share.
pub const HTTP_GLOBAL_SHARE: &str = "meshlimit.global_share";
pub const HTTP_RATELIMIT: &str = "envoy.filters.http.ratelimit";
/// Key of `typed_extension_protocol_options` for upstream HTTP settings.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const ROUTER: &str = "envoy.filters.http.router";
pub const SET_FILTER_STATE: &str = "envoy.filters.network.set_filter_state";
/// Where the set_filter_state filter keeps a client's SPIFFE ID (Kuma's key).
pub const SPIFFE_ID_STATE_KEY: &str = "kuma.mesh_rate_limit.match.spiffe_id";
/// ... and the server name it asked for, when a match names one.
pub const SNI_STATE_KEY: &str = "kuma.mesh_rate_limit.match.sni";

/// The address inbound clusters forward to: the application beside the sidecar.
const APPLICATION_ADDRESS: &str = "127.0.0.1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The status the rate-limit filter answers with when the local-reply mapper finishes the answer.
const STAND_IN_STATUS: u16 = 429;
/// The same for a global limit's filter: a code Envoy lists but never answers with itself, so
/// that the mapper tells the two limits apart.
const GLOBAL_STAND_IN_STATUS: u16 = 510;
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

/// Stat prefix of a global limit's filter: `inbound_<port>_global`, apart from the local
/// limit's counters.
pub fn global_stat_prefix(port: u16) -> String {
    format!("inbound_{port}_global")
}

/// Where a rate-limit service URL (`http(s)://host[:port][/]`, as the policy validated it)
/// points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddress {
    pub tls: bool,
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    pub port: u16,
}

impl ServiceAddress {
    /// `None` for anything but `http(s)://host[:port]`, optionally with a trailing `/`.
    pub fn parse(url: &str) -> Option<ServiceAddress> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            (true, url.strip_prefix("https://")?)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after {
                "" => default_port,
                port => port.strip_prefix(':')?.parse().ok()?,
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return None;
        }
        Some(ServiceAddress {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` (`[v6]:port`), the `:authority` of requests to the service.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The Envoy cluster reaching the service: `ratelimit:<host>:<port>`, `ratelimit-tls:...`
    /// over TLS.
    pub fn cluster_name(&self) -> String {
        let scheme = if self.tls {
            "ratelimit-tls"
        } else {
            "ratelimit"
        };
        format!("{scheme}:{}:{}", self.host, self.port)
    }
}

/// How an inbound's global limit is enforced.
enum GlobalPath {
    /// This instance's share, in a local bucket.
    Share,
    /// Envoy's rate-limit filter asking the service.
    Service(ServiceAddress),
}

/// A global limit with a service URL that does not parse (the policy engine validates it, so
/// only hand-made limits get here) falls back to the local share rather than to no limit.
fn global_path(global: &GlobalLimit) -> GlobalPath {
    match global
        .rate_limit_service
        .as_deref()
        .and_then(ServiceAddress::parse)
    {
        Some(service) => GlobalPath::Service(service),
        None => GlobalPath::Share,
    }
}

/// Listeners and clusters for one Dataplane, in inbound order. Inbounds sharing a service port
/// share one cluster; rate-limit services' clusters follow, once per service.
pub fn generate(limits: &DataplaneLimits) -> Resources {
    let mut resources = Resources::default();
    let mut services = Vec::new();
    for inbound in &limits.inbounds {
        resources
            .listeners
            .push(inbound_listener(&limits.address, inbound));
        let cluster = inbound_cluster(inbound.service_port);
        if !resources.clusters.iter().any(|c| c.name == cluster.name) {
            resources.clusters.push(cluster);
        }
        if let Some(GlobalPath::Service(service)) = inbound.global.as_ref().map(global_path)
            && !services.contains(&service)
        {
            services.push(service);
        }
    }
    resources
        .clusters
        .extend(services.iter().map(rate_limit_service_cluster));
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
    if per_client(inbound) {
        filters.push(typed_filter(SET_FILTER_STATE, &match_state(inbound)));
    }
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

/// A rate-limit service's cluster: gRPC, so HTTP/2 (like the bootstrap's xDS cluster).
fn rate_limit_service_cluster(service: &ServiceAddress) -> Cluster {
    let name = service.cluster_name();
    let is_ip = service.host.parse::<std::net::IpAddr>().is_ok();
    // A DNS name is resolved (and re-resolved) by Envoy; an IP address is used as is.
    let kind = if is_ip {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(&service.host, service.port)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    let transport_socket = service.tls.then(|| TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
            &UpstreamTlsContext {
                sni: service.host.clone(),
                ..Default::default()
            },
        ))),
    });
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        typed_extension_protocol_options: [(HTTP_PROTOCOL_OPTIONS.to_string(), to_any(&http2))]
            .into_iter()
            .collect(),
        transport_socket,
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

/// What a rejection answers: a status and headers.
#[derive(Clone, Copy)]
struct Answer<'a> {
    status: RejectStatus,
    headers: &'a RejectHeaders,
}

impl<'a> Answer<'a> {
    fn of_http(limit: &'a HttpLimit) -> Answer<'a> {
        Answer {
            status: limit.status,
            headers: &limit.headers,
        }
    }

    fn of_global(limit: &'a GlobalLimit) -> Answer<'a> {
        Answer {
            status: limit.status,
            headers: &limit.headers,
        }
    }

    /// The rate-limit filter alone cannot answer as the policy says.
    fn needs_mapper(self) -> bool {
        let headers = self.headers.set.len() + self.headers.add.len();
        !envoy_knows_status(self.status.as_u16()) || headers > FILTER_MAX_HEADERS
    }

    /// What the filter itself answers: the policy's status and headers, or the stand-in.
    fn filter_answer(self, mapped: bool, stand_in: u16) -> (u16, Vec<HeaderValueOption>) {
        if mapped {
            (stand_in, Vec::new())
        } else {
            (self.status.as_u16(), reject_headers(self.headers))
        }
    }
}

/// Whether the inbound's limits answer through the local-reply mapper. When one limit needs
/// it, every limit on the inbound goes through it, each with its own stand-in: a limit
/// answering its own status directly could otherwise be taken for the other's stand-in.
fn mapped(inbound: &InboundLimits) -> bool {
    let http = inbound.http.as_ref().map(Answer::of_http);
    let global = inbound.global.as_ref().map(Answer::of_global);
    http.into_iter().chain(global).any(Answer::needs_mapper)
}

fn http_connection_manager(inbound: &InboundLimits) -> HttpConnectionManager {
    let mapped = mapped(inbound);
    let mut http_filters = Vec::new();
    let per_client = per_client(inbound);
    let local = match &inbound.http {
        Some(http) => Some(http_local_ratelimit(inbound.port, http, mapped)),
        // The clients' routes carry their own configs; the filter itself limits nothing.
        None if per_client => Some(unlimited(inbound.port)),
        None => None,
    };
    if let Some(local) = local {
        http_filters.push(HttpFilter {
            name: HTTP_LOCAL_RATELIMIT.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&local))),
            ..Default::default()
        });
    }
    let global = inbound.global.as_ref().map(|g| (g, global_path(g)));
    match &global {
        Some((limit, GlobalPath::Share)) => http_filters.push(HttpFilter {
            name: HTTP_GLOBAL_SHARE.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
                &global_share_ratelimit(inbound.port, limit, mapped),
            ))),
            ..Default::default()
        }),
        Some((limit, GlobalPath::Service(service))) => http_filters.push(HttpFilter {
            name: HTTP_RATELIMIT.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
                &global_service_ratelimit(inbound.port, limit, service, mapped),
            ))),
            ..Default::default()
        }),
        None => {}
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
            rate_limits: match &global {
                Some((limit, GlobalPath::Service(_))) => vec![route_rate_limit(limit)],
                _ => Vec::new(),
            },
            ..Default::default()
        })),
        ..Default::default()
    };
    // Clients' copies first: Envoy takes the first route that matches.
    let mut routes = if per_client {
        client_routes(inbound, &route, mapped)
    } else {
        Vec::new()
    };
    routes.push(route);
    let local_reply_config = mapped.then(|| {
        let http = inbound
            .http
            .as_ref()
            .map(|l| mapper(Answer::of_http(l), STAND_IN_STATUS));
        let global = inbound
            .global
            .as_ref()
            .map(|l| mapper(Answer::of_global(l), GLOBAL_STAND_IN_STATUS));
        LocalReplyConfig {
            mappers: http.into_iter().chain(global).collect(),
            ..Default::default()
        }
    });
    HttpConnectionManager {
        stat_prefix: stat_prefix(inbound.port),
        local_reply_config,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: format!("inbound:{}", inbound.service),
                virtual_hosts: vec![VirtualHost {
                    name: inbound.service.clone(),
                    domains: vec!["*".to_string()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters,
        ..Default::default()
    }
}

/// Whether the inbound gets per-client routes: an HTTP inbound with `sources`, and a limit
/// somewhere (Kuma renders nothing when neither the inbound nor any client is limited).
fn per_client(inbound: &InboundLimits) -> bool {
    inbound.protocol == Protocol::Http
        && !inbound.sources.is_empty()
        && (inbound.http.is_some() || inbound.sources.iter().any(|s| s.http.is_some()))
}

/// The network filter storing, once the TLS handshake is done, the client certificate's URI
/// SAN and, when a match names an SNI, the server name the client asked for.
fn match_state(inbound: &InboundLimits) -> SetFilterState {
    let value = |key: &str, format: &str| FilterStateValue {
        key: Some(filter_state_value::Key::ObjectKey(key.to_string())),
        factory_key: "envoy.string".to_string(),
        value: Some(filter_state_value::Value::FormatString(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(
                    DataSource {
                        specifier: Some(data_source::Specifier::InlineString(format.to_string())),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
        skip_if_empty: true,
        ..Default::default()
    };
    let mut values = vec![value(SPIFFE_ID_STATE_KEY, "%DOWNSTREAM_PEER_URI_SAN%")];
    if inbound.sources.iter().any(|s| s.sni.is_some()) {
        values.push(value(SNI_STATE_KEY, "%REQUESTED_SERVER_NAME%"));
    }
    SetFilterState {
        on_downstream_tls_handshake: values,
        ..Default::default()
    }
}

/// A copy of the inbound's route for each client match, most specific first, matching the
/// stored SPIFFE ID and carrying that client's limit.
fn client_routes(inbound: &InboundLimits, route: &Route, mapped: bool) -> Vec<Route> {
    let base = inbound.http.as_ref().map(Answer::of_http);
    inbound
        .sources
        .iter()
        .map(|source| {
            let mut copy = route.clone();
            if let Some(m) = copy.r#match.as_mut() {
                m.filter_state.push(spiffe_id_matcher(source));
                if let Some(sni) = &source.sni {
                    m.filter_state.push(state_matcher(
                        SNI_STATE_KEY,
                        string_matcher::MatchPattern::Exact(sni.clone()),
                    ));
                }
            }
            let config = match &source.http {
                Some(limit) => {
                    let answer = client_answer(Answer::of_http(limit), base, mapped);
                    limited(inbound.port, limit, answer)
                }
                None => disabled(inbound.port),
            };
            copy.typed_per_filter_config
                .insert(HTTP_LOCAL_RATELIMIT.to_string(), to_any(&config));
            copy
        })
        .collect()
}

fn spiffe_id_matcher(source: &SourceLimit) -> FilterStateMatcher {
    let value = source.spiffe_id.value.clone();
    state_matcher(
        SPIFFE_ID_STATE_KEY,
        match source.spiffe_id.kind {
            SpiffeMatchType::Exact => string_matcher::MatchPattern::Exact(value),
            SpiffeMatchType::Prefix => string_matcher::MatchPattern::Prefix(value),
        },
    )
}

fn state_matcher(key: &str, pattern: string_matcher::MatchPattern) -> FilterStateMatcher {
    FilterStateMatcher {
        key: key.to_string(),
        matcher: Some(filter_state_matcher::Matcher::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })),
    }
}

/// What a client's limit answers: its own status and headers where the filter can give them
/// without the mapper (which answers for the inbound's limit), else the inbound's answer.
fn client_answer(
    own: Answer<'_>,
    base: Option<Answer<'_>>,
    mapped: bool,
) -> (u16, Vec<HeaderValueOption>) {
    let same = base.is_some_and(|b| b.status == own.status && b.headers == own.headers);
    if same {
        return own.filter_answer(mapped, STAND_IN_STATUS);
    }
    let mapper_would_take_it = mapped && own.status.as_u16() == STAND_IN_STATUS;
    if !own.needs_mapper() && !mapper_would_take_it {
        return own.filter_answer(false, STAND_IN_STATUS);
    }
    // The stand-in: the mapper, when there is one, gives the inbound's answer.
    (STAND_IN_STATUS, Vec::new())
}

/// A local rate limit with this answer, enabled and enforced for every request.
fn limited(
    port: u16,
    limit: &HttpLimit,
    answer: (u16, Vec<HeaderValueOption>),
) -> HttpLocalRateLimit {
    let (status, headers) = answer;
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

/// A route's local rate limit that never applies: Envoy wants a bucket in a per-route config,
/// so it gets one, enabled for 0% of requests (Kuma leaves such a route without a config,
/// where its filter-level config limits nothing; here the filter-level config may limit).
fn disabled(port: u16) -> HttpLocalRateLimit {
    let never = |runtime_key: &str| RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 0,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: runtime_key.to_string(),
    };
    HttpLocalRateLimit {
        stat_prefix: stat_prefix(port),
        token_bucket: Some(TokenBucket {
            max_tokens: 1,
            tokens_per_fill: Some(UInt32Value { value: 1 }),
            fill_interval: Some(duration(Duration::from_secs(1))),
        }),
        filter_enabled: Some(never("local_rate_limit_enabled")),
        filter_enforced: Some(never("local_rate_limit_enforced")),
        ..Default::default()
    }
}

/// A local rate limit config without a bucket: it limits nothing (Kuma's filter-level config).
fn unlimited(port: u16) -> HttpLocalRateLimit {
    HttpLocalRateLimit {
        stat_prefix: stat_prefix(port),
        ..Default::default()
    }
}

/// The HTTP local rate limit of an inbound, enabled and enforced for every request.
fn http_local_ratelimit(port: u16, limit: &HttpLimit, mapped: bool) -> HttpLocalRateLimit {
    limited(
        port,
        limit,
        Answer::of_http(limit).filter_answer(mapped, STAND_IN_STATUS),
    )
}

/// This instance's share of a global limit, enforced locally (counting only, in `Shadow`).
fn global_share_ratelimit(port: u16, limit: &GlobalLimit, mapped: bool) -> HttpLocalRateLimit {
    let (status, headers) = Answer::of_global(limit).filter_answer(mapped, GLOBAL_STAND_IN_STATUS);
    HttpLocalRateLimit {
        stat_prefix: global_stat_prefix(port),
        status: Some(HttpStatus {
            code: i32::from(status),
        }),
        token_bucket: Some(token_bucket(limit.share)),
        filter_enabled: Some(always("global_rate_limit_enabled")),
        filter_enforced: Some(enforced(limit.mode, "global_rate_limit_enforced")),
        response_headers_to_add: headers,
        ..Default::default()
    }
}

/// Envoy's rate-limit filter asking `service` about the route's descriptor.
fn global_service_ratelimit(
    port: u16,
    limit: &GlobalLimit,
    service: &ServiceAddress,
    mapped: bool,
) -> HttpRateLimit {
    let (status, headers) = Answer::of_global(limit).filter_answer(mapped, GLOBAL_STAND_IN_STATUS);
    // A shadow limit never rejects, not even when the service is away.
    let deny = limit.failure_mode == FailureMode::Closed && limit.mode == GlobalMode::Limit;
    HttpRateLimit {
        domain: DESCRIPTOR_DOMAIN.to_string(),
        timeout: Some(duration(limit.timeout)),
        failure_mode_deny: deny,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: service.cluster_name(),
                        // Envoy's default, the cluster name, is no valid `:authority`: gRPC
                        // servers reset such streams.
                        authority: service.authority(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
        }),
        rate_limited_status: Some(HttpStatus {
            code: i32::from(status),
        }),
        response_headers_to_add: headers,
        stat_prefix: global_stat_prefix(port),
        filter_enforced: Some(enforced(limit.mode, "global_rate_limit_enforced")),
        ..Default::default()
    }
}

/// The route's rate-limit actions: one descriptor, the global limit's, of fixed entries.
fn route_rate_limit(limit: &GlobalLimit) -> RouteRateLimit {
    use route_rate_limit::action::{ActionSpecifier, GenericKey};
    let actions = limit
        .descriptor()
        .into_iter()
        .map(|(key, value)| route_rate_limit::Action {
            action_specifier: Some(ActionSpecifier::GenericKey(GenericKey {
                descriptor_key: key,
                descriptor_value: value,
                ..Default::default()
            })),
        })
        .collect();
    RouteRateLimit {
        actions,
        ..Default::default()
    }
}

/// 100% for `Limit`, 0% for `Shadow` (the filter then counts without rejecting).
fn enforced(mode: GlobalMode, runtime_key: &str) -> RuntimeFractionalPercent {
    let mut fraction = always(runtime_key);
    if mode == GlobalMode::Shadow
        && let Some(value) = fraction.default_value.as_mut()
    {
        value.numerator = 0;
    }
    fraction
}

/// The policy's headers for a rejected request: `set` overwrites (or adds), `add` appends.
fn reject_headers(headers: &RejectHeaders) -> Vec<HeaderValueOption> {
    let header = |name: &str, value: &str, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let set = headers.set.iter().map(|h| {
        header(
            h.name().as_str(),
            h.value_str(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        )
    });
    let add = headers.add.iter().map(|h| {
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

/// Turns a rate limiter's stand-in local replies into the policy's status and headers.
fn mapper(answer: Answer<'_>, stand_in: u16) -> ResponseMapper {
    let is_stand_in = AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(
            StatusCodeFilter {
                comparison: Some(ComparisonFilter {
                    op: comparison_filter::Op::Eq as i32,
                    value: Some(RuntimeUInt32 {
                        default_value: u32::from(stand_in),
                        runtime_key: if stand_in == STAND_IN_STATUS {
                            "meshlimit.rate_limit_stand_in_status"
                        } else {
                            "meshlimit.global_rate_limit_stand_in_status"
                        }
                        .to_string(),
                    }),
                }),
            },
        )),
    };
    ResponseMapper {
        filter: Some(is_stand_in),
        status_code: Some(UInt32Value {
            value: u32::from(answer.status.as_u16()),
        }),
        headers_to_add: reject_headers(answer.headers),
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
    use meshlimit_policy::effective::HeaderValue as PolicyHeader;

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
            sources: Vec::new(),
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
            policy: "limit".into(),
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
            policy: "limit".into(),
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
            policy: "limit".into(),
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

    fn global(service: Option<&str>) -> GlobalLimit {
        let total = rate(10, Duration::from_secs(60));
        GlobalLimit {
            policy: "global".into(),
            service: "backend".to_string(),
            key: "mgrl/default/p/backend".to_string(),
            request_rate: total,
            share: meshlimit_policy::share(total, 3, 0),
            instances: 3,
            index: 0,
            mode: GlobalMode::Limit,
            status: RejectStatus::new(503).expect("an HTTP status"),
            headers: RejectHeaders {
                set: vec![PolicyHeader::new("x-global", "yes").expect("valid header")],
                add: vec![],
            },
            rate_limit_service: service.map(str::to_string),
            timeout: Duration::from_millis(25),
            failure_mode: FailureMode::Closed,
            policies: vec!["p".to_string()],
        }
    }

    fn hcm_of(resources: &Resources, listener: usize) -> HttpConnectionManager {
        let chain = filters(&resources.listeners[listener]);
        typed(chain.last().expect("a filter"))
    }

    fn filter_names(hcm: &HttpConnectionManager) -> Vec<&str> {
        hcm.http_filters.iter().map(|f| f.name.as_str()).collect()
    }

    fn numerator(fraction: &Option<RuntimeFractionalPercent>) -> Option<u32> {
        fraction
            .as_ref()
            .and_then(|f| f.default_value)
            .map(|v| v.numerator)
    }

    #[test]
    fn without_a_service_the_share_is_enforced_after_the_local_limit() {
        let mut web = inbound(8080, Protocol::Http);
        web.http = Some(HttpLimit {
            policy: "limit".into(),
            request_rate: rate(100, Duration::from_secs(1)),
            status: RejectStatus::new(429).expect("an HTTP status"),
            headers: RejectHeaders::default(),
        });
        web.global = Some(global(None));
        let resources = generate(&dataplane(vec![web.clone()]));
        assert_eq!(resources.clusters.len(), 1, "no service, no cluster");
        let hcm = hcm_of(&resources, 0);
        assert_eq!(
            filter_names(&hcm),
            [HTTP_LOCAL_RATELIMIT, HTTP_GLOBAL_SHARE, ROUTER]
        );
        let share: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[1]);
        // 10 per minute among 3: 4 for the first.
        let bucket = share.token_bucket.expect("token bucket");
        assert_eq!(
            (bucket.max_tokens, bucket.fill_interval),
            (4, Some(duration(Duration::from_secs(60))))
        );
        assert_eq!(share.status, Some(HttpStatus { code: 503 }));
        assert_eq!(share.response_headers_to_add.len(), 1);
        assert_eq!(share.stat_prefix, "inbound_8080_global");
        assert_eq!(numerator(&share.filter_enforced), Some(100));
        assert_eq!(hcm.local_reply_config, None);

        web.global.as_mut().expect("global").mode = GlobalMode::Shadow;
        let hcm = hcm_of(&generate(&dataplane(vec![web])), 0);
        let share: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[1]);
        assert_eq!(numerator(&share.filter_enabled), Some(100));
        assert_eq!(numerator(&share.filter_enforced), Some(0), "counts only");
    }

    #[test]
    fn with_a_service_envoy_asks_it_with_the_limits_descriptor() {
        let mut web = inbound(8080, Protocol::Http);
        web.global = Some(global(Some("http://10.0.0.9:8081")));
        let resources = generate(&dataplane(vec![web.clone()]));
        let hcm = hcm_of(&resources, 0);
        assert_eq!(filter_names(&hcm), [HTTP_RATELIMIT, ROUTER]);
        let rl: HttpRateLimit = http_filter_config(&hcm.http_filters[0]);
        assert_eq!(rl.domain, "meshlimit");
        assert!(rl.failure_mode_deny, "Closed");
        assert_eq!(rl.timeout, Some(duration(Duration::from_millis(25))));
        assert_eq!(rl.rate_limited_status, Some(HttpStatus { code: 503 }));
        assert_eq!(rl.enable_x_ratelimit_headers, 0);
        assert_eq!(rl.response_headers_to_add.len(), 1);
        assert_eq!(numerator(&rl.filter_enforced), Some(100));
        let service = rl.rate_limit_service.expect("service");
        assert_eq!(service.transport_api_version, ApiVersion::V3 as i32);
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) =
            service.grpc_service.and_then(|g| g.target_specifier)
        else {
            panic!("Envoy's gRPC client expected");
        };
        assert_eq!(grpc.cluster_name, "ratelimit:10.0.0.9:8081");
        assert_eq!(grpc.authority, "10.0.0.9:8081");

        // The route sends the descriptor, which reads back as the limit.
        let route = &hcm
            .route_specifier
            .as_ref()
            .map(|r| match r {
                http_connection_manager::RouteSpecifier::RouteConfig(c) => c.clone(),
                other => panic!("inline routes expected: {other:?}"),
            })
            .expect("routes")
            .virtual_hosts[0]
            .routes[0];
        let Some(route::Action::Route(action)) = &route.action else {
            panic!("a route action expected");
        };
        assert_eq!(action.rate_limits.len(), 1);
        let entries: Vec<(String, String)> = action.rate_limits[0]
            .actions
            .iter()
            .map(|a| match &a.action_specifier {
                Some(route_rate_limit::action::ActionSpecifier::GenericKey(k)) => {
                    (k.descriptor_key.clone(), k.descriptor_value.clone())
                }
                other => panic!("generic keys expected: {other:?}"),
            })
            .collect();
        let limit = web.global.as_ref().expect("global");
        assert_eq!(entries, limit.descriptor());
        let read = meshlimit_policy::global::parse_descriptor(
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .expect("a meshlimit descriptor");
        assert_eq!(
            (read.key.as_str(), read.total),
            (limit.key.as_str(), limit.request_rate)
        );

        // The service's cluster: HTTP/2, static for an IP address.
        let cluster = &resources.clusters[1];
        assert_eq!(cluster.name, "ratelimit:10.0.0.9:8081");
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        let options = &cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
        let options = HttpProtocolOptions::decode(options.value.as_slice()).expect("decodes");
        assert!(matches!(
            options.upstream_protocol_options,
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)
                    )
                }
            ))
        ));
        assert_eq!(cluster.transport_socket, None);
    }

    #[test]
    fn shadow_and_local_share_never_deny_when_the_service_fails() {
        for (mode, failure, deny, enforce) in [
            (GlobalMode::Limit, FailureMode::Closed, true, 100),
            (GlobalMode::Limit, FailureMode::Open, false, 100),
            (GlobalMode::Limit, FailureMode::LocalShare, false, 100),
            (GlobalMode::Shadow, FailureMode::Closed, false, 0),
        ] {
            let mut web = inbound(8080, Protocol::Http);
            let mut limit = global(Some("http://10.0.0.9:8081"));
            (limit.mode, limit.failure_mode) = (mode, failure);
            web.global = Some(limit);
            let hcm = hcm_of(&generate(&dataplane(vec![web])), 0);
            let rl: HttpRateLimit = http_filter_config(&hcm.http_filters[0]);
            assert_eq!(rl.failure_mode_deny, deny, "{mode:?} {failure:?}");
            assert_eq!(numerator(&rl.filter_enforced), Some(enforce));
        }
    }

    #[test]
    fn services_get_one_cluster_each_resolved_by_dns_or_tls_as_named() {
        let mut a = inbound(8080, Protocol::Http);
        a.global = Some(global(Some("https://rls.example:8443/")));
        let mut b = inbound(8081, Protocol::Http);
        b.global = Some(global(Some("https://rls.example:8443")));
        let mut c = inbound(8082, Protocol::Http);
        c.global = Some(global(Some("http://[::1]:8081")));
        let resources = generate(&dataplane(vec![a, b, c]));
        let names: Vec<_> = resources.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "localhost:9080",
                "localhost:9081",
                "localhost:9082",
                "ratelimit-tls:rls.example:8443",
                "ratelimit:::1:8081"
            ]
        );
        let tls = &resources.clusters[3];
        assert_eq!(
            tls.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::StrictDns as i32
            ))
        );
        let socket = tls.transport_socket.as_ref().expect("TLS");
        assert_eq!(socket.name, TLS_TRANSPORT_SOCKET);
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("typed TLS config expected");
        };
        let context = UpstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(context.sni, "rls.example");
        let hcm = hcm_of(&resources, 2);
        let rl: HttpRateLimit = http_filter_config(&hcm.http_filters[0]);
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) = rl
            .rate_limit_service
            .and_then(|s| s.grpc_service)
            .and_then(|g| g.target_specifier)
        else {
            panic!("Envoy's gRPC client expected");
        };
        assert_eq!(grpc.authority, "[::1]:8081");
    }

    #[test]
    fn service_urls_parse_as_the_policy_writes_them() {
        let parse = |url| ServiceAddress::parse(url).map(|a| (a.tls, a.host, a.port));
        assert_eq!(
            parse("http://rls:10003"),
            Some((false, "rls".into(), 10003))
        );
        assert_eq!(parse("https://rls/"), Some((true, "rls".into(), 443)));
        assert_eq!(parse("http://rls"), Some((false, "rls".into(), 80)));
        assert_eq!(parse("http://[::1]"), Some((false, "::1".into(), 80)));
        for bad in [
            "rls:10003",
            "grpc://rls:1",
            "http://",
            "http://rls:0",
            "http://rls:x",
            "http://rls/path",
            "http://u@rls:1",
            "http://[::1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        // A URL that does not parse falls back to the share rather than to no limit.
        let mut web = inbound(8080, Protocol::Http);
        web.global = Some(global(Some("not a url")));
        let hcm = hcm_of(&generate(&dataplane(vec![web])), 0);
        assert_eq!(filter_names(&hcm), [HTTP_GLOBAL_SHARE, ROUTER]);
    }

    #[test]
    fn when_one_limit_needs_the_mapper_both_answer_through_it() {
        let mut web = inbound(8080, Protocol::Http);
        web.http = Some(HttpLimit {
            policy: "limit".into(),
            request_rate: rate(100, Duration::from_secs(1)),
            status: RejectStatus::new(418).expect("an HTTP status"),
            headers: RejectHeaders::default(),
        });
        let mut limit = global(Some("http://10.0.0.9:8081"));
        limit.status = RejectStatus::new(429).expect("an HTTP status");
        web.global = Some(limit);
        let hcm = hcm_of(&generate(&dataplane(vec![web])), 0);
        let local: HttpLocalRateLimit = http_filter_config(&hcm.http_filters[0]);
        let rl: HttpRateLimit = http_filter_config(&hcm.http_filters[1]);
        assert_eq!(local.status, Some(HttpStatus { code: 429 }));
        // The global limit's own 429 would be taken for the local stand-in.
        assert_eq!(rl.rate_limited_status, Some(HttpStatus { code: 510 }));
        assert!(rl.response_headers_to_add.is_empty());
        let mappers = &hcm.local_reply_config.expect("mapper").mappers;
        let mapped: Vec<_> = mappers
            .iter()
            .map(|m| {
                let Some(access_log_filter::FilterSpecifier::StatusCodeFilter(f)) =
                    m.filter.as_ref().and_then(|f| f.filter_specifier.clone())
                else {
                    panic!("status filter expected");
                };
                let from = f.comparison.and_then(|c| c.value).map(|v| v.default_value);
                (from, m.status_code.map(|s| s.value), m.headers_to_add.len())
            })
            .collect();
        assert_eq!(
            mapped,
            [(Some(429), Some(418), 0), (Some(510), Some(429), 1)]
        );
    }

    #[test]
    fn node_id_joins_mesh_and_dataplane() {
        assert_eq!(node_id("default", "backend-1"), "default.backend-1");
    }
}
