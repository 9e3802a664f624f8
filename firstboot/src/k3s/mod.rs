//! K3s on this node: the secure join token, `config.yaml`, and where K3s keeps its files.

pub mod bring_up;
pub mod config_yaml;
pub mod flags;
pub mod node_ip;
pub mod plan;
pub mod secure_token;
pub mod snapshots;
pub mod stale_data;
pub mod started_config;

pub use bring_up::{bring_up, BringUpError, BroughtUp};
pub use config_yaml::{render, write_config_yaml, Datastore, K3sRole, NodeFacts, CONFIG_YAML_PATH};
pub use plan::K3sPlan;
pub use secure_token::{CaHash, SecureToken};

/// K3s's data directory, relative to the root prefix.
pub const DATA_DIR: &str = crate::paths::K3S_DATA_DIR;
/// The server CA bundle that `/cacerts` serves, relative to the data directory.
pub const SERVER_CA_FILE: &str = "server/tls/server-ca.crt";
/// The server's secure token file, relative to the data directory.
pub const SERVER_TOKEN_FILE: &str = "server/token";
/// The supervisor/API port.
pub const API_PORT: u16 = 6443;

/// The systemd unit that runs K3s in `role`.
pub fn unit_for(role: &K3sRole) -> &'static str {
    match role {
        K3sRole::Init | K3sRole::JoinServer { .. } => "k3s.service",
        K3sRole::Agent { .. } => "k3s-agent.service",
    }
}

/// The unit of the role this node does not have: stopped and disabled when K3s is brought up.
pub fn other_unit(role: &K3sRole) -> &'static str {
    match role {
        K3sRole::Init | K3sRole::JoinServer { .. } => "k3s-agent.service",
        K3sRole::Agent { .. } => "k3s.service",
    }
}

/// The cluster CA hash on a server, from `<root>/var/lib/rancher/k3s/server/tls/server-ca.crt`
/// (the bytes `/cacerts` serves), without any TLS: what the init node announces.
pub fn local_ca_hash(root: &std::path::Path) -> std::io::Result<CaHash> {
    CaHash::of_file(&root.join(DATA_DIR).join(SERVER_CA_FILE))
}
