//! This node's K3s plan, fixed once and persisted, so a restart renders the same config.yaml.
//!
//! The init node fixes its plan when it takes the role (its address, the cluster's etcd timing);
//! a joiner once it has verified a serving server's announcement and agreed with its clock. After
//! a restart the plan is read back instead of being decided again: a joiner does not wait for the
//! announcement twice, and nothing that K3s already saw (node-ip, etcd args) can change.
//!
//! A joiner's plan keeps the API addresses of the servers that served when it joined (the
//! answering server first, which config.yaml's `server:` names), not the init node's: the init
//! may be long gone. Plans of older releases (one `server`) are upconverted by [`legacy`].

pub mod legacy;

use crate::durable::JsonFile;
use crate::election::{NodeId, Role};
use crate::k3s::{CaHash, K3sRole, NodeFacts};
use crate::storage::etcd::EtcdTuning;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Plan file location, relative to the root prefix.
pub const PLAN_PATH: &str = crate::paths::K3S_PLAN_JSON;

/// Everything config.yaml is rendered from besides cluster.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sPlan {
    /// The election's role this plan is for.
    pub role: Role,
    /// This node's LAN address (`node-ip`).
    pub node_ip: IpAddr,
    /// The K3s API addresses of the servers serving when this node joined, the one that
    /// answered first (joiners only; empty on the init node).
    pub servers: Vec<SocketAddr>,
    /// The cluster CA hash from a serving server's announcement (joiners only), hex.
    pub ca_hash: Option<String>,
    /// The cluster's etcd timing, decided by the init node.
    pub etcd: EtcdTuning,
    /// Where this node keeps etcd snapshots, if storage chose a directory.
    pub snapshot_dir: Option<PathBuf>,
}

impl K3sPlan {
    /// The plan file under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(PLAN_PATH)
    }

    /// The plan of an earlier run, if it was made for `role`; any other plan is ignored.
    pub fn load_for(root: &Path, role: Role) -> anyhow::Result<Option<K3sPlan>> {
        let plan = Self::file(root).load_with(legacy::read)?;
        Ok(plan.filter(|plan| plan.role == role))
    }

    /// Writes the plan durably (temp file, fsync, rename).
    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        Ok(Self::file(root).save(self)?)
    }

    fn file(root: &Path) -> JsonFile<K3sPlan> {
        JsonFile::new(Self::path(root), 0o644)
    }

    /// The K3s role to render; `None` for a joiner's plan without a server or CA hash (corrupt).
    pub fn k3s_role(&self) -> Option<K3sRole> {
        match self.role {
            Role::ClusterInit => Some(K3sRole::Init),
            Role::Server { .. } | Role::Agent { .. } => {
                let server_url = server_url(*self.servers.first()?);
                let ca_hash = CaHash::from_hex(self.ca_hash.as_deref()?)?;
                Some(if matches!(self.role, Role::Server { .. }) {
                    K3sRole::JoinServer {
                        server_url,
                        ca_hash,
                    }
                } else {
                    K3sRole::Agent {
                        server_url,
                        ca_hash,
                    }
                })
            }
        }
    }

    /// The node facts for config.yaml; the node name is the hostname.
    pub fn facts(&self, hostname: &str) -> NodeFacts {
        NodeFacts {
            node_name: hostname.to_string(),
            node_ip: self.node_ip,
            hostname: hostname.to_string(),
            etcd_args: self.etcd.etcd_args(),
            snapshot_dir: self.snapshot_dir.clone(),
            flannel_iface: None,
        }
    }

    /// The cluster's init node (`None` on the init node itself); K3s joined `servers[0]`.
    pub fn init_node(&self) -> Option<NodeId> {
        match self.role {
            Role::ClusterInit => None,
            Role::Server { join } | Role::Agent { join } => Some(join),
        }
    }
}

/// `https://<api>` as K3s's `server:` expects it (IPv6 in brackets).
pub fn server_url(api: SocketAddr) -> String {
    format!("https://{api}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner() -> K3sPlan {
        K3sPlan {
            role: Role::Server { join: NodeId(9) },
            node_ip: "198.18.0.12".parse().unwrap(),
            servers: vec![
                "198.18.0.10:6443".parse().unwrap(),
                "198.18.0.11:6443".parse().unwrap(),
            ],
            ca_hash: Some(CaHash::of_bundle(b"ca").to_hex()),
            etcd: EtcdTuning::SLOW_STORAGE,
            snapshot_dir: None,
        }
    }

    #[test]
    fn round_trips_only_for_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let role = Role::Server { join: NodeId(9) };
        assert_eq!(K3sPlan::load_for(dir.path(), role).unwrap(), None);
        joiner().save(dir.path()).unwrap();
        assert_eq!(K3sPlan::load_for(dir.path(), role).unwrap(), Some(joiner()));
        assert_eq!(
            K3sPlan::load_for(dir.path(), Role::Agent { join: NodeId(9) }).unwrap(),
            None
        );
        std::fs::write(K3sPlan::path(dir.path()), b"{").unwrap();
        assert!(K3sPlan::load_for(dir.path(), role).is_err());
    }

    #[test]
    fn the_join_token_is_k10_ca_hash_server_token() {
        let config = crate::config::ClusterConfig::from_toml_str(
            "[cluster]\nname = \"lab\"\ntoken = \"plan-secret-abcdefgh\"\nservers = 3\n",
            Path::new("/nonexistent/cluster.toml"),
        )
        .unwrap();
        let plan = joiner();
        let yaml = crate::k3s::render(&config, &plan.k3s_role().unwrap(), &plan.facts("lab-2"));
        let ca = CaHash::of_bundle(b"ca").to_hex();
        assert!(
            yaml.contains(&format!(
                "token: \"K10{ca}::server:plan-secret-abcdefgh\"\n"
            )),
            "{yaml}"
        );
        assert!(
            yaml.contains("server: \"https://198.18.0.10:6443\"\n"),
            "{yaml}"
        );
        assert!(yaml.contains("node-ip: \"198.18.0.12\"\n"), "{yaml}");
        assert!(!yaml.contains("cluster-init"), "{yaml}");
        let mut agent = joiner();
        agent.role = Role::Agent { join: NodeId(9) };
        let yaml = crate::k3s::render(&config, &agent.k3s_role().unwrap(), &agent.facts("lab-3"));
        assert!(
            yaml.contains(&format!("token: \"K10{ca}::server:")),
            "{yaml}"
        );
    }

    #[test]
    fn a_joiner_renders_the_secure_token_role() {
        let plan = joiner();
        assert_eq!(
            plan.k3s_role(),
            Some(K3sRole::JoinServer {
                server_url: "https://198.18.0.10:6443".into(),
                ca_hash: CaHash::of_bundle(b"ca"),
            })
        );
        assert_eq!(plan.init_node(), Some(NodeId(9)));
        assert_eq!(
            plan.facts("lab-000002").etcd_args,
            ["heartbeat-interval=1000", "election-timeout=10000"]
        );
        let mut broken = joiner();
        broken.ca_hash = Some("not hex".into());
        assert_eq!(broken.k3s_role(), None);
        let mut serverless = joiner();
        serverless.servers.clear();
        assert_eq!(serverless.k3s_role(), None);
        assert_eq!(
            server_url("[2001:db8::1]:6443".parse().unwrap()),
            "https://[2001:db8::1]:6443"
        );
    }
}
