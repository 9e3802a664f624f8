//! The election's durable state: what a node persists (fsync'd) before anything that reveals it.

use serde::{Deserialize, Serialize};

use super::paxos::{Acceptor, Value};
use super::{NodeId, Role};

/// Durable state: persist it (write, fsync) when polled, and rebuild a restarted node from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// Current bootstrap epoch (every earlier epoch decided `Abandon`).
    pub epoch: u32,
    /// Acceptor promises of the current epoch's leader instance.
    pub acceptor: Acceptor,
    /// The current epoch's leader instance value (`Init(x)`), once learned.
    pub decided: Option<Value>,
    /// Acceptor promises of the current epoch's fate instance (`Init(x)` = Go, or `Abandon`).
    #[serde(default)]
    pub fate: Acceptor,
    /// The fate instance decided Go: the elected node may run cluster-init, everyone joins it.
    #[serde(default)]
    pub go: bool,
    /// Seat holders in grant order (kept by the init node only).
    pub roster: Vec<NodeId>,
    /// Candidates the init node told to join as agents (never granted a seat afterwards).
    pub agents: Vec<NodeId>,
    /// The role taken, once known.
    pub role: Option<Role>,
    /// The driver reported that the role's K3s service is up.
    pub serving: bool,
}
