//! Shared by the day-2 and operations machine tests (`seat_book.rs`, `day2_*.rs`, `ops_*.rs`):
//! a cluster.toml with one more line and a formed LAN, etcd's member list as a machine sees it,
//! a sampler of it, and the seat book and Node names through the double's `k3s kubectl`.

use super::harness::{cluster_toml, random_token, Lan, Machine};
use crate::k3s_double::etcd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cluster.toml (cluster "machines", a fresh token) for `servers` and `nodes` with one more
/// `[cluster]` line, such as `replace_after = "20s"`.
pub fn cluster_toml_with(servers: u32, nodes: u32, line: &str) -> String {
    let nodes_line = format!("nodes = {nodes}\n");
    let toml = cluster_toml("machines", &random_token(), servers, nodes)
        .replace(&nodes_line, &format!("{nodes_line}{line}\n"));
    assert!(toml.contains(line), "{toml}");
    toml
}

/// Adds `count` machines with `toml` to `lan`, boots them and waits (up to `wait`) until all are
/// ready; their roles ("init", "server", "agent"), in machine order.
pub fn form(lan: &mut Lan, toml: &str, count: usize, wait: Duration) -> Vec<String> {
    let first = lan.machines.len();
    for _ in 0..count {
        lan.add_machine(toml);
    }
    for i in first..first + count {
        lan.boot(i);
    }
    let took = lan.wait_for(&format!("{count} machines ready"), wait, Lan::all_ready);
    eprintln!("{count} machines ready after {took:?}");
    lan.machines
        .iter()
        .map(|m| m.role().unwrap_or_default())
        .collect()
}

/// Runs `f` on a thread inside the network namespace of the process `pid` (a machine's PID 1),
/// with a small async runtime for the double's etcd client.
pub fn in_netns<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>
        + Send
        + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
}

/// etcd's member list as the machine with PID 1 `pid` sees it (its own etcd, on loopback).
pub fn members(pid: u32) -> anyhow::Result<Vec<etcd::Member>> {
    in_netns(pid, || {
        Box::pin(async { etcd::member_list(&etcd::url("127.0.0.1", 2379)).await })
    })
}

/// Whether the member answers on its client URL with a leader, as a voter (from `pid`'s netns).
pub fn member_alive(pid: u32, member: &etcd::Member) -> bool {
    let Some(url) = member.client_urls.first().cloned() else {
        return false;
    };
    in_netns(pid, move || Box::pin(async move { etcd::test(&url).await })).is_ok()
}

/// "name(voter)" / "name(learner)" of each member, for messages.
pub fn describe(members: &[etcd::Member]) -> Vec<String> {
    members
        .iter()
        .map(|m| {
            let kind = if m.is_learner { "learner" } else { "voter" };
            format!("{}({kind})", m.name)
        })
        .collect()
}

/// `k3s kubectl ARGS -o json` on `m` (bounded by `timeout 20`), parsed.
pub fn kubectl_json(m: &Machine, args: &[&str]) -> Option<serde_json::Value> {
    let mut argv = vec!["20", "/usr/local/bin/k3s", "kubectl"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let out = m.exec("/usr/bin/timeout", &argv)?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The seat book (`kube-system/firstboot-seats`) through the double's `k3s kubectl` on `m`.
pub fn book(m: &Machine) -> Option<serde_json::Value> {
    let map = kubectl_json(
        m,
        &["get", "configmap", "firstboot-seats", "-n", "kube-system"],
    )?;
    serde_json::from_str(map["data"]["seats.json"].as_str()?).ok()
}

/// The Node names K3s has, through `k3s kubectl` on `m`.
pub fn node_names(m: &Machine) -> Option<Vec<String>> {
    let v = kubectl_json(m, &["get", "nodes"])?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect(),
    )
}

/// What the sampler saw: the most voters at once, and each distinct list with when.
#[derive(Default)]
pub struct Seen {
    pub most_voters: usize,
    pub lists: Vec<(Duration, Vec<String>)>,
}

/// Samples the member list on a live server every 500 ms until stopped: each distinct list
/// with when it was seen, and the most voters ever seen.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pids: Vec<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, v) = (stop.clone(), seen.clone());
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // Whichever live server answers (either may be busy for a moment).
                if let Some(list) = pids.iter().find_map(|p| members(*p).ok()) {
                    let voters = list.iter().filter(|m| !m.is_learner).count();
                    let names = describe(&list);
                    let mut seen = v.lock().unwrap();
                    seen.most_voters = seen.most_voters.max(voters);
                    if seen.lists.last().map(|(_, l)| l) != Some(&names) {
                        seen.lists.push((start.elapsed(), names));
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops sampling: the most voters seen and the history of lists.
    pub fn finish(mut self) -> (usize, String) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let seen = self.seen.lock().unwrap();
        let history = seen
            .lists
            .iter()
            .map(|(at, l)| format!("  +{:.1}s {}", at.as_secs_f64(), l.join(" ")))
            .collect::<Vec<_>>()
            .join("\n");
        (seen.most_voters, history)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
