//! Issue 14 on a machine: K3s units that run before firstboot chose the role. A K3s unit running
//! with another configuration than the one firstboot wrote is restarted; the other role's unit is
//! stopped and disabled. And `servers = 1` runs K3s's default datastore, SQLite.

use systests::machines::{harness, k3s_support};

use harness::{cluster_toml, random_token, Lan, Machine};
use k3s_support::*;
use std::time::Duration;

const FORMATION: Duration = Duration::from_secs(300);

/// The node names the K3s double logged at each start of `unit` ("starting server as node X").
fn started_as(m: &Machine, unit: &str) -> Vec<String> {
    m.journal(Some(unit))
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("as node ")? + "as node ".len()..];
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

/// Both K3s units enabled by hand (as an older image's `[Install]` and trixie's preset-all did)
/// and a stale config.yaml: both start at boot, before firstboot. firstboot must restart
/// k3s.service with its own configuration and stop and disable k3s-agent.service.
#[test]
fn k3s_running_before_firstboot_is_restarted_and_the_wrong_role_stopped() {
    if skip("k3s_running_before_firstboot_is_restarted_and_the_wrong_role_stopped") {
        return;
    }
    let token = random_token();
    let mut lan = Lan::new();
    let i = lan.add_machine(&cluster_toml("machines", &token, 1, 1));
    let m = &lan.machines[i];
    let wants = m.root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).expect("creating multi-user.target.wants");
    for unit in ["k3s.service", "k3s-agent.service"] {
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
            .expect("enabling a K3s unit by hand");
    }
    let yaml = m.root.join("etc/rancher/k3s/config.yaml");
    std::fs::create_dir_all(yaml.parent().unwrap()).expect("creating /etc/rancher/k3s");
    std::fs::write(&yaml, "node-name: \"stale-node\"\n").expect("writing a stale config.yaml");
    lan.boot(i);
    let took = lan.wait_for("the machine ready", FORMATION, Lan::all_ready);
    eprintln!("ready after {took:?}");
    let m = &lan.machines[i];
    let status = m.status().expect("status");
    let hostname = m.hostname();

    // k3s.service ran with the stale file before firstboot, then was restarted with firstboot's.
    let starts = started_as(m, "k3s.service");
    assert_eq!(
        starts.first().map(String::as_str),
        Some("stale-node"),
        "k3s.service did not start before firstboot (the test did not set the trap): {starts:?}\n{}",
        m.report()
    );
    assert_eq!(
        starts.last(),
        Some(&hostname),
        "k3s.service still runs the configuration it started with: {starts:?}\n{}",
        m.report()
    );
    assert!(m.unit_active("k3s.service"), "{}", m.report());
    assert!(
        m.root_file(firstboot::k3s::started_config::STARTED_CONFIG_PATH)
            .is_some(),
        "no record of the configuration K3s was restarted with"
    );

    // The agent unit (crash-looping without a server URL) is stopped and no longer enabled.
    assert_eq!(
        m.unit_state("k3s-agent.service"),
        "inactive",
        "{}",
        m.report()
    );
    assert!(
        !wants.join("k3s-agent.service").exists()
            && wants.join("k3s-agent.service").symlink_metadata().is_err(),
        "k3s-agent.service is still enabled"
    );
    // firstboot leaves its own role's unit alone.
    assert!(wants.join("k3s.service").symlink_metadata().is_ok());

    // servers = 1: SQLite, no cluster-init; status says so and how to grow.
    let config = m.config_yaml().expect("config.yaml");
    assert!(!config.contains("cluster-init"), "{config}");
    assert!(
        config.contains(&format!("node-name: \"{hostname}\"")),
        "{config}"
    );
    assert_eq!(status["role"], "init", "{}", m.report());
    assert_eq!(status["datastore"], "sqlite", "{status}");
    assert!(
        status["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n
                .as_str()
                .is_some_and(|n| n.contains("cluster-init: true") && n.contains("3 servers")))),
        "no note on growing to 3 servers: {status}"
    );
    let text = m
        .exec("/usr/local/bin/firstboot", &["status"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(text.contains("datastore  sqlite"), "{text}");
}

/// The Node names and the number of etcd members K3s knows, through the double's `k3s kubectl`
/// on `m` (backed by its etcd), once every expected Node is there or after 30 s.
fn nodes_and_members(
    m: &Machine,
    expected: &std::collections::BTreeSet<String>,
) -> (Vec<String>, usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = m
            .exec("k3s", &["kubectl", "get", "nodes", "-o", "json"])
            .expect("the machine runs");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let names: Vec<String> = items
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        let members = items
            .iter()
            .filter(|n| !n["metadata"]["annotations"]["etcd.k3s.cattle.io/node-name"].is_null())
            .count();
        let seen: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        if &seen == expected || std::time::Instant::now() > deadline {
            return (names, members);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every machine ran K3s on its own before firstboot chose the roles (k3s.service enabled by
/// hand with a stale `cluster-init: true` config.yaml, as on a card reused from another cluster
/// or a standalone test): each holds etcd data of a one-member cluster of its own. K3s starts a
/// server with etcd data as an existing member and ignores `server:` (pkg/cluster/bootstrap.go:
/// 88-99, pkg/etcd/etcd.go:470-487), so a joiner would stay in its own cluster while its unit is
/// active. firstboot must set the stale server directory aside before the first start of its
/// role and the three machines must form one cluster with three etcd members.
#[test]
fn stale_standalone_server_data_is_set_aside_before_joining() {
    if skip("stale_standalone_server_data_is_set_aside_before_joining") {
        return;
    }
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    for n in 0..3 {
        let i = lan.add_machine(&toml);
        let m = &lan.machines[i];
        let wants = m.root.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).expect("creating multi-user.target.wants");
        std::os::unix::fs::symlink("/etc/systemd/system/k3s.service", wants.join("k3s.service"))
            .expect("enabling k3s.service by hand");
        let yaml = m.root.join("etc/rancher/k3s/config.yaml");
        std::fs::create_dir_all(yaml.parent().unwrap()).expect("creating /etc/rancher/k3s");
        std::fs::write(
            &yaml,
            format!("cluster-init: true\nnode-name: \"standalone-{n}\"\n"),
        )
        .expect("writing a stale config.yaml");
    }
    for i in 0..3 {
        lan.boot(i);
    }
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines with stale standalone K3s data ready after {took:?}");
    // The outcome first: one cluster of three etcd members, not three standalone ones.
    let hostnames: std::collections::BTreeSet<String> =
        lan.machines.iter().map(|m| m.hostname()).collect();
    let init = init_machine(&lan);
    let (names, members) = nodes_and_members(init, &hostnames);
    let names: std::collections::BTreeSet<String> = names.into_iter().collect();
    assert_eq!(names, hostnames, "the cluster's Nodes\n{}", lan.report());
    assert_eq!(members, 3, "etcd members of the cluster\n{}", lan.report());
    // Then how: each machine ran standalone first and its stale data was set aside, said in status.
    for (n, m) in lan.machines.iter().enumerate() {
        let starts = started_as(m, "k3s.service");
        assert_eq!(
            starts.first().map(String::as_str),
            Some(format!("standalone-{n}").as_str()),
            "k3s.service did not run standalone before firstboot (the trap was not set): {starts:?}\n{}",
            m.report()
        );
        let aside: Vec<String> = std::fs::read_dir(m.root.join("var/lib/rancher/k3s"))
            .expect("the K3s data dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("server.stale-"))
            .collect();
        assert_eq!(aside.len(), 1, "{}: {aside:?}", m.name);
        let status = m.status().expect("status");
        assert!(
            status["notes"].to_string().contains(&aside[0]),
            "no status note on the stale data moved aside: {status}"
        );
    }
}
