//! Older `election.json` layouts, each parsed as its own struct and upconverted in one place
//! (as bootupd's `model_legacy.rs`); [`read`] is how every reader of the file parses it.
//!
//! - Protocol 1 (before the fate instance, up to commit 99050bf): one acceptor, and `decided`
//!   was final. A node that had taken a role had learned `Init(x)` as final, which is Go now; one
//!   without a role resumes with x only elected, so x's fate is decided under protocol 2.
//! - Protocol 2 (current): `state::StateFile`, with `fate` and `go`.

use serde::Deserialize;

use super::epoch::EpochState;
use super::instance::Acceptors;
use super::paxos::{Acceptor, Value};
use super::state::PersistedState;
use super::{NodeId, Role};

/// `election.json` as protocol-1 releases wrote it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateV1 {
    epoch: u32,
    acceptor: Acceptor,
    decided: Option<Value>,
    roster: Vec<NodeId>,
    agents: Vec<NodeId>,
    role: Option<Role>,
    serving: bool,
}

impl StateV1 {
    fn upconvert(self) -> Result<PersistedState, String> {
        let epoch_state = match (self.decided, self.role) {
            (None, _) => EpochState::Electing,
            // A role was only ever taken once `Init(x)` was final: that is Go.
            (Some(Value::Init(x)), Some(_)) => EpochState::Go(x),
            (Some(Value::Init(x)), None) => EpochState::Elected(x),
            (Some(Value::Abandon), _) => {
                return Err("a decided Abandon is never kept (the next epoch starts)".into())
            }
        };
        Ok(PersistedState {
            epoch: self.epoch,
            acceptors: Acceptors::new(self.acceptor, Acceptor::default()),
            epoch_state,
            roster: self.roster,
            agents: self.agents,
            role: self.role,
            serving: self.serving,
            rejoining: false,
        })
    }
}

/// Parses `election.json` of any release: the current layout, else an older one upconverted.
/// The error is the current layout's, so it names what this release expects.
pub fn read(bytes: &[u8]) -> Result<PersistedState, serde_json::Error> {
    let current = match serde_json::from_slice::<PersistedState>(bytes) {
        Ok(state) => return Ok(state),
        Err(e) => e,
    };
    match serde_json::from_slice::<StateV1>(bytes) {
        Ok(v1) => v1.upconvert().map_err(serde::de::Error::custom),
        Err(_) => Err(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::message::Instance;
    use crate::election::Ballot;

    #[test]
    fn a_protocol_1_node_with_a_role_resumes_after_go() {
        let state = read(include_bytes!("testdata/election-v1-agent.json")).unwrap();
        let ballot = Ballot {
            round: 1,
            node: NodeId(4),
        };
        assert_eq!(state.epoch_state, EpochState::Go(NodeId(4)));
        assert_eq!(state.role, Some(Role::Agent { join: NodeId(4) }));
        assert!(state.serving);
        assert_eq!(
            state.acceptors[Instance::Leader].accepted,
            Some((ballot, Value::Init(NodeId(4))))
        );
        assert_eq!(state.acceptors[Instance::Fate], Acceptor::default());
    }

    #[test]
    fn a_protocol_1_promise_is_kept() {
        let state = read(include_bytes!("testdata/election-v1-promised.json")).unwrap();
        assert_eq!(state.epoch, 2);
        assert_eq!(state.epoch_state, EpochState::Electing);
        assert_eq!(
            state.acceptors[Instance::Leader].promised,
            Some(Ballot {
                round: 3,
                node: NodeId(9)
            })
        );
    }

    #[test]
    fn a_protocol_1_decision_without_a_role_is_only_an_election() {
        let text = include_str!("testdata/election-v1-agent.json")
            .replace(
                "\"role\": {\n    \"Agent\": {\n      \"join\": 4\n    }\n  },",
                "\"role\": null,",
            )
            .replace("\"serving\": true", "\"serving\": false");
        let state = read(text.as_bytes()).unwrap();
        assert_eq!(state.epoch_state, EpochState::Elected(NodeId(4)));
    }

    #[test]
    fn the_current_layout_reads_as_itself_and_garbage_names_the_current_layout() {
        let current = include_bytes!("testdata/election-v2-server.json");
        assert_eq!(
            read(current).unwrap(),
            serde_json::from_slice::<PersistedState>(current).unwrap()
        );
        let error = read(br#"{"epoch": 0}"#).unwrap_err().to_string();
        assert!(error.contains("missing field `acceptor`"), "{error}");
        let mixed = br#"{"epoch":0,"acceptor":{"promised":null,"accepted":null},"decided":null,
            "fate":{"promised":null,"accepted":null},"roster":[],"agents":[],"role":null,"serving":false}"#;
        let error = read(mixed).unwrap_err().to_string();
        assert!(error.contains("missing field `go`"), "{error}");
    }
}
