//! The seat keeper: what a serving server does with the seat book each round (pure [`decide`]) and the round itself through the store ([`SeatKeeper`]).
//!
//! Every serving server runs a keeper once K3s serves (the bootstrap election grants nothing by
//! itself in a full run, see [`crate::election::Node::use_seat_book`]). A round reads the book,
//! decides on it and writes the decision by compare-and-swap, so two keepers deciding at once
//! cannot both write: the loser reads again and decides on the winner's book. A decision is one
//! of: end the pending join once its node serves; repeat a grant to a holder that still asks (its
//! first notice was lost, or came from a keeper that died); grant the one free seat to the best
//! asker; send the askers to agent roles when every seat is held; wait while a join is in progress.
//! The election frames that tell a node its seat (`SeatGranted`) are sent only after the book
//! holds the seat, so a grant survives the keeper's death the next moment.

use super::book::{GrantRefused, SeatBook, SeatHolder};
use super::store::{SeatStore, StoreError};
use crate::election::Rank;
use crate::healer::{nodes::parse_nodes, NodeView};
use crate::model::NodeId;

/// A node asking for a server seat (its signed hello said so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// Its rank inputs (best first: SSD before SD, then RAM, then id).
    pub rank: Rank,
    /// Its K3s node name (hostname), as discovery knows it.
    pub name: String,
}

/// What a keeper round decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody asks and no join completed.
    Idle,
    /// The pending join of this node completed (it serves): the next join may begin.
    Joined(NodeId),
    /// This node holds a seat in the book: tell it to join as a server.
    Grant(NodeId),
    /// Every seat is held: tell these askers to join as agents.
    Agents(Vec<NodeId>),
    /// This node's join is in progress: the askers wait for it.
    Wait(NodeId),
    /// Every seat is held but this holder is not heard serving: the askers wait (they are not
    /// sent to agent roles) until the healer frees its seat (`replace_after`) or it comes back.
    Replacing(NodeId),
    /// These askers ask under the name of a Node K3s still has, and nothing else was decided:
    /// a re-flashed card (same machine, same name, no state) whose old Node the healer deletes
    /// first when it is not Ready, or a duplicate name (a Ready Node: nothing is deleted). They
    /// are told nothing meanwhile (an agent would be refused by K3s's node-password check, a
    /// server by its duplicate-name check).
    OldNode(Vec<NodeId>),
}

/// The keeper's decision on `book`: the outcome and the book to write (`None`: unchanged).
/// `serving` are the nodes heard serving now (the keeper's own included); `now` in unix
/// seconds; `replacing`: gone servers are replaced (`replace_after` is not "off"), so a new card
/// asking while a holder is gone waits for that seat instead of becoming an agent.
pub fn decide(
    book: &SeatBook,
    askers: &[Asker],
    serving: &[NodeId],
    servers: usize,
    now: i64,
    replacing: bool,
) -> (Decision, Option<SeatBook>) {
    decide_on(book, askers, serving, &[], servers, now, replacing)
}

/// [`decide`] knowing the Node objects K3s has (`nodes`, read while anybody asks): an asker
/// whose name is a Node's is a re-flashed card or a duplicate name and is told nothing until that
/// Node is gone ([`Decision::OldNode`]); a seat holder that asks again once its join had ended
/// (a re-flashed server whose old Node the healer deleted, so its etcd member is gone too) gets
/// its seat again as a new join, one join at a time.
pub fn decide_on(
    book: &SeatBook,
    askers: &[Asker],
    serving: &[NodeId],
    nodes: &[NodeView],
    servers: usize,
    now: i64,
    replacing: bool,
) -> (Decision, Option<SeatBook>) {
    let pending = book.pending.as_ref().map(|p| p.node);
    if let Some(node) = pending {
        if serving.contains(&node) {
            return (Decision::Joined(node), book.joined(node));
        }
    }
    let (old_node, askers): (Vec<&Asker>, Vec<&Asker>) = askers
        .iter()
        .partition(|a| Some(a.rank.node) != pending && nodes.iter().any(|n| n.name == a.name));
    let old_node: Vec<NodeId> = old_node.iter().map(|a| a.rank.node).collect();
    if let Some(asker) = askers.iter().find(|a| book.holds(a.rank.node)) {
        let node = asker.rank.node;
        // The pending joiner still asking did not hear its grant: repeat it (no write).
        if pending == Some(node) {
            return (Decision::Grant(node), None);
        }
        // A holder whose join had ended asks again with no Node left: re-flashed, its old Node
        // (and with it its etcd member) deleted. Its seat again, as a new join.
        return match book.rejoin(node, now) {
            Ok(next) => (Decision::Grant(node), Some(next)),
            Err(GrantRefused::JoinInProgress(other)) => (Decision::Wait(other), None),
            Err(GrantRefused::Full { .. }) => (Decision::OldNode(vec![node]), None),
        };
    }
    let Some(best) = askers.iter().max_by_key(|a| a.rank) else {
        if old_node.is_empty() {
            return (Decision::Idle, None);
        }
        return (Decision::OldNode(old_node), None);
    };
    match book.grant(best.rank.node, &best.name, now, servers) {
        Ok(next) => (Decision::Grant(best.rank.node), Some(next)),
        Err(GrantRefused::Full { .. }) => {
            let gone = book.holders.iter().find(|h| !serving.contains(&h.node));
            match gone {
                Some(gone) if replacing => (Decision::Replacing(gone.node), None),
                _ => (
                    Decision::Agents(askers.iter().map(|a| a.rank.node).collect()),
                    None,
                ),
            }
        }
        Err(GrantRefused::JoinInProgress(node)) => (Decision::Wait(node), None),
    }
}

/// One serving server's keeper, through the seat store.
#[derive(Clone, Debug)]
pub struct SeatKeeper {
    store: SeatStore,
    me: SeatHolder,
    init: bool,
    servers: usize,
    replacing: bool,
}

impl SeatKeeper {
    /// The keeper of node `me` (named `name`); `init` when it is the cluster-init node, the only
    /// one that creates the book (holding just its own seat, before it grants any other).
    pub fn new(store: SeatStore, me: NodeId, name: &str, init: bool, servers: usize) -> Self {
        SeatKeeper {
            store,
            me: SeatHolder {
                node: me,
                name: name.to_string(),
                granted_at: 0,
            },
            init,
            servers,
            replacing: false,
        }
    }

    /// This keeper's cluster replaces gone servers (`replace_after` is not "off"): askers wait
    /// for a gone holder's seat instead of becoming agents (see [`decide`]).
    pub fn replacing(mut self, replacing: bool) -> Self {
        self.replacing = replacing;
        self
    }

    /// One round at `now` (unix seconds): the decision and the book as stored afterwards;
    /// `None` on a non-init server while no book exists yet (the init creates it before its
    /// first grant, so no other server can exist without one).
    pub fn round(
        &self,
        askers: &[Asker],
        serving: &[NodeId],
        now: i64,
    ) -> Result<Option<(Decision, SeatBook)>, StoreError> {
        // This server serves too (it runs the keeper only while it does).
        let serving: Vec<NodeId> = serving.iter().copied().chain([self.me.node]).collect();
        // The Nodes K3s has, read only while somebody asks: an asker named like one of them is
        // a re-flashed card (or a duplicate name), told nothing until that Node is gone.
        let nodes = if askers.is_empty() {
            Vec::new()
        } else {
            parse_nodes(
                &self
                    .store
                    .runner()
                    .json(&["get", "nodes", "-o", "json"], None)?,
            )
        };
        let decide = |book: &SeatBook| {
            decide_on(
                book,
                askers,
                &serving,
                &nodes,
                self.servers,
                now,
                self.replacing,
            )
        };
        let updated = if self.init {
            let me = SeatHolder {
                granted_at: now,
                ..self.me.clone()
            };
            self.store
                .update(|| SeatBook::formed(vec![me.clone()]), decide)?
        } else {
            match self.store.update_existing(decide)? {
                Some(updated) => updated,
                None => return Ok(None),
            }
        };
        Ok(Some((updated.outcome, updated.book)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::healer::Ready;
    use crate::model::RolePin;

    fn asker(node: u64, storage: u8) -> Asker {
        Asker {
            rank: Rank {
                pin: RolePin::Auto,
                storage,
                ram_mib: 1024,
                node: NodeId(node),
            },
            name: format!("lab-{node}"),
        }
    }

    fn holders(nodes: &[u64]) -> SeatBook {
        SeatBook::formed(
            nodes
                .iter()
                .map(|n| SeatHolder {
                    node: NodeId(*n),
                    name: format!("lab-{n}"),
                    granted_at: 1,
                })
                .collect(),
        )
    }

    #[test]
    fn the_best_asker_gets_the_free_seat_ssd_first() {
        let book = holders(&[1, 2]);
        let (decision, next) = decide(
            &book,
            &[asker(7, 30), asker(4, 90)],
            &[1, 2].map(NodeId),
            3,
            50,
            true,
        );
        assert_eq!(decision, Decision::Grant(NodeId(4)));
        let next = next.expect("the grant is written");
        assert!(next.holds(NodeId(4)) && !next.holds(NodeId(7)));
        assert_eq!(
            next.pending.as_ref().map(|p| (p.node, p.since)),
            Some((NodeId(4), 50))
        );
    }

    #[test]
    fn one_join_at_a_time_then_the_next() {
        let book = holders(&[1]).grant(NodeId(4), "lab-4", 10, 3).unwrap();
        // Node 4 got its grant but does not serve yet: node 5 waits, node 4 is told again.
        let serving = [NodeId(1)];
        assert_eq!(
            decide(&book, &[asker(5, 90)], &serving, 3, 11, true),
            (Decision::Wait(NodeId(4)), None)
        );
        assert_eq!(
            decide(&book, &[asker(4, 90), asker(5, 90)], &serving, 3, 11, true),
            (Decision::Grant(NodeId(4)), None)
        );
        // Node 4 serves: its join ends (one write), then node 5 gets the last seat.
        let serving = [NodeId(1), NodeId(4)];
        let (decision, next) = decide(&book, &[asker(5, 90)], &serving, 3, 12, true);
        assert_eq!(decision, Decision::Joined(NodeId(4)));
        let next = next.unwrap();
        assert_eq!(next.pending, None);
        let (decision, full) = decide(&next, &[asker(5, 90)], &serving, 3, 13, true);
        assert_eq!(decision, Decision::Grant(NodeId(5)));
        assert_eq!(full.unwrap().holders.len(), 3);
    }

    #[test]
    fn a_full_book_sends_askers_to_agents_and_nobody_idles_into_a_write() {
        let book = holders(&[1, 2, 3]);
        let serving = [1, 2, 3].map(NodeId);
        assert_eq!(
            decide(&book, &[asker(4, 90), asker(5, 10)], &serving, 3, 9, true),
            (Decision::Agents(vec![NodeId(4), NodeId(5)]), None)
        );
        assert_eq!(
            decide(&book, &[], &serving, 3, 9, true),
            (Decision::Idle, None)
        );
    }

    #[test]
    fn a_new_card_waits_for_a_gone_holders_seat_unless_replacement_is_off() {
        let book = holders(&[1, 2, 3]);
        // Server 1 is not heard serving (powered off): the card waits for its seat, which the
        // healer frees after replace_after; it is not made an agent for good.
        let serving = [2, 3].map(NodeId);
        assert_eq!(
            decide(&book, &[asker(4, 90)], &serving, 3, 9, true),
            (Decision::Replacing(NodeId(1)), None)
        );
        // replace_after = "off": nothing will free the seat, the card joins as an agent.
        assert_eq!(
            decide(&book, &[asker(4, 90)], &serving, 3, 9, false),
            (Decision::Agents(vec![NodeId(4)]), None)
        );
    }

    #[test]
    fn a_released_seat_is_granted_once_and_never_beyond_servers() {
        let book = holders(&[1, 2, 3]).release(NodeId(1), 20).unwrap();
        let serving = [2, 3].map(NodeId);
        // A tie on storage and RAM: the lowest id wins.
        let (decision, next) = decide(&book, &[asker(9, 90), asker(8, 90)], &serving, 3, 21, true);
        assert_eq!(decision, Decision::Grant(NodeId(8)));
        let next = next.unwrap();
        assert_eq!(next.holders.len(), 3);
        // A second keeper deciding on the written book grants nothing more.
        assert_eq!(
            decide(&next, &[asker(9, 90)], &serving, 3, 21, true),
            (Decision::Wait(NodeId(8)), None)
        );
    }

    fn node_view(n: u64, ready: Ready) -> NodeView {
        NodeView {
            name: format!("lab-{n}"),
            ready,
            last_heartbeat: 1,
            deleting: false,
        }
    }

    #[test]
    fn a_card_named_like_a_node_k3s_has_is_told_nothing_ready_or_not() {
        // Agent 4's card was re-flashed: it asks again while its old Node is still there.
        // Every seat is held and serving: without the Nodes it would be sent to an agent role
        // (and K3s would refuse its new node password forever).
        let book = holders(&[1, 2, 3]);
        let serving = [1, 2, 3].map(NodeId);
        for ready in [Ready::Unknown, Ready::True] {
            let nodes = [1, 2, 3, 4].map(|n| node_view(n, ready));
            assert_eq!(
                decide_on(&book, &[asker(4, 90)], &serving, &nodes, 3, 9, true),
                (Decision::OldNode(vec![NodeId(4)]), None),
                "{ready:?}"
            );
            // Another new card is not held up by it.
            assert_eq!(
                decide_on(
                    &book,
                    &[asker(4, 90), asker(5, 90)],
                    &serving,
                    &nodes,
                    3,
                    9,
                    true
                ),
                (Decision::Agents(vec![NodeId(5)]), None)
            );
        }
        // Its old Node is gone: it is an agent like any card.
        let nodes = [1, 2, 3].map(|n| node_view(n, Ready::True));
        assert_eq!(
            decide_on(&book, &[asker(4, 90)], &serving, &nodes, 3, 9, true),
            (Decision::Agents(vec![NodeId(4)]), None)
        );
    }

    #[test]
    fn a_reflashed_server_gets_its_seat_again_only_once_its_old_node_is_gone() {
        // Server 2 (a holder whose join ended) asks again: its card was re-flashed.
        let book = holders(&[1, 2, 3]);
        let serving = [1, 3].map(NodeId);
        let with_old = [1, 2, 3].map(|n| node_view(n, Ready::Unknown));
        assert_eq!(
            decide_on(&book, &[asker(2, 90)], &serving, &with_old, 3, 9, true),
            (Decision::OldNode(vec![NodeId(2)]), None)
        );
        // The healer deleted its Node (and K3s's finalizer its etcd member): a new join.
        let nodes = [1, 3].map(|n| node_view(n, Ready::True));
        let (decision, next) = decide_on(&book, &[asker(2, 90)], &serving, &nodes, 3, 20, true);
        assert_eq!(decision, Decision::Grant(NodeId(2)));
        let next = next.expect("the new join is written");
        assert_eq!(next.holders.len(), 3);
        assert_eq!(
            next.pending.as_ref().map(|p| (p.node, p.since)),
            Some((NodeId(2), 20))
        );
        // Repeated while it still asks, without another write; it serves: the join ends.
        assert_eq!(
            decide_on(&next, &[asker(2, 90)], &serving, &nodes, 3, 21, true),
            (Decision::Grant(NodeId(2)), None)
        );
        let (decision, done) = decide_on(&next, &[], &[1, 2, 3].map(NodeId), &nodes, 3, 30, true);
        assert_eq!(decision, Decision::Joined(NodeId(2)));
        assert_eq!(done.unwrap().pending, None);
        // One join at a time: another join pending, it waits.
        let other = holders(&[1, 2]).grant(NodeId(5), "lab-5", 15, 3).unwrap();
        assert_eq!(
            decide_on(&other, &[asker(2, 90)], &serving, &nodes, 3, 20, true),
            (Decision::Wait(NodeId(5)), None)
        );
    }
}
