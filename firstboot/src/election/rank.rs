//! Who should run cluster-init: role pin first, then storage speed, then RAM, then the lowest node id.

use std::cmp::{Ordering, Reverse};

use serde::{Deserialize, Serialize};

use super::{NodeId, RolePin};

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
}
