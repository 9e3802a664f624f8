//! Discovery on a real virtual LAN: publish, browse, verify, survive restarts and collisions, leak nothing.

use systests::lan::harness;

use harness::{can_run, contains, random_token, Lan, Node};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Browse attempts before giving up on a condition (each browses for `BROWSE_SECS`).
const ATTEMPTS: usize = 20;
/// Seconds each `firstboot peers` browses.
const BROWSE_SECS: u64 = 3;

fn lan_node_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lan-node"))
}

/// The node id the harness's fake board serial gives node `index`.
fn node_id(index: usize) -> String {
    format!("10000000{:08x}", 0x5eed_0000 + index)
}

/// Starts the discovery test node in `node` for cluster `homelab`.
fn start_lan_node(node: &mut Node, extra: &[&str]) {
    let root = node.root.display().to_string();
    let mut args = vec!["--root", &root, "--name", "homelab"];
    args.extend_from_slice(extra);
    node.spawn("lan-node", lan_node_bin(), &args);
}

/// Node ids of the verified peers in a `peers --json` answer.
fn verified_ids(report: &Value) -> BTreeSet<String> {
    report["verified"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter_map(|p| p["node"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Browses from `node` until `accept` holds, checking `invariant` on every answer on the way.
fn eventually(
    node: &Node,
    what: &str,
    mut invariant: impl FnMut(&Value),
    mut accept: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..ATTEMPTS {
        last = node.peers(BROWSE_SECS);
        invariant(&last);
        if accept(&last) {
            return last;
        }
    }
    panic!("node{} never saw {what}; last answer: {last:#}", node.index);
}

/// The ids of every node but `index` among nodes `1..=count`.
fn others(index: usize, count: usize) -> BTreeSet<String> {
    (1..=count).filter(|&i| i != index).map(node_id).collect()
}

/// Waits until every node of the first `count` sees all the others as verified.
fn wait_all_verified(lan: &Lan, count: usize) {
    for node in lan.nodes.iter().take(count) {
        let expected = others(node.index, count);
        eventually(
            node,
            "all its peers verified",
            |_| {},
            |r| verified_ids(r) == expected,
        );
    }
}

/// Reads a node's lan-node log until `done` holds for it (or attempts run out); returns the log.
fn wait_log(node: &Node, done: impl Fn(&str) -> bool) -> String {
    let mut log = String::new();
    for _ in 0..ATTEMPTS * 5 {
        log = std::fs::read_to_string(node.dir.join("lan-node.log")).unwrap_or_default();
        if done(&log) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    log
}

/// Waits until every node's lan-node log shows a transport frame from each of the others.
fn wait_frames(lan: &Lan, count: usize) {
    for node in lan.nodes.iter().take(count) {
        let expected: Vec<String> = (1..=count)
            .filter(|&i| i != node.index)
            .map(|i| {
                format!(
                    "frame from=198.18.0.{i}:7439 text=hello from {}",
                    node_id(i)
                )
            })
            .collect();
        let log = wait_log(node, |log| expected.iter().all(|line| log.contains(line)));
        for line in &expected {
            assert!(
                log.contains(line),
                "node{} missing `{line}`:\n{log}",
                node.index
            );
        }
    }
}

#[test]
fn three_nodes_verify_each_other_and_set_their_hostnames() {
    if !can_run("three_nodes_verify_each_other_and_set_their_hostnames") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    for _ in 0..3 {
        start_lan_node(lan.add_node(&token), &["--expect-peers", "2"]);
    }
    wait_all_verified(&lan, 3);
    wait_frames(&lan, 3);
    for node in &lan.nodes {
        let expected = format!("homelab-{}", &node_id(node.index)[10..]);
        assert_eq!(node.kernel_hostname(), expected);
        assert_eq!(node.static_hostname(), expected);
        // Every node re-publishes with state `greeted` once it verified both others: the
        // updated, re-signed TXT record must reach fresh browsers as verified.
        let report = eventually(
            node,
            "both peers in state greeted",
            |r| {
                assert_eq!(r["foreign"], 0, "{r:#}");
                assert_eq!(r["unverified"], 0, "{r:#}");
            },
            |r| {
                verified_ids(r) == others(node.index, 3)
                    && r["verified"]
                        .as_array()
                        .is_some_and(|v| v.iter().all(|p| p["state"] == "greeted"))
            },
        );
        for peer in report["verified"].as_array().into_iter().flatten() {
            assert_eq!(peer["port"], 7439);
            assert!(peer["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("198.18.0.")));
        }
    }
    // ...and reach the long-running browsers, whose resolvers report the changed record.
    for node in &lan.nodes {
        let log = std::fs::read_to_string(node.dir.join("lan-node.log")).unwrap_or_default();
        for other in others(node.index, 3) {
            let seen = log.lines().any(|l| {
                l.starts_with("event Resolved")
                    && l.contains(&format!("node: NodeId({other})"))
                    && l.contains("state: \"greeted\"")
            });
            assert!(seen, "node{} never saw {other} greeted:\n{log}", node.index);
        }
    }
}

#[test]
fn rogue_nodes_are_counted_but_never_verified() {
    if !can_run("rogue_nodes_are_counted_but_never_verified") {
        return;
    }
    let token = random_token();
    let cluster = firstboot::discovery::ClusterId::derive(token.as_bytes(), 3, 3).to_hex();
    let mut lan = Lan::new();
    for _ in 0..3 {
        start_lan_node(lan.add_node(&token), &[]);
    }
    // Node 4: another kit (wrong token). Node 5: a forger publishing our cluster id without the token.
    start_lan_node(lan.add_node(&random_token()), &[]);
    start_lan_node(
        lan.add_node(&random_token()),
        &["--claim-cluster", &cluster],
    );
    let rogues: BTreeSet<String> = [node_id(4), node_id(5)].into();
    for node in lan.nodes.iter().take(3) {
        let expected = others(node.index, 3);
        let report = eventually(
            node,
            "two verified peers, one foreign and one unverified",
            |r| {
                let verified = verified_ids(r);
                assert!(verified.is_disjoint(&rogues), "a rogue was verified: {r:#}");
            },
            |r| verified_ids(r) == expected && r["foreign"] == 1 && r["unverified"] == 1,
        );
        assert_eq!(report["cluster"], cluster.as_str());
    }
    // The rogues' frames never reach a verified peer list, so no node greets them.
    for node in lan.nodes.iter().take(3) {
        let log = std::fs::read_to_string(node.dir.join("lan-node.log")).unwrap_or_default();
        assert!(
            !log.contains("frame from=198.18.0.4"),
            "node{} talked to node4",
            node.index
        );
        assert!(
            !log.contains("frame from=198.18.0.5"),
            "node{} talked to node5",
            node.index
        );
    }
}

#[test]
fn three_kits_on_one_lan_each_verify_only_their_own() {
    if !can_run("three_kits_on_one_lan_each_verify_only_their_own") {
        return;
    }
    // Nodes 1-3 are kit A, 4-6 kit B, 7-9 kit C: same service type, same names, other tokens.
    let tokens = [random_token(), random_token(), random_token()];
    let mut lan = Lan::new();
    for token in &tokens {
        for _ in 0..3 {
            start_lan_node(lan.add_node(token), &[]);
        }
    }
    let kit_of = |index: usize| (index - 1) / 3;
    for node in &lan.nodes {
        let mates: BTreeSet<String> = (1..=9)
            .filter(|&i| i != node.index && kit_of(i) == kit_of(node.index))
            .map(node_id)
            .collect();
        eventually(
            node,
            "its two kit mates verified and the six others foreign",
            |r| {
                let verified = verified_ids(r);
                assert!(
                    verified.is_subset(&mates),
                    "node{} verified a stranger: {r:#}",
                    node.index
                );
            },
            |r| verified_ids(r) == mates && r["foreign"] == 6 && r["unverified"] == 0,
        );
    }
    // Frames only ever went between kit mates.
    for node in &lan.nodes {
        let log = std::fs::read_to_string(node.dir.join("lan-node.log")).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.starts_with("frame from=198.18.0."))
        {
            let from: usize = line["frame from=198.18.0.".len()..]
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("frame line names its source");
            assert_eq!(kit_of(from), kit_of(node.index), "cross-kit frame: {line}");
        }
    }
}

#[test]
fn a_restarted_avahi_daemon_gets_the_record_published_again() {
    if !can_run("a_restarted_avahi_daemon_gets_the_record_published_again") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    for _ in 0..3 {
        start_lan_node(lan.add_node(&token), &[]);
    }
    wait_all_verified(&lan, 3);
    lan.nodes[1].stop_avahi();
    let without_two: BTreeSet<String> = [node_id(3)].into();
    eventually(
        &lan.nodes[0],
        "node2 leave",
        |_| {},
        |r| verified_ids(r) == without_two,
    );
    lan.nodes[1].start_avahi();
    // Node 2 re-registers with the new daemon (seen by the others) and browses again (sees them).
    wait_all_verified(&lan, 3);
    // Its long-running browser started over with the new daemon and found both peers again.
    let found_again = |log: &str| {
        let after_restart = log.split("event Restarted").nth(1).unwrap_or_default();
        others(2, 3).iter().all(|other| {
            after_restart.lines().any(|l| {
                l.starts_with("event Resolved")
                    && l.contains("Verified(")
                    && l.contains(&format!("node: NodeId({other})"))
            })
        })
    };
    let log = wait_log(&lan.nodes[1], found_again);
    assert!(
        found_again(&log),
        "node2's browser did not find its peers again:\n{log}"
    );
    assert_eq!(log.matches("published service=").count(), 2, "{log}");
    assert!(log.contains("unpublished"), "{log}");
}

#[test]
fn a_service_name_collision_is_resolved() {
    if !can_run("a_service_name_collision_is_resolved") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    start_lan_node(lan.add_node(&token), &["--service-name", "collide"]);
    start_lan_node(lan.add_node(&token), &["--service-name", "collide"]);
    start_lan_node(lan.add_node(&token), &[]);
    let expected = others(3, 3);
    let report = eventually(
        &lan.nodes[2],
        "both colliding nodes under distinct names",
        |_| {},
        |r| verified_ids(r) == expected,
    );
    let services: BTreeSet<&str> = report["verified"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["service"].as_str())
        .collect();
    assert_eq!(services.len(), 2, "{report:#}");
    assert!(services.contains("collide"), "{report:#}");
    let renamed = lan.nodes[..2].iter().any(|node| {
        std::fs::read_to_string(node.dir.join("lan-node.log"))
            .unwrap_or_default()
            .contains("service name collision")
    });
    assert!(renamed, "neither colliding node logged the collision");
    wait_all_verified(&lan, 3);
}

#[test]
fn no_token_bytes_on_the_wire_or_in_any_log() {
    if !can_run("no_token_bytes_on_the_wire_or_in_any_log") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    lan.start_capture();
    for _ in 0..3 {
        start_lan_node(lan.add_node(&token), &[]);
    }
    wait_all_verified(&lan, 3);
    wait_frames(&lan, 3);
    // The token never appears in any process's arguments either.
    for node in &lan.nodes {
        for pid in node.pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                !contains(&cmdline, token.as_bytes()),
                "token in argv of {pid}"
            );
        }
    }
    let pcap = lan.stop_capture();
    // The capture really holds the discovery and transport traffic...
    assert!(
        contains(&pcap, b"_k3s-firstboot"),
        "capture has no mDNS records"
    );
    assert!(
        contains(&pcap, b"hello from"),
        "capture has no transport frames"
    );
    // ...and never the token, raw or hex-encoded.
    let hex_token = hex::encode(token.as_bytes());
    assert!(!contains(&pcap, token.as_bytes()), "token on the wire");
    assert!(
        !contains(&pcap, hex_token.as_bytes()),
        "hex token on the wire"
    );
    let logs = lan.all_logs();
    assert!(logs
        .iter()
        .any(|(_, text)| contains(text, b"identity node=")));
    for (path, text) in &logs {
        assert!(
            !contains(text, token.as_bytes()),
            "token in {}",
            path.display()
        );
        assert!(
            !contains(text, hex_token.as_bytes()),
            "hex token in {}",
            path.display()
        );
    }
}

#[test]
fn a_withdrawn_record_leaves_the_lan_while_the_node_stays_connected() {
    if !can_run("a_withdrawn_record_leaves_the_lan_while_the_node_stays_connected") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    start_lan_node(lan.add_node(&token), &[]);
    start_lan_node(lan.add_node(&token), &[]);
    start_lan_node(
        lan.add_node(&token),
        &["--expect-peers", "2", "--withdraw-when-greeted"],
    );
    let log = wait_log(&lan.nodes[2], |log| log.contains("withdrawn"));
    assert!(log.contains("withdrawn"), "node3 never withdrew:\n{log}");
    let only_two: BTreeSet<String> = [node_id(2)].into();
    eventually(
        &lan.nodes[0],
        "node3 leave",
        |_| {},
        |r| verified_ids(r) == only_two,
    );
    // Node 3's own process (and D-Bus connection) is still up and browsing.
    let expected = others(3, 3);
    eventually(
        &lan.nodes[2],
        "its peers",
        |_| {},
        |r| verified_ids(r) == expected,
    );
    let log = std::fs::read_to_string(lan.nodes[2].dir.join("lan-node.log")).unwrap_or_default();
    assert!(!log.contains("Error"), "{log}");
}

#[test]
fn the_lan_is_torn_down_when_a_test_panics() {
    if !can_run("the_lan_is_torn_down_when_a_test_panics") {
        return;
    }
    let mut pids = Vec::new();
    let mut dir = std::path::PathBuf::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lan = Lan::new();
        start_lan_node(lan.add_node(&random_token()), &[]);
        pids = lan.nodes[0].pids();
        dir = lan.dir.path().to_path_buf();
        assert_eq!(pids.len(), 4, "anchor, dbus-daemon, avahi-daemon, lan-node");
        panic!("deliberate panic inside a LAN");
    }));
    assert!(outcome.is_err());
    for pid in pids {
        // A reaped child has no /proc entry; a zombie would still say so in its status.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "process {pid} survived the panic"
        );
    }
    assert!(
        !dir.exists() || std::env::var_os("LAN_KEEP").is_some(),
        "LAN dir left behind"
    );
}
