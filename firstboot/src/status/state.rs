//! The persisted node state (`/var/lib/firstboot/state.json`): where the lifecycle is, for resuming and for `firstboot status`.
//!
//! Written atomically (temp, fsync, rename, fsync dir) and read with `deny_unknown_fields`, so a
//! file from an incompatible build is an error, not silently misread. It never holds the token:
//! there is no field for it, and [`NodeState::save`] redacts it from every free-text field.

use crate::config::Token;
use crate::durable::{JsonFile, JsonFileError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// State file location, relative to the root prefix.
pub const STATE_PATH: &str = crate::paths::STATE_JSON;
/// Format version of the state file.
pub const STATE_VERSION: u32 = 1;

/// Where the node is in its lifecycle (docs/architecture.md, "firstboot run"), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Reading and taking in cluster.toml.
    Intake,
    /// Setting node id and hostname.
    Identity,
    /// Waiting for a trustworthy clock.
    Clock,
    /// Probing and tuning storage.
    Storage,
    /// Looking for peers.
    Discovering,
    /// Bootstrap election running.
    Electing,
    /// Role known; writing config.yaml and waiting for a seat or the init node.
    Joining,
    /// K3s unit started, waiting for it to become active.
    StartingK3s,
    /// K3s active; resident.
    Ready,
    /// Waiting for a majority longer than `timeouts.bootstrap`.
    Blocked,
    /// Stopped by an error a human must fix (see `errors`).
    Failed,
}

impl Phase {
    /// The word shown to humans.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Intake => "intake",
            Phase::Identity => "identity",
            Phase::Clock => "clock",
            Phase::Storage => "storage",
            Phase::Discovering => "discovering",
            Phase::Electing => "electing",
            Phase::Joining => "joining",
            Phase::StartingK3s => "starting-k3s",
            Phase::Ready => "ready",
            Phase::Blocked => "blocked",
            Phase::Failed => "failed",
        }
    }

    /// True once K3s has been started on this node (intake then refuses re-stamps).
    pub fn has_joined(self) -> bool {
        matches!(self, Phase::StartingK3s | Phase::Ready)
    }
}

/// The state file's word for this node's [`Role`](crate::model::Role): the file keeps the init
/// node apart (`init_node`), and `firstboot status` and the machine tests read the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Runs cluster-init.
    Init,
    /// Joins as a K3s server (etcd member).
    Server,
    /// Joins as a K3s agent.
    Agent,
}

impl From<crate::model::Role> for NodeRole {
    /// The role's word for the state file (whom it joins is kept in `init_node`).
    fn from(role: crate::model::Role) -> Self {
        match role {
            crate::model::Role::ClusterInit => NodeRole::Init,
            crate::model::Role::Server { .. } => NodeRole::Server,
            crate::model::Role::Agent { .. } => NodeRole::Agent,
        }
    }
}

impl NodeRole {
    /// The word shown to humans.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Init => "init (cluster-init server)",
            NodeRole::Server => "server",
            NodeRole::Agent => "agent",
        }
    }
}

/// Storage findings, filled in by the storage module; all optional until it has run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSummary {
    /// Device class: sd, usb, nvme, ssd.
    pub class: Option<String>,
    /// fdatasync latency median, microseconds.
    pub fdatasync_p50_us: Option<u64>,
    /// fdatasync latency 99th percentile, microseconds.
    pub fdatasync_p99_us: Option<u64>,
    /// Where K3s data lives.
    pub data_dir: Option<String>,
    /// Tunings applied, one short phrase each.
    pub applied: Vec<String>,
}

/// The state file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// Always [`STATE_VERSION`].
    pub version: u32,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Cluster name from cluster.toml.
    pub cluster: Option<String>,
    /// This node's K3s node name.
    pub node_name: Option<String>,
    /// This node's LAN address.
    pub node_ip: Option<String>,
    /// Decided role, once known.
    pub role: Option<NodeRole>,
    /// The cluster-init node (its node id), once the election decided it.
    #[serde(default)]
    pub init_node: Option<String>,
    /// When this node, an agent until then, was promoted to a server (unix seconds; SPEC 4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_unix: Option<u64>,
    /// URL of the server joined (joiners).
    pub server_url: Option<String>,
    /// CA hash of the cluster (hex; public).
    pub ca_hash: Option<String>,
    /// On servers: the datastore K3s runs, `sqlite` (servers = 1) or `etcd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    /// Peers currently visible (this node excluded).
    pub peers_visible: u32,
    /// Nodes in the bootstrap electorate (`nodes`).
    pub peers_expected: u32,
    /// The cluster's members as this node sees them on the LAN (once it knows any seat holder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipState>,
    /// The fixed registration address (`api_address`), on servers: whether this one holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<ApiAddressState>,
    /// Storage findings.
    pub storage: StorageSummary,
    /// Problems a human should act on (token redacted).
    pub errors: Vec<String>,
    /// Other things worth knowing (token redacted).
    pub notes: Vec<String>,
    /// Last write, unix seconds.
    pub updated_unix: u64,
}

/// What a node says when the live servers are no majority (SPEC 4.4): nothing automatic, and the
/// procedure a person follows (docs/cluster-toml.md, "When the servers lose their quorum").
pub const QUORUM_LOST: &str = "nothing is removed or promoted automatically (it could fork the \
cluster). Bring the gone servers back, or restore etcd from a snapshot on one survivor: \
systemctl stop k3s; k3s server --cluster-reset --cluster-reset-restore-path=SNAPSHOT \
(docs/cluster-toml.md, \"When the servers lose their quorum\")";

/// The membership view of `firstboot status` (SPEC 4.4): seen from the LAN, so every node has
/// one, agents too, and it still answers when K3s cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    /// Configured server seats (`servers`).
    pub servers: u32,
    /// Seat holders alive now (this node, or heard on the LAN within the last 10 s).
    pub live_servers: u32,
    /// The live seat holders are not a majority of the seats: etcd's quorum is lost and no node
    /// removes or promotes anything by itself; a person restores from a snapshot.
    pub quorum_lost: bool,
    /// Seat holders first, in grant order; then every other node heard, by node id.
    pub members: Vec<Member>,
}

/// The fixed registration address as one server sees it (SPEC 4.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiAddressState {
    /// The address (`[cluster] api_address`).
    pub address: String,
    /// This server holds it now (it is on this server's interface).
    pub held_here: bool,
    /// Since when this server holds it (unix seconds).
    pub since_unix: Option<u64>,
}

/// One member of [`MembershipState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id (hex).
    pub node: String,
    /// Its hostname (its mDNS service name), when known.
    pub name: Option<String>,
    /// It holds a server seat.
    pub server: bool,
    /// It is the node this state file belongs to.
    pub this_node: bool,
    /// It said it serves its K3s role.
    pub serving: bool,
    /// Not heard for 10 s or more, since then (unix seconds); `None` while it is heard.
    pub gone_since_unix: Option<u64>,
    /// A gone server: from when the healer may replace it (`gone_since` + `replace_after`);
    /// `None` for agents, with `replace_after = "off"`, or while the quorum is lost.
    pub replace_from_unix: Option<u64>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{doing} {path}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a state file this build understands.
    #[error("{path} is not a valid state file")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

impl From<JsonFileError> for StateError {
    fn from(error: JsonFileError) -> Self {
        match error {
            JsonFileError::Io {
                doing,
                path,
                source,
            } => StateError::Io {
                doing,
                path,
                source,
            },
            JsonFileError::Format { path, source } => StateError::Format { path, source },
        }
    }
}

impl NodeState {
    /// A fresh state at the start of the lifecycle.
    pub fn new() -> Self {
        NodeState {
            version: STATE_VERSION,
            phase: Phase::Intake,
            cluster: None,
            node_name: None,
            node_ip: None,
            role: None,
            init_node: None,
            promoted_unix: None,
            server_url: None,
            ca_hash: None,
            datastore: None,
            peers_visible: 0,
            peers_expected: 0,
            membership: None,
            api_address: None,
            storage: StorageSummary::default(),
            errors: Vec::new(),
            notes: Vec::new(),
            updated_unix: 0,
        }
    }

    /// The state file under `root`.
    pub fn path(root: &Path) -> PathBuf {
        root.join(STATE_PATH)
    }

    /// Reads the state under `root`; `Ok(None)` when firstboot has not written one yet.
    pub fn load(root: &Path) -> Result<Option<Self>, StateError> {
        let path = Self::path(root);
        let Some(state) = Self::file(root).load()? else {
            return Ok(None);
        };
        if state.version != STATE_VERSION {
            return Err(StateError::Format {
                path,
                source: serde::de::Error::custom(format!(
                    "version {} (this build reads {STATE_VERSION})",
                    state.version
                )),
            });
        }
        Ok(Some(state))
    }

    /// Writes the state under `root` atomically (0644: it holds nothing secret), with `token`
    /// redacted from every free-text field and `updated_unix` set to `now_unix`.
    pub fn save(
        &mut self,
        root: &Path,
        token: Option<&Token>,
        now_unix: u64,
    ) -> Result<(), StateError> {
        if let Some(t) = token {
            for s in self.errors.iter_mut().chain(self.notes.iter_mut()) {
                *s = redact(s, t);
            }
            for s in [&mut self.cluster, &mut self.node_name, &mut self.server_url]
                .into_iter()
                .flatten()
            {
                *s = redact(s, t);
            }
        }
        self.updated_unix = now_unix;
        Ok(Self::file(root).save(self)?)
    }

    /// The state file under `root` (0644: it holds nothing secret).
    fn file(root: &Path) -> JsonFile<NodeState> {
        JsonFile::new(Self::path(root), 0o644)
    }
}

impl Default for NodeState {
    fn default() -> Self {
        Self::new()
    }
}

/// `text` with every occurrence of the token replaced by `<redacted>`.
pub fn redact(text: &str, token: &Token) -> String {
    text.replace(token.expose(), "<redacted>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_redacts_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::new("state-secret-ZZ91kk".into()).unwrap();
        let mut s = NodeState::new();
        s.phase = Phase::Joining;
        s.role = Some(NodeRole::Server);
        s.errors
            .push("k3s said: bad token state-secret-ZZ91kk".into());
        s.save(dir.path(), Some(&token), 1_700_000_000).unwrap();
        let raw = std::fs::read_to_string(NodeState::path(dir.path())).unwrap();
        assert!(!raw.contains("state-secret"), "{raw}");
        assert!(raw.contains("\"phase\": \"joining\""), "{raw}");
        let back = NodeState::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.errors[0], "k3s said: bad token <redacted>");
    }

    #[test]
    fn unknown_fields_and_versions_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(NodeState::load(dir.path()).unwrap().is_none());
        let mut s = NodeState::new();
        s.save(dir.path(), None, 1).unwrap();
        let p = NodeState::path(dir.path());
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replacen('{', "{\"surprise\": 1,", 1)).unwrap();
        assert!(matches!(
            NodeState::load(dir.path()),
            Err(StateError::Format { .. })
        ));
        std::fs::write(&p, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
        assert!(matches!(
            NodeState::load(dir.path()),
            Err(StateError::Format { .. })
        ));
    }

    #[test]
    fn phases_are_ordered_like_the_lifecycle() {
        assert!(Phase::Intake < Phase::Electing && Phase::Electing < Phase::Ready);
        assert!(Phase::Ready.has_joined() && !Phase::Joining.has_joined());
    }
}
