//! Benchmark: time from the last node starting until every node has verified every other, for
//! 3, 5 and 7 nodes on the namespaced LAN (identity + hostnamed + Avahi probing + browse/resolve).
//!
//! Run as root: `cargo build -p systests --bins && target/debug/lan-discovery-bench [sizes...]`.

use systests::lan::harness;

use harness::{random_token, skip_reason, Lan};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Give up on a size after this long (then report it as not converged).
const GIVE_UP: Duration = Duration::from_secs(120);

fn main() {
    if let Some(reason) = skip_reason() {
        println!("skipping the discovery benchmark: {reason}");
        return;
    }
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![3, 5, 7]
    } else {
        sizes
    };
    let lan_node = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("lan-node")))
        .unwrap_or_else(|| PathBuf::from("lan-node"));
    assert!(
        lan_node.exists(),
        "{} missing: cargo build -p systests --bins",
        lan_node.display()
    );
    for nodes in sizes {
        let token = random_token();
        let mut lan = Lan::new();
        for _ in 0..nodes {
            lan.add_node(&token);
        }
        let start = Instant::now();
        for node in lan.nodes.iter_mut() {
            let root = node.root.display().to_string();
            node.spawn("lan-node", &lan_node, &["--root", &root, "--name", "bench"]);
        }
        let last_started = Instant::now();
        let mut done = false;
        while last_started.elapsed() < GIVE_UP {
            if lan
                .nodes
                .iter()
                .all(|n| verified_in_log(&n.dir.join("lan-node.log")) >= nodes - 1)
            {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = last_started.elapsed();
        if done {
            println!(
                "nodes={nodes} all_verified_after_last_start_ms={} (spawning all took {} ms)",
                elapsed.as_millis(),
                (last_started - start).as_millis()
            );
        } else {
            println!(
                "nodes={nodes} did not converge within {} s",
                GIVE_UP.as_secs()
            );
        }
    }
}

/// Distinct verified node ids a lan-node has logged.
fn verified_in_log(log: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let ids: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("event Resolved") && l.contains("Verified("))
        .filter_map(|l| l.split("node: NodeId(").nth(1)?.split(')').next())
        .collect();
    ids.len()
}
