//! The dummy default route inside network namespaces this test creates (198.18.0.0/15 only).

use firstboot::default_route::{
    default_route_interface, ensure_default_route, DefaultRoute, DUMMY_INTERFACE, PROC_NET_ROUTE,
};
use std::process::Command;

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("fbk3s-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // A LAN interface with a test address and no default route.
        ns.exec(&[
            "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
        ]);
        ns.exec(&["ip", "addr", "add", "198.18.0.2/24", "dev", "lan0"]);
        ns.exec(&["ip", "link", "set", "lan0", "up"]);
        ns.exec(&["ip", "link", "set", "lan0p", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn adds_a_dummy_default_route_once_when_there_is_none() {
    if !systests::is_root() {
        systests::skip(
            "adds_a_dummy_default_route_once_when_there_is_none",
            "needs root for network namespaces",
        );
        return;
    }
    let ns = Netns::create("noroute");
    assert!(ns
        .exec(&["ip", "route", "show", "default"])
        .trim()
        .is_empty());
    let (first, second, table) = ns.run(|| {
        let first = ensure_default_route().unwrap();
        let second = ensure_default_route().unwrap();
        (
            first,
            second,
            std::fs::read_to_string(PROC_NET_ROUTE).unwrap(),
        )
    });
    assert_eq!(first, DefaultRoute::AddedDummy);
    assert_eq!(second, DefaultRoute::Present(DUMMY_INTERFACE.to_string()));
    assert_eq!(
        default_route_interface(&table).as_deref(),
        Some(DUMMY_INTERFACE)
    );
    let shown = ns.exec(&["ip", "route", "show", "default"]);
    assert!(shown.contains(&format!("dev {DUMMY_INTERFACE}")), "{shown}");
    assert!(shown.contains("metric 10000"), "{shown}");
    // The LAN route is untouched, and a real default route added later wins on metric.
    ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "198.18.0.1",
        "dev",
        "lan0",
        "metric",
        "100",
    ]);
    let got = ns.exec(&["ip", "route", "get", "198.19.255.1"]);
    assert!(got.contains("dev lan0"), "{got}");
}

#[test]
fn leaves_an_existing_default_route_alone() {
    if !systests::is_root() {
        systests::skip(
            "leaves_an_existing_default_route_alone",
            "needs root for network namespaces",
        );
        return;
    }
    let ns = Netns::create("route");
    ns.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "198.18.0.1",
        "dev",
        "lan0",
    ]);
    let got = ns.run(|| ensure_default_route().unwrap());
    assert_eq!(got, DefaultRoute::Present("lan0".into()));
    let links = ns.exec(&["ip", "-o", "link"]);
    assert!(!links.contains(DUMMY_INTERFACE), "{links}");
}

/// Runs the K3s double as `k3s server` (cluster-init, no `flannel-iface`) inside `ns`; returns
/// whether it got as far as flannel, and its log.
fn double_server_in(ns: &Netns) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    firstboot::k3s::write_config_yaml(
        &root,
        "token: \"netns-secret-Yq72\"\ncluster-init: true\nnode-name: \"n1\"\nnode-ip: \"198.18.0.2\"\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(systests::bin_path("k3s-double"))
        .arg("server")
        .env("K3S_DOUBLE_ROOT", &root)
        .env("K3S_DOUBLE_PORT", "16443")
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("will be used by flannel") {
            let _ = child.kill();
            let _ = child.wait();
            return (true, text);
        }
        if child.try_wait().unwrap().is_some() {
            return (false, std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(std::time::Instant::now() < deadline, "no outcome: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

// Rule (K3s pkg/agent/flannel/flannel.go:134-153, setup.go:106-110): without flannel-iface,
// flannel takes the default-route interface and exits the process when it has no IPv4.
// Audit 8a: this is what firstboot's address-less dummy route used to produce.
#[test]
fn double_exits_like_flannel_on_an_address_less_default_route() {
    if !systests::is_root() {
        systests::skip(
            "double_exits_like_flannel_on_an_address_less_default_route",
            "needs root for network namespaces",
        );
        return;
    }
    let ns = Netns::create("bare");
    // An empty bridge: this kernel may lack the dummy driver (firstboot falls back the same way).
    ns.exec(&["ip", "link", "add", "bare0", "type", "bridge"]);
    ns.exec(&["ip", "link", "set", "bare0", "up"]);
    ns.exec(&["ip", "route", "add", "default", "dev", "bare0"]);
    let (started, log) = double_server_in(&ns);
    assert!(!started, "{log}");
    assert!(
        log.contains("failed to find IPv4 address for interface bare0"),
        "{log}"
    );
}

// firstboot's dummy route carries an address (K3s air-gap docs), so flannel starts on a LAN
// with no default route (audit 8a; failed before the dummy got its address).
#[test]
fn flannel_starts_behind_firstboots_dummy_route() {
    if !systests::is_root() {
        systests::skip(
            "flannel_starts_behind_firstboots_dummy_route",
            "needs root for network namespaces",
        );
        return;
    }
    let ns = Netns::create("dummy");
    ns.run(|| ensure_default_route().unwrap());
    let (started, log) = double_server_in(&ns);
    assert!(started, "{log}");
    assert!(
        log.contains(&format!(
            "interface {DUMMY_INTERFACE} with ipv4 address 203.0.113.254"
        )),
        "{log}"
    );
}
