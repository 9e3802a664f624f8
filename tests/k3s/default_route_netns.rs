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
