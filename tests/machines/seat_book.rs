//! Issue 18 on machines (real systemd, the K3s double with real etcd): the cluster replaces a
//! dead server, and two new cards competing for its seat get exactly one seat between them.
//! Three servers and one agent form (`servers = 3`, `nodes = 6`, `replace_after = "20s"`); the
//! init machine is powered off for good; two new cards boot at once. They wait for the dead
//! server's seat (the book is full) instead of becoming agents; the healer (on the live server
//! holding the `firstboot-healer` Lease) deletes the dead init's Node after `replace_after`,
//! non-forced, so the double's finalizer removes its etcd member; then it releases the seat in
//! the book, a live server's seat keeper grants it to the better card, that card joins as a
//! server and the other, once the seat is held, as an agent. etcd ends with 3 voting members,
//! all alive, and never has more than 3 voting members meanwhile (a sampler reads the member list
//! every 500 ms throughout).

use systests::k3s_double::etcd;
use systests::machines::{day2::*, harness, k3s_support};

use harness::Lan;
use k3s_support::*;
use std::time::{Duration, Instant};

/// How long formation and the late join may each take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// `[cluster] replace_after` of this test.
const REPLACE_AFTER: &str = "20s";

#[test]
fn a_dead_init_is_removed_after_replace_after_and_one_of_two_new_cards_takes_its_seat() {
    if skip("a_dead_init_is_removed_after_replace_after_and_one_of_two_new_cards_takes_its_seat") {
        return;
    }
    // nodes = 6: the four formed machines and the two cards.
    let toml = cluster_toml_with(3, 6, &format!("replace_after = \"{REPLACE_AFTER}\""));
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
    let live: Vec<usize> = (0..4).filter(|i| roles[*i] == "server").collect();
    let init_name = lan.machines[init].hostname();
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
    eprintln!("powered off the init {init_name}");
    let cards = [lan.add_machine(&toml), lan.add_machine(&toml)];
    for card in cards {
        lan.boot(card);
    }

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

    let took = lan.wait_for("both new cards ready", WAIT, |lan| {
        cards
            .iter()
            .all(|c| lan.machines[*c].phase().as_deref() == Some("ready"))
    });
    eprintln!(
        "both cards were ready {:?} after the init's power-off ({took:?} of waiting)",
        off.elapsed()
    );
    let card_roles: Vec<String> = cards
        .iter()
        .map(|c| lan.machines[*c].role().unwrap_or_default())
        .collect();
    let card_reports = || {
        // The cards' own reports, then what the live servers' keepers, healers and elections
        // said about seats (the decision that made a card an agent is taken there).
        let mut out: Vec<String> = cards.iter().map(|c| lan.machines[*c].report()).collect();
        for i in &live {
            let m = &lan.machines[*i];
            let lines: Vec<String> = m
                .journal(Some("firstboot.service"))
                .lines()
                .filter(|l| {
                    [
                        "seat keeper",
                        "healer",
                        "grant",
                        "roster",
                        "promot",
                        "Agents",
                        "Replacing",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
                })
                .map(String::from)
                .collect();
            out.push(format!(
                "=== {} seat lines:\n{}",
                m.hostname(),
                lines.join("\n")
            ));
        }
        out.join("\n")
    };
    let winners: Vec<usize> = cards
        .into_iter()
        .filter(|c| lan.machines[*c].role().as_deref() == Some("server"))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "servers among the two cards (exactly one takes the dead init's seat): roles {card_roles:?}\n{}",
        card_reports()
    );
    assert!(
        card_roles.iter().any(|r| r == "agent"),
        "the card that lost the seat must join as an agent: roles {card_roles:?}\n{}",
        card_reports()
    );
    let card = winners[0];
    let card_name = lan.machines[card].hostname();
    let init_addr = lan.machines[init].address();
    for c in cards {
        let yaml = lan.machines[c].config_yaml().expect("config.yaml");
        assert!(
            !yaml.contains(&format!("https://{init_addr}:6443")),
            "a card joined the dead init {init_addr}:\n{yaml}"
        );
    }

    // etcd: 3 voting members, no learner, all alive: the two live servers and the card.
    let mut expected: Vec<String> = live
        .iter()
        .map(|i| lan.machines[*i].hostname())
        .chain([card_name.clone()])
        .collect();
    expected.sort();
    lan.wait_for("etcd: 3 voters, the card's among them", WAIT, |_| {
        members(pids[0]).is_ok_and(|l| {
            let mut voters: Vec<String> = l
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| etcd::node_of_member(&m.name).to_string())
                .collect();
            voters.sort();
            voters == expected && l.len() == 3
        })
    });
    let (most_voters, history) = sampler.finish();
    let last = members(pids[0]).expect("the member list");
    for m in &last {
        assert!(
            member_alive(pids[0], m),
            "member {} does not answer as a voter with a leader: {:?}",
            m.name,
            describe(&last)
        );
    }
    eprintln!("member lists seen:\n{history}");
    assert!(
        most_voters <= 3,
        "{most_voters} voting members at once (at most servers = 3); lists seen:\n{history}"
    );

    // The agent kept working through the init's death: its Node is Ready with a heartbeat
    // from after the power-off (the double's agent load balancer moved to a live server).
    let agent = roles.iter().position(|r| r == "agent").unwrap();
    let agent_name = lan.machines[agent].hostname();
    let since_off = off.elapsed().as_secs() as i64;
    let powered_off_at = host_unix() - since_off;
    let nodes = kubectl_json(&lan.machines[live[0]], &["get", "nodes"])
        .map(|v| firstboot::healer::nodes::parse_nodes(&v))
        .unwrap_or_default();
    let view = nodes.iter().find(|n| n.name == agent_name);
    assert!(
        view.is_some_and(
            |v| v.ready == firstboot::healer::Ready::True && v.last_heartbeat > powered_off_at + 10
        ),
        "the formed agent {agent_name} is not Ready with a heartbeat after the init's power-off \
         (at {powered_off_at}): {view:?}"
    );

    // The book: the card holds the dead init's seat; the init is recorded as removed.
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
    assert_eq!(
        b["removed"].as_array().map(Vec::len),
        Some(1),
        "removed nodes: {b}"
    );
    // It was firstboot's healer that deleted the Node (non-forced), on a live server.
    let deleted_by_healer = live.iter().any(|i| {
        lan.machines[*i]
            .journal(Some("firstboot.service"))
            .lines()
            .any(|l| l.contains("healer: deleting the Node") && l.contains(&init_name))
    });
    assert!(
        deleted_by_healer,
        "no live server's firstboot logged deleting {init_name}'s Node\n{}",
        lan.report()
    );

    // Nothing names the dead init any more (SPEC 4.4): on every live machine the plan and
    // config.yaml name servers serving now, renamed a minute after the init went unheard
    // (firstboot's RETARGET_AFTER), and K3s was not restarted for it.
    let alive: Vec<usize> = (0..lan.machines.len()).filter(|i| *i != init).collect();
    let init_api = format!("{init_addr}:6443");
    let names_init = |m: &harness::Machine| {
        let yaml = m.config_yaml().unwrap_or_default();
        let plan = m
            .root_file(firstboot::paths::K3S_PLAN_JSON)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        yaml.contains(&init_api) || plan.contains(&init_api)
    };
    lan.wait_for(
        "no live machine's config.yaml or plan names the dead init",
        WAIT,
        |lan| alive.iter().all(|i| !names_init(&lan.machines[*i])),
    );
    eprintln!(
        "no live machine names the dead init {:.1} s after its power-off",
        off.elapsed().as_secs_f64()
    );
    for i in &alive {
        let journal = lan.machines[*i].journal(Some("firstboot.service"));
        assert!(
            !journal.lines().any(|l| l.contains("restarting it")),
            "{} restarted K3s (renaming `server:` must not):\n{journal}",
            lan.machines[*i].hostname()
        );
    }
}
