//! Per-instance state of an epoch, indexed by [`Instance`] (as quinn-proto's `spaces[SpaceId]`).
//!
//! Each epoch runs two single-decree Paxos instances, the leader and the fate; each has its own
//! acceptor state, so a node answers for each from its own slot instead of picking a field.

use std::ops::{Index, IndexMut};

use super::message::Instance;
use super::paxos::Acceptor;

/// The acceptor state of the current epoch's two instances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acceptors([Acceptor; 2]);

impl Acceptors {
    /// The leader instance's and the fate instance's acceptor state.
    pub fn new(leader: Acceptor, fate: Acceptor) -> Acceptors {
        Acceptors([leader, fate])
    }
}

fn slot(instance: Instance) -> usize {
    match instance {
        Instance::Leader => 0,
        Instance::Fate => 1,
    }
}

impl Index<Instance> for Acceptors {
    type Output = Acceptor;

    fn index(&self, instance: Instance) -> &Acceptor {
        &self.0[slot(instance)]
    }
}

impl IndexMut<Instance> for Acceptors {
    fn index_mut(&mut self, instance: Instance) -> &mut Acceptor {
        &mut self.0[slot(instance)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{Ballot, NodeId};

    #[test]
    fn each_instance_answers_from_its_own_slot() {
        let mut acceptors = Acceptors::default();
        let ballot = Ballot {
            round: 3,
            node: NodeId(1),
        };
        acceptors[Instance::Fate].prepare(ballot);
        assert_eq!(acceptors[Instance::Fate].promised, Some(ballot));
        assert_eq!(acceptors[Instance::Leader], Acceptor::default());
    }
}
