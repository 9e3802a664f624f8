//! The election's durable state: what a node persists (fsync'd) before anything that reveals it.

use serde::{Deserialize, Serialize};

use super::instance::Acceptors;
use super::message::Instance;
use super::paxos::{Acceptor, Value};
use super::{NodeId, Role};

/// Durable state: persist it (write, fsync) when polled, and rebuild a restarted node from it.
///
/// On disk it is [`StateFile`]'s JSON (`election.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateFile", into = "StateFile")]
pub struct PersistedState {
    /// Current bootstrap epoch (every earlier epoch decided `Abandon`).
    pub epoch: u32,
    /// Acceptor promises of the current epoch's leader and fate instances.
    pub acceptors: Acceptors,
    /// The current epoch's leader instance value (`Init(x)`), once learned.
    pub decided: Option<Value>,
    /// The fate instance decided Go: the elected node may run cluster-init, everyone joins it.
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

/// `election.json` as written: the field names and order every release since protocol 2 wrote.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    epoch: u32,
    /// The leader instance's acceptor.
    acceptor: Acceptor,
    decided: Option<Value>,
    /// The fate instance's acceptor.
    #[serde(default)]
    fate: Acceptor,
    #[serde(default)]
    go: bool,
    roster: Vec<NodeId>,
    agents: Vec<NodeId>,
    role: Option<Role>,
    serving: bool,
}

impl From<StateFile> for PersistedState {
    fn from(file: StateFile) -> Self {
        PersistedState {
            epoch: file.epoch,
            acceptors: Acceptors::new(file.acceptor, file.fate),
            decided: file.decided,
            go: file.go,
            roster: file.roster,
            agents: file.agents,
            role: file.role,
            serving: file.serving,
        }
    }
}

impl From<PersistedState> for StateFile {
    fn from(state: PersistedState) -> Self {
        StateFile {
            epoch: state.epoch,
            acceptor: state.acceptors[Instance::Leader].clone(),
            decided: state.decided,
            fate: state.acceptors[Instance::Fate].clone(),
            go: state.go,
            roster: state.roster,
            agents: state.agents,
            role: state.role,
            serving: state.serving,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Ballot;

    /// `election.json` exactly as the protocol-2 releases wrote it (`to_vec_pretty` of the flat
    /// struct): a node elected in epoch 1, its Go accepted by this acceptor, then decided.
    pub(crate) const PROTOCOL_2_FILE: &str = r#"{
  "epoch": 1,
  "acceptor": {
    "promised": {
      "round": 2,
      "node": 7
    },
    "accepted": [
      {
        "round": 2,
        "node": 7
      },
      {
        "Init": 7
      }
    ]
  },
  "decided": {
    "Init": 7
  },
  "fate": {
    "promised": {
      "round": 1,
      "node": 7
    },
    "accepted": [
      {
        "round": 1,
        "node": 7
      },
      {
        "Init": 7
      }
    ]
  },
  "go": true,
  "roster": [],
  "agents": [],
  "role": {
    "Server": {
      "join": 7
    }
  },
  "serving": false
}"#;

    #[test]
    fn the_file_format_is_unchanged() {
        let b = |round| Ballot {
            round,
            node: NodeId(7),
        };
        let x = Value::Init(NodeId(7));
        let state = PersistedState {
            epoch: 1,
            acceptors: Acceptors::new(
                Acceptor {
                    promised: Some(b(2)),
                    accepted: Some((b(2), x)),
                },
                Acceptor {
                    promised: Some(b(1)),
                    accepted: Some((b(1), x)),
                },
            ),
            decided: Some(x),
            go: true,
            role: Some(Role::Server { join: NodeId(7) }),
            ..PersistedState::default()
        };
        assert_eq!(
            serde_json::to_string_pretty(&state).unwrap(),
            PROTOCOL_2_FILE
        );
        let read: PersistedState = serde_json::from_str(PROTOCOL_2_FILE).unwrap();
        assert_eq!(read, state);
    }
}
