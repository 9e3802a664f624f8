//! Older `k3s-plan.json` layouts, each parsed as its own struct and upconverted in one place (as
//! the election's `legacy`); [`read`] is how the plan file is parsed.
//!
//! - Plan 1 (up to issue 18's first step): `server`, the init node's API address, or null on the
//!   init node. It becomes `servers` with that one address: the node joined through it, and
//!   config.yaml's `server:` (only read by K3s when joining) stays what K3s already saw.
//! - Plan 2 (current): [`K3sPlan`], with `servers`.

use super::K3sPlan;
use crate::election::Role;
use crate::storage::etcd::EtcdTuning;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// `k3s-plan.json` as plan-1 releases wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanV1 {
    role: Role,
    node_ip: IpAddr,
    server: Option<SocketAddr>,
    ca_hash: Option<String>,
    etcd: EtcdTuning,
    snapshot_dir: Option<PathBuf>,
}

impl PlanV1 {
    fn upconvert(self) -> K3sPlan {
        K3sPlan {
            role: self.role,
            node_ip: self.node_ip,
            servers: self.server.into_iter().collect(),
            ca_hash: self.ca_hash,
            etcd: self.etcd,
            snapshot_dir: self.snapshot_dir,
        }
    }
}

/// Parses `k3s-plan.json` of any release: the current layout, else an older one upconverted.
/// The error is the current layout's, so it names what this release expects.
pub fn read(bytes: &[u8]) -> Result<K3sPlan, serde_json::Error> {
    let current = match serde_json::from_slice::<K3sPlan>(bytes) {
        Ok(plan) => return Ok(plan),
        Err(e) => e,
    };
    match serde_json::from_slice::<PlanV1>(bytes) {
        Ok(v1) => Ok(v1.upconvert()),
        Err(_) => Err(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::NodeId;

    /// A joiner's plan as a plan-1 release wrote it (`serde_json::to_string_pretty`).
    const V1_JOINER: &str = r#"{
  "role": { "Server": { "join": 9 } },
  "node_ip": "198.18.0.12",
  "server": "198.18.0.10:6443",
  "ca_hash": "ab01",
  "etcd": { "heartbeat_ms": 500, "election_timeout_ms": 5000 },
  "snapshot_dir": null
}"#;

    #[test]
    fn a_plan_1_joiner_keeps_the_server_it_joined_as_its_list() {
        let plan = read(V1_JOINER.as_bytes()).unwrap();
        assert_eq!(plan.role, Role::Server { join: NodeId(9) });
        assert_eq!(plan.servers, ["198.18.0.10:6443".parse().unwrap()]);
        assert_eq!(plan.ca_hash.as_deref(), Some("ab01"));
        // Saved again, it is a current plan.
        let again = serde_json::to_vec(&plan).unwrap();
        assert!(!String::from_utf8_lossy(&again).contains("\"server\""));
        assert_eq!(read(&again).unwrap(), plan);
    }

    #[test]
    fn a_plan_1_init_has_no_servers_and_garbage_names_the_current_layout() {
        let init = V1_JOINER
            .replace(r#"{ "Server": { "join": 9 } }"#, r#""ClusterInit""#)
            .replace(r#""198.18.0.10:6443""#, "null")
            .replace(r#""ab01""#, "null");
        let plan = read(init.as_bytes()).unwrap();
        assert_eq!(plan.role, Role::ClusterInit);
        assert!(plan.servers.is_empty());
        let error = read(br#"{"role": "ClusterInit"}"#).unwrap_err().to_string();
        assert!(error.contains("missing field `node_ip`"), "{error}");
        let mixed = V1_JOINER.replace(
            r#""server": "198.18.0.10:6443","#,
            r#""server": "198.18.0.10:6443", "servers": [],"#,
        );
        let error = read(mixed.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("unknown field `server`"), "{error}");
    }
}
