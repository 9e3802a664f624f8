//! Machines form a cluster: node images built by imagebuild, booted under systemd-nspawn on one
//! LAN, with nothing typed on any of them (issue 10).

mod harness;

use harness::{cluster_toml, random_token, Lan};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a formation may take before the test gives up (no speed assertion: see the bench).
const FORMATION: Duration = Duration::from_secs(240);

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
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml; 3]);
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines ready after {took:?}");
    assert_formed(&lan, &token, 3, 0);
}
