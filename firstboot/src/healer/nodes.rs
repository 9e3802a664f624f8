//! The healer's view of `k3s kubectl get nodes -o json`: each Node's name, Ready condition, last heartbeat and whether a deletion is in progress.

use super::{NodeView, Ready};
use serde_json::Value;

/// The Nodes of a `kubectl get nodes -o json` list (a `List` of `Node` items); items without a
/// name are skipped, a Node without a Ready condition is `Unknown` with heartbeat 0 (what the
/// node lifecycle controller shows for a kubelet that never posted status).
pub fn parse_nodes(list: &Value) -> Vec<NodeView> {
    let Some(items) = list["items"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let name = item["metadata"]["name"].as_str()?.to_string();
            let ready = item["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            let (ready, last_heartbeat) = match ready {
                Some(c) => (
                    match c["status"].as_str() {
                        Some("True") => Ready::True,
                        Some("False") => Ready::False,
                        _ => Ready::Unknown,
                    },
                    c["lastHeartbeatTime"]
                        .as_str()
                        .and_then(super::lease::parse_rfc3339)
                        .unwrap_or(0),
                ),
                None => (Ready::Unknown, 0),
            };
            Some(NodeView {
                name,
                ready,
                last_heartbeat,
                deleting: !item["metadata"]["deletionTimestamp"].is_null(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_are_read_with_their_ready_condition_and_deletion() {
        // The shape kubectl prints (and the K3s double's `store::node_view`).
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"metadata": {"name": "lab-1"}, "status": {"conditions": [{"type": "Ready",
                "status": "True", "lastHeartbeatTime": "2026-11-30T15:19:07Z"}]}},
            {"metadata": {"name": "lab-2", "deletionTimestamp": "2026-11-30T15:20:00Z"},
                "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "Unknown",
                "lastHeartbeatTime": "2026-11-30T15:00:00Z"}]}},
            {"metadata": {"name": "lab-3"}, "status": {}},
            {"metadata": {}},
        ]});
        assert_eq!(
            parse_nodes(&list),
            vec![
                NodeView {
                    name: "lab-1".into(),
                    ready: Ready::True,
                    last_heartbeat: 1_796_051_947,
                    deleting: false
                },
                NodeView {
                    name: "lab-2".into(),
                    ready: Ready::Unknown,
                    last_heartbeat: 1_796_050_800,
                    deleting: true
                },
                NodeView {
                    name: "lab-3".into(),
                    ready: Ready::Unknown,
                    last_heartbeat: 0,
                    deleting: false
                },
            ]
        );
        assert!(parse_nodes(&json!({"kind": "Status"})).is_empty());
    }
}
