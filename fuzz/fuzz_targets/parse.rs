//! Parser + validator + engine on arbitrary input: never a panic, and whatever is accepted
//! writes back (YAML and JSON) into text that parses to the same resources.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlimit_policy::{ResourceSet, parse_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_documents("fuzz.yaml", text) else {
        return;
    };
    for resource in &parsed.resources {
        let yaml = serde_yaml_ng::to_string(resource).expect("a resource serializes to YAML");
        let again = parse_documents("again.yaml", &yaml)
            .unwrap_or_else(|p| panic!("written YAML does not parse: {p:?}\n{yaml}"));
        assert_eq!(
            again.resources.as_slice(),
            std::slice::from_ref(resource),
            "{yaml}"
        );
        let json = serde_json::to_string(resource).expect("a resource serializes to JSON");
        let again = parse_documents("again.json", &json)
            .unwrap_or_else(|p| panic!("written JSON does not parse: {p:?}\n{json}"));
        assert_eq!(
            again.resources.as_slice(),
            std::slice::from_ref(resource),
            "{json}"
        );
    }
    if let Ok(set) = ResourceSet::new(parsed.resources) {
        for limits in set.all_effective() {
            let _ = serde_json::to_string(&limits).expect("limits serialize");
            let _ = set.source_limits(&limits.mesh, &limits.dataplane);
        }
        let _ = set.kernel_limits();
    }
});
