//! Cluster formation on a real virtual LAN: the real `firstboot run --until role` in every node.
//!
//! Each node has its own dbus-daemon, avahi-daemon and systemd-hostnamed; the daemons find each
//! other over multicast DNS, elect over UDP and print their role as one JSON line.
//!
//! Two tests need a node caught between "elected" and "Go", a window too short to hit from
//! outside: every node runs `firstboot-held` (the daemon plus a hold hook that only the test crate
//! builds) with `HOLD_ELECTED_ENV`, which holds whichever node wins the first epoch right there
//! (see `held_firstboot.rs`).

use systests::lan::{formation_support, harness};

use formation_support::{
    add_cluster_nodes, all_role_lines, assert_one_cluster, can_run, election_state, formation_lock,
    homelab_lan, node_id, node_number, node_state, role_in, role_of, start_held_node, start_node,
    start_node_as, wait_any_log_line, wait_roles, write_config, ClusterSpec,
};
use harness::{contains, random_token, Lan};
use serde_json::Value;
use std::thread::sleep;
use std::time::Duration;

#[test]
fn three_nodes_three_servers_elect_one_init() {
    let Some((_serial, mut lan, _spec)) =
        homelab_lan("three_nodes_three_servers_elect_one_init", 3, 3, 3)
    else {
        return;
    };
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let roles = wait_roles(&lan, &[0, 1, 2]);
    assert_one_cluster(&lan, &roles, 3, 0);
}

#[test]
fn five_nodes_three_servers_two_agents() {
    let Some((_serial, mut lan, _spec)) =
        homelab_lan("five_nodes_three_servers_two_agents", 5, 3, 5)
    else {
        return;
    };
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let roles = wait_roles(&lan, &[0, 1, 2, 3, 4]);
    assert_one_cluster(&lan, &roles, 3, 2);
}

#[test]
fn classroom_three_kits_form_three_clusters() {
    if !can_run("classroom_three_kits_form_three_clusters") {
        return;
    }
    let _serial = formation_lock();
    let mut lan = Lan::new();
    let kits: Vec<ClusterSpec> = (1..=3)
        .map(|k| ClusterSpec::new(&format!("kit{k}"), 3, 3))
        .collect();
    // Interleave the kits on the LAN: node 1 is kit1, node 2 kit2, ...
    for _ in 0..3 {
        for kit in &kits {
            let node = lan.add_node(&kit.token);
            write_config(node, kit);
        }
    }
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let all: Vec<usize> = (0..9).collect();
    let roles = wait_roles(&lan, &all);
    for (k, kit) in kits.iter().enumerate() {
        let members: Vec<usize> = (0..3).map(|i| i * 3 + k).collect();
        let kit_roles: Vec<_> = members.iter().map(|&i| roles[i].clone()).collect();
        let init = assert_one_cluster_of(&kit_roles, 3, 0);
        // Every member joins its own kit's init node, never another kit's.
        let ids: Vec<String> = kit_roles
            .iter()
            .map(|r| r["node"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            ids.contains(&init),
            "{}: init {init} not a member",
            kit.name
        );
        for r in &kit_roles {
            assert!(
                r["hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&kit.name),
                "{r}"
            );
        }
    }
}

/// One init, `servers - 1` servers and `agents` agents, all joining the init node; its id.
fn assert_one_cluster_of(roles: &[serde_json::Value], servers: usize, agents: usize) -> String {
    formation_support::check_roles(roles, servers, agents)
}

#[test]
fn late_node_joins_the_formed_cluster() {
    let Some((_serial, mut lan, _spec)) =
        homelab_lan("late_node_joins_the_formed_cluster", 3, 3, 4)
    else {
        return;
    };
    for node in lan.nodes.iter_mut().take(3) {
        start_node(node);
    }
    let first = wait_roles(&lan, &[0, 1, 2]);
    let init = formation_support::check_roles(&first, 3, 0);
    // As in the issue: the late node starts 60 s after the others, long past the election's
    // settle and view timers, when the cluster is formed and quiet.
    sleep(Duration::from_secs(60));
    start_node(&mut lan.nodes[3]);
    let late = wait_roles(&lan, &[3]);
    assert_eq!(late[0]["role"], "agent", "all seats are taken: {}", late[0]);
    assert_eq!(late[0]["join"].as_str(), Some(init.as_str()), "{}", late[0]);
    // The early nodes kept their roles (one line each, never a second decision).
    for (node, role) in lan.nodes.iter().zip(&first) {
        assert_eq!(role_of(node).as_ref(), Some(role));
    }
}

#[test]
fn rogue_node_with_a_wrong_token_is_ignored() {
    if !can_run("rogue_node_with_a_wrong_token_is_ignored") {
        return;
    }
    let _serial = formation_lock();
    let mut lan = Lan::new();
    let spec = ClusterSpec::new("homelab", 3, 3);
    // The rogue comes first, so it is in every view from the start.
    let rogue_spec = ClusterSpec {
        token: random_token(),
        ..spec.clone()
    };
    let rogue = lan.add_node(&rogue_spec.token);
    write_config(rogue, &rogue_spec);
    add_cluster_nodes(&mut lan, &spec, 3);
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let roles = wait_roles(&lan, &[1, 2, 3]);
    let init = formation_support::check_roles(&roles, 3, 0);
    let rogue_id = formation_support::node_id(1);
    assert_ne!(init, rogue_id);
    for r in &roles {
        assert_ne!(r["join"].as_str(), Some(rogue_id.as_str()));
    }
    // Counted as foreign by the real nodes, and it never got a role among them.
    let report = lan.nodes[1].peers(3);
    assert!(
        report["foreign"].as_u64().unwrap_or(0) >= 1,
        "rogue not counted as foreign: {report:#}"
    );
    let verified: Vec<&str> = report["verified"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["node"].as_str()).collect())
        .unwrap_or_default();
    assert!(!verified.contains(&rogue_id.as_str()), "{report:#}");
    assert_eq!(role_of(&lan.nodes[0]), None, "the rogue found a cluster");
}

/// How long the held node stalls in the avahi test: long enough to restart a daemon inside the
/// open vote, short enough that it then asks for Go before anyone gives up on it.
const HOLD_MID_VOTE_MS: &str = "8000";

/// Three nodes, every one armed with the test hook: whichever wins the first election (x) is
/// held right after it durably learns that, before it announces it or asks for Go. Returns x's
/// position in `lan.nodes`.
fn elect_and_hold(lan: &mut Lan, hold_ms: &str) -> usize {
    let spec = ClusterSpec::new("homelab", 3, 3);
    add_cluster_nodes(lan, &spec, 3);
    for node in lan.nodes.iter_mut() {
        start_held_node(node, hold_ms);
    }
    let x = wait_any_log_line(lan, "test hook: elected");
    let number = node_number(lan.nodes[x].index);
    let state = election_state(&lan.nodes[x]);
    assert_eq!(
        state["decided"]["Init"], number,
        "x holds before it knows: {state:#}"
    );
    assert_eq!(state["go"], false, "{state:#}");
    assert_eq!(state["role"], Value::Null, "{state:#}");
    x
}

/// Whether `state` (an election.json) has accepted `Init(x)` in the leader instance without
/// knowing any decision: the node is in the middle of the vote.
fn mid_vote(state: &Value, x: u64) -> bool {
    state["acceptor"]["accepted"][1]["Init"] == x
        && state["decided"] == Value::Null
        && state["go"] == false
        && state["role"] == Value::Null
}

#[test]
fn elected_node_killed_before_go_is_replaced_never_two_inits() {
    if !can_run("elected_node_killed_before_go_is_replaced_never_two_inits") {
        return;
    }
    let _serial = formation_lock();
    let mut lan = Lan::new();
    // x is held for longer than the test runs: only the kill ends its hold.
    let x = elect_and_hold(&mut lan, "600000");
    let x_id = node_id(lan.nodes[x].index);
    let x_number = node_number(lan.nodes[x].index);
    let x_epoch = election_state(&lan.nodes[x])["epoch"]
        .as_u64()
        .expect("epoch");
    // A power cut on x: its daemon and its avahi-daemon die at once, no goodbye on the LAN.
    lan.nodes[x].kill("firstboot");
    lan.nodes[x].kill_avahi();
    let dead = election_state(&lan.nodes[x]);
    assert_eq!(dead["go"], false, "x died before Go: {dead:#}");
    assert_eq!(dead["role"], Value::Null, "{dead:#}");
    assert_eq!(node_state(&lan.nodes[x])["role"], Value::Null);
    assert_eq!(role_of(&lan.nodes[x]), None, "x printed a role");

    // The survivors give x's fate up and elect one of themselves (their election, in a later
    // epoch, is not held).
    let survivors: Vec<usize> = (0..3).filter(|&i| i != x).collect();
    let roles = wait_roles(&lan, &survivors);
    let init = formation_support::check_roles(&roles, 2, 0);
    assert_ne!(init, x_id, "the dead node stayed the init");
    for &i in &survivors {
        let state = election_state(&lan.nodes[i]);
        assert!(
            state["epoch"].as_u64().is_some_and(|e| e > x_epoch),
            "node{} never left x's epoch: {state:#}",
            i + 1
        );
        assert_eq!(state["go"], true, "{state:#}");
    }

    // x boots again (no hook now): it learns its epoch was abandoned and joins the new init.
    lan.nodes[x].start_avahi();
    start_node_as(&mut lan.nodes[x], "firstboot-again");
    let start = std::time::Instant::now();
    let again = loop {
        if let Some(role) = role_in(&lan.nodes[x], "firstboot-again") {
            break role;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the restarted x never learned its role"
        );
        sleep(Duration::from_millis(100));
    };
    assert_eq!(again["role"], "server", "a seat was free for x: {again}");
    assert_eq!(again["join"].as_str(), Some(init.as_str()), "{again}");
    let after = election_state(&lan.nodes[x]);
    assert_ne!(
        after["decided"]["Init"], x_number,
        "x kept its own election: {after:#}"
    );
    assert_eq!(node_state(&lan.nodes[x])["role"], "server");
    // Exactly one init over the whole run, across every log of every node...
    let lines = all_role_lines(&lan);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let inits: Vec<&Value> = lines
        .iter()
        .filter(|r| r["role"] == "cluster-init")
        .collect();
    assert_eq!(inits.len(), 1, "{lines:#?}");
    assert_eq!(inits[0]["node"].as_str(), Some(init.as_str()));
    // ...and every node's durable election state agrees on it, Go decided.
    let init_number = u64::from_str_radix(&init, 16).expect("node ids are hex");
    for node in &lan.nodes {
        let state = election_state(node);
        assert_eq!(
            state["decided"]["Init"], init_number,
            "node{}: {state:#}",
            node.index
        );
        assert_eq!(state["go"], true, "node{}: {state:#}", node.index);
    }
}

#[test]
fn avahi_restart_mid_vote_still_forms() {
    if !can_run("avahi_restart_mid_vote_still_forms") {
        return;
    }
    let _serial = formation_lock();
    let mut lan = Lan::new();
    let x = elect_and_hold(&mut lan, HOLD_MID_VOTE_MS);
    let x_number = node_number(lan.nodes[x].index);
    // A node that accepted x's election but knows no decision yet: the vote is open there.
    let others: Vec<usize> = (0..3).filter(|&i| i != x).collect();
    let start = std::time::Instant::now();
    let y = loop {
        let open = others
            .iter()
            .copied()
            .find(|&i| mid_vote(&election_state(&lan.nodes[i]), x_number));
        if let Some(y) = open {
            break y;
        }
        let states: Vec<Value> = others
            .iter()
            .map(|&i| election_state(&lan.nodes[i]))
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no other node accepted x's election: {states:#?}"
        );
        sleep(Duration::from_millis(20));
    };
    lan.nodes[y].stop_avahi();
    sleep(Duration::from_secs(1));
    lan.nodes[y].start_avahi();
    // Still mid-vote once its avahi-daemon is back: the restart fell inside the open vote.
    let state = election_state(&lan.nodes[y]);
    assert!(
        state["go"] == false && state["role"] == Value::Null,
        "node{} finished voting before its avahi-daemon came back: {state:#}",
        y + 1
    );
    let roles = wait_roles(&lan, &[0, 1, 2]);
    assert_one_cluster(&lan, &roles, 3, 0);
    assert!(
        lan.nodes[y].running("firstboot"),
        "node{}'s daemon died",
        y + 1
    );
    // It noticed the daemon go and registered its record again with the new one.
    let log = std::fs::read_to_string(lan.nodes[y].dir.join("firstboot.log")).unwrap_or_default();
    let after = log
        .split("avahi-daemon went away")
        .nth(1)
        .unwrap_or_else(|| panic!("node{} never saw avahi-daemon go:\n{log}", y + 1));
    assert!(
        after.contains("published _k3s-firstboot._tcp"),
        "node{} never published again:\n{log}",
        y + 1
    );
}

#[test]
fn capture_of_a_formation_holds_no_token() {
    let Some((_serial, mut lan, spec)) =
        homelab_lan("capture_of_a_formation_holds_no_token", 3, 3, 3)
    else {
        return;
    };
    lan.start_capture();
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let roles = wait_roles(&lan, &[0, 1, 2]);
    assert_one_cluster(&lan, &roles, 3, 0);
    // A few more hellos after the decision, then look at every byte that crossed the bridge.
    sleep(Duration::from_secs(2));
    let pcap = lan.stop_capture();
    assert!(pcap.len() > 1000, "the capture is suspiciously small");
    assert!(
        contains(&pcap, b"_k3s-firstboot"),
        "the capture saw no mDNS"
    );
    assert!(!contains(&pcap, spec.token.as_bytes()), "token on the wire");
    for (path, log) in lan.all_logs() {
        assert!(
            !contains(&log, spec.token.as_bytes()),
            "token in {}",
            path.display()
        );
    }
    for node in &lan.nodes {
        let state = std::fs::read(node.root.join("var/lib/firstboot/state.json"))
            .expect("state file written");
        assert!(!contains(&state, spec.token.as_bytes()), "token in state");
        let boot = std::fs::read(node.dir.join("boot/cluster.toml")).expect("boot copy");
        assert!(
            !contains(&boot, spec.token.as_bytes()),
            "token left on boot"
        );
    }
}

#[test]
fn killed_and_restarted_nodes_keep_their_roles() {
    let Some((_serial, mut lan, _spec)) =
        homelab_lan("killed_and_restarted_nodes_keep_their_roles", 3, 3, 3)
    else {
        return;
    };
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let roles = wait_roles(&lan, &[0, 1, 2]);
    assert_one_cluster(&lan, &roles, 3, 0);
    let decided: Vec<String> = lan
        .nodes
        .iter()
        .map(|n| {
            let path = n.root.join("var/lib/firstboot/election.json");
            std::fs::read_to_string(path).expect("election state persisted")
        })
        .collect();
    // A power cut on every node at once, then every node boots again.
    for node in lan.nodes.iter_mut() {
        node.kill("firstboot");
    }
    for node in lan.nodes.iter_mut() {
        start_node_as(node, "firstboot-again");
    }
    let start = std::time::Instant::now();
    let again: Vec<_> = loop {
        let again: Vec<_> = lan
            .nodes
            .iter()
            .filter_map(|n| role_in(n, "firstboot-again"))
            .collect();
        if again.len() == 3 {
            break again;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "restarted nodes did not report their roles: {again:?}"
        );
        sleep(Duration::from_millis(100));
    };
    // `via` names the node a role came from in this run: none for a role restored from the
    // node's own state. The role itself (node, hostname, role, join) must not change.
    let without_via = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| {
                let mut l = l.clone();
                if let Some(o) = l.as_object_mut() {
                    o.remove("via");
                }
                l
            })
            .collect()
    };
    assert_eq!(
        without_via(&again),
        without_via(&roles),
        "a restart changed a role"
    );
    for (node, before) in lan.nodes.iter().zip(&decided) {
        let after = std::fs::read_to_string(node.root.join("var/lib/firstboot/election.json"))
            .expect("election state");
        let decided = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .map(|v| v["decided"].clone())
        };
        assert_eq!(decided(&after), decided(before), "node{}", node.index);
    }
}
