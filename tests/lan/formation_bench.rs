//! Benchmark: time from the last needed node starting to every node knowing its role, for 3, 5
//! and 7 nodes, each node running the real `firstboot run --until role` on the namespaced LAN.
//!
//! Run as root: `cargo build -p firstboot -p systests --bins && target/debug/formation-bench
//! [--runs N] [sizes...]` (servers = 3, nodes = size; median and range of N runs per size).

use systests::lan::{formation_support, harness};

use formation_support::{
    check_roles, firstboot_path, role_of, start_node, write_config, ClusterSpec,
};
use harness::{skip_reason, Lan};
use std::time::{Duration, Instant};

/// Give up on a run after this long (then report it as not converged).
const GIVE_UP: Duration = Duration::from_secs(120);

fn main() {
    if let Some(reason) = skip_reason() {
        println!("skipping the formation benchmark: {reason}");
        return;
    }
    let mut runs = 3;
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(runs);
        } else if let Ok(size) = arg.parse::<usize>() {
            sizes.push(size);
        }
    }
    if sizes.is_empty() {
        sizes = vec![3, 5, 7];
    }
    let firstboot = firstboot_path();
    assert!(
        firstboot.exists(),
        "{} missing: cargo build -p firstboot -p systests --bins",
        firstboot.display()
    );
    println!("formation: last node started -> every node knows its role (servers = 3)");
    for size in sizes {
        let mut times = Vec::new();
        for _ in 0..runs {
            match run_once(size) {
                Some(t) => times.push(t),
                None => println!("  {size} nodes: a run did not converge within {GIVE_UP:?}"),
            }
        }
        times.sort();
        if let (Some(min), Some(max)) = (times.first(), times.last()) {
            let median = times[times.len() / 2];
            println!(
                "  {size} nodes: median {:.2} s  (min {:.2} s, max {:.2} s, {} runs)",
                median.as_secs_f64(),
                min.as_secs_f64(),
                max.as_secs_f64(),
                times.len()
            );
        }
    }
}

/// One formation of `size` nodes; the time from the last start to the last role line.
fn run_once(size: usize) -> Option<Duration> {
    let spec = ClusterSpec::new("bench", size as u8, 3.min(size as u8));
    let mut lan = Lan::new();
    for _ in 0..size {
        let node = lan.add_node(&spec.token);
        write_config(node, &spec);
    }
    for node in lan.nodes.iter_mut() {
        start_node(node);
    }
    let last_started = Instant::now();
    while last_started.elapsed() < GIVE_UP {
        let roles: Vec<_> = lan.nodes.iter().filter_map(role_of).collect();
        if roles.len() == size {
            let elapsed = last_started.elapsed();
            let servers = 3.min(size);
            check_roles(&roles, servers, size - servers);
            return Some(elapsed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
