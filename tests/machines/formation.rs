//! Machines form a cluster: node images built by imagebuild, booted under systemd-nspawn on one
//! LAN, with nothing typed on any of them (issue 10).

mod harness;

use harness::{cluster_toml, random_token, Lan};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// The tests boot up to 5 machines each: one at a time keeps a 2-core CI runner responsive.
static ONE_LAN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long a formation may take before the test gives up (no speed assertion: see the bench).
const FORMATION: Duration = Duration::from_secs(180);

fn skip(test: &str) -> bool {
    match harness::skip_reason() {
        Some(why) => {
            systests::skip(test, &why);
            true
        }
        None => false,
    }
}

/// The K3s unit a role runs.
fn k3s_unit(role: &str) -> &'static str {
    if role == "agent" {
        "k3s-agent.service"
    } else {
        "k3s.service"
    }
}

/// Everything issue 10 asks of a formed cluster, checked on every machine.
fn assert_formed(lan: &Lan, token: &str, servers: usize, agents: usize) {
    let mut roles = Vec::new();
    let mut hostnames = BTreeSet::new();
    for m in &lan.machines {
        let status = m
            .status()
            .unwrap_or_else(|| panic!("{}: no status\n{}", m.name, m.report()));
        assert_eq!(status["phase"], "ready", "{}: {}", m.name, m.report());
        let role = status["role"].as_str().unwrap_or_default().to_string();
        assert!(
            m.unit_active("firstboot.service"),
            "{}: firstboot.service not active\n{}",
            m.name,
            m.report()
        );
        assert!(
            m.unit_active(k3s_unit(&role)),
            "{}: {} not active\n{}",
            m.name,
            k3s_unit(&role),
            m.report()
        );
        let other = if role == "agent" {
            "k3s.service"
        } else {
            "k3s-agent.service"
        };
        assert!(!m.unit_active(other), "{}: {other} active too", m.name);
        let hostname = m.hostname();
        assert!(
            hostname.starts_with("machines-"),
            "{}: hostname {hostname:?}",
            m.name
        );
        assert_eq!(
            status["node_name"].as_str(),
            Some(hostname.as_str()),
            "{}: node name",
            m.name
        );
        hostnames.insert(hostname);
        let scrubbed = m
            .boot_file("cluster.toml")
            .unwrap_or_else(|| panic!("{}: cluster.toml gone from the boot partition", m.name));
        assert!(
            harness::contains(&scrubbed, b"name = \"machines\""),
            "{}: the scrubbed cluster.toml lost the cluster's settings: {}",
            m.name,
            String::from_utf8_lossy(&scrubbed)
        );
        let yaml = m
            .config_yaml()
            .unwrap_or_else(|| panic!("{}: no config.yaml", m.name));
        assert!(
            !status.to_string().contains(token),
            "{}: token in status",
            m.name
        );
        for (name, bytes) in m.boot_files() {
            assert!(
                !harness::contains(&bytes, token.as_bytes()),
                "{}: token still in boot partition file {name}",
                m.name
            );
        }
        assert!(
            !m.journal(None).contains(token),
            "{}: token in the journal",
            m.name
        );
        assert!(
            yaml.contains(token),
            "{}: config.yaml lacks the token (K3s needs it)",
            m.name
        );
        roles.push(role);
    }
    assert_eq!(
        hostnames.len(),
        lan.machines.len(),
        "hostnames not unique: {hostnames:?}"
    );
    let count = |r: &str| roles.iter().filter(|x| x.as_str() == r).count();
    assert_eq!(count("init"), 1, "exactly one init node: {roles:?}");
    assert_eq!(
        count("init") + count("server"),
        servers,
        "servers: {roles:?}"
    );
    assert_eq!(count("agent"), agents, "agents: {roles:?}");
}

#[test]
fn three_machines_form_a_cluster() {
    if skip("three_machines_form_a_cluster") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml; 3]);
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines ready after {took:?}");
    assert_formed(&lan, &token, 3, 0);
}

#[test]
fn five_machines_make_three_servers_and_two_agents() {
    if skip("five_machines_make_three_servers_and_two_agents") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 5);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml; 5]);
    let took = lan.wait_for("5 machines ready", FORMATION, Lan::all_ready);
    eprintln!("5 machines ready after {took:?}");
    assert_formed(&lan, &token, 3, 2);
}

/// A machine that has its role but is not ready yet: joining or starting K3s.
fn mid_join(m: &harness::Machine) -> bool {
    let Some(status) = m.state() else {
        return false;
    };
    let role = status["role"].as_str().unwrap_or_default();
    let phase = status["phase"].as_str().unwrap_or_default();
    matches!(role, "server" | "agent") && matches!(phase, "joining" | "starting-k3s")
}

#[test]
fn machine_powered_off_mid_join_joins_after_booting_again() {
    if skip("machine_powered_off_mid_join_joins_after_booting_again") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml; 3]);
    lan.wait_for_polling(
        "a machine in the middle of joining",
        FORMATION,
        Duration::from_millis(20),
        |lan| lan.machines.iter().any(mid_join),
    );
    let victim = lan
        .machines
        .iter()
        .position(mid_join)
        .expect("a machine was mid-join a moment ago");
    let caught = lan.machines[victim].status();
    eprintln!(
        "powering off {} mid-join: {caught:?}",
        lan.machines[victim].name
    );
    lan.power_off(victim);
    assert!(
        lan.machines[victim].pid1().is_none(),
        "the machine is still running"
    );
    let before = lan.machines[victim].phase();
    assert_ne!(
        before.as_deref(),
        Some("ready"),
        "it was not mid-join when it lost power"
    );
    lan.boot(victim);
    let took = lan.wait_for(
        "every machine ready after the power cut",
        FORMATION,
        Lan::all_ready,
    );
    eprintln!(
        "ready {took:?} after booting {} again",
        lan.machines[victim].name
    );
    assert_eq!(lan.machines[victim].boots, 2);
    assert_formed(&lan, &token, 3, 0);
}

#[test]
fn machine_booted_after_the_cluster_formed_joins_it() {
    if skip("machine_booted_after_the_cluster_formed_joins_it") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml.clone(); 3]);
    lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    let late = lan.add_machine(&toml);
    lan.boot(late);
    let took = lan.wait_for("the late machine ready", FORMATION, Lan::all_ready);
    eprintln!("late machine ready {took:?} after it booted");
    // Three server seats were taken: the fourth machine is an agent of the same cluster.
    assert_formed(&lan, &token, 3, 1);
    let init_url = lan.machines[late].status().expect("late status")["server_url"].clone();
    assert!(
        init_url
            .as_str()
            .is_some_and(|u| u.starts_with("https://198.18.1.")),
        "late machine joins a LAN server: {init_url}"
    );
}
