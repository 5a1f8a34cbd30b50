//! Where each resource lives in the REST API.

use meshlimit_policy::Kind;

/// The kind's collection in URLs (`/meshes/{mesh}/meshratelimits`).
pub fn collection(kind: Kind) -> &'static str {
    match kind {
        Kind::MeshRateLimit => "meshratelimits",
        Kind::MeshGlobalRateLimit => "meshglobalratelimits",
        Kind::RateLimit => "ratelimits",
        Kind::Dataplane => "dataplanes",
        Kind::Mesh => "meshes",
    }
}

/// The mesh-scoped kinds a URL may name (`Mesh` has its own top-level collection).
pub fn kind_of_collection(segment: &str) -> Option<Kind> {
    match segment {
        "meshratelimits" => Some(Kind::MeshRateLimit),
        "meshglobalratelimits" => Some(Kind::MeshGlobalRateLimit),
        "ratelimits" => Some(Kind::RateLimit),
        "dataplanes" => Some(Kind::Dataplane),
        _ => None,
    }
}

/// Percent-encodes one path segment.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The API path of one resource.
pub fn resource_path(kind: Kind, mesh: &str, name: &str) -> String {
    match kind {
        Kind::Mesh => format!("/meshes/{}", segment(name)),
        _ => format!(
            "/meshes/{}/{}/{}",
            segment(mesh),
            collection(kind),
            segment(name)
        ),
    }
}

/// The watch stream of one dataplane's effective limits.
pub fn dataplane_limits_watch(mesh: &str, name: &str) -> String {
    format!(
        "{}/limits?watch=true",
        resource_path(Kind::Dataplane, mesh, name)
    )
}

/// The watch stream of every kernel limit, as kernel agent `agent`.
pub fn kernel_limits_watch(agent: &str) -> String {
    format!("/kernel-limits?watch=true&agent={}", segment(agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("web-1.default"), "web-1.default");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
