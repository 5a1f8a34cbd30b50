//! The xDS check of `meshlimit diagnose rate-limit`: did every Envoy sidecar accept the
//! configuration the control plane holds for it? Reads `GET /xds`; a control plane started
//! without `--xds` answers 404, which leaves nothing to check.

use meshlimit_control_plane_client::client::Client;
use meshlimit_xds::{NodeStatus, TypeStatus, XdsStatus, node_id};

use super::get::output::{block_on, explain};

/// One check result: what was found, and the fix when it is a problem.
pub type Finding = (String, Option<String>);

/// `GET /xds`, read once per diagnosis; `None` when the control plane serves no xDS (404).
pub fn fetch(client: &Client) -> anyhow::Result<Option<XdsStatus>> {
    /// One page of `GET /xds`: its nodes and the path of the next page.
    #[derive(serde::Deserialize)]
    struct Page {
        nodes: Vec<meshlimit_xds::NodeStatus>,
        #[serde(default)]
        next: Option<String>,
    }
    let mut status = XdsStatus { nodes: Vec::new() };
    let mut path = "/xds?size=1000".to_string();
    // Every page (bounded: a control plane that kept answering `next` stops here).
    for _ in 0..1000 {
        let page = match block_on(client.get_json::<Page>(&path))? {
            Ok(page) => page,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(explain(e)),
        };
        status.nodes.extend(page.nodes);
        match page.next {
            Some(next) if next.starts_with('/') => path = next,
            _ => break,
        }
    }
    Ok(Some(status))
}

/// Checks every Envoy node, or only the one of `focus` (`(mesh, dataplane)`).
pub fn check(status: Option<&XdsStatus>, focus: Option<(&str, &str)>) -> Vec<Finding> {
    match status {
        Some(status) => findings(status, focus),
        None => vec![(
            "xDS not served (control plane started without --xds): no Envoy node to check"
                .to_string(),
            None,
        )],
    }
}

/// The node ids of the Envoys connected over xDS now (none when xDS is not served).
pub fn connected_nodes(status: Option<&XdsStatus>) -> Vec<String> {
    status
        .map(|s| s.nodes.iter())
        .into_iter()
        .flatten()
        .filter(|n| n.streams > 0)
        .map(|n| n.node.clone())
        .collect()
}

fn findings(status: &XdsStatus, focus: Option<(&str, &str)>) -> Vec<Finding> {
    let wanted = focus.map(|(mesh, name)| node_id(mesh, name));
    let nodes: Vec<&NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| wanted.as_ref().is_none_or(|w| &n.node == w))
        .collect();
    let mut out = Vec::new();
    for node in &nodes {
        for (kind, types) in [("listeners", &node.listeners), ("clusters", &node.clusters)] {
            if let Some(problem) = rejection(node, kind, types) {
                out.push(problem);
            }
        }
        if node.streams > 0 && !node.known {
            out.push((
                format!(
                    "Envoy node {} is connected but no Dataplane has that node id \
                     (<mesh>.<dataplane>): it gets no listeners and no clusters",
                    node.node
                ),
                Some(
                    "start the Envoy with the bootstrap of `meshlimit envoy bootstrap \
                     --dataplane NAME --mesh MESH`, or apply a Dataplane with that mesh and name"
                        .to_string(),
                ),
            ));
        }
    }
    if out.is_empty() {
        let connected = nodes.iter().filter(|n| n.streams > 0).count();
        let in_sync = nodes
            .iter()
            .filter(|n| n.streams > 0 && n.in_sync())
            .count();
        out.push((
            format!(
                "no Envoy node rejected its configuration ({connected} connected over xDS, \
                 {in_sync} running the current version)"
            ),
            None,
        ));
    }
    out
}

/// A problem when the node rejected the version the server holds for it now (an older
/// rejection that a later version fixed is history, not a problem).
fn rejection(node: &NodeStatus, kind: &str, types: &TypeStatus) -> Option<Finding> {
    let nack = types.last_nack.as_ref()?;
    if !types.rejected_current() {
        return None;
    }
    let running = types.acked_version.as_deref().map_or_else(
        || "nothing accepted yet".to_string(),
        |v| format!("version {v}"),
    );
    Some((
        format!(
            "Envoy node {} rejected configuration: {kind} version {} (nonce {}): {}",
            node.node,
            nack.version,
            nack.nonce,
            nack.message.trim_end()
        ),
        Some(format!(
            "Envoy keeps running its last accepted {kind} ({running}). Correct what the error \
             names in the Dataplane or the policies that select it (`meshlimit inspect -f FILES \
             --dataplane NAME --envoy` shows what is sent; a port already in use on the host is \
             a common cause), then apply again: the new version is pushed at once"
        )),
    ))
}

#[cfg(test)]
mod tests {
    use meshlimit_xds::Nack;

    use super::*;

    fn node(name: &str, streams: u32, known: bool) -> NodeStatus {
        let synced = TypeStatus {
            current_version: "2".into(),
            sent_version: Some("2".into()),
            acked_version: Some("2".into()),
            nacks: 0,
            last_nack: None,
        };
        NodeStatus {
            node: name.into(),
            known,
            streams,
            listeners: synced.clone(),
            clusters: synced,
        }
    }

    fn nack(version: &str) -> Option<Nack> {
        Some(Nack {
            version: version.into(),
            nonce: "7".into(),
            message: "cannot bind '127.0.0.1:8080': Address already in use".into(),
        })
    }

    #[test]
    fn a_rejected_current_version_is_a_problem_with_the_error() {
        let mut bad = node("default.web-1", 1, true);
        bad.listeners.acked_version = Some("1".into());
        bad.listeners.nacks = 1;
        bad.listeners.last_nack = nack("2");
        let status = XdsStatus {
            nodes: vec![bad, node("default.web-2", 1, true)],
        };
        let found = findings(&status, None);
        assert_eq!(found.len(), 1, "{found:?}");
        let (what, fix) = &found[0];
        assert_eq!(
            what,
            "Envoy node default.web-1 rejected configuration: listeners version 2 (nonce 7): \
             cannot bind '127.0.0.1:8080': Address already in use"
        );
        assert!(fix.as_deref().is_some_and(|f| f.contains("(version 1)")));

        let focused = findings(&status, Some(("default", "web-2")));
        assert_eq!(focused.len(), 1);
        assert!(focused[0].1.is_none(), "{focused:?}");
        assert!(focused[0].0.contains("1 connected"), "{focused:?}");
    }

    #[test]
    fn an_old_rejection_fixed_since_is_fine() {
        let mut healed = node("default.web-1", 1, true);
        healed.listeners.nacks = 1;
        healed.listeners.last_nack = nack("1");
        let found = findings(
            &XdsStatus {
                nodes: vec![healed],
            },
            None,
        );
        assert_eq!(
            found,
            [(
                "no Envoy node rejected its configuration (1 connected over xDS, 1 running the \
                 current version)"
                    .to_string(),
                None
            )]
        );
    }

    #[test]
    fn an_envoy_naming_no_dataplane_is_a_problem() {
        let found = findings(
            &XdsStatus {
                nodes: vec![
                    node("default.typo", 1, false),
                    node("default.gone", 0, false),
                ],
            },
            None,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].0.contains("default.typo"));
        assert!(found[0].1.is_some());
    }
}
