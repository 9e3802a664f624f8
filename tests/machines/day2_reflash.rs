//! Issue 18 on machines (real systemd, the K3s double with real etcd): a card re-flashed in the
//! same machine rejoins under its old name. Three servers and one agent form (`servers = 3`,
//! `nodes = 4`, `replace_after = "10m"`, so no server is replaced meanwhile); a canary ConfigMap
//! is written. Then a joined server (not the init) has its card re-flashed: powered off, the node
//! image written over its disk again and stamped with the same cluster.toml, booted again in
//! the same machine (same MAC, so the same node id and hostname; a new node password, no etcd
//! data). The card asks for its role again; the seat keepers tell it nothing while a Node of its
//! name is there; the healer (the `firstboot-healer` Lease holder) deletes the old Node
//! non-forced once it is not Ready, so the double's finalizer removes its etcd member and its
//! node-password secret; then the seat keeper grants the card its old seat as a new join: it is
//! a Ready node under its old name again and a voting etcd member (a new member, fresh data),
//! and the canary reads on it. A sampler reads the member list every 500 ms throughout and
//! never sees more than 3 voters. Then the agent's card is re-flashed the same way and rejoins
//! as an agent under its old name. Neither card's K3s was refused (no "Node password rejected",
//! no "duplicate node name found"): neither started before its old Node was gone.
//!
//! The second test re-flashes the cluster-init node's card (three servers, no agent): it must
//! never run `cluster-init` again (a second cluster); it rejoins as a server the same way.
//!
//! The case of a card asking under the name of a Ready Node (a duplicate, nothing deleted) is
//! proven by unit tests (`healer::reflash`, `healer::round`, `seat_book::keeper`).

use systests::k3s_double::etcd;
use systests::machines::{day2::*, harness, k3s_support};

use harness::{Lan, Machine};
use k3s_support::*;
use std::time::{Duration, Instant};

/// How long formation and each later step may take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// The canary ConfigMap written before the re-flashes.
const CANARY: &str = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"reflash-canary","namespace":"default"},"data":{"written":"before the re-flash"}}"#;

/// A Node as `k3s kubectl get nodes -o json` shows it: name, creationTimestamp, Ready status.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeSeen {
    name: String,
    created: String,
    ready: String,
}

/// The Nodes through the double's `k3s kubectl` on `m`.
fn nodes(m: &Machine) -> Option<Vec<NodeSeen>> {
    let v = kubectl_json(m, &["get", "nodes"])?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .map(|n| NodeSeen {
                name: n["metadata"]["name"].as_str().unwrap_or_default().into(),
                created: n["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                ready: n["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("none")
                    .into(),
            })
            .collect(),
    )
}

/// Re-flashes machine `i` and waits for it to rejoin under its old name: its old Node gone
/// (seen on `live`), then a new Node of its name Ready and its firstboot ready as `role`.
/// Prints and returns the re-flashed card's boot and (old Node gone, Ready) after it.
fn reflash_and_rejoin(
    lan: &mut Lan,
    toml: &str,
    i: usize,
    live: usize,
    role: &str,
) -> (Instant, Duration, Duration) {
    let name = lan.machines[i].hostname();
    let old = nodes(&lan.machines[live])
        .and_then(|n| n.into_iter().find(|n| n.name == name))
        .unwrap_or_else(|| panic!("no Node {name} before the re-flash\n{}", lan.report()));
    assert_eq!(old.ready, "True", "{old:?}");
    let old_password = lan.machines[i]
        .root_file("etc/rancher/node/password")
        .expect("the node password before the re-flash");
    assert!(lan.machines[i]
        .root_file("var/lib/firstboot/state.json")
        .is_some());
    let flashing = Instant::now();
    lan.reflash(i, toml);
    assert!(
        lan.machines[i]
            .root_file("var/lib/firstboot/state.json")
            .is_none()
            && lan.machines[i]
                .root_file("var/lib/rancher/k3s/server/db/etcd/member/snap/db")
                .is_none(),
        "the re-flashed card kept state"
    );
    lan.boot(i);
    let booted = Instant::now();
    eprintln!(
        "re-flashed {name} ({role}) in {:?}; booted it again",
        flashing.elapsed()
    );
    // Polled every 500 ms: the old Node (its creationTimestamp) gone. A new Node of the same
    // name may follow soon after, so the creation time tells them apart.
    lan.wait_for_polling(
        &format!("{name}'s old Node gone"),
        WAIT,
        Duration::from_millis(500),
        |lan| {
            nodes(&lan.machines[live])
                .is_some_and(|n| !n.iter().any(|n| n.name == name && n.created == old.created))
        },
    );
    let gone = booted.elapsed();
    eprintln!("{name}'s old Node was gone {gone:?} after the re-flashed card's boot");
    lan.wait_for(&format!("{name} Ready again as {role}"), WAIT, |lan| {
        let ready = nodes(&lan.machines[live]).is_some_and(|n| {
            n.iter()
                .any(|n| n.name == name && n.created != old.created && n.ready == "True")
        });
        ready && lan.machines[i].phase().as_deref() == Some("ready")
    });
    let ready = booted.elapsed();
    eprintln!("{name} was a Ready {role} again {ready:?} after the re-flashed card's boot");
    assert_eq!(
        lan.machines[i].hostname(),
        name,
        "the re-flashed card's hostname"
    );
    assert_eq!(
        lan.machines[i].role().as_deref(),
        Some(role),
        "{}",
        lan.machines[i].report()
    );
    // Its K3s never started while the old Node was there.
    let unit = if role == "agent" {
        "k3s-agent.service"
    } else {
        "k3s.service"
    };
    let journal = lan.machines[i].journal(Some(unit));
    for refused in ["Node password rejected", "duplicate node name found"] {
        assert!(
            !journal.contains(refused),
            "{unit} on the re-flashed {name} was refused ({refused}):\n{journal}"
        );
    }
    // A new node password (K3s accepted it: the old secret went with the old Node).
    assert_ne!(
        lan.machines[i].root_file("etc/rancher/node/password"),
        Some(old_password),
        "the re-flashed card has the old node password"
    );
    (booted, gone, ready)
}

/// The two tests run one after the other (each boots its machines).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_reflashed_server_and_a_reflashed_agent_rejoin_under_their_old_names() {
    if skip("a_reflashed_server_and_a_reflashed_agent_rejoin_under_their_old_names") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let toml = cluster_toml_with(3, 4, "replace_after = \"10m\"");
    let mut lan = Lan::new();
    let start = Instant::now();
    let roles = form(&mut lan, &toml, 4, WAIT);
    let count = |r: &str| roles.iter().filter(|x| x.as_str() == r).count();
    assert_eq!(
        (count("init"), count("server"), count("agent")),
        (1, 2, 1),
        "formed roles (init, server, agent): {roles:?}\n{}",
        lan.report()
    );
    let init = roles.iter().position(|r| r == "init").unwrap();
    let agent = roles.iter().position(|r| r == "agent").unwrap();
    let server = roles.iter().position(|r| r == "server").unwrap();
    let other = (0..4)
        .find(|i| *i != server && roles[*i] == "server")
        .unwrap();
    let server_name = lan.machines[server].hostname();
    let names: Vec<String> = lan.machines.iter().map(|m| m.hostname()).collect();
    lan.wait_for("the book holds the 3 formation seats", WAIT, |lan| {
        book(&lan.machines[init]).is_some_and(|b| b["holders"].as_array().map(Vec::len) == Some(3))
    });
    let pids: Vec<u32> = [init, other]
        .iter()
        .map(|i| lan.machines[*i].pid1().expect("a live server runs"))
        .collect();
    let formed = members(pids[0]).expect("the member list");
    assert_eq!(
        formed.iter().filter(|m| !m.is_learner).count(),
        3,
        "voters after formation: {:?}",
        describe(&formed)
    );
    let old_member = formed
        .iter()
        .find(|m| etcd::node_of_member(&m.name) == server_name)
        .expect("the server's formation member")
        .name
        .clone();
    let script = format!(
        "printf '%s' '{CANARY}' > /tmp/canary.json && /usr/bin/timeout 20 /usr/local/bin/k3s kubectl create -f /tmp/canary.json -o json"
    );
    let out = lan.machines[init]
        .exec("/bin/sh", &["-c", &script])
        .expect("the init runs");
    assert!(
        out.status.success(),
        "creating the canary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sampler = Sampler::start(pids.clone());
    eprintln!(
        "formed at +{:.0}s; re-flashing the server {server_name}",
        start.elapsed().as_secs_f64()
    );

    // The server.
    let (booted, server_gone, server_ready) =
        reflash_and_rejoin(&mut lan, &toml, server, init, "server");
    lan.wait_for(&format!("{server_name} a voter again"), WAIT, |_| {
        members(pids[0]).is_ok_and(|l| {
            l.len() == 3
                && l.iter().all(|m| !m.is_learner)
                && l.iter()
                    .any(|m| etcd::node_of_member(&m.name) == server_name)
        })
    });
    let voter_at = booted.elapsed();
    let last = members(pids[0]).expect("the member list");
    let new_member = last
        .iter()
        .find(|m| etcd::node_of_member(&m.name) == server_name)
        .unwrap();
    assert_ne!(
        new_member.name,
        old_member,
        "the old member is back: {:?}",
        describe(&last)
    );
    for m in &last {
        assert!(
            member_alive(pids[0], m),
            "member {} does not answer as a voter with a leader: {:?}",
            m.name,
            describe(&last)
        );
    }
    let canary = kubectl_json(
        &lan.machines[server],
        &["get", "configmap", "reflash-canary", "-n", "default"],
    )
    .expect("the canary on the re-flashed server");
    assert_eq!(
        canary["data"]["written"].as_str(),
        Some("before the re-flash"),
        "{canary}"
    );
    let b = book(&lan.machines[init]).expect("the book");
    let mut holders: Vec<String> = b["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect();
    holders.sort();
    let mut servers: Vec<String> = [init, server, other]
        .iter()
        .map(|i| names[*i].clone())
        .collect();
    servers.sort();
    assert_eq!(holders, servers, "seat holders: {b}");
    assert!(
        b["pending"].is_null() && b["removed"].as_array().is_some_and(Vec::is_empty),
        "{b}"
    );
    let healer_said = [init, other].iter().any(|i| {
        lan.machines[*i]
            .journal(Some("firstboot.service"))
            .contains("deleting the old Node of a re-flashed card")
    });
    assert!(
        healer_said,
        "no healer said it deleted the re-flashed card's old Node"
    );
    eprintln!(
        "{server_name}: a voter (new member {}) {voter_at:?} after its boot",
        new_member.name
    );

    // The agent.
    let agent_name = names[agent].clone();
    let (_, agent_gone, agent_ready) = reflash_and_rejoin(&mut lan, &toml, agent, init, "agent");

    let (most_voters, history) = sampler.finish();
    eprintln!("member lists seen:\n{history}");
    assert!(
        most_voters <= 3,
        "{most_voters} voting members at once (at most servers = 3); lists seen:\n{history}"
    );
    let mut all: Vec<String> = nodes(&lan.machines[init])
        .expect("the Nodes")
        .into_iter()
        .map(|n| n.name)
        .collect();
    all.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(all, expected, "the Nodes at the end");
    eprintln!(
        "done at +{:.0}s. re-flashed server {server_name}: old Node gone {server_gone:?}, Ready {server_ready:?}, voter {voter_at:?} after its boot; re-flashed agent {agent_name}: old Node gone {agent_gone:?}, Ready {agent_ready:?} after its boot",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn a_reflashed_init_rejoins_as_a_server_and_never_inits_again() {
    if skip("a_reflashed_init_rejoins_as_a_server_and_never_inits_again") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let toml = cluster_toml_with(3, 3, "replace_after = \"10m\"");
    let mut lan = Lan::new();
    let roles = form(&mut lan, &toml, 3, WAIT);
    let init = roles
        .iter()
        .position(|r| r == "init")
        .unwrap_or_else(|| panic!("no init: {roles:?}\n{}", lan.report()));
    let live: Vec<usize> = (0..3).filter(|i| *i != init).collect();
    let init_name = lan.machines[init].hostname();
    lan.wait_for("the book holds the 3 formation seats", WAIT, |lan| {
        book(&lan.machines[live[0]])
            .is_some_and(|b| b["holders"].as_array().map(Vec::len) == Some(3))
    });
    let pids: Vec<u32> = live
        .iter()
        .map(|i| lan.machines[*i].pid1().expect("a live server runs"))
        .collect();
    let script = format!(
        "printf '%s' '{CANARY}' > /tmp/canary.json && /usr/bin/timeout 20 /usr/local/bin/k3s kubectl create -f /tmp/canary.json -o json"
    );
    let out = lan.machines[live[0]]
        .exec("/bin/sh", &["-c", &script])
        .expect("a server runs");
    assert!(
        out.status.success(),
        "creating the canary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sampler = Sampler::start(pids.clone());
    let (booted, gone, ready) = reflash_and_rejoin(&mut lan, &toml, init, live[0], "server");
    lan.wait_for(&format!("{init_name} a voter again"), WAIT, |_| {
        members(pids[0]).is_ok_and(|l| {
            l.len() == 3
                && l.iter().all(|m| !m.is_learner)
                && l.iter().any(|m| etcd::node_of_member(&m.name) == init_name)
        })
    });
    let voter_at = booted.elapsed();
    let (most_voters, history) = sampler.finish();
    eprintln!("member lists seen:\n{history}");
    assert!(
        most_voters <= 3,
        "{most_voters} voting members at once (at most servers = 3); lists seen:\n{history}"
    );
    // It never ran cluster-init again: its config joins a live server, and its election
    // recorded why.
    let yaml = lan.machines[init].config_yaml().expect("config.yaml");
    assert!(
        !yaml.contains("cluster-init") && yaml.lines().any(|l| l.starts_with("server:")),
        "the re-flashed init's config.yaml:\n{yaml}"
    );
    let election = lan.machines[init]
        .root_file("var/lib/firstboot/election.json")
        .expect("election.json");
    assert!(
        String::from_utf8_lossy(&election).contains("\"rejoining\": true"),
        "{}",
        String::from_utf8_lossy(&election)
    );
    let canary = kubectl_json(
        &lan.machines[init],
        &["get", "configmap", "reflash-canary", "-n", "default"],
    )
    .expect("the canary on the re-flashed init");
    assert_eq!(
        canary["data"]["written"].as_str(),
        Some("before the re-flash"),
        "{canary}"
    );
    eprintln!(
        "re-flashed init {init_name}: old Node gone {gone:?}, Ready {ready:?}, voter {voter_at:?} after its boot"
    );
}
