//! A re-flashed card (SPEC 4.4): a card that asks for its role again (its signed frames prove it holds the token) under the name of a Node that is not Ready is the same machine with a fresh card.
//!
//! The node id is the board serial (else the MAC), so a card re-flashed in the same Pi has the
//! same id and the same hostname, but no state: a new `/etc/rancher/node/password` and no etcd
//! data. K3s refuses it under its old name while the old Node is there: an agent's new node
//! password does not match the node-password secret ("Node password rejected", retried forever,
//! pkg/agent/config/config.go:180-182), and a server's etcd join finds a member named after its
//! node ("duplicate node name found", pkg/etcd/etcd.go). So the healer (the `firstboot-healer`
//! Lease holder, one server) deletes the old Node first, non-forced: K3s's finalizer removes its
//! etcd member, and K3s's node controller its node-password secret (pkg/node/controller.go). The
//! seat keepers tell the card nothing until that Node is gone ([`crate::seat_book::Decision::OldNode`]);
//! then a former server gets its seat again as a new join, a former agent joins as an agent.
//!
//! A Node that is Ready is never deleted: a live node with that name is a duplicate, not a
//! re-flash (or the card came back within K3s's 40 s node-monitor grace period, and its old
//! Node turns NotReady soon). Nothing happens during another deletion, during a server join, or
//! without a majority of live seat holders; `replace_after = "off"` does not turn this off (it
//! replaces no server: the card is the same machine).

use super::{alive_holders, Inputs, NodeView, Ready};
use crate::model::NodeId;

/// What the healer does about cards asking under a known Node's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reflash {
    /// Delete this re-flashed card's old Node (not Ready), non-forced.
    DeleteOldNode {
        /// The card.
        node: NodeId,
        /// Its Node name.
        name: String,
    },
    /// A card asks under the name of a Ready Node: a duplicate name (or a card back within the
    /// node-monitor grace period); nothing is deleted.
    NameInUse {
        /// The card.
        node: NodeId,
        /// The Ready Node's name.
        name: String,
    },
}

/// The re-flash step on `inputs` (its `new_cards` are the cards asking now with their names),
/// `None` when no card asks under a known Node's name or nothing may happen now.
pub fn decide(inputs: &Inputs, names: &[(NodeId, String)]) -> Option<Reflash> {
    let node = |name: &str| -> Option<&NodeView> { inputs.nodes.iter().find(|n| n.name == name) };
    let asking: Vec<(NodeId, &NodeView)> = names
        .iter()
        .filter(|(card, _)| inputs.new_cards.contains(card))
        .filter_map(|(card, name)| Some((*card, node(name)?)))
        .collect();
    let first = asking.first()?;
    // A Ready Node is never deleted, whatever else holds.
    let Some((card, old)) = asking.iter().find(|(_, v)| v.ready != Ready::True) else {
        return Some(Reflash::NameInUse {
            node: first.0,
            name: first.1.name.clone(),
        });
    };
    if inputs.nodes.iter().any(|n| n.deleting) || inputs.book.pending.is_some() {
        return None;
    }
    let (alive, holders) = alive_holders(inputs);
    if alive < holders / 2 + 1 {
        return None;
    }
    Some(Reflash::DeleteOldNode {
        node: *card,
        name: old.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seat_book::{SeatBook, SeatHolder};
    use std::collections::BTreeMap;

    const NOW: i64 = 10_000;

    fn view(n: u64, ready: Ready) -> NodeView {
        NodeView {
            name: format!("lab-{n}"),
            ready,
            last_heartbeat: if ready == Ready::True {
                NOW - 5
            } else {
                NOW - 300
            },
            deleting: false,
        }
    }

    fn book() -> SeatBook {
        SeatBook::formed(
            (1..=3)
                .map(|n| SeatHolder {
                    node: NodeId(n),
                    name: format!("lab-{n}"),
                    granted_at: 100,
                })
                .collect(),
        )
    }

    fn run(nodes: &[NodeView], book: &SeatBook, cards: &[u64], lan: &[u64]) -> Option<Reflash> {
        let lan_seen: BTreeMap<NodeId, i64> = lan.iter().map(|n| (NodeId(*n), NOW)).collect();
        let new_cards: Vec<NodeId> = cards.iter().map(|n| NodeId(*n)).collect();
        let names: Vec<(NodeId, String)> = cards
            .iter()
            .map(|n| (NodeId(*n), format!("lab-{n}")))
            .collect();
        decide(
            &Inputs {
                servers: 3,
                replace_after: None,
                now: NOW,
                nodes,
                lan_seen: &lan_seen,
                book,
                new_cards: &new_cards,
                agents: &[],
            },
            &names,
        )
    }

    #[test]
    fn a_card_asking_under_a_not_ready_nodes_name_has_that_node_deleted() {
        // Agent 4's card re-flashed (its Node Unknown since its power-off): asked while
        // replace_after is off too.
        let nodes = [
            view(1, Ready::True),
            view(2, Ready::True),
            view(3, Ready::True),
            view(4, Ready::Unknown),
        ];
        assert_eq!(
            run(&nodes, &book(), &[4], &[1, 2, 3]),
            Some(Reflash::DeleteOldNode {
                node: NodeId(4),
                name: "lab-4".into()
            })
        );
        // Server 2 re-flashed (a seat holder): the same.
        let nodes = [
            view(1, Ready::True),
            view(2, Ready::False),
            view(3, Ready::True),
        ];
        assert_eq!(
            run(&nodes, &book(), &[2], &[1, 3]),
            Some(Reflash::DeleteOldNode {
                node: NodeId(2),
                name: "lab-2".into()
            })
        );
        // A new card with no Node of its name: nothing to do here.
        assert_eq!(run(&nodes, &book(), &[9], &[1, 3]), None);
    }

    #[test]
    fn a_ready_node_is_never_deleted_a_duplicate_name_is_said() {
        let nodes = [
            view(1, Ready::True),
            view(2, Ready::True),
            view(3, Ready::True),
            view(4, Ready::True),
        ];
        assert_eq!(
            run(&nodes, &book(), &[4], &[1, 2, 3, 4]),
            Some(Reflash::NameInUse {
                node: NodeId(4),
                name: "lab-4".into()
            })
        );
    }

    #[test]
    fn nothing_during_a_deletion_a_join_or_without_a_majority() {
        let mut nodes = vec![
            view(1, Ready::True),
            view(2, Ready::Unknown),
            view(3, Ready::Unknown),
        ];
        // Servers 2 and 3 gone (only 1 of 3 alive): no action could be safe.
        assert_eq!(run(&nodes, &book(), &[2], &[1]), None);
        nodes[2] = view(3, Ready::True);
        let mut deleting = nodes.clone();
        deleting.push(NodeView {
            deleting: true,
            ..view(5, Ready::Unknown)
        });
        assert_eq!(run(&deleting, &book(), &[2], &[1, 3]), None);
        let joining = SeatBook::formed(book().holders[..2].to_vec())
            .grant(NodeId(7), "lab-7", 50, 3)
            .unwrap();
        assert_eq!(run(&nodes, &joining, &[2], &[1, 3]), None);
        assert!(run(&nodes, &book(), &[2], &[1, 3]).is_some());
    }
}
