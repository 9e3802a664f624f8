//! The healer round's glue (Lease, kubectl calls, the book's CAS) on an in-memory apiserver;
//! the decision itself is tested in `tests.rs`.

use super::*;
use crate::healer::lease::rfc3339_micro;
use crate::seat_book::{SeatBook, SeatHolder};
use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;
const AFTER: i64 = 20;

/// The apiserver subset the healer uses: Nodes (list, non-forced delete), one ConfigMap and one
/// Lease with resourceVersion CAS. Every call is recorded.
#[derive(Debug, Default)]
struct FakeApi {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: Vec<Value>,
    objects: BTreeMap<String, Value>,
    version: u64,
    calls: Vec<String>,
}

impl FakeApi {
    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn book(&self) -> SeatBook {
        let state = self.state.lock().unwrap();
        let map = &state.objects["ConfigMap"];
        serde_json::from_str(map["data"]["seats.json"].as_str().unwrap()).unwrap()
    }

    fn put_book(&self, book: &SeatBook) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let map = json!({"kind": "ConfigMap", "metadata": {"name": "firstboot-seats",
            "resourceVersion": state.version.to_string()},
            "data": {"seats.json": serde_json::to_string(book).unwrap()}});
        state.objects.insert("ConfigMap".into(), map);
    }

    /// K3s's finalizer ran: Nodes being deleted are gone.
    fn finalize(&self) {
        let mut state = self.state.lock().unwrap();
        state
            .nodes
            .retain(|n| n["metadata"]["deletionTimestamp"].is_null());
    }
}

fn kind(word: &str) -> &'static str {
    match word {
        "lease" => "Lease",
        _ => "ConfigMap",
    }
}

impl Run for FakeApi {
    fn output(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, KubectlError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(args.join(" "));
        let out = match args {
            ["get", "nodes", "-o", "json"] => json!({"kind": "List", "items": state.nodes}),
            ["get", what, _, "-n", "kube-system", "-o", "json"] => state
                .objects
                .get(kind(what))
                .cloned()
                .ok_or_else(|| KubectlError::NotFound(format!("(NotFound) {what}")))?,
            [verb @ ("create" | "replace"), "-f", "-", "-o", "json"] => {
                let mut obj: Value = serde_json::from_slice(stdin.unwrap()).unwrap();
                let k = kind(&obj["kind"].as_str().unwrap().to_lowercase()).to_string();
                let current = state
                    .objects
                    .get(&k)
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                match (*verb, current) {
                    ("create", Some(_)) => {
                        return Err(KubectlError::AlreadyExists("(AlreadyExists)".into()))
                    }
                    ("replace", Some(v)) if v != obj["metadata"]["resourceVersion"] => {
                        return Err(KubectlError::Conflict("(Conflict)".into()))
                    }
                    ("replace", None) => return Err(KubectlError::NotFound("(NotFound)".into())),
                    _ => {}
                }
                state.version += 1;
                obj["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.objects.insert(k, obj.clone());
                obj
            }
            ["delete", "node", name, "--wait=false"] => {
                let node = state
                    .nodes
                    .iter_mut()
                    .find(|n| n["metadata"]["name"] == *name)
                    .ok_or_else(|| KubectlError::NotFound(format!("(NotFound) {name}")))?;
                node["metadata"]["deletionTimestamp"] = json!(rfc3339_micro(NOW));
                return Ok(format!("node \"{name}\" deleted\n").into_bytes());
            }
            other => panic!("the healer ran an unexpected kubectl {other:?}"),
        };
        Ok(serde_json::to_vec(&out).unwrap())
    }
}

/// A Node whose last heartbeat was at `heartbeat`: Ready if recent, else Unknown.
fn node(name: &str, heartbeat: i64) -> Value {
    let ready = if NOW - heartbeat < 40 {
        "True"
    } else {
        "Unknown"
    };
    json!({"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready",
        "status": ready, "lastHeartbeatTime": rfc3339_micro(heartbeat)}]}})
}

/// Servers 1, 2, 3 hold the seats; server 1 died at `NOW - dead_for`; this healer is server 2.
fn cluster(dead_for: i64) -> (Arc<FakeApi>, Healer) {
    let api = Arc::new(FakeApi::default());
    api.state.lock().unwrap().nodes = vec![
        node("lab-1", NOW - dead_for),
        node("lab-2", NOW - 3),
        node("lab-3", NOW - 3),
    ];
    api.put_book(&SeatBook::formed(
        (1..=3)
            .map(|n| SeatHolder {
                node: NodeId(n),
                name: format!("lab-{n}"),
                granted_at: NOW - 3600,
            })
            .collect(),
    ));
    let healer = Healer::new(
        api.clone(),
        NodeId(2),
        3,
        Some(Duration::from_secs(AFTER as u64)),
    );
    (api, healer)
}

fn lan(heard: &[u64], cards: &[u64]) -> LanView {
    LanView {
        heard: heard.iter().map(|n| NodeId(*n)).collect(),
        new_cards: cards.iter().map(|n| NodeId(*n)).collect(),
        card_names: cards
            .iter()
            .map(|n| (NodeId(*n), format!("lab-{n}")))
            .collect(),
        agents: Vec::new(),
    }
}

#[test]
fn the_lease_holder_deletes_a_dead_servers_node_unforced_then_releases_its_seat() {
    let (api, mut healer) = cluster(60);
    let view = lan(&[3], &[9]);
    // Round 1: the Lease is taken, the dead server's Node deleted without --force.
    let outcome = healer.round(&view, NOW).unwrap();
    assert_eq!(
        outcome,
        Outcome::Decided(Action::DeleteNode {
            node: NodeId(1),
            name: "lab-1".into()
        })
    );
    let deletes: Vec<String> = api
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("delete"))
        .collect();
    assert_eq!(deletes, ["delete node lab-1 --wait=false"]);
    assert!(
        api.book().holds(NodeId(1)),
        "released before the member was gone"
    );
    // Round 2: the finalizer has not run yet: wait, keep the seat.
    let outcome = healer.round(&view, NOW + 5).unwrap();
    assert_eq!(
        outcome,
        Outcome::Decided(Action::Nothing(Why::Deleting("lab-1".into())))
    );
    assert!(api.book().holds(NodeId(1)));
    // Round 3: the Node (and its etcd member) is gone: the seat is released in the book.
    api.finalize();
    let outcome = healer.round(&view, NOW + 10).unwrap();
    assert_eq!(outcome, Outcome::Decided(Action::Release(NodeId(1))));
    let book = api.book();
    assert!(
        !book.holds(NodeId(1)) && book.holders.len() == 2,
        "{book:?}"
    );
    assert_eq!(
        book.removed.iter().map(|r| r.node).collect::<Vec<_>>(),
        [NodeId(1)]
    );
    // Round 4: the free seat is left to the new card (the seat keeper grants it).
    let outcome = healer.round(&view, NOW + 15).unwrap();
    assert_eq!(
        outcome,
        Outcome::Decided(Action::Nothing(Why::NewCardWaiting(NodeId(9))))
    );
    assert_eq!(
        api.calls()
            .iter()
            .filter(|c| c.starts_with("delete"))
            .count(),
        1
    );
}

#[test]
fn a_server_without_the_lease_does_nothing() {
    let (api, mut healer) = cluster(60);
    // Server 3 holds the Lease, renewed just now.
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "firstboot-healer", "namespace": "kube-system"},
        "spec": {"holderIdentity": NodeId(3).to_string(), "leaseDurationSeconds": LEASE_SECS,
                 "renewTime": rfc3339_micro(NOW - 1)}});
    api.output(
        &["create", "-f", "-", "-o", "json"],
        Some(lease.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        healer.round(&lan(&[3], &[]), NOW).unwrap(),
        Outcome::NotLeader
    );
    let calls = api.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.starts_with("get lease") || c.starts_with("create")),
        "acted without the Lease: {calls:?}"
    );
    // Once the holder stopped renewing for LEASE_SECS, this server takes over and acts.
    let outcome = healer.round(&lan(&[3], &[]), NOW + LEASE_SECS).unwrap();
    assert!(
        matches!(outcome, Outcome::Decided(Action::DeleteNode { .. })),
        "{outcome:?}"
    );
}

#[test]
fn replace_after_off_runs_no_kubectl_at_all() {
    let (api, _) = cluster(3600);
    let mut healer = Healer::new(api.clone(), NodeId(2), 3, None);
    assert_eq!(healer.round(&lan(&[3], &[]), NOW).unwrap(), Outcome::Off);
    assert_eq!(api.calls(), Vec::<String>::new());
}

#[test]
fn a_server_heard_on_the_lan_is_not_deleted_though_k3s_lost_it() {
    // Server 1's K3s stopped heartbeating long ago, but its firstboot is heard on the LAN:
    // not gone yet (the LAN sighting is the later one, so the wait starts over each round).
    let (api, mut healer) = cluster(600);
    for t in [0, 5, 10, 30] {
        let outcome = healer.round(&lan(&[1, 3], &[]), NOW + t).unwrap();
        assert_eq!(
            outcome,
            Outcome::Decided(Action::Nothing(Why::Waiting(NodeId(1), AFTER))),
            "at +{t} s"
        );
    }
    // Then it falls silent on the LAN too: replaced replace_after later, not before.
    let outcome = healer.round(&lan(&[3], &[]), NOW + 30 + AFTER - 1).unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Decided(Action::Nothing(Why::Waiting(NodeId(1), 1)))
        ),
        "{outcome:?}"
    );
    let outcome = healer.round(&lan(&[3], &[]), NOW + 30 + AFTER).unwrap();
    assert!(
        matches!(outcome, Outcome::Decided(Action::DeleteNode { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        api.calls()
            .iter()
            .filter(|c| c.starts_with("delete"))
            .count(),
        1
    );
}

/// Server 1 was removed and its seat released; agents 4 (SD) and 5 (SSD) are Ready.
fn freed_seat() -> (Arc<FakeApi>, Healer) {
    let (api, healer) = cluster(600);
    {
        let mut state = api.state.lock().unwrap();
        state.nodes.retain(|n| n["metadata"]["name"] != "lab-1");
        state.nodes.push(node("lab-4", NOW - 3));
        state.nodes.push(node("lab-5", NOW - 3));
    }
    let book = api.book().release(NodeId(1), NOW - 10).unwrap();
    api.put_book(&book);
    (api, healer)
}

fn agents_view(heard: &[u64], agents: &[(u64, u8)]) -> LanView {
    LanView {
        agents: agents
            .iter()
            .map(|(n, storage)| AgentView {
                name: format!("lab-{n}"),
                rank: crate::election::Rank {
                    pin: crate::model::RolePin::Auto,
                    storage: *storage,
                    ram_mib: 1024,
                    node: NodeId(*n),
                },
            })
            .collect(),
        ..lan(heard, &[])
    }
}

#[test]
fn the_healer_promotes_the_best_agent_by_granting_it_the_seat_in_the_book_once() {
    let (api, mut healer) = freed_seat();
    let view = agents_view(&[3, 4, 5], &[(4, 30), (5, 90)]);
    let outcome = healer.round(&view, NOW).unwrap();
    assert_eq!(
        outcome,
        Outcome::Decided(Action::Promote {
            node: NodeId(5),
            name: "lab-5".into()
        })
    );
    let book = api.book();
    assert_eq!(book.holders.len(), 3, "{book:?}");
    assert!(book.holds(NodeId(5)) && !book.holds(NodeId(4)));
    assert_eq!(
        book.pending.as_ref().map(|p| (p.node, p.since)),
        Some((NodeId(5), NOW))
    );
    assert!(book.removed.iter().all(|r| r.node != NodeId(5)));
    // Next rounds: the promotion is in progress, no second grant.
    for t in [5, 10] {
        assert_eq!(
            healer.round(&view, NOW + t).unwrap(),
            Outcome::Decided(Action::Nothing(Why::JoinInProgress(NodeId(5))))
        );
    }
    assert_eq!(api.book(), book);
}

#[test]
fn a_card_seen_asking_a_moment_ago_keeps_its_seat_from_an_agent() {
    let (api, mut healer) = freed_seat();
    let before = api.book();
    // A card asked in one view, then a view without it (its hello late): no promotion.
    let asking = LanView {
        new_cards: vec![NodeId(9)],
        ..agents_view(&[3, 4, 5], &[(4, 30), (5, 90)])
    };
    assert_eq!(
        healer.round(&asking, NOW).unwrap(),
        Outcome::Decided(Action::Nothing(Why::NewCardWaiting(NodeId(9))))
    );
    let without = agents_view(&[3, 4, 5], &[(4, 30), (5, 90)]);
    assert_eq!(
        healer.round(&without, NOW + CARD_MEMORY - 1).unwrap(),
        Outcome::Decided(Action::Nothing(Why::NewCardWaiting(NodeId(9))))
    );
    assert_eq!(api.book(), before, "the seat stays free for the card");
    // Gone for CARD_MEMORY: the seat goes to the best agent.
    assert!(matches!(
        healer.round(&without, NOW + CARD_MEMORY).unwrap(),
        Outcome::Decided(Action::Promote {
            node: NodeId(5),
            ..
        })
    ));
}

#[test]
fn a_promotion_grant_loses_to_a_keeper_that_granted_the_seat_first() {
    let (api, healer) = freed_seat();
    // Between the healer's decision and its write, a keeper granted the seat to a new card.
    let card = api.book().grant(NodeId(9), "lab-9", NOW, 3).unwrap();
    api.put_book(&card);
    assert!(!healer.grant_promotion(NodeId(5), "lab-5", NOW).unwrap());
    assert_eq!(api.book(), card);
}

#[test]
fn a_grant_the_agent_never_takes_up_is_withdrawn_and_the_seat_is_free_again() {
    let (api, mut healer) = freed_seat();
    let view = agents_view(&[3, 4, 5], &[(5, 90)]);
    healer.round(&view, NOW).unwrap();
    assert!(api.book().holds(NodeId(5)));
    let timeout = super::super::promotion::timeout(AFTER);
    let outcome = healer.round(&view, NOW + timeout).unwrap();
    assert_eq!(outcome, Outcome::Decided(Action::Withdraw(NodeId(5))));
    let book = api.book();
    assert!(!book.holds(NodeId(5)) && book.pending.is_none(), "{book:?}");
    assert!(book.removed.iter().all(|r| r.node != NodeId(5)), "{book:?}");
}

#[test]
fn a_reflashed_cards_old_node_is_deleted_unforced_even_with_replace_after_off_but_never_a_ready_one(
) {
    for after in [None, Some(Duration::from_secs(AFTER as u64))] {
        // Servers 1-3 Ready; agent 4's Node Ready: its card asks again (a duplicate name, or a
        // card back within the grace period): nothing is deleted.
        let (api, _) = cluster(3);
        api.state.lock().unwrap().nodes.push(node("lab-4", NOW - 3));
        let mut healer = Healer::new(api.clone(), NodeId(2), 3, after);
        let outcome = healer.round(&lan(&[1, 3], &[4]), NOW).unwrap();
        assert!(
            !matches!(outcome, Outcome::Decided(Action::DeleteReflashed { .. })),
            "{outcome:?}"
        );
        assert!(
            api.calls().iter().all(|c| !c.starts_with("delete")),
            "{:?}",
            api.calls()
        );
        // Its old Node NotReady (no heartbeat for a minute): deleted, not forced.
        api.state.lock().unwrap().nodes[3] = node("lab-4", NOW - 60);
        let outcome = healer.round(&lan(&[1, 3], &[4]), NOW + 5).unwrap();
        assert_eq!(
            outcome,
            Outcome::Decided(Action::DeleteReflashed {
                node: NodeId(4),
                name: "lab-4".into()
            })
        );
        let deletes: Vec<String> = api
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("delete"))
            .collect();
        assert_eq!(deletes, ["delete node lab-4 --wait=false"]);
        // The book is not touched (an agent holds no seat).
        assert_eq!(api.book().holders.len(), 3);
        // Once K3s's finalizer ran the Node is gone: nothing more for that card.
        api.finalize();
        let outcome = healer.round(&lan(&[1, 3], &[4]), NOW + 10).unwrap();
        assert!(
            !matches!(outcome, Outcome::Decided(Action::DeleteReflashed { .. })),
            "{outcome:?}"
        );
    }
}
