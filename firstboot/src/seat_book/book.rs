//! The seat book's rules (pure): at most `servers` holders, one join at a time, holders only leave through `release`.

use crate::model::NodeId;
use serde::{Deserialize, Serialize};

/// A node holding a server seat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatHolder {
    /// The node's id.
    pub node: NodeId,
    /// Its K3s node name (hostname).
    pub name: String,
    /// When the seat was granted, unix seconds.
    pub granted_at: i64,
}

/// The one server join in progress: its seat is granted, its etcd member not yet voting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingJoin {
    /// The joining node (also a holder).
    pub node: NodeId,
    /// When the join began, unix seconds.
    pub since: i64,
}

/// A node whose seat was released because it was removed from the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedNode {
    /// The node's id.
    pub node: NodeId,
    /// When it was removed, unix seconds.
    pub at: i64,
}

/// Who holds the cluster's server seats after formation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatBook {
    /// Seat holders in grant order (the pending joiner included).
    pub holders: Vec<SeatHolder>,
    /// The server join in progress, if any: no other seat is granted until it completes.
    pub pending: Option<PendingJoin>,
    /// Nodes removed from the cluster (their seats released), oldest first.
    pub removed: Vec<RemovedNode>,
}

/// Why a seat was not granted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefused {
    /// Every seat is held.
    #[error("all {servers} server seats are held")]
    Full {
        /// The cluster's seat count.
        servers: usize,
    },
    /// Another node's server join is in progress (etcd admits one learner at a time).
    #[error("node {0} is joining as a server; one join at a time")]
    JoinInProgress(NodeId),
}

impl SeatBook {
    /// The book of a cluster just formed: the election's roster, every holder serving.
    pub fn formed(holders: Vec<SeatHolder>) -> SeatBook {
        SeatBook {
            holders,
            pending: None,
            removed: Vec::new(),
        }
    }

    /// Whether `node` holds a seat.
    pub fn holds(&self, node: NodeId) -> bool {
        self.holders.iter().any(|h| h.node == node)
    }

    /// The book with a seat granted to `node` at `now`, or why not. Granting the pending node
    /// again is a no-op (a retried write of our own decision); a holder that is not pending is
    /// already granted.
    pub fn grant(
        &self,
        node: NodeId,
        name: &str,
        now: i64,
        servers: usize,
    ) -> Result<SeatBook, GrantRefused> {
        if self.holds(node) {
            return Ok(self.clone());
        }
        if let Some(pending) = &self.pending {
            return Err(GrantRefused::JoinInProgress(pending.node));
        }
        if self.holders.len() >= servers {
            return Err(GrantRefused::Full { servers });
        }
        let mut next = self.clone();
        next.holders.push(SeatHolder {
            node,
            name: name.to_string(),
            granted_at: now,
        });
        next.pending = Some(PendingJoin { node, since: now });
        Ok(next)
    }

    /// The book with `node`'s seat (held, its join ended) granted again as a new join at `now`:
    /// a re-flashed server whose old Node and etcd member are gone joins again as a new member,
    /// one join at a time. A pending `node` is left as it is; a node holding no seat is refused
    /// like a grant on a full book.
    pub fn rejoin(&self, node: NodeId, now: i64) -> Result<SeatBook, GrantRefused> {
        match &self.pending {
            Some(p) if p.node == node => return Ok(self.clone()),
            Some(p) => return Err(GrantRefused::JoinInProgress(p.node)),
            None => {}
        }
        let mut next = self.clone();
        let Some(holder) = next.holders.iter_mut().find(|h| h.node == node) else {
            return Err(GrantRefused::Full {
                servers: self.holders.len(),
            });
        };
        holder.granted_at = now;
        next.pending = Some(PendingJoin { node, since: now });
        Ok(next)
    }

    /// The book once `node`'s join completed (it serves as a voting member): the next join may
    /// begin. `None` when nothing changes.
    pub fn joined(&self, node: NodeId) -> Option<SeatBook> {
        if self.pending.as_ref().map(|p| p.node) != Some(node) {
            return None;
        }
        let mut next = self.clone();
        next.pending = None;
        Some(next)
    }

    /// The book once `node` was removed from the cluster at `now` (its etcd member is gone):
    /// its seat is free. `None` when it held none.
    pub fn release(&self, node: NodeId, now: i64) -> Option<SeatBook> {
        if !self.holds(node) {
            return None;
        }
        let mut next = self.clone();
        next.holders.retain(|h| h.node != node);
        if next.pending.as_ref().map(|p| p.node) == Some(node) {
            next.pending = None;
        }
        next.removed.push(RemovedNode { node, at: now });
        Some(next)
    }

    /// The book once the pending grant to `node` is taken back because `node` never acted on it
    /// (an agent that was to be promoted but still runs as an agent, see
    /// [`crate::healer::decide`]): its seat is free again and `node` is not recorded as
    /// removed (it never left the cluster). `None` unless `node` is the pending joiner.
    pub fn withdraw(&self, node: NodeId) -> Option<SeatBook> {
        if self.pending.as_ref().map(|p| p.node) != Some(node) {
            return None;
        }
        let mut next = self.clone();
        next.holders.retain(|h| h.node != node);
        next.pending = None;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: u64) -> SeatHolder {
        SeatHolder {
            node: NodeId(node),
            name: format!("lab-{node}"),
            granted_at: 1,
        }
    }

    #[test]
    fn one_join_at_a_time_and_never_more_than_servers() {
        let book = SeatBook::formed(vec![holder(1)]);
        let one = book.grant(NodeId(2), "lab-2", 10, 3).unwrap();
        assert_eq!(
            one.pending,
            Some(PendingJoin {
                node: NodeId(2),
                since: 10
            })
        );
        assert_eq!(one.grant(NodeId(2), "lab-2", 11, 3), Ok(one.clone()));
        assert_eq!(
            one.grant(NodeId(3), "lab-3", 11, 3),
            Err(GrantRefused::JoinInProgress(NodeId(2)))
        );
        let two = one.joined(NodeId(2)).unwrap();
        assert_eq!(one.joined(NodeId(3)), None);
        let three = two.grant(NodeId(3), "lab-3", 12, 3).unwrap();
        let full = three.joined(NodeId(3)).unwrap();
        assert_eq!(
            full.grant(NodeId(4), "lab-4", 13, 3),
            Err(GrantRefused::Full { servers: 3 })
        );
        assert_eq!(full.holders.len(), 3);
    }

    #[test]
    fn a_released_seat_can_be_granted_again() {
        let full = SeatBook::formed(vec![holder(1), holder(2), holder(3)]);
        assert_eq!(full.release(NodeId(9), 5), None);
        let freed = full.release(NodeId(1), 5).unwrap();
        assert_eq!(
            freed.removed,
            [RemovedNode {
                node: NodeId(1),
                at: 5
            }]
        );
        let refilled = freed.grant(NodeId(4), "lab-4", 6, 3).unwrap();
        assert!(refilled.holds(NodeId(4)) && !refilled.holds(NodeId(1)));
        // Releasing the pending joiner (it died while joining) ends its join too.
        let gone = refilled.release(NodeId(4), 7).unwrap();
        assert_eq!(gone.pending, None);
    }

    #[test]
    fn a_grant_never_taken_up_is_withdrawn_without_recording_a_removal() {
        let book = SeatBook::formed(vec![holder(1), holder(2)]);
        let granted = book.grant(NodeId(7), "lab-7", 10, 3).unwrap();
        // Only the pending joiner's grant can be withdrawn.
        assert_eq!(granted.withdraw(NodeId(1)), None);
        assert_eq!(book.withdraw(NodeId(7)), None);
        let back = granted.withdraw(NodeId(7)).unwrap();
        assert_eq!(back, book);
        assert!(back.removed.is_empty());
        // The seat can be granted again, to another node.
        assert!(back.grant(NodeId(8), "lab-8", 11, 3).is_ok());
    }

    #[test]
    fn the_json_names_its_fields_and_refuses_unknown_ones() {
        let book = SeatBook::formed(vec![holder(1)])
            .grant(NodeId(2), "lab-2", 10, 3)
            .unwrap();
        let text = serde_json::to_string(&book).unwrap();
        assert_eq!(serde_json::from_str::<SeatBook>(&text).unwrap(), book);
        assert!(
            text.contains("\"pending\":{\"node\":2,\"since\":10}"),
            "{text}"
        );
        assert!(serde_json::from_str::<SeatBook>(
            r#"{"holders":[],"pending":null,"removed":[],"x":1}"#
        )
        .is_err());
    }
}
