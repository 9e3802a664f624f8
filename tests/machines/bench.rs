//! `machines-bench`: boot-to-all-ready time of 3 and 5 machines (node images built by imagebuild,
//! booted under systemd-nspawn on one namespaced LAN). Prints figures; asserts nothing about speed.
//!
//! `sudo cargo run --release -p systests --bin machines-bench -- [--runs N] [--base B] [SIZES...]`
//! (default: one run each of 3 and 5 machines on the `MACHINES_BASE` base, trixie when unset).
//! With `--runs N`, every size forms N times in a row, each run on fresh copies of the node image;
//! it prints every run, the median and the slowest run's ratio to the median.

use systests::machines::harness;

use harness::base::Release;
use harness::{cluster_toml, random_token, Lan};
use std::time::{Duration, Instant};

struct Args {
    runs: usize,
    release: Release,
    sizes: Vec<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 1,
        release: Release::from_env(),
        sizes: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a whole number above 0, e.g. --runs 10")?;
            }
            "--base" => {
                let name = it.next().ok_or("--base needs bookworm or trixie")?;
                args.release = Release::parse(&name).map_err(|e| e.to_string())?;
            }
            n => args.sizes.push(n.parse().map_err(|_| {
                format!("{n:?} is not a machine count (usage: machines-bench [--runs N] [--base bookworm|trixie] [SIZES...])")
            })?),
        }
    }
    if args.sizes.is_empty() {
        args.sizes = vec![3, 5];
    }
    Ok(args)
}

/// One formation of `n` identical cards; returns boot-to-all-ready.
fn form(release: Release, n: u32, label: &str) -> Duration {
    let token = random_token();
    let toml = cluster_toml("bench", &token, 3.min(n), n);
    let mut lan = Lan::on(release);
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
        "{label}{n} machines: boot-to-all-ready {:.1} s (powering on all took {:.1} s); each ready at: {}",
        all.as_secs_f64(),
        booted.as_secs_f64(),
        each.join(", ")
    );
    all
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("machines-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(why) = harness::skip_reason() {
        eprintln!("machines-bench cannot run here: {why}");
        std::process::exit(2);
    }
    let t = Instant::now();
    drop(Lan::on(args.release));
    println!(
        "{:?} node image ready (built or cached) in {:.1} s",
        args.release,
        t.elapsed().as_secs_f64()
    );
    for &n in &args.sizes {
        let mut times = Vec::new();
        for run in 1..=args.runs {
            let label = if args.runs > 1 {
                format!("run {run}/{}: ", args.runs)
            } else {
                String::new()
            };
            times.push(form(args.release, n, &label).as_secs_f64());
        }
        if args.runs > 1 {
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            let median = if sorted.len() % 2 == 1 {
                sorted[sorted.len() / 2]
            } else {
                (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
            };
            let slowest = sorted[sorted.len() - 1];
            println!(
                "{n} machines, {} runs on {:?}: {}; median {median:.1} s, fastest {:.1} s, slowest {slowest:.1} s = {:.2}x the median",
                times.len(),
                args.release,
                times.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(", "),
                sorted[0],
                slowest / median
            );
        }
    }
}
