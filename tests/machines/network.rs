//! Issue 14's networking on machines: a machine whose default route is on a second interface, and
//! a LAN with no default route at all, both form with node-ip and flannel on the cluster LAN.
//!
//! The K3s double runs flannel's interface choice (flannel-iface, else the default-route
//! interface; fatal without an IPv4 address) and logs the interface and address flannel would
//! use: that line is what these tests read, besides config.yaml and the routes.

use systests::machines::{harness, k3s_support};

use harness::{cluster_toml, random_token, Lan, Machine};
use k3s_support::*;
use std::time::Duration;

const FORMATION: Duration = Duration::from_secs(300);

/// The unit of the role the machine's status reports.
fn k3s_unit(m: &Machine) -> &'static str {
    if m.role().as_deref() == Some("agent") {
        "k3s-agent.service"
    } else {
        "k3s.service"
    }
}

/// node-ip, flannel-iface and flannel's choice (from the double's journal line) are all eth0,
/// the interface on the cluster LAN.
fn assert_on_the_cluster_lan(m: &Machine) {
    let address = m.address();
    let status = m.status().expect("status");
    assert_eq!(status["phase"], "ready", "{}", m.report());
    assert_eq!(
        status["node_ip"].as_str(),
        Some(address.as_str()),
        "{}",
        m.report()
    );
    let yaml = m.config_yaml().expect("config.yaml");
    assert!(
        yaml.contains("flannel-iface: \"eth0\"\n"),
        "{}: {yaml}",
        m.name
    );
    assert!(
        yaml.contains(&format!("node-ip: \"{address}\"\n")),
        "{}: {yaml}",
        m.name
    );
    let unit = k3s_unit(m);
    let flannel = format!("The interface eth0 with ipv4 address {address} will be used by flannel");
    assert!(
        m.journal(Some(unit)).contains(&flannel),
        "{}: {unit} never logged {flannel:?}\n{}",
        m.name,
        m.report()
    );
    assert!(m.unit_active(unit), "{}", m.report());
}

/// Every machine has eth0 on the cluster LAN and wlan0 on a network of its own that holds the
/// default route (a Pi on the cluster switch whose router is over Wi-Fi). Without flannel-iface
/// flannel would take wlan0 (the default-route interface) and send pod traffic there.
#[test]
fn machines_with_the_default_route_on_a_second_interface_form_on_the_lan() {
    if skip("machines_with_the_default_route_on_a_second_interface_form_on_the_lan") {
        return;
    }
    let token = random_token();
    // One server and one agent: both kinds of node, two machines.
    let toml = cluster_toml("machines", &token, 1, 2);
    let mut lan = Lan::new();
    for n in 0..2 {
        let i = lan.add_machine(&toml);
        lan.add_uplink(i, "wlan0", &format!("198.19.{}", 10 + n));
    }
    for i in 0..2 {
        lan.boot(i);
    }
    let took = lan.wait_for("2 machines ready", FORMATION, Lan::all_ready);
    eprintln!("2 multi-homed machines ready after {took:?}");
    let mut roles = Vec::new();
    for m in &lan.machines {
        let route = m.ip(&["-4", "route", "show", "default"]);
        assert!(
            route.contains("dev wlan0") && !route.contains("fb-dummy0"),
            "{}: default route {route:?}",
            m.name
        );
        assert_on_the_cluster_lan(m);
        roles.push(m.role().unwrap_or_default());
    }
    roles.sort();
    assert_eq!(roles, ["agent", "init"]);
}

/// No machine has a default route: firstboot adds one through fb-dummy0, which carries
/// 203.0.113.254/31 (K3s's air-gap docs), and flannel starts on eth0.
#[test]
fn a_lan_without_a_default_route_forms() {
    if skip("a_lan_without_a_default_route_forms") {
        return;
    }
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    for _ in 0..3 {
        let i = lan.add_machine(&toml);
        lan.machines[i].netns_sh("ip route del default", "removing the default route");
        let route = lan.machines[i].ip(&["-4", "route", "show", "default"]);
        assert!(route.trim().is_empty(), "still a default route: {route}");
    }
    for i in 0..3 {
        lan.boot(i);
    }
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines without a default route ready after {took:?}");
    for m in &lan.machines {
        let route = m.ip(&["-4", "route", "show", "default"]);
        assert!(
            route.contains("via 203.0.113.255 dev fb-dummy0"),
            "{}: default route {route:?}",
            m.name
        );
        let addr = m.ip(&["-4", "addr", "show", "dev", "fb-dummy0"]);
        assert!(addr.contains("inet 203.0.113.254/31"), "{}: {addr}", m.name);
        assert_on_the_cluster_lan(m);
    }
    let init = init_machine(&lan);
    assert!(ca_file_hash(init).is_some());
}

/// Audit finding 8c: node-ip is fixed in `k3s-plan.json` when a node joins, and etcd advertises
/// it (K3s v1.31.4 pkg/cli/server/server.go:250-307 sets the private and advertise addresses
/// from node-ip), so a server whose DHCP lease moved cannot rejoin its cluster under another
/// address. firstboot refuses to start K3s on such a node and says why and what to do in status,
/// rather than starting K3s on an address the node no longer has (which crash-loops the unit
/// while status keeps saying "starting").
#[test]
fn a_server_whose_address_changed_refuses_to_start_k3s_and_says_why() {
    if skip("a_server_whose_address_changed_refuses_to_start_k3s_and_says_why") {
        return;
    }
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    for _ in 0..3 {
        lan.add_machine(&toml);
    }
    for i in 0..3 {
        lan.boot(i);
    }
    let took = lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    eprintln!("3 machines ready after {took:?}");
    let victim = lan
        .machines
        .iter()
        .position(|m| m.role().as_deref() == Some("server"))
        .expect("a joined server among 3 servers");
    let old = lan.machines[victim].address();
    let config_before = lan.machines[victim].config_yaml().expect("config.yaml");
    assert!(
        config_before.contains(&format!("node-ip: \"{old}\"\n")),
        "{config_before}"
    );

    // Power cut; the DHCP server hands out another address while the machine is off.
    lan.power_off(victim);
    let new = format!("{}.{}", harness::SUBNET, 100 + victim);
    lan.machines[victim].netns_sh(
        &format!(
            "ip addr flush dev eth0; ip addr add {new}/24 dev eth0; \
             ip route replace default via {}",
            harness::GATEWAY
        ),
        "giving the machine another address",
    );
    lan.boot(victim);
    // The state file (what `firstboot status --json` prints), read from the machine's root: one
    // read holds the phase and the errors together, and no exec into a loaded machine can fail.
    let took = lan.wait_for(
        "the readdressed server to report failed",
        Duration::from_secs(180),
        |lan| {
            lan.machines[victim]
                .state()
                .is_some_and(|s| s["phase"] == "failed")
        },
    );
    eprintln!("the readdressed server failed {took:?} after boot");
    let m = &lan.machines[victim];
    let status = m.state().expect("state.json");
    let errors = status["errors"].to_string();
    assert!(
        errors.contains(&format!("node-ip {old}"))
            && errors.contains("on no interface any more")
            && errors.contains("DHCP reservation"),
        "status does not name the lost address and the fix: {status}"
    );
    // K3s never started on this boot (the units have no [Install]; only firstboot starts them).
    assert_eq!(m.unit_state("k3s.service"), "inactive", "{}", m.report());
    assert_eq!(
        m.config_yaml().as_deref(),
        Some(config_before.as_str()),
        "config.yaml was rewritten"
    );
    // The other two servers are unaffected.
    for (i, other) in lan.machines.iter().enumerate() {
        if i != victim {
            assert_eq!(
                other.phase().as_deref(),
                Some("ready"),
                "{}",
                other.report()
            );
            assert!(other.unit_active("k3s.service"), "{}", other.report());
        }
    }
}
