//! The fault scenarios of `scripts/flood` against the real binary: floods past the connection
//! caps, slow clients, idle HTTP/2, a hung application, malformed and oversized requests and a
//! smuggling attempt; every check must hold and the proxy must drain and exit 0 after them.

#[test]
fn the_proxy_survives_every_flood_scenario_and_answers_correctly() {
    let report = meshlimit_flood::run(&meshlimit_flood::Config {
        meshlimit: env!("CARGO_BIN_EXE_meshlimit").into(),
        scale: 1,
    })
    .expect("the target starts");
    let table = report.render();
    println!("{table}");
    assert!(report.checks.len() >= 15, "{table}");
    assert!(report.passed(), "{table}");
}
