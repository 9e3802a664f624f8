//! Where the current epoch stands: electing, x elected (its fate open), or Go for x.
//!
//! One method per transition, each checking the state it may come from (as zincati's update
//! agent does): the guards in [`Node`](super::Node) make any other origin impossible, and debug
//! builds (the simulator) check it.

use serde::{Deserialize, Serialize};

use super::message::Instance;
use super::paxos::Value;
use super::NodeId;

/// The current epoch's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochState {
    /// No value decided yet: the leader instance is open.
    #[default]
    Electing,
    /// The leader instance decided `Init(x)`; x's fate (Go or Abandon) is open.
    Elected(NodeId),
    /// The fate instance decided Go: x runs cluster-init, everyone joins it. Final.
    Go(NodeId),
}

impl EpochState {
    /// The leader instance decided `Init(x)`.
    pub(super) fn elect(&mut self, x: NodeId) {
        debug_assert_eq!(*self, EpochState::Electing, "elect({x}) from {self:?}");
        *self = EpochState::Elected(x);
    }

    /// The fate instance decided Go for `x` (learned directly, or after x's election).
    pub(super) fn go(&mut self, x: NodeId) {
        debug_assert!(
            *self == EpochState::Electing || *self == EpochState::Elected(x),
            "go({x}) from {self:?}"
        );
        *self = EpochState::Go(x);
    }

    /// The epoch decided `Abandon`: the next one starts electing. Never after Go.
    pub(super) fn abandon(&mut self) {
        debug_assert!(!self.is_go(), "abandon from {self:?}");
        *self = EpochState::Electing;
    }

    /// Go is decided: the epoch is final.
    pub fn is_go(self) -> bool {
        matches!(self, EpochState::Go(_))
    }

    /// The elected node, whether or not its Go is decided.
    pub fn elected(self) -> Option<NodeId> {
        match self {
            EpochState::Electing => None,
            EpochState::Elected(x) | EpochState::Go(x) => Some(x),
        }
    }

    /// The node elected while its fate is open.
    pub fn awaiting_fate(self) -> Option<NodeId> {
        match self {
            EpochState::Elected(x) => Some(x),
            _ => None,
        }
    }

    /// The instance proposals and timers are about: the leader until `Init` is decided.
    pub fn instance(self) -> Instance {
        match self {
            EpochState::Electing => Instance::Leader,
            EpochState::Elected(_) | EpochState::Go(_) => Instance::Fate,
        }
    }

    /// `instance`'s value, if this node knows it is decided.
    pub fn known(self, instance: Instance) -> Option<Value> {
        match instance {
            Instance::Leader => self.elected().map(Value::Init),
            Instance::Fate => self.final_value(),
        }
    }

    /// The epoch's final value as far as this node knows (`Init(x)` once Go).
    pub fn final_value(self) -> Option<Value> {
        match self {
            EpochState::Go(x) => Some(Value::Init(x)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_goes_from_electing_to_elected_to_go() {
        let x = NodeId(7);
        let mut state = EpochState::default();
        assert_eq!(state.instance(), Instance::Leader);
        assert_eq!(state.known(Instance::Leader), None);
        state.elect(x);
        assert_eq!(state.instance(), Instance::Fate);
        assert_eq!(state.known(Instance::Leader), Some(Value::Init(x)));
        assert_eq!(state.known(Instance::Fate), None);
        assert_eq!(state.awaiting_fate(), Some(x));
        state.go(x);
        assert_eq!(state.final_value(), Some(Value::Init(x)));
        assert_eq!(state.awaiting_fate(), None);
        assert!(state.is_go());
    }

    #[test]
    #[should_panic(expected = "abandon from Go")]
    fn go_is_final() {
        let mut state = EpochState::Go(NodeId(7));
        state.abandon();
    }

    #[test]
    #[should_panic(expected = "go(0000000000000008) from Elected")]
    fn only_the_elected_node_can_get_go() {
        let mut state = EpochState::Elected(NodeId(7));
        state.go(NodeId(8));
    }
}
