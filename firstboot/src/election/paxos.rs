//! Single-decree Paxos for one bootstrap epoch: the acceptor's promises and one proposer's attempt.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::NodeId;

/// A proposal number: rounds are ordered first, the proposing node breaks ties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// Monotonic round chosen by the proposer.
    pub round: u32,
    /// The proposer; makes ballots of different nodes distinct.
    pub node: NodeId,
}

/// What one epoch decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// This node runs cluster-init; every other node joins it.
    Init(NodeId),
    /// Nobody initializes in this epoch; everyone moves to the next one.
    Abandon,
}

/// Durable acceptor state for the current epoch (persisted before any reply that reveals it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptor {
    /// Highest ballot promised.
    pub promised: Option<Ballot>,
    /// Highest-ballot proposal accepted, with its value.
    pub accepted: Option<(Ballot, Value)>,
}

/// How an acceptor answers a prepare or an accept request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Granted; `changed` says whether the durable state changed (and must be persisted).
    Granted {
        /// Whether the acceptor state changed.
        changed: bool,
    },
    /// Refused because a higher ballot was promised.
    Refused {
        /// The ballot that was promised instead.
        promised: Ballot,
    },
}

impl Acceptor {
    fn admits(&self, ballot: Ballot) -> Result<(), Ballot> {
        match self.promised {
            Some(promised) if ballot < promised => Err(promised),
            _ => Ok(()),
        }
    }

    /// Phase 1b: promise never to accept a ballot below `ballot`.
    pub fn prepare(&mut self, ballot: Ballot) -> Verdict {
        match self.admits(ballot) {
            Ok(()) => {
                let changed = self.promised != Some(ballot);
                self.promised = Some(ballot);
                Verdict::Granted { changed }
            }
            Err(promised) => Verdict::Refused { promised },
        }
    }

    /// Phase 2b: accept `value` under `ballot` unless a higher ballot was promised.
    pub fn accept(&mut self, ballot: Ballot, value: Value) -> Verdict {
        match self.admits(ballot) {
            Ok(()) => {
                let changed =
                    self.promised != Some(ballot) || self.accepted != Some((ballot, value));
                self.promised = Some(ballot);
                self.accepted = Some((ballot, value));
                Verdict::Granted { changed }
            }
            Err(promised) => Verdict::Refused { promised },
        }
    }
}

/// Where a proposer's attempt stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Collecting promises (and the values they report as already accepted).
    Preparing {
        /// Promises received, with each acceptor's accepted proposal.
        promises: BTreeMap<NodeId, Option<(Ballot, Value)>>,
    },
    /// Collecting acceptances of `value`.
    Accepting {
        /// The value carried in the accept requests.
        value: Value,
        /// Acceptors that accepted it.
        accepted: BTreeSet<NodeId>,
    },
}

/// One proposer attempt under one ballot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The ballot of this attempt.
    pub ballot: Ballot,
    /// The value this node wants if no acceptor reports an accepted one.
    pub intent: Value,
    /// Progress.
    pub phase: Phase,
}

impl Proposal {
    /// Starts an attempt; the proposer's own promise is recorded by the caller.
    pub fn new(ballot: Ballot, intent: Value) -> Self {
        Proposal {
            ballot,
            intent,
            phase: Phase::Preparing {
                promises: BTreeMap::new(),
            },
        }
    }

    /// Records a promise; once `quorum` promised, returns the value to send in accept requests.
    ///
    /// As Paxos requires, that is the value of the highest-ballot accepted proposal reported,
    /// and only when none was reported the proposer's own intent.
    pub fn on_promise(
        &mut self,
        from: NodeId,
        accepted: Option<(Ballot, Value)>,
        quorum: usize,
    ) -> Option<Value> {
        let Phase::Preparing { promises } = &mut self.phase else {
            return None;
        };
        promises.insert(from, accepted);
        if promises.len() < quorum {
            return None;
        }
        let carried = promises
            .values()
            .flatten()
            .max_by_key(|(ballot, _)| *ballot)
            .map(|(_, value)| *value);
        Some(carried.unwrap_or(self.intent))
    }

    /// Moves to the accept phase with `value`.
    pub fn begin_accept(&mut self, value: Value) {
        self.phase = Phase::Accepting {
            value,
            accepted: BTreeSet::new(),
        };
    }

    /// Records an acceptance; returns the decided value once `quorum` accepted.
    pub fn on_accepted(&mut self, from: NodeId, quorum: usize) -> Option<Value> {
        let Phase::Accepting { value, accepted } = &mut self.phase else {
            return None;
        };
        accepted.insert(from);
        (accepted.len() >= quorum).then_some(*value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballot(round: u32, node: u64) -> Ballot {
        Ballot {
            round,
            node: NodeId(node),
        }
    }

    #[test]
    fn acceptor_refuses_lower_ballots_after_promising() {
        let mut acceptor = Acceptor::default();
        assert_eq!(
            acceptor.prepare(ballot(2, 1)),
            Verdict::Granted { changed: true }
        );
        assert_eq!(
            acceptor.prepare(ballot(2, 1)),
            Verdict::Granted { changed: false }
        );
        assert_eq!(
            acceptor.prepare(ballot(1, 9)),
            Verdict::Refused {
                promised: ballot(2, 1)
            }
        );
        assert_eq!(
            acceptor.accept(ballot(1, 9), Value::Abandon),
            Verdict::Refused {
                promised: ballot(2, 1)
            }
        );
        assert_eq!(
            acceptor.accept(ballot(2, 1), Value::Init(NodeId(1))),
            Verdict::Granted { changed: true }
        );
        assert_eq!(
            acceptor.accepted,
            Some((ballot(2, 1), Value::Init(NodeId(1))))
        );
    }

    #[test]
    fn proposer_carries_forward_the_highest_accepted_value() {
        let mut proposal = Proposal::new(ballot(5, 3), Value::Init(NodeId(3)));
        assert_eq!(proposal.on_promise(NodeId(3), None, 3), None);
        assert_eq!(
            proposal.on_promise(NodeId(1), Some((ballot(1, 1), Value::Init(NodeId(1)))), 3),
            None
        );
        let chosen =
            proposal.on_promise(NodeId(2), Some((ballot(4, 2), Value::Init(NodeId(2)))), 3);
        assert_eq!(chosen, Some(Value::Init(NodeId(2))));
        proposal.begin_accept(Value::Init(NodeId(2)));
        assert_eq!(proposal.on_accepted(NodeId(1), 2), None);
        assert_eq!(
            proposal.on_accepted(NodeId(1), 2),
            None,
            "duplicates do not count"
        );
        assert_eq!(
            proposal.on_accepted(NodeId(2), 2),
            Some(Value::Init(NodeId(2)))
        );
    }

    #[test]
    fn proposer_uses_its_intent_when_nothing_was_accepted() {
        let mut proposal = Proposal::new(ballot(1, 3), Value::Abandon);
        assert_eq!(proposal.on_promise(NodeId(3), None, 2), None);
        assert_eq!(
            proposal.on_promise(NodeId(4), None, 2),
            Some(Value::Abandon)
        );
    }
}
