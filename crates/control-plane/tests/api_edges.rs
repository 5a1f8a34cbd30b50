//! Requests at the edges of the API, over a real socket with hand-written HTTP: a body that
//! starts with a UTF-8 byte order mark, the `Bearer` scheme in any case, malformed query strings
//! (answered with the same problem JSON as every other 400), and a listing in a mesh that does
//! not exist (404, as `openapi.yaml` and Kuma say), and `GET /xds` in pages.

use std::io::{Read, Write};
use std::net::TcpStream;

use meshlimit_control_plane::{ApiConfig, ControlPlane, api};
use meshlimit_testkit::fixtures::{Target, http_limit_yaml};

fn policy() -> String {
    http_limit_yaml("web", Target::Sidecars, 5, "1s")
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// One request on a fresh connection, with `headers` as given.
fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("the API accepts");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("sent");
    stream.write_all(body).expect("sent");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("an answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole answer");
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status"),
        content_type: head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default(),
        body: body.to_string(),
    }
}

/// A problem JSON 400 whose detail contains `want`.
fn assert_problem(answer: &Answer, status: u16, want: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{}",
        answer.body
    );
    let problem: serde_json::Value = serde_json::from_str(&answer.body).expect("problem JSON");
    assert_eq!(problem["status"], status);
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(detail.contains(want), "{detail:?} lacks {want:?}");
}

/// Serves the API on a loopback port from a thread of its own; returns `host:port`.
fn serve(token: Option<&str>) -> (String, tempfile::TempDir) {
    serve_with(ApiConfig {
        token: token.map(str::to_string),
        ..ApiConfig::default()
    })
}

fn serve_with(config: ApiConfig) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cp = ControlPlane::open(&dir.path().join("store.redb")).expect("the store opens");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound").to_string();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            let _ = meshlimit_control_plane::serve(listener, api::router(cp, config)).await;
        });
    });
    (addr, dir)
}

#[test]
fn a_body_with_a_byte_order_mark_is_accepted() {
    let (addr, _dir) = serve(None);
    let mut body = "\u{feff}".as_bytes().to_vec();
    body.extend_from_slice(policy().as_bytes());
    let applied = request(
        &addr,
        "POST",
        "/apply",
        &["Content-Type: application/yaml"],
        &body,
    );
    assert_eq!(applied.status, 200, "{}", applied.body);
    let put = request(
        &addr,
        "PUT",
        "/meshes/default/meshratelimits/web",
        &["Content-Type: application/yaml"],
        &body,
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let stored = request(&addr, "GET", "/meshes/default/meshratelimits/web", &[], b"");
    assert_eq!(stored.status, 200, "{}", stored.body);
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_the_token_is_still_checked() {
    let (addr, _dir) = serve(Some("s3cret"));
    for header in [
        "Authorization: Bearer s3cret",
        "Authorization: bearer s3cret",
        "Authorization: BEARER s3cret",
        "Authorization: bEaReR   s3cret",
    ] {
        let answer = request(&addr, "GET", "/meshes", &[header], b"");
        assert_eq!(answer.status, 200, "{header}: {}", answer.body);
    }
    for header in [
        "Authorization: bearer wrong",
        "Authorization: Basic s3cret",
        "Authorization: bearer",
        "Authorization: s3cret",
    ] {
        let answer = request(&addr, "GET", "/meshes", &[header], b"");
        assert_problem(&answer, 401, "Bearer");
    }
}

#[test]
fn bad_query_values_get_the_problem_json_of_every_400() {
    let (addr, _dir) = serve(None);
    for path in [
        "/meshes?size=-1",
        "/meshes?offset=abc",
        "/meshes/default/meshratelimits?size=ten",
        "/meshratelimits?offset=-3",
        "/apply?dryRun=maybe",
        "/kernel-limits?watch=sometimes",
    ] {
        let method = if path.starts_with("/apply") {
            "POST"
        } else {
            "GET"
        };
        let answer = request(
            &addr,
            method,
            path,
            &["Content-Type: application/yaml"],
            policy().as_bytes(),
        );
        assert_problem(&answer, 400, "the query string");
    }
    // The ones the handler itself checks read the same way.
    assert_problem(
        &request(&addr, "GET", "/meshes?size=0", &[], b""),
        400,
        "size must be between 1 and",
    );
}

#[test]
fn listing_in_a_mesh_that_does_not_exist_is_not_found() {
    let (addr, _dir) = serve(None);
    let answer = request(&addr, "GET", "/meshes/nowhere/meshratelimits", &[], b"");
    assert_problem(&answer, 404, "nowhere");
    // The implicit default mesh and a stored one list (empty) as before.
    let listed = request(&addr, "GET", "/meshes/default/meshratelimits", &[], b"");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let mesh = request(
        &addr,
        "PUT",
        "/meshes/other",
        &["Content-Type: application/yaml"],
        b"type: Mesh\nname: other\n",
    );
    assert_eq!(mesh.status, 201, "{}", mesh.body);
    let listed = request(&addr, "GET", "/meshes/other/dataplanes", &[], b"");
    assert_eq!(listed.status, 200, "{}", listed.body);
}

#[test]
fn the_xds_status_comes_in_bounded_pages() {
    let (_server, xds) = meshlimit_xds::XdsServer::new();
    let dataplanes = (0..250)
        .map(|i| meshlimit_policy::effective::DataplaneLimits {
            dataplane: format!("dp-{i:03}"),
            mesh: "default".into(),
            address: "127.0.0.1".into(),
            inbounds: vec![],
            kernel: vec![],
        })
        .collect();
    xds.update(dataplanes);
    let (addr, _dir) = serve_with(ApiConfig {
        xds: Some(xds),
        ..ApiConfig::default()
    });
    let mut seen = Vec::new();
    let mut next = Some("/xds".to_string());
    let mut pages = 0;
    while let Some(path) = next {
        let answer = request(&addr, "GET", &path, &[], b"");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        let nodes = page["nodes"].as_array().expect("nodes");
        assert!(nodes.len() <= 100, "a default page holds at most 100");
        seen.extend(
            nodes
                .iter()
                .map(|n| n["node"].as_str().expect("id").to_string()),
        );
        // Still what `meshlimit diagnose` reads.
        let status: meshlimit_xds::XdsStatus =
            serde_json::from_str(&answer.body).expect("an XdsStatus");
        assert_eq!(status.nodes.len(), nodes.len());
        next = page["next"].as_str().map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..250).map(|i| format!("default.dp-{i:03}")).collect();
    assert_eq!(seen, expected);
    let small = request(&addr, "GET", "/xds?size=7&offset=245", &[], b"");
    let page: serde_json::Value = serde_json::from_str(&small.body).expect("JSON");
    assert_eq!(page["nodes"].as_array().map(Vec::len), Some(5));
    assert!(page["next"].is_null());
    assert_problem(
        &request(&addr, "GET", "/xds?size=5000", &[], b""),
        400,
        "size",
    );
    assert_problem(
        &request(&addr, "GET", "/xds?size=-1", &[], b""),
        400,
        "query string",
    );
}
