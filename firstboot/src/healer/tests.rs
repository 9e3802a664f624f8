//! The healer's decision table.

use super::*;
use crate::model::RolePin;
use crate::seat_book::SeatHolder;

const NOW: i64 = 10_000;
const AFTER: i64 = 60;

fn holder(n: u64) -> SeatHolder {
    SeatHolder {
        node: NodeId(n),
        name: format!("lab-{n}"),
        granted_at: 100,
    }
}

fn book(holders: &[u64]) -> SeatBook {
    SeatBook::formed(holders.iter().map(|n| holder(*n)).collect())
}

/// A Node object: Ready, or not Ready since `since` (its last heartbeat).
fn node(n: u64, ready: Option<i64>) -> NodeView {
    NodeView {
        name: format!("lab-{n}"),
        ready: if ready.is_none() {
            Ready::True
        } else {
            Ready::Unknown
        },
        last_heartbeat: ready.unwrap_or(NOW - 5),
        deleting: false,
    }
}

fn agent(n: u64, storage: u8) -> AgentView {
    AgentView {
        name: format!("lab-{n}"),
        rank: Rank {
            pin: RolePin::Auto,
            storage,
            ram_mib: 1024,
            node: NodeId(n),
        },
    }
}

struct Case {
    book: SeatBook,
    nodes: Vec<NodeView>,
    lan: BTreeMap<NodeId, i64>,
    cards: Vec<NodeId>,
    agents: Vec<AgentView>,
    after: Option<i64>,
}

impl Case {
    /// Servers 1, 2, 3 holding the seats, all Ready and on the LAN; agents 4 (SD) and 5 (SSD).
    fn healthy() -> Case {
        Case {
            book: book(&[1, 2, 3]),
            nodes: vec![
                node(1, None),
                node(2, None),
                node(3, None),
                node(4, None),
                node(5, None),
            ],
            lan: (1..=5).map(|n| (NodeId(n), NOW - 1)).collect(),
            cards: Vec::new(),
            agents: vec![agent(4, 30), agent(5, 90)],
            after: Some(AFTER),
        }
    }

    /// Server `n` dead since `since`: no heartbeat, not heard on the LAN.
    fn dead(mut self, n: u64, since: i64) -> Case {
        self.nodes.retain(|v| v.name != format!("lab-{n}"));
        self.nodes.push(node(n, Some(since)));
        self.lan.insert(NodeId(n), since);
        self
    }

    fn decide(&self) -> Action {
        decide(&Inputs {
            servers: 3,
            replace_after: self.after,
            now: NOW,
            nodes: &self.nodes,
            lan_seen: &self.lan,
            book: &self.book,
            new_cards: &self.cards,
            agents: &self.agents,
        })
    }
}

#[test]
fn a_healthy_cluster_or_off_does_nothing() {
    assert_eq!(Case::healthy().decide(), Action::Nothing(Why::Healthy));
    let mut off = Case::healthy().dead(1, NOW - 3600);
    off.after = None;
    assert_eq!(off.decide(), Action::Nothing(Why::Off));
}

#[test]
fn a_server_gone_for_replace_after_is_deleted_not_before() {
    let early = Case::healthy().dead(1, NOW - AFTER + 10);
    assert_eq!(early.decide(), Action::Nothing(Why::Waiting(NodeId(1), 10)));
    let due = Case::healthy().dead(1, NOW - AFTER);
    assert_eq!(
        due.decide(),
        Action::DeleteNode {
            node: NodeId(1),
            name: "lab-1".into()
        }
    );
}

#[test]
fn gone_means_unseen_by_both_k3s_and_the_lan() {
    // K3s lost it an hour ago, but the LAN heard it 20 s ago: not gone (20 s of 60 so far).
    let mut case = Case::healthy().dead(1, NOW - 3600);
    case.lan.insert(NodeId(1), NOW - 20);
    assert_eq!(case.decide(), Action::Nothing(Why::Waiting(NodeId(1), 40)));
    // Seen on the LAN long ago, its heartbeat recent: the heartbeat counts.
    let mut case = Case::healthy().dead(1, NOW - 30);
    case.lan.insert(NodeId(1), NOW - 3600);
    assert_eq!(case.decide(), Action::Nothing(Why::Waiting(NodeId(1), 30)));
    // Ready in K3s: alive whatever the LAN says (a dead avahi-daemon).
    let mut case = Case::healthy();
    case.lan.insert(NodeId(1), NOW - 3600);
    assert_eq!(case.decide(), Action::Nothing(Why::Healthy));
}

#[test]
fn nothing_happens_while_a_deletion_runs_and_the_seat_is_released_only_once_the_node_is_gone() {
    let mut deleting = Case::healthy().dead(1, NOW - 3600);
    deleting.nodes.iter_mut().for_each(|n| {
        if n.name == "lab-1" {
            n.deleting = true;
        }
    });
    assert_eq!(
        deleting.decide(),
        Action::Nothing(Why::Deleting("lab-1".into()))
    );
    // The Node object is gone (its finalizer removed the etcd member): release the seat.
    let mut deleted = Case::healthy().dead(1, NOW - 3600);
    deleted.nodes.retain(|n| n.name != "lab-1");
    assert_eq!(deleted.decide(), Action::Release(NodeId(1)));
}

#[test]
fn a_free_seat_goes_to_a_waiting_new_card_else_to_the_best_ready_agent() {
    let mut freed = Case::healthy();
    freed.book = freed.book.release(NodeId(1), NOW - 5).unwrap();
    freed.nodes.retain(|n| n.name != "lab-1");
    // No new card: the SSD agent (5) before the SD one (4).
    assert_eq!(
        freed.decide(),
        Action::Promote {
            node: NodeId(5),
            name: "lab-5".into()
        }
    );
    // A new card asks: it gets the seat (from the seat keeper), no promotion.
    freed.cards = vec![NodeId(9)];
    assert_eq!(
        freed.decide(),
        Action::Nothing(Why::NewCardWaiting(NodeId(9)))
    );
    // No card; the SSD agent is not Ready: the SD one.
    freed.cards.clear();
    freed.nodes.retain(|n| n.name != "lab-5");
    freed.nodes.push(node(5, Some(NOW - 100)));
    assert_eq!(
        freed.decide(),
        Action::Promote {
            node: NodeId(4),
            name: "lab-4".into()
        }
    );
    // No Ready agent at all.
    freed.nodes.retain(|n| n.name != "lab-4");
    assert_eq!(freed.decide(), Action::Nothing(Why::NoCandidate));
}

#[test]
fn never_more_than_servers_seats_the_grant_waits_for_the_release() {
    // The dead server still holds its seat (its Node is there): the agents wait, the Node is
    // deleted first; at no step is a fourth seat granted.
    let case = Case::healthy().dead(2, NOW - 3600);
    assert!(matches!(case.decide(), Action::DeleteNode { .. }));
    let mut case = case;
    case.nodes.retain(|n| n.name != "lab-2");
    assert_eq!(case.decide(), Action::Release(NodeId(2)));
    case.book = case.book.release(NodeId(2), NOW).unwrap();
    assert!(matches!(case.decide(), Action::Promote { .. }));
    // The promoted agent's seat is pending: nothing else happens until it serves.
    case.book = case.book.grant(NodeId(5), "lab-5", NOW, 3).unwrap();
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(5)))
    );
    assert_eq!(case.book.holders.len(), 3);
}

#[test]
fn quorum_lost_means_no_removal_and_no_promotion() {
    let case = Case::healthy().dead(1, NOW - 3600).dead(2, NOW - 3600);
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::QuorumLost {
            alive: 1,
            holders: 3
        })
    );
    // One gone for good, one rebooting (not Ready, not on the LAN for 40 s, not yet gone): no
    // removal while the reboot leaves no majority.
    let case = Case::healthy().dead(1, NOW - 3600).dead(2, NOW - 40);
    assert!(matches!(
        case.decide(),
        Action::Nothing(Why::QuorumLost { alive: 1, .. })
    ));
}

#[test]
fn the_holder_gone_longest_goes_first_one_at_a_time() {
    let mut case = Case::healthy().dead(3, NOW - 500).dead(2, NOW - 900);
    // 5 servers' worth of holders so that two dead still leave a majority.
    case.book = book(&[1, 2, 3, 6, 7]);
    case.nodes.push(node(6, None));
    case.nodes.push(node(7, None));
    case.lan.insert(NodeId(6), NOW);
    case.lan.insert(NodeId(7), NOW);
    assert_eq!(
        case.decide(),
        Action::DeleteNode {
            node: NodeId(2),
            name: "lab-2".into()
        }
    );
}

#[test]
fn a_pending_joiner_that_vanished_frees_its_seat_after_replace_after() {
    let mut case = Case::healthy();
    case.book = book(&[1, 2])
        .grant(NodeId(8), "lab-8", NOW - 3600, 3)
        .unwrap();
    // No Node object, not heard for an hour.
    case.lan.insert(NodeId(8), NOW - 3600);
    assert_eq!(case.decide(), Action::Release(NodeId(8)));
    // Heard recently: its join is in progress.
    case.lan.insert(NodeId(8), NOW - 5);
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(8)))
    );
}

#[test]
fn with_replace_after_off_a_dead_join_still_frees_its_seat_after_the_expiry() {
    let mut case = Case::healthy();
    case.after = None;
    case.book = book(&[1, 2])
        .grant(NodeId(8), "lab-8", NOW - PENDING_JOIN_EXPIRY, 3)
        .unwrap();
    case.lan.insert(NodeId(8), NOW - PENDING_JOIN_EXPIRY + 1);
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(8)))
    );
    case.lan.insert(NodeId(8), NOW - PENDING_JOIN_EXPIRY);
    assert_eq!(case.decide(), Action::Release(NodeId(8)));
    // A joiner with a Node (K3s registered it) is never released this way.
    case.nodes.push(node(8, Some(NOW - PENDING_JOIN_EXPIRY)));
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(8)))
    );
}

#[test]
fn an_agent_pinned_to_its_role_is_never_promoted() {
    let mut freed = Case::healthy();
    freed.book = freed.book.release(NodeId(1), NOW - 5).unwrap();
    freed.nodes.retain(|n| n.name != "lab-1");
    freed.agents[1].rank.pin = RolePin::Agent;
    assert_eq!(
        freed.decide(),
        Action::Promote {
            node: NodeId(4),
            name: "lab-4".into()
        }
    );
    freed.agents[0].rank.pin = RolePin::Agent;
    assert_eq!(freed.decide(), Action::Nothing(Why::NoCandidate));
}

/// Server 1 was removed; agent 5 was granted its seat `granted_ago` seconds ago.
fn promoting(granted_ago: i64) -> Case {
    let mut case = Case::healthy();
    case.book = case
        .book
        .release(NodeId(1), NOW - granted_ago - 5)
        .unwrap()
        .grant(NodeId(5), "lab-5", NOW - granted_ago, 3)
        .unwrap();
    case.nodes.retain(|n| n.name != "lab-1");
    case
}

#[test]
fn a_promotion_the_agent_never_takes_up_is_withdrawn_after_its_timeout() {
    let timeout = promotion::timeout(AFTER);
    assert_eq!(timeout, promotion::MIN_TIMEOUT.max(AFTER));
    // Still announcing itself as an agent, within the timeout: its join is in progress.
    assert_eq!(
        promoting(timeout - 1).decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(5)))
    );
    // Past it: the grant is withdrawn (and nothing else happens in that round).
    assert_eq!(promoting(timeout).decide(), Action::Withdraw(NodeId(5)));
    let mut case = promoting(timeout);
    case.book = case.book.withdraw(NodeId(5)).unwrap();
    assert!(matches!(case.decide(), Action::Promote { .. }));
    // Took it up (its record no longer says agent): never withdrawn, however long it takes.
    let mut taken = promoting(10 * timeout);
    taken.agents.retain(|a| a.rank.node != NodeId(5));
    assert_eq!(
        taken.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(5)))
    );
}

#[test]
fn a_promoted_agent_that_dies_mid_way_is_deleted_then_its_seat_released() {
    // Agent 5 took its promotion up (no longer an agent on the LAN), stopped its K3s agent
    // (its Node went Unknown) and then vanished from the LAN too.
    let mut case = promoting(3600);
    case.agents.retain(|a| a.rank.node != NodeId(5));
    case.nodes.retain(|n| n.name != "lab-5");
    case.nodes.push(node(5, Some(NOW - 600)));
    // Heard on the LAN recently (promoting): its join is in progress, whatever K3s says.
    case.lan.insert(NodeId(5), NOW - 5);
    assert_eq!(
        case.decide(),
        Action::Nothing(Why::JoinInProgress(NodeId(5)))
    );
    // Silent for replace_after: deleted non-forced (its etcd member, if any, goes with it).
    case.lan.insert(NodeId(5), NOW - AFTER);
    assert_eq!(
        case.decide(),
        Action::DeleteNode {
            node: NodeId(5),
            name: "lab-5".into()
        }
    );
    // The Node is gone: the seat is released (then a new card or agent may have it).
    case.nodes.retain(|n| n.name != "lab-5");
    assert_eq!(case.decide(), Action::Release(NodeId(5)));
}
