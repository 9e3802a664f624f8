//! Issue 18 on machines (real systemd, the K3s double with real etcd): a server partitioned
//! away past `replace_after` and then healed rejoins cleanly. Three servers form (`servers = 3`,
//! `nodes = 3`, `replace_after = "20s"`, no agent); a canary ConfigMap is written; one non-init
//! server's link is taken off the LAN's bridge. The healer on the majority side deletes its Node
//! (non-forced: the double's finalizer removes its etcd member) and releases its seat. The link
//! is put back: a serving server tells the returning server (signed `Removed` frame) that the
//! book lists it as removed; it stops K3s, moves `server/db` to `server/db.removed-<unix>`,
//! forgets its role and asks for a seat again; the book has the free seat (nobody else asked),
//! so a seat keeper grants it and it joins again as a server with fresh etcd data. etcd ends with
//! 3 voting members, all alive, the returning one among them; a sampler reads the member list
//! every 500 ms throughout and never sees more than 3 voters; the canary is still there. The
//! second test cuts off the cluster-init node instead: it must never run `cluster-init` again
//! (a second cluster) and rejoins as a server the same way.

use systests::k3s_double::etcd;
use systests::machines::{day2::*, harness, k3s_support};

use harness::Lan;
use k3s_support::*;
use std::time::{Duration, Instant};

/// How long formation and each later step may take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// `[cluster] replace_after` of this test.
const REPLACE_AFTER: &str = "20s";
/// The canary ConfigMap written before the partition.
const CANARY: &str = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"rejoin-canary","namespace":"default"},"data":{"written":"before the partition"}}"#;

/// The two tests run one after the other (each boots three machines).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_server_partitioned_past_replace_after_rejoins_with_fresh_etcd_data_and_never_a_fourth_voter() {
    if skip("a_server_partitioned_past_replace_after_rejoins_with_fresh_etcd_data_and_never_a_fourth_voter") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    partitioned_server_rejoins(false);
}

/// The cluster-init node partitioned away: it must never run `cluster-init` again (a second
/// cluster); it rejoins through the seat book like any server.
#[test]
fn the_init_partitioned_past_replace_after_rejoins_as_a_server_and_never_inits_again() {
    if skip("the_init_partitioned_past_replace_after_rejoins_as_a_server_and_never_inits_again") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    partitioned_server_rejoins(true);
}

/// Forms 3 servers, cuts one off (the init when `init_away`, else a joined server) past
/// `replace_after`, heals it and checks its rejoin (see the module docs).
fn partitioned_server_rejoins(init_away: bool) {
    let toml = cluster_toml_with(3, 3, &format!("replace_after = \"{REPLACE_AFTER}\""));
    let mut lan = Lan::new();
    let start = Instant::now();
    let roles = form(&mut lan, &toml, 3, WAIT);
    let init = roles
        .iter()
        .position(|r| r == "init")
        .unwrap_or_else(|| panic!("no init: {roles:?}\n{}", lan.report()));
    let away = if init_away {
        init
    } else {
        (0..3)
            .find(|i| roles[*i] == "server")
            .unwrap_or_else(|| panic!("no server: {roles:?}\n{}", lan.report()))
    };
    let live: Vec<usize> = (0..3).filter(|i| *i != away).collect();
    let away_name = lan.machines[away].hostname();
    let names: Vec<String> = lan.machines.iter().map(|m| m.hostname()).collect();
    lan.wait_for("the book holds the 3 formation seats", WAIT, |lan| {
        book(&lan.machines[init]).is_some_and(|b| b["holders"].as_array().map(Vec::len) == Some(3))
    });
    let b = book(&lan.machines[init]).expect("the book");
    let away_id = b["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"].as_str() == Some(away_name.as_str()))
        .and_then(|h| h["node"].as_u64())
        .unwrap_or_else(|| panic!("{away_name} holds no seat: {b}"));
    let pids: Vec<u32> = live
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
    // A canary object in the cluster's datastore, written before anything happens.
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

    lan.partition(away);
    let cut = Instant::now();
    eprintln!(
        "cut {away_name} off the LAN at +{:.0}s",
        start.elapsed().as_secs_f64()
    );
    // The healer removes it: Node and etcd member gone, seat released and recorded as removed.
    let took = lan.wait_for("the partitioned server removed", WAIT, |lan| {
        let node_gone = node_names(&lan.machines[live[0]])
            .is_some_and(|n| n.len() == 2 && !n.contains(&away_name));
        let member_gone = members(pids[0])
            .is_ok_and(|l| l.iter().all(|m| etcd::node_of_member(&m.name) != away_name));
        let released = book(&lan.machines[live[0]]).is_some_and(|b| {
            b["removed"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["node"].as_u64() == Some(away_id)))
        });
        node_gone && member_gone && released
    });
    let removed_after = cut.elapsed();
    eprintln!("{away_name}'s Node, member and seat were gone {removed_after:?} after the cut ({took:?} of waiting)");
    assert!(
        removed_after >= Duration::from_secs(20),
        "removed {removed_after:?} after the cut, before replace_after ({REPLACE_AFTER})"
    );
    // Still cut off: it cannot know yet; its old data is still in place.
    assert!(
        lan.machines[away]
            .root_file("var/lib/firstboot/removed.json")
            .is_none(),
        "the partitioned server acted before hearing anything"
    );

    lan.heal(away);
    let healed = Instant::now();
    eprintln!("healed the link at +{:.0}s", start.elapsed().as_secs_f64());
    let took = lan.wait_for("the returning server told it was removed", WAIT, |lan| {
        lan.machines[away]
            .root_file("var/lib/firstboot/removed.json")
            .is_some()
    });
    eprintln!("{away_name} handled its removal {took:?} after the heal");
    let record: serde_json::Value = serde_json::from_slice(
        &lan.machines[away]
            .root_file("var/lib/firstboot/removed.json")
            .unwrap(),
    )
    .expect("removed.json is JSON");
    let set_aside = record["set_aside"]
        .as_str()
        .unwrap_or_else(|| panic!("no data set aside: {record}"))
        .to_string();
    assert!(
        set_aside.contains("/var/lib/rancher/k3s/server/db.removed-"),
        "{record}"
    );

    // It rejoins through the seat book: the free seat (nobody else asked), as a server.
    let took = lan.wait_for("the returning server a voter again", WAIT, |lan| {
        members(pids[0]).is_ok_and(|l| {
            l.len() == 3
                && l.iter().all(|m| !m.is_learner)
                && l.iter().any(|m| etcd::node_of_member(&m.name) == away_name)
        }) && lan.machines[away].phase().as_deref() == Some("ready")
    });
    eprintln!(
        "{away_name} was a voter again and ready {took:?} later ({:?} after the heal, +{:.0}s)",
        healed.elapsed(),
        start.elapsed().as_secs_f64()
    );
    // Its timeline from its removal on (firstboot and K3s), to see where the time went.
    for unit in ["firstboot.service", "k3s.service"] {
        let journal = lan.machines[away].journal(Some(unit));
        let lines: Vec<&str> = journal.lines().collect();
        let from = lines
            .iter()
            .rposition(|l| l.contains("removed from the cluster") || l.contains("tombstone"))
            .unwrap_or(0);
        let shown = &lines[from..];
        let shown = &shown[..shown.len().min(80)];
        eprintln!(
            "{unit} on {away_name} from its removal on:\n{}",
            shown.join("\n")
        );
    }
    assert_eq!(
        lan.machines[away].role().as_deref(),
        Some("server"),
        "the returning server's role (the freed seat was free)\n{}",
        lan.machines[away].report()
    );
    let (most_voters, history) = sampler.finish();
    eprintln!("member lists seen:\n{history}");
    assert!(
        most_voters <= 3,
        "{most_voters} voting members at once (at most servers = 3); lists seen:\n{history}"
    );
    let last = members(pids[0]).expect("the member list");
    let mut voters: Vec<String> = last
        .iter()
        .map(|m| etcd::node_of_member(&m.name).to_string())
        .collect();
    voters.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(voters, expected, "members: {:?}", describe(&last));
    for m in &last {
        assert!(
            member_alive(pids[0], m),
            "member {} does not answer as a voter with a leader: {:?}",
            m.name,
            describe(&last)
        );
    }
    // A new member (new name), not the old one restarted on its old data.
    let old = formed
        .iter()
        .find(|m| etcd::node_of_member(&m.name) == away_name)
        .expect("its formation member");
    assert!(
        last.iter().all(|m| m.name != old.name),
        "the old member {} is back: {:?}",
        old.name,
        describe(&last)
    );
    // Its old etcd data is set aside (not deleted), a fresh one in place.
    let listing = lan.machines[away]
        .exec("/bin/ls", &["/var/lib/rancher/k3s/server"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let aside = set_aside.rsplit('/').next().unwrap().to_string();
    assert!(
        listing.lines().any(|l| l == aside) && listing.lines().any(|l| l == "db"),
        "server dir: {listing}"
    );
    assert!(
        lan.machines[away]
            .exec(
                "/usr/bin/test",
                &["-d", &format!("{set_aside}/etcd/member")]
            )
            .is_some_and(|o| o.status.success()),
        "the old etcd data is not under {set_aside}"
    );

    if init_away {
        // It never ran cluster-init again: its config joins a live server.
        let yaml = lan.machines[away].config_yaml().expect("config.yaml");
        assert!(
            !yaml.contains("cluster-init") && yaml.lines().any(|l| l.starts_with("server:")),
            "the returning init's config.yaml:\n{yaml}"
        );
    }
    // The book: all three hold seats again, no join pending, the removal recorded.
    let b = book(&lan.machines[live[0]]).expect("the book");
    let mut holders: Vec<String> = b["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect();
    holders.sort();
    assert_eq!(holders, expected, "seat holders: {b}");
    assert!(b["pending"].is_null(), "a join still pending: {b}");
    // Nothing lost: every Node is back and the canary reads on the returning server (from
    // its new member's data).
    let mut nodes = node_names(&lan.machines[live[0]]).expect("the Nodes");
    nodes.sort();
    assert_eq!(nodes, expected);
    let canary = kubectl_json(
        &lan.machines[away],
        &["get", "configmap", "rejoin-canary", "-n", "default"],
    )
    .expect("the canary on the returning server");
    assert_eq!(
        canary["data"]["written"].as_str(),
        Some("before the partition"),
        "{canary}"
    );
    // Status says what happened.
    let notes = lan.machines[away]
        .state()
        .map(|s| s["notes"].to_string())
        .unwrap_or_default();
    assert!(
        notes.contains("removed from the cluster while away")
            && notes.contains("rejoined as server"),
        "notes: {notes}"
    );
    eprintln!(
        "done at +{:.0}s: removed {removed_after:?} after the cut, back as a server {:?} after the heal",
        start.elapsed().as_secs_f64(),
        healed.elapsed()
    );
}
