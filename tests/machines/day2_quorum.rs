//! Issue 18 on machines (real systemd, the K3s double with real etcd), "2 of 3 servers gone": no
//! promotion, no removal, and status says the quorum is lost on every survivor.
//!
//! Three servers and one agent form (`servers = 3`, `replace_after = "20s"`); two servers (the
//! init among them) are powered off for good. The surviving server and the agent both say within
//! 30 s that the quorum is lost (1 of 3 servers alive) and name the restore procedure. Well past
//! `replace_after` nothing automatic has happened: no survivor's healer deleted a Node or
//! promoted anyone, the agent is still an agent, and the survivor's etcd still lists all three
//! members (removing one without a quorum could fork the cluster; etcd could not even do it).
//! Before the power-off, `machines.local` (no `api_address`) resolves over mDNS to one server.

use systests::machines::{day2::*, harness, k3s_support, mdns};

use harness::Lan;
use k3s_support::*;
use std::time::{Duration, Instant};

/// How long formation may take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// `[cluster] replace_after` of this test.
const REPLACE_AFTER: Duration = Duration::from_secs(20);
/// How soon every survivor must say the quorum is lost: the membership view counts a peer gone
/// 10 s after its last hello, and a status poll takes a few seconds on a busy machine.
const QUORUM_BOUND: Duration = Duration::from_secs(30);

#[test]
fn two_of_three_servers_powered_off_no_removal_no_promotion_every_survivor_says_quorum_lost() {
    if skip(
        "two_of_three_servers_powered_off_no_removal_no_promotion_every_survivor_says_quorum_lost",
    ) {
        return;
    }
    let toml = cluster_toml_with(
        3,
        4,
        &format!("replace_after = \"{}s\"", REPLACE_AFTER.as_secs()),
    );
    let mut lan = Lan::new();
    let roles = form(&mut lan, &toml, 4, WAIT);
    let find = |r: &str| roles.iter().position(|x| x == r);
    let (Some(init), Some(agent)) = (find("init"), find("agent")) else {
        panic!(
            "formed roles: {roles:?} (need an init and an agent)\n{}",
            lan.report()
        );
    };
    let servers: Vec<usize> = (0..4).filter(|i| roles[*i] == "server").collect();
    assert_eq!(
        servers.len(),
        2,
        "formed roles: {roles:?}\n{}",
        lan.report()
    );
    let (dead_server, survivor) = (servers[0], servers[1]);
    let survivors = [survivor, agent];
    let dead_names = [
        lan.machines[init].hostname(),
        lan.machines[dead_server].hostname(),
    ];
    // Before: everyone sees 3 live server seats and no lost quorum.
    lan.wait_for("every machine sees 3 live server seats", WAIT, |lan| {
        (0..4).all(|i| {
            lan.machines[i]
                .status()
                .is_some_and(|s| s["membership"]["live_servers"] == 3)
        })
    });
    let pid = lan.machines[survivor].pid1().expect("the survivor runs");
    let formed = members(pid).expect("the member list");
    assert_eq!(
        formed.len(),
        3,
        "members after formation: {:?}",
        describe(&formed)
    );

    // Without api_address, one serving server publishes the cluster's name for its own
    // address (issue 19), found from the test host on the LAN over mDNS.
    let bridge = lan.bridge_pid();
    let mut named = Vec::new();
    lan.wait_for(
        "machines.local answers over mDNS",
        Duration::from_secs(30),
        |_| {
            named = mdns::resolve_on_lan(bridge, "machines.local");
            !named.is_empty()
        },
    );
    let server_addresses: Vec<String> = [init, servers[0], servers[1]]
        .iter()
        .map(|i| lan.machines[*i].address())
        .collect();
    assert!(
        named.len() == 1 && server_addresses.contains(&named[0].to_string()),
        "machines.local is {named:?}, not one of the servers {server_addresses:?}"
    );

    lan.power_off(init);
    lan.power_off(dead_server);
    let off = Instant::now();
    eprintln!("powered off {dead_names:?}");

    for m in survivors {
        let took = lan.wait_for(
            "the survivor says the quorum is lost",
            QUORUM_BOUND,
            |lan| {
                lan.machines[m]
                    .status()
                    .is_some_and(|s| s["membership"]["quorum_lost"] == true)
            },
        );
        eprintln!(
            "{} ({}) said the quorum is lost {:.1} s after the power-off ({took:?} of waiting)",
            lan.machines[m].hostname(),
            roles[m],
            off.elapsed().as_secs_f64()
        );
        let status = lan.machines[m].status().expect("status");
        let membership = &status["membership"];
        assert_eq!(membership["live_servers"], 1, "{}: {membership}", roles[m]);
        assert!(
            membership["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| !x["gone_since_unix"].is_null())
                .all(|x| x["replace_from_unix"].is_null()),
            "a replacement planned without a quorum ({}): {membership}",
            roles[m]
        );
        let text = lan.machines[m]
            .exec("/usr/local/bin/firstboot", &["status"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            text.contains("LOST: 1 of 3 servers alive")
                && text.contains("--cluster-reset-restore-path"),
            "{}'s status does not say the quorum is lost and how to restore:\n{text}",
            roles[m]
        );
    }

    // Well past replace_after: nothing automatic happened.
    let settle = REPLACE_AFTER * 2 + Duration::from_secs(10);
    if let Some(left) = settle.checked_sub(off.elapsed()) {
        std::thread::sleep(left);
    }
    let journal = lan.machines[survivor].journal(Some("firstboot.service"));
    let acted: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("healer: deleting the Node") || l.contains("healer: released"))
        .collect();
    assert!(
        acted.is_empty(),
        "the survivor's healer acted without a quorum: {acted:?}"
    );
    assert!(
        journal.contains("quorum lost"),
        "the survivor's journal never says the quorum is lost"
    );
    assert_eq!(
        lan.machines[agent].role().as_deref(),
        Some("agent"),
        "the agent changed role without a quorum\n{}",
        lan.machines[agent].report()
    );
    let after = members(pid).expect("the survivor's etcd answers its member list");
    let mut names: Vec<&str> = after
        .iter()
        .map(|m| systests::k3s_double::etcd::node_of_member(&m.name))
        .collect();
    names.sort();
    for dead in &dead_names {
        assert!(
            names.contains(&dead.as_str()),
            "{dead}'s etcd member was removed without a quorum: {:?}",
            describe(&after)
        );
    }
    assert_eq!(after.len(), 3, "members: {:?}", describe(&after));
    eprintln!(
        "{:.0} s after the power-off: no removal, no promotion; members {:?}",
        off.elapsed().as_secs_f64(),
        describe(&after)
    );
}
