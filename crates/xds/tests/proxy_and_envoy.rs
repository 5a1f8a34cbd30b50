//! One policy file, two data paths: meshlimit's own proxy and an Envoy fed over xDS enforce it
//! on the same traffic, and admit and reject the same requests and connections.

mod support;

use std::sync::Arc;

use meshlimit_bucket::MonotonicClock;
use meshlimit_policy::{DataplaneLimits, ResourceSet, Versioned, parse_documents};
use meshlimit_proxy::{Proxy, ProxyOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Two instances of `web` (HTTP) and of `db` (TCP): `*-proxy` behind meshlimit's proxy,
/// `*-envoy` behind Envoy. The policies select by service, so both get the same limits.
fn policies(ports: &Ports) -> String {
    let dataplane = |name: &str, web: u16, db: u16| {
        format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  \
             inbound:\n    - port: {web}\n      servicePort: {}\n      tags:\n        \
             kuma.io/service: web\n        kuma.io/protocol: http\n    - port: {db}\n      \
             servicePort: {}\n      tags:\n        kuma.io/service: db\n        \
             kuma.io/protocol: tcp\n",
            ports.web_backend, ports.db_backend
        )
    };
    [
        dataplane("via-proxy", ports.proxy_web, ports.proxy_db),
        dataplane("via-envoy", ports.envoy_web, ports.envoy_db),
        "type: MeshRateLimit
mesh: default
name: web-requests
spec:
  targetRef:
    kind: MeshService
    name: web
  rules:
    - default:
        local:
          http:
            requestRate:
              num: 7
              interval: 1h
            onRateLimit:
              status: 423
              headers:
                set:
                  - name: x-limited
                    value: \"true\"
                add:
                  - name: x-retry
                    value: later
"
        .to_string(),
        "type: MeshRateLimit
mesh: default
name: db-connections
spec:
  targetRef:
    kind: MeshService
    name: db
  rules:
    - default:
        local:
          tcp:
            connectionRate:
              num: 4
              interval: 1h
"
        .to_string(),
    ]
    .join("---\n")
}

struct Ports {
    web_backend: u16,
    db_backend: u16,
    proxy_web: u16,
    proxy_db: u16,
    envoy_web: u16,
    envoy_db: u16,
}

fn effective(set: &ResourceSet, dataplane: &str) -> DataplaneLimits {
    set.effective("default", dataplane)
        .unwrap_or_else(|| panic!("no effective limits for {dataplane}"))
}

/// What a client sees of one request: the status and the rate-limit headers.
async fn observe_request(port: u16) -> (u16, Vec<String>, Vec<String>) {
    let response = http_get(([127, 0, 0, 1], port).into(), "/")
        .await
        .expect("request");
    let values = |name| {
        response
            .header_values(name)
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    (response.status, values("x-limited"), values("x-retry"))
}

/// Whether one connection is relayed (echoes) or closed.
async fn observe_connection(port: u16) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the kernel accepts");
    let _ = stream.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("relayed or closed in time")
        .is_ok_and(|_| &buf == b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_and_envoy_admit_the_same_requests_and_connections() {
    let (web_backend, web_served) = http_backend().await;
    let (db_backend, db_accepted) = echo_backend().await;
    let ports = Ports {
        web_backend,
        db_backend,
        proxy_web: free_port(),
        proxy_db: free_port(),
        envoy_web: free_port(),
        envoy_db: free_port(),
    };
    let parsed = parse_documents("side-by-side.yaml", &policies(&ports))
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    let set = ResourceSet::from_parsed(parsed).unwrap_or_else(|problems| panic!("{problems:#?}"));
    let via_proxy = effective(&set, "via-proxy");
    let via_envoy = effective(&set, "via-envoy");
    for limits in [&via_proxy, &via_envoy] {
        assert!(
            limits
                .inbounds
                .iter()
                .all(|i| i.http.is_some() || i.tcp.is_some()),
            "every inbound is limited: {limits:#?}"
        );
    }

    let (_sender, receiver) = watch::channel(Versioned::new(1, vec![via_proxy]));
    let proxy = Proxy::spawn(ProxyOptions::default(), Arc::new(MonotonicClock), receiver)
        .expect("starting the proxy");
    proxy
        .status()
        .wait_for(|s| s.generation >= 1 && s.listeners.len() == 2)
        .await
        .expect("the proxy applies its limits");

    let (handle, xds) = start_xds().await;
    handle.update(vec![via_envoy.clone()]);
    let envoy = Envoy::start("default", "via-envoy", xds).await;
    envoy.wait_running(&via_envoy).await;

    // The same requests, alternating between the two paths.
    let (mut through_proxy, mut through_envoy) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        through_proxy.push(observe_request(ports.proxy_web).await);
        through_envoy.push(observe_request(ports.envoy_web).await);
    }
    assert_eq!(through_proxy, through_envoy);
    let admitted = through_proxy.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(admitted, 7, "{through_proxy:?}");
    let rejected = (423, vec!["true".to_string()], vec!["later".to_string()]);
    assert!(
        through_proxy[7..].iter().all(|r| *r == rejected),
        "{through_proxy:?}"
    );
    assert_eq!(web_served.load(std::sync::atomic::Ordering::SeqCst), 14);

    let (mut relayed_proxy, mut relayed_envoy) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        relayed_proxy.push(observe_connection(ports.proxy_db).await);
        relayed_envoy.push(observe_connection(ports.envoy_db).await);
    }
    assert_eq!(relayed_proxy, relayed_envoy);
    assert_eq!(relayed_proxy, [true, true, true, true, false, false]);
    assert_eq!(db_accepted.load(std::sync::atomic::Ordering::SeqCst), 8);

    proxy.shutdown().await;
}
