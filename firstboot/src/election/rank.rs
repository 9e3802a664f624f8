//! Who should run cluster-init: role pin first, then storage speed, then RAM, then the lowest node id.

use std::cmp::{Ordering, Reverse};

use serde::{Deserialize, Serialize};

use super::NodeId;

/// The per-card `node.role` override.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolePin {
    /// Let the election decide.
    #[default]
    Auto,
    /// Prefer this node as a server (ranks above every `Auto` node).
    Server,
    /// Never a server unless no other node exists.
    Agent,
}

impl RolePin {
    fn weight(self) -> u8 {
        match self {
            RolePin::Server => 2,
            RolePin::Auto => 1,
            RolePin::Agent => 0,
        }
    }

    pub(crate) fn to_wire(self) -> u8 {
        match self {
            RolePin::Auto => 0,
            RolePin::Server => 1,
            RolePin::Agent => 2,
        }
    }

    pub(crate) fn from_wire(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(RolePin::Auto),
            1 => Some(RolePin::Server),
            2 => Some(RolePin::Agent),
            _ => None,
        }
    }
}

/// A node's claim to run cluster-init or hold a server seat; a greater rank is a better candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rank {
    /// The role pin from `cluster.toml`.
    pub pin: RolePin,
    /// Storage speed score: higher is faster (the storage probe maps its classes onto it).
    pub storage: u8,
    /// Installed RAM in MiB.
    pub ram_mib: u32,
    /// The node itself: the lowest id wins a tie.
    pub node: NodeId,
}

impl Rank {
    fn key(&self) -> (u8, u8, u32, Reverse<NodeId>) {
        (
            self.pin.weight(),
            self.storage,
            self.ram_mib,
            Reverse(self.node),
        )
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(pin: RolePin, storage: u8, ram_mib: u32, node: u64) -> Rank {
        Rank {
            pin,
            storage,
            ram_mib,
            node: NodeId(node),
        }
    }

    #[test]
    fn order_is_pin_then_storage_then_ram_then_lowest_id() {
        let pinned_slow = rank(RolePin::Server, 0, 512, 9);
        let fast = rank(RolePin::Auto, 200, 1024, 5);
        let fast_big = rank(RolePin::Auto, 200, 8192, 7);
        let fast_big_low_id = rank(RolePin::Auto, 200, 8192, 3);
        let agent = rank(RolePin::Agent, 255, 16384, 1);
        let mut all = vec![agent, fast, fast_big, pinned_slow, fast_big_low_id];
        all.sort();
        assert_eq!(
            all,
            vec![agent, fast, fast_big, fast_big_low_id, pinned_slow]
        );
    }

    #[test]
    fn pin_wire_round_trip() {
        for pin in [RolePin::Auto, RolePin::Server, RolePin::Agent] {
            assert_eq!(RolePin::from_wire(pin.to_wire()), Some(pin));
        }
        assert_eq!(RolePin::from_wire(3), None);
    }
}
