//! Shared by the formation tests and the formation benchmark: configs, starting `firstboot run`, roles.

pub use super::harness::can_run;
use super::harness::{firstboot_bin, random_token, Lan, Node};
use crate::HOLD_ELECTED_ENV;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Liveness bound of a formation on a loaded CI machine (not a speed goal: see formation-bench).
const ROLE_WAIT: Duration = Duration::from_secs(120);

/// One kit's cluster.toml.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// `cluster.name`.
    pub name: String,
    /// `cluster.token`.
    pub token: String,
    /// `cluster.nodes`.
    pub nodes: u8,
    /// `cluster.servers`.
    pub servers: u8,
}

impl ClusterSpec {
    /// A cluster with a fresh random token.
    pub fn new(name: &str, nodes: u8, servers: u8) -> Self {
        ClusterSpec {
            name: name.into(),
            token: random_token(),
            nodes,
            servers,
        }
    }
}

/// Formations run one at a time: each is a LAN of daemons, and a 2-core CI box running several
/// at once would only measure its own overload.
pub fn formation_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The opening of a formation test: `None` (having printed why) when the LAN cannot run here;
/// else the formation lock, held, and a LAN with `count` nodes of a new cluster `homelab` of
/// `nodes` nodes and `servers` servers.
pub fn homelab_lan(
    test: &str,
    nodes: u8,
    servers: u8,
    count: usize,
) -> Option<(MutexGuard<'static, ()>, Lan, ClusterSpec)> {
    if !can_run(test) {
        return None;
    }
    let serial = formation_lock();
    let mut lan = Lan::new();
    let spec = ClusterSpec::new("homelab", nodes, servers);
    add_cluster_nodes(&mut lan, &spec, count);
    Some((serial, lan, spec))
}

/// Polls `found` every 100 ms until it gives a value; panics with `what` once `bound` has passed
/// since `since`.
pub fn wait_until<T>(
    since: Instant,
    bound: Duration,
    what: &str,
    mut found: impl FnMut() -> Option<T>,
) -> T {
    let deadline = since + bound;
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}");
        sleep(Duration::from_millis(100));
    }
}

/// The firstboot binary: beside a test's `deps/` directory, or beside a benchmark program.
pub fn firstboot_path() -> PathBuf {
    let beside_tests = firstboot_bin();
    if beside_tests.exists() {
        return beside_tests;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("firstboot")))
        .unwrap_or_else(|| PathBuf::from("firstboot"))
}

/// The node's boot partition directory.
pub fn boot_dir(node: &Node) -> PathBuf {
    node.dir.join("boot")
}

/// Writes `spec` as the node's `cluster.toml` on its boot partition.
pub fn write_config(node: &Node, spec: &ClusterSpec) {
    let boot = boot_dir(node);
    std::fs::create_dir_all(&boot).expect("creating the boot dir");
    let text = format!(
        "[cluster]\nname = \"{}\"\ntoken = \"{}\"\nservers = {}\nnodes = {}\n",
        spec.name, spec.token, spec.servers, spec.nodes
    );
    std::fs::write(boot.join("cluster.toml"), text).expect("writing cluster.toml");
}

/// Adds `count` nodes of the cluster `spec` to the LAN, each with its cluster.toml.
pub fn add_cluster_nodes(lan: &mut Lan, spec: &ClusterSpec, count: usize) {
    for _ in 0..count {
        let node = lan.add_node(&spec.token);
        write_config(node, spec);
    }
}

/// Starts `firstboot run --until role` in the node (no clock or storage step: the test LAN has
/// no timedated and its nodes share one disk), logging to `firstboot.log`.
pub fn start_node(node: &mut Node) {
    start_node_as(node, "firstboot");
}

/// [`start_node`] under another label (its log is `<label>.log`), e.g. for a restart.
pub fn start_node_as(node: &mut Node, label: &str) {
    start_program(node, label, &firstboot_path(), &[]);
}

/// [`start_node`] running `firstboot-held` (the daemon with the test crate's hold on the elected
/// node; see `held_firstboot.rs`) with [`HOLD_ELECTED_ENV`] set to `hold_ms`.
pub fn start_held_node(node: &mut Node, hold_ms: &str) {
    let held = firstboot_path().with_file_name("firstboot-held");
    start_program(node, "firstboot", &held, &[(HOLD_ELECTED_ENV, hold_ms)]);
}

/// Runs `program` (the daemon or a test build of it) as `firstboot run --until role` in `node`.
fn start_program(node: &mut Node, label: &str, program: &Path, env: &[(&str, &str)]) {
    let root = node.root.display().to_string();
    let boot = boot_dir(node).display().to_string();
    node.spawn_with_env(
        label,
        program,
        &[
            "--root",
            &root,
            "--boot-dir",
            &boot,
            "run",
            "--until",
            "role",
            "--no-clock",
            "--no-storage",
        ],
        &[&[("RUST_LOG", "info")], env].concat(),
    );
}

/// The node's persisted election state (`election.json`), `Null` before the first write.
pub fn election_state(node: &Node) -> Value {
    std::fs::read(node.root.join("var/lib/firstboot/election.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// The node's lifecycle state (`state.json`), `Null` before the first write.
pub fn node_state(node: &Node) -> Value {
    std::fs::read(node.root.join("var/lib/firstboot/state.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

/// The election's number for node `index`'s id (`NodeId` is a `u64` in the state file).
pub fn node_number(index: usize) -> u64 {
    0x1000_0000_0000_0000 + 0x5eed_0000 + index as u64
}

/// Waits (up to the formation's liveness bound) until the `firstboot.log` of one of `lan`'s
/// nodes contains `needle`; returns that node's position in `lan.nodes`. Panics with every
/// node's log tail otherwise.
pub fn wait_any_log_line(lan: &Lan, needle: &str) -> usize {
    let start = Instant::now();
    let read =
        |node: &Node| std::fs::read_to_string(node.dir.join("firstboot.log")).unwrap_or_default();
    loop {
        if let Some(found) = lan.nodes.iter().position(|n| read(n).contains(needle)) {
            return found;
        }
        if start.elapsed() > ROLE_WAIT {
            for node in &lan.nodes {
                let log = read(node);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- node{} log tail (newest first):", node.index);
                for line in tail {
                    eprintln!("  {line}");
                }
            }
            panic!("no node logged `{needle}` within {ROLE_WAIT:?}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// Every role line any program of any node printed over the whole run (all its firstboot logs).
pub fn all_role_lines(lan: &Lan) -> Vec<Value> {
    let mut lines = Vec::new();
    for node in &lan.nodes {
        for entry in std::fs::read_dir(&node.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("firstboot") && name.ends_with(".log")) {
                continue;
            }
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lines.extend(
                log.lines()
                    .filter(|l| l.starts_with("{\""))
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v.get("role").is_some()),
            );
        }
    }
    lines
}

/// The role line the node's daemon printed, if any (panics if it printed two).
pub fn role_of(node: &Node) -> Option<Value> {
    role_in(node, "firstboot")
}

/// The role line in the log of the program started under `label`.
pub fn role_in(node: &Node, label: &str) -> Option<Value> {
    let log = std::fs::read_to_string(node.dir.join(format!("{label}.log"))).unwrap_or_default();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with("{\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("role").is_some())
        .collect();
    assert!(
        lines.len() <= 1,
        "node{} printed two roles: {lines:?}",
        node.index
    );
    lines.into_iter().next()
}

/// Waits until every node in `which` (indexes into `lan.nodes`) printed its role.
pub fn wait_roles(lan: &Lan, which: &[usize]) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let roles: Vec<Option<Value>> = which.iter().map(|&i| role_of(&lan.nodes[i])).collect();
        if roles.iter().all(Option::is_some) {
            return roles.into_iter().flatten().collect();
        }
        if start.elapsed() > ROLE_WAIT {
            for (&i, role) in which.iter().zip(&roles) {
                let node = &lan.nodes[i];
                let log =
                    std::fs::read_to_string(node.dir.join("firstboot.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- node{} role {role:?}; log tail (newest first):",
                    node.index
                );
                for line in tail {
                    eprintln!("  {line}");
                }
            }
            panic!("not every node knew its role within {ROLE_WAIT:?}");
        }
        sleep(Duration::from_millis(100));
    }
}

/// The node id the harness's fake board serial gives node `index` (1-based).
pub fn node_id(index: usize) -> String {
    format!("10000000{:08x}", 0x5eed_0000 + index)
}

/// Checks one cluster's roles: exactly one init, `servers - 1` servers, `agents` agents, every
/// joiner joining the init node, unique hostnames. Returns the init node's id.
pub fn check_roles(roles: &[Value], servers: usize, agents: usize) -> String {
    let count = |role: &str| roles.iter().filter(|r| r["role"] == role).count();
    assert_eq!(count("cluster-init"), 1, "exactly one init: {roles:#?}");
    assert_eq!(count("server"), servers - 1, "servers: {roles:#?}");
    assert_eq!(count("agent"), agents, "agents: {roles:#?}");
    let init = roles
        .iter()
        .find(|r| r["role"] == "cluster-init")
        .and_then(|r| r["node"].as_str())
        .expect("the init line names its node")
        .to_string();
    for r in roles.iter().filter(|r| r["role"] != "cluster-init") {
        assert_eq!(
            r["join"].as_str(),
            Some(init.as_str()),
            "joins the init: {r}"
        );
    }
    let hostnames: BTreeSet<&str> = roles
        .iter()
        .filter_map(|r| r["hostname"].as_str())
        .collect();
    assert_eq!(hostnames.len(), roles.len(), "unique hostnames: {roles:#?}");
    init
}

/// [`check_roles`] for all of `lan`'s nodes in `roles` order, plus: the hostname each daemon
/// reports is the one systemd-hostnamed wrote in that node.
pub fn assert_one_cluster(lan: &Lan, roles: &[Value], servers: usize, agents: usize) {
    check_roles(roles, servers, agents);
    for (node, role) in lan.nodes.iter().zip(roles) {
        assert_eq!(
            role["hostname"].as_str(),
            Some(node.static_hostname().as_str()),
            "node{}",
            node.index
        );
        assert_eq!(role["node"].as_str(), Some(node_id(node.index).as_str()));
    }
}
