//! Issue 18 on machines (real systemd, the K3s double with real etcd): server seats after
//! formation come from the cluster's seat book, granted by any serving server. Three of five
//! seats are filled at formation; the init machine is powered off for good; a new card booted
//! afterwards gets the fourth seat from a live server's seat keeper and serves (its etcd member
//! promoted), and the book in etcd records it.
//!
//! Ignored for now: in two runs the card got its server seat from a live server's keeper and
//! joined that server, but real etcd refused its learner ("etcdserver: unhealthy cluster") while
//! the powered-off init is still a voting member; the healer must remove the dead member first
//! (SPEC 4.4), and the daemon does not run the healer yet.

use systests::machines::{harness, k3s_support};

use harness::{cluster_toml, random_token, Lan};
use k3s_support::*;
use std::time::Duration;

/// How long formation and the late join may each take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);

#[test]
#[ignore = "needs the healer loop (issue 18, not done): real etcd refuses the card's learner \
            ('etcdserver: unhealthy cluster') while the dead init is still a member; the seat \
            grant itself works (two runs: the card got its server role from a live server)"]
fn a_card_booted_after_the_init_died_gets_a_free_seat_from_a_live_server() {
    if skip("a_card_booted_after_the_init_died_gets_a_free_seat_from_a_live_server") {
        return;
    }
    let token = random_token();
    // servers = 5, nodes = 5: three machines are a majority of the electorate and fill three
    // seats; two seats stay free.
    let toml = cluster_toml("machines", &token, 5, 5);
    let mut lan = Lan::new();
    for _ in 0..3 {
        lan.add_machine(&toml);
    }
    for i in 0..3 {
        lan.boot(i);
    }
    let took = lan.wait_for("3 machines ready", WAIT, Lan::all_ready);
    eprintln!("3 machines ready after {took:?}");
    let init = lan
        .machines
        .iter()
        .position(|m| m.role().as_deref() == Some("init"))
        .expect("an init machine");
    let live = (0..3).find(|i| *i != init).unwrap();
    let book = |lan: &Lan| -> Option<serde_json::Value> {
        let out = lan.machines[live].exec(
            "/usr/local/bin/k3s",
            &[
                "kubectl",
                "get",
                "configmap",
                "firstboot-seats",
                "-n",
                "kube-system",
                "-o",
                "json",
            ],
        )?;
        let map: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        serde_json::from_str(map["data"]["seats.json"].as_str()?).ok()
    };
    // The formation's seats are in the book (written before each node was told).
    lan.wait_for("the book holds the 3 formation seats", WAIT, |lan| {
        book(lan).is_some_and(|b| b["holders"].as_array().map(Vec::len) == Some(3))
    });

    lan.power_off(init);
    let card = lan.add_machine(&toml);
    lan.boot(card);
    let took = lan.wait_for("the new card ready", WAIT, |lan| {
        lan.machines[card].phase().as_deref() == Some("ready")
    });
    eprintln!("the card booted after the init's death was ready after {took:?}");
    assert_eq!(
        lan.machines[card].role().as_deref(),
        Some("server"),
        "{}",
        lan.machines[card].report()
    );
    let card_name = status_str(&lan.machines[card], "node_name").expect("the card's node name");
    lan.wait_for("the card's join ended in the book", WAIT, |lan| {
        book(lan).is_some_and(|b| b["pending"].is_null())
    });
    let b = book(&lan).expect("the book");
    eprintln!("book: {b}");
    let holders: Vec<&str> = b["holders"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(holders.len(), 4, "{b}");
    assert!(
        holders.contains(&card_name.as_str()),
        "the card {card_name} is not a holder: {b}"
    );
    // The card's K3s joined a live server (the init is gone).
    let init_addr = lan.machines[init].address();
    let yaml = lan.machines[card].config_yaml().expect("config.yaml");
    assert!(
        !yaml.contains(&format!("https://{init_addr}:6443")),
        "the card joined the dead init:\n{yaml}"
    );
}
