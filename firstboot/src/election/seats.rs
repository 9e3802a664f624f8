//! After the decision: the init node grants server seats one at a time; everyone else becomes an agent.

use super::rank::Rank;
use super::{NodeId, Role, RolePin};

/// The role of a non-init node, given the init node's latest roster; `None` while it waits for a seat.
///
/// The roster only grows, so a node in it stays a server and a full roster stays full.
pub fn role_for(
    pin: RolePin,
    me: NodeId,
    init: NodeId,
    roster: &[NodeId],
    servers: usize,
) -> Option<Role> {
    if roster.contains(&me) {
        Some(Role::Server { join: init })
    } else if pin == RolePin::Agent || roster.len() >= servers {
        Some(Role::Agent { join: init })
    } else {
        None
    }
}

/// The next seat the init node grants, if any.
///
/// A seat is granted only when every earlier holder serves (etcd admits one learner at a time),
/// never beyond `servers` seats, to the best-ranked node that asks for one.
pub fn next_grant(
    roster: &[NodeId],
    servers: usize,
    serving: impl Fn(NodeId) -> bool,
    candidates: impl IntoIterator<Item = Rank>,
) -> Option<NodeId> {
    if roster.len() >= servers || !roster.iter().all(|holder| serving(*holder)) {
        return None;
    }
    candidates
        .into_iter()
        .filter(|rank| rank.pin != RolePin::Agent && !roster.contains(&rank.node))
        .max()
        .map(|rank| rank.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(node: u64, storage: u8) -> Rank {
        Rank {
            pin: RolePin::Auto,
            storage,
            ram_mib: 1024,
            node: NodeId(node),
        }
    }

    #[test]
    fn grants_wait_for_the_previous_holder_and_stop_at_capacity() {
        let candidates = [rank(2, 10), rank(3, 50), rank(4, 50)];
        let none_serving = |_: NodeId| false;
        let all_serving = |_: NodeId| true;
        assert_eq!(next_grant(&[NodeId(1)], 3, none_serving, candidates), None);
        assert_eq!(
            next_grant(&[NodeId(1)], 3, all_serving, candidates),
            Some(NodeId(3))
        );
        assert_eq!(
            next_grant(&[NodeId(1), NodeId(3)], 3, all_serving, candidates),
            Some(NodeId(4))
        );
        assert_eq!(
            next_grant(
                &[NodeId(1), NodeId(3), NodeId(4)],
                3,
                all_serving,
                candidates
            ),
            None
        );
    }

    #[test]
    fn role_follows_the_roster() {
        let init = NodeId(1);
        let roster = [init, NodeId(3)];
        assert_eq!(
            role_for(RolePin::Auto, NodeId(3), init, &roster, 3),
            Some(Role::Server { join: init })
        );
        assert_eq!(role_for(RolePin::Auto, NodeId(4), init, &roster, 3), None);
        assert_eq!(
            role_for(RolePin::Auto, NodeId(4), init, &roster, 2),
            Some(Role::Agent { join: init })
        );
        assert_eq!(
            role_for(RolePin::Agent, NodeId(4), init, &roster, 3),
            Some(Role::Agent { join: init })
        );
    }
}
