//! Issue 8 on machines (real systemd, systemd-timedated and the K3s double): three nodes reach
//! "ready", joiners use the CA hash of the init node's signed announcement in their secure
//! token, and a node whose clock is an hour behind steps forward before K3s starts on it.

use systests::machines::{harness, k3s_support};

use harness::{cluster_toml, random_token, Lan};
use k3s_support::*;
use std::time::Duration;

/// How long formation may take before the test gives up (no speed assertion).
const FORMATION: Duration = Duration::from_secs(300);
/// How far behind the late machine's clock starts.
const BEHIND_SECS: i64 = 3600;

#[test]
fn three_nodes_ready_with_the_announced_ca_and_a_late_clock_stepped_forward() {
    if skip("three_nodes_ready_with_the_announced_ca_and_a_late_clock_stepped_forward") {
        return;
    }
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    // The late machine is pinned as an agent, so it is a joiner whatever the ranks say.
    let late_toml = format!("{toml}\n[node]\nrole = \"agent\"\n");
    let mut lan = Lan::new();
    lan.add_machine(&toml);
    lan.add_machine(&toml);
    let late = lan.add_machine(&late_toml);
    install_fake_clock(&lan.machines[late], BEHIND_SECS);
    // An image built a day ago, as real ones are: its build-time floor is no help here.
    set_build_time(&lan.machines[late], host_unix() - 86_400);
    let booted_at = host_unix();
    for i in 0..lan.machines.len() {
        lan.boot(i);
    }
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines ready after {took:?}");

    let init = init_machine(&lan);
    let ca = ca_file_hash(init).expect("the init node has a server CA");
    // Any serving server answers joiners (issue 18): a joiner may join the init or the server.
    let server_urls: Vec<String> = lan
        .machines
        .iter()
        .filter(|m| m.status().is_some_and(|s| s["role"] != "agent"))
        .map(|m| format!("https://{}:6443", m.address()))
        .collect();
    let init_id = status_str(init, "init_node").expect("the init node knows its own id");
    let mut roles = Vec::new();
    for m in &lan.machines {
        let status = m.status().expect("status");
        roles.push(status["role"].as_str().unwrap_or_default().to_string());
        assert_eq!(
            status["ca_hash"].as_str(),
            Some(ca.as_str()),
            "{}",
            m.report()
        );
        assert_eq!(
            status["init_node"].as_str(),
            Some(init_id.as_str()),
            "{}",
            m.name
        );
        assert!(
            !status.to_string().contains(&token),
            "{}: token in status",
            m.name
        );
        let yaml = m.config_yaml().expect("config.yaml");
        if m.name == init.name {
            assert!(
                yaml.contains("cluster-init: true\n"),
                "{}: no cluster-init",
                m.name
            );
            continue;
        }
        let url = status["server_url"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            server_urls.contains(&url) && url != format!("https://{}:6443", m.address()),
            "{}: joined {url}, not another server of {server_urls:?}",
            m.name
        );
        // The secure token carries the announced CA hash; the double checked it against /cacerts.
        assert!(
            yaml.contains(&format!("token: \"K10{ca}::server:{token}\"\n")),
            "{}: no secure token with the init node's CA hash",
            m.name
        );
        assert!(yaml.contains(&format!("server: \"{url}\"\n")), "{}", m.name);
        assert!(
            m.journal(None).contains("matches the secure token"),
            "{}: the K3s double did not check the CA hash\n{}",
            m.name,
            m.report()
        );
    }
    roles.sort();
    assert_eq!(roles, ["agent", "init", "server"]);

    // The late node stepped its clock forward through the real timedated, before K3s started.
    let m = &lan.machines[late];
    let status = m.status().expect("status");
    let notes: Vec<String> = status["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let stepped = notes
        .iter()
        .filter(|n| n.contains("behind the serving server") && n.contains("stepped forward"))
        .find_map(|n| {
            n.strip_prefix("clock was ")?
                .split(" s behind")
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no clock step in the notes: {notes:?}\n{}", m.report()));
    assert!(
        (BEHIND_SECS as f64 - 5.0..BEHIND_SECS as f64 + 5.0).contains(&stepped),
        "stepped {stepped} s"
    );
    let offset = fake_clock_offset_ns(m);
    assert!(
        offset.abs() < 2_000_000_000,
        "the machine's clock is {offset} ns off the host's after the step"
    );
    let journal = m.journal(None);
    assert!(
        journal.contains("systemd-timedated") && journal.contains("Changed local time"),
        "timedated did not step the clock\n{}",
        m.report()
    );
    // The K3s double logs its own clock at start: already agreed with the init node's.
    let k3s_clock: i64 = journal
        .split("with the clock at unix ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the K3s double did not log its clock\n{}", m.report()));
    assert!(
        k3s_clock >= booted_at - 2,
        "K3s started with the clock at {k3s_clock}, before the machines booted at {booted_at}"
    );
    for other in lan.machines.iter().filter(|o| o.name != m.name) {
        let notes = other.status().expect("status")["notes"].to_string();
        assert!(
            !notes.contains("behind the serving server"),
            "{}: {notes}",
            other.name
        );
    }
}
