//! Issue 18 on machines (real systemd, the K3s double with real etcd): a server powered off for
//! good with no new card is replaced by promoting the agent. Three servers and one agent form
//! (`servers = 3`, `nodes = 4`, `replace_after = "20s"`); the init machine is powered off for
//! good and no card comes. The healer (on the live server holding the `firstboot-healer` Lease)
//! deletes the dead init's Node after `replace_after`, non-forced, so the double's finalizer
//! removes its etcd member; it releases the seat in the book, then grants it to the agent by
//! compare-and-swap; the live servers' seat keepers tell the agent (signed `SeatGranted`); the
//! agent stops and disables `k3s-agent`, joins a live server as a K3s server (an etcd learner,
//! promoted by the leader) and reports role server, promoted; its firstboot is killed with
//! SIGKILL the moment it takes the promotion up and goes on as a server after systemd restarts
//! it. etcd ends with 3 voting members,
//! all alive, and never has more than 3 voting members meanwhile (a sampler reads the member
//! list every 500 ms throughout).

use systests::k3s_double::etcd;
use systests::machines::{day2::*, harness, k3s_support};

use harness::Lan;
use k3s_support::*;
use std::time::{Duration, Instant};

/// How long formation and each later step may take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// `[cluster] replace_after` of this test.
const REPLACE_AFTER: &str = "20s";

#[test]
fn a_dead_server_with_no_new_card_is_replaced_by_promoting_the_agent() {
    if skip("a_dead_server_with_no_new_card_is_replaced_by_promoting_the_agent") {
        return;
    }
    let toml = cluster_toml_with(3, 4, &format!("replace_after = \"{REPLACE_AFTER}\""));
    let mut lan = Lan::new();
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
    let live: Vec<usize> = (0..4).filter(|i| roles[*i] == "server").collect();
    let init_name = lan.machines[init].hostname();
    let agent_name = lan.machines[agent].hostname();
    lan.wait_for("the book holds the 3 formation seats", WAIT, |lan| {
        book(&lan.machines[live[0]])
            .is_some_and(|b| b["holders"].as_array().map(Vec::len) == Some(3))
    });
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
    let sampler = Sampler::start(pids.clone());

    lan.power_off(init);
    let off = Instant::now();
    eprintln!("powered off the init {init_name}; no new card comes; the agent is {agent_name}");

    // The dead init's Node and its etcd member are removed (by the healer, after replace_after).
    let took = lan.wait_for("the dead init's etcd member removed", WAIT, |lan| {
        let gone =
            node_names(&lan.machines[live[0]]).is_some_and(|names| !names.contains(&init_name));
        gone && members(pids[0])
            .is_ok_and(|l| l.iter().all(|m| etcd::node_of_member(&m.name) != init_name))
    });
    let removed_after = off.elapsed();
    eprintln!("the dead init's Node and member were gone {removed_after:?} after its power-off ({took:?} of waiting)");
    assert!(
        removed_after >= Duration::from_secs(20),
        "removed {removed_after:?} after the power-off, before replace_after ({REPLACE_AFTER})"
    );

    // The agent takes the promotion up (its state file says role server), and its firstboot is
    // killed with SIGKILL right then, mid-way through joining as a server: systemd restarts it
    // and it goes on as a server (the role is durable in the election's state).
    let took = lan.wait_for_polling(
        "the agent takes its promotion up",
        WAIT,
        Duration::from_millis(50),
        |lan| {
            lan.machines[agent]
                .state()
                .is_some_and(|s| s["role"] == "server")
        },
    );
    let phase = lan.machines[agent].state().map(|s| s["phase"].clone());
    let killed = kill_firstboot(&lan.machines[agent]);
    eprintln!(
        "the agent took its promotion up {:?} after the power-off ({took:?} after the removal); \
         kill -9 of its firstboot ({killed} process) in phase {phase:?}",
        off.elapsed()
    );
    assert!(killed > 0, "no firstboot process to kill on the agent");

    // The agent is promoted: it becomes a voting etcd member.
    let mut expected: Vec<String> = live
        .iter()
        .map(|i| lan.machines[*i].hostname())
        .chain([agent_name.clone()])
        .collect();
    expected.sort();
    let took = lan.wait_for(
        "etcd: 3 voters, the promoted agent's among them",
        WAIT,
        |_| {
            members(pids[0]).is_ok_and(|l| {
                let mut voters: Vec<String> = l
                    .iter()
                    .filter(|m| !m.is_learner)
                    .map(|m| etcd::node_of_member(&m.name).to_string())
                    .collect();
                voters.sort();
                voters == expected && l.len() == 3
            })
        },
    );
    let voting_after = off.elapsed();
    eprintln!(
        "the promoted agent {agent_name} was a voting member {voting_after:?} after the power-off \
         ({:?} after the dead init's removal; {took:?} of waiting)",
        voting_after.saturating_sub(removed_after)
    );
    let took = lan.wait_for(
        "the promoted agent reports ready as a server",
        WAIT,
        |lan| {
            let m = &lan.machines[agent];
            m.phase().as_deref() == Some("ready") && m.role().as_deref() == Some("server")
        },
    );
    eprintln!(
        "the promoted agent reported ready as a server {:?} after the power-off ({took:?} of waiting)",
        off.elapsed()
    );
    // The seat keepers end its join once it serves as a server.
    lan.wait_for("the book: 3 live holders, nothing pending", WAIT, |lan| {
        book(&lan.machines[live[0]]).is_some_and(|b| {
            b["pending"].is_null() && b["holders"].as_array().map(Vec::len) == Some(3)
        })
    });
    let (most_voters, history) = sampler.finish();
    eprintln!("member lists seen:\n{history}");

    // etcd: 3 voting members, no learner, all alive.
    let last = members(pids[0]).expect("the member list");
    assert_eq!(last.len(), 3, "members: {:?}", describe(&last));
    for m in &last {
        assert!(
            !m.is_learner && member_alive(pids[0], m),
            "member {} does not answer as a voter with a leader: {:?}",
            m.name,
            describe(&last)
        );
    }
    assert!(
        most_voters <= 3,
        "{most_voters} voting members at once (at most servers = 3); lists seen:\n{history}"
    );

    // The promoted machine: role server, promoted (with when), K3s's server unit active and the
    // agent's stopped and disabled, config.yaml joining a live server (not the dead init).
    let promoted = &lan.machines[agent];
    let status = promoted.status().expect("the promoted machine's status");
    assert_eq!(status["role"], "server", "{status}");
    let at = status["promoted_unix"].as_u64().unwrap_or_default();
    assert!(at > 0, "no promotion time in the status: {status}");
    assert_eq!(promoted.unit_state("k3s.service"), "active");
    assert_ne!(promoted.unit_state("k3s-agent.service"), "active");
    let enabled = promoted
        .exec("systemctl", &["is-enabled", "k3s-agent.service"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_ne!(
        enabled, "enabled",
        "k3s-agent is still enabled after the promotion"
    );
    let yaml = promoted.config_yaml().expect("config.yaml");
    let init_addr = lan.machines[init].address();
    let live_addrs: Vec<String> = live.iter().map(|i| lan.machines[*i].address()).collect();
    assert!(
        live_addrs
            .iter()
            .any(|a| yaml.contains(&format!("server: \"https://{a}:6443\""))),
        "the promoted agent does not join a live server ({live_addrs:?}):\n{yaml}"
    );
    assert!(
        !yaml.contains(&format!("https://{init_addr}:6443")),
        "the promoted agent joins the dead init {init_addr}:\n{yaml}"
    );
    assert!(!yaml.contains("cluster-init"), "{yaml}");
    let text = promoted
        .exec("/usr/local/bin/firstboot", &["status"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(
        text.contains("promoted   from agent to server"),
        "`firstboot status` on the promoted machine:\n{text}"
    );

    // K3s: the dead init's Node is gone; the book's holders are the 3 live servers.
    let names = node_names(&lan.machines[live[0]]).expect("the Node names");
    assert!(!names.contains(&init_name), "Nodes: {names:?}");
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
    // It was firstboot's healer that granted the seat, on a live server.
    let granted_by_healer = live.iter().any(|i| {
        lan.machines[*i]
            .journal(Some("firstboot.service"))
            .lines()
            .any(|l| l.contains("healer: promoting an agent") && l.contains(&agent_name))
    });
    assert!(
        granted_by_healer,
        "no live server's firstboot logged promoting {agent_name}\n{}",
        lan.report()
    );
    eprintln!(
        "times after the power-off: member removed {removed_after:?}, promoted agent voting \
         {voting_after:?}"
    );
}
