//! `meshlimit envoy bootstrap`, run as the real binary, its output checked by a real Envoy.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn meshlimit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("meshlimit runs")
}

/// The Envoy binary: `MESHLIMIT_ENVOY`, else `<workspace>/.venv-envoy/bin/envoy`.
fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("MESHLIMIT_ENVOY").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-envoy/bin/envoy"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "Envoy not found at {}: run `scripts/setup envoy` (or set MESHLIMIT_ENVOY)",
        path.display()
    );
    path
}

fn bootstrap(args: &[&str]) -> String {
    let out = meshlimit(&[&["envoy", "bootstrap"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

struct Killed(Child);

struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bootstrap_names_the_node_and_the_xds_server() {
    let yaml = bootstrap(&[
        "--dataplane",
        "backend-1",
        "--mesh",
        "prod",
        "--xds",
        "10.1.2.3:15678",
    ]);
    // The structure is checked by the library's tests and by Envoy below; here, the flags.
    for expected in [
        "id: prod.backend-1",
        "address: 10.1.2.3",
        "port_value: 15678",
        "port_value: 9901",
        "type: STATIC",
    ] {
        assert!(
            yaml.contains(expected),
            "{expected:?} missing from:\n{yaml}"
        );
    }
}

#[test]
fn bad_arguments_are_explained() {
    let out = meshlimit(&["envoy", "bootstrap", "--dataplane", "a", "--xds", "nowhere"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--xds") && err.contains("nowhere") && err.contains("no port"),
        "{err}"
    );
    let out = meshlimit(&["envoy", "bootstrap", "--dataplane", " "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dataplane must not be empty"));
}

#[test]
fn envoy_accepts_the_bootstrap_and_dials_the_xds_server_over_http2() {
    let xds = TcpListener::bind("127.0.0.1:0").expect("bind");
    let xds_address = xds.local_addr().expect("address").to_string();
    let yaml = bootstrap(&[
        "--dataplane",
        "web-1",
        "--xds",
        &xds_address,
        "--admin-port",
        "0",
    ]);
    let config = std::env::temp_dir().join(format!(
        "meshlimit-envoy-bootstrap-{}-{}.yaml",
        std::process::id(),
        xds.local_addr().expect("address").port()
    ));
    std::fs::write(&config, &yaml).expect("write bootstrap");
    let _cleanup = Removed(config.clone());

    let validated = Command::new(envoy_binary())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .arg("--disable-hot-restart")
        .output()
        .expect("Envoy runs");
    assert!(
        validated.status.success(),
        "Envoy rejects the bootstrap:\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let _envoy = Killed(
        Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Envoy"),
    );
    // Envoy dials ADS at start-up; poll for its connection against a deadline.
    xds.set_nonblocking(true).expect("non-blocking");
    let deadline = std::time::SystemTime::now() + Duration::from_secs(15);
    let mut connection = loop {
        match xds.accept() {
            Ok((connection, _)) => break connection,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::SystemTime::now() < deadline,
                    "Envoy never dialed the xDS server"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    connection.set_nonblocking(false).expect("blocking");
    connection
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut preface = [0u8; 24];
    connection
        .read_exact(&mut preface)
        .expect("Envoy speaks first");
    assert_eq!(
        &preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "gRPC needs HTTP/2"
    );
}
