//! `machines-bench`: boot-to-all-ready time of 3 and 5 machines (node images built by imagebuild,
//! booted under systemd-nspawn on one namespaced LAN). Prints figures; asserts nothing about speed.
//!
//! `sudo cargo run --release -p systests --bin machines-bench [-- SIZES...]` (default: 3 5).

mod harness;

use harness::{cluster_toml, random_token, Lan};
use std::time::{Duration, Instant};

fn main() {
    if let Some(why) = harness::skip_reason() {
        eprintln!("machines-bench cannot run here: {why}");
        std::process::exit(2);
    }
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes are whole numbers"))
        .collect();
    let sizes = if sizes.is_empty() { vec![3, 5] } else { sizes };
    let t = Instant::now();
    drop(Lan::new());
    println!(
        "node image ready (built or cached) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for n in sizes {
        let token = random_token();
        let toml = cluster_toml("bench", &token, 3.min(n), n);
        let mut lan = Lan::new();
        // Copying and stamping the images is setup; the clock starts at the first power-on.
        for _ in 0..n {
            lan.add_machine(&toml);
        }
        let t = Instant::now();
        for i in 0..n as usize {
            lan.boot(i);
        }
        let booted = t.elapsed();
        let mut ready_at: Vec<Option<Duration>> = vec![None; n as usize];
        let all = lan.wait_for(
            &format!("{n} machines ready"),
            Duration::from_secs(600),
            |lan| {
                for (m, at) in lan.machines.iter().zip(ready_at.iter_mut()) {
                    if at.is_none() && m.state().is_some_and(|s| s["phase"] == "ready") {
                        *at = Some(t.elapsed());
                    }
                }
                lan.all_ready()
            },
        ) + booted;
        let each: Vec<String> = lan
            .machines
            .iter()
            .zip(&ready_at)
            .map(|(m, at)| {
                format!(
                    "{} {:.1} s",
                    m.role().unwrap_or_default(),
                    at.unwrap_or(all).as_secs_f64()
                )
            })
            .collect();
        println!(
            "{n} machines: boot-to-all-ready {:.1} s (powering on all took {:.1} s); each ready at: {}",
            all.as_secs_f64(),
            booted.as_secs_f64(),
            each.join(", ")
        );
    }
}
