//! The election's durable state: what a node persists (fsync'd) before anything that reveals it.

use serde::{Deserialize, Serialize};

use super::epoch::EpochState;
use super::instance::Acceptors;
use super::message::Instance;
use super::paxos::{Acceptor, Value};
use super::{NodeId, Role};

/// Durable state: persist it (write, fsync) when polled, and rebuild a restarted node from it.
///
/// On disk it is `election.json` in the protocol-2 layout (`StateFile`); older files are
/// read through [`super::legacy`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StateFile", into = "StateFile")]
pub struct PersistedState {
    /// Current bootstrap epoch (every earlier epoch decided `Abandon`).
    pub epoch: u32,
    /// Acceptor promises of the current epoch's leader and fate instances.
    pub acceptors: Acceptors,
    /// Where the current epoch stands: electing, x elected, or Go for x.
    pub epoch_state: EpochState,
    /// Seat holders in grant order (kept by the init node only).
    pub roster: Vec<NodeId>,
    /// Candidates the init node told to join as agents (never granted a seat afterwards).
    pub agents: Vec<NodeId>,
    /// The role taken, once known.
    pub role: Option<Role>,
    /// The driver reported that the role's K3s service is up.
    pub serving: bool,
    /// This node is the decided cluster-init node, has no role, and heard the cluster serve
    /// without it (its card was re-flashed, or its state lost): it never initializes, it asks
    /// the seat book for a seat (see `Node::on_hello`).
    pub rejoining: bool,
}

/// `election.json` as written since protocol 2: the epoch's state as the leader value
/// (`decided`) and a `go` flag.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFile {
    pub(super) epoch: u32,
    /// The leader instance's acceptor.
    pub(super) acceptor: Acceptor,
    /// The leader instance's value, `Init(x)`, once learned.
    pub(super) decided: Option<Value>,
    /// The fate instance's acceptor.
    pub(super) fate: Acceptor,
    /// The fate instance decided Go.
    pub(super) go: bool,
    pub(super) roster: Vec<NodeId>,
    pub(super) agents: Vec<NodeId>,
    pub(super) role: Option<Role>,
    pub(super) serving: bool,
    /// Written only when set, so the file of every other node stays as protocol 2 wrote it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) rejoining: bool,
}

impl TryFrom<StateFile> for PersistedState {
    type Error = String;

    fn try_from(file: StateFile) -> Result<Self, String> {
        let epoch_state = match (file.decided, file.go) {
            (None, false) => EpochState::Electing,
            (Some(Value::Init(x)), false) => EpochState::Elected(x),
            (Some(Value::Init(x)), true) => EpochState::Go(x),
            (decided, go) => {
                return Err(format!(
                    "decided = {decided:?} with go = {go} is no state an election reaches"
                ))
            }
        };
        Ok(PersistedState {
            epoch: file.epoch,
            acceptors: Acceptors::new(file.acceptor, file.fate),
            epoch_state,
            roster: file.roster,
            agents: file.agents,
            role: file.role,
            serving: file.serving,
            rejoining: file.rejoining,
        })
    }
}

impl From<PersistedState> for StateFile {
    fn from(state: PersistedState) -> Self {
        StateFile {
            epoch: state.epoch,
            acceptor: state.acceptors[Instance::Leader].clone(),
            decided: state.epoch_state.elected().map(Value::Init),
            fate: state.acceptors[Instance::Fate].clone(),
            go: state.epoch_state.is_go(),
            roster: state.roster,
            agents: state.agents,
            role: state.role,
            serving: state.serving,
            rejoining: state.rejoining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Ballot;

    /// `election.json` exactly as the protocol-2 releases wrote it (`to_vec_pretty` of the flat
    /// struct): a node elected in epoch 1, its Go accepted by this acceptor, then decided.
    const PROTOCOL_2_FILE: &str = include_str!("testdata/election-v2-server.json");

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
            epoch_state: EpochState::Go(NodeId(7)),
            role: Some(Role::Server { join: NodeId(7) }),
            ..PersistedState::default()
        };
        let mut written = serde_json::to_string_pretty(&state).unwrap();
        written.push('\n');
        assert_eq!(written, PROTOCOL_2_FILE);
        let read: PersistedState = serde_json::from_str(PROTOCOL_2_FILE).unwrap();
        assert_eq!(read, state);
    }

    #[test]
    fn states_no_election_reaches_are_refused() {
        let go_without_election = PROTOCOL_2_FILE.replace(
            "\"decided\": {\n    \"Init\": 7\n  },",
            "\"decided\": null,",
        );
        let error = serde_json::from_str::<PersistedState>(&go_without_election).unwrap_err();
        assert!(
            error.to_string().contains("no state an election reaches"),
            "{error}"
        );
    }
}
