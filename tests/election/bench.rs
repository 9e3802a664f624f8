//! election-bench: decision latency in simulated time (p50/p99) for 3, 5 and 7 nodes at 0% and 20% loss.
//!
//! Latency runs from the moment a strict majority has booted to the first node durably knowing who
//! was elected ("elected", the leader instance), to the first node learning the final `Init` (its
//! fate decided Go) and to every node learning it; "formed" runs until every node serves its role
//! (3 server seats granted one at a time; the simulated K3s start or join takes 0.2-3 s).
//! `BENCH_RUNS=N` sets the runs per row (default 2000).

use systests::election_sim::{run, Scenario};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let runs: u64 = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    println!("election decision latency after a majority booted (simulated ms, {runs} runs each; quiet LAN, boots within 5 s, 1-20 ms delay)");
    println!(
        "{:>5} {:>5} {:>11} {:>11} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>7}",
        "nodes",
        "loss",
        "elected p50",
        "elected p99",
        "first p50",
        "first p99",
        "all p50",
        "all p99",
        "formed p50",
        "formed p99",
        "failed"
    );
    for nodes in [3u8, 5, 7] {
        for loss in [0.0, 0.2] {
            let mut elected = Vec::new();
            let mut first = Vec::new();
            let mut all = Vec::new();
            let mut formed = Vec::new();
            let mut failed = 0;
            for seed in 0..runs {
                let outcome = run(&Scenario::quiet_lan(seed, nodes, 3, loss));
                let majority = outcome.majority_at.unwrap_or(0);
                match (
                    outcome.violation,
                    outcome.first_init_at,
                    outcome.all_init_at,
                    outcome.done_at,
                ) {
                    (None, Some(f), Some(a), Some(d)) => {
                        elected.push(
                            outcome
                                .first_elected_at
                                .unwrap_or(f)
                                .saturating_sub(majority),
                        );
                        first.push(f.saturating_sub(majority));
                        all.push(a.saturating_sub(majority));
                        formed.push(d.saturating_sub(majority));
                    }
                    _ => failed += 1,
                }
            }
            elected.sort_unstable();
            first.sort_unstable();
            all.sort_unstable();
            formed.sort_unstable();
            println!(
                "{:>5} {:>4.0}% {:>11} {:>11} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>7}",
                nodes,
                loss * 100.0,
                percentile(&elected, 50.0),
                percentile(&elected, 99.0),
                percentile(&first, 50.0),
                percentile(&first, 99.0),
                percentile(&all, 50.0),
                percentile(&all, 99.0),
                percentile(&formed, 50.0),
                percentile(&formed, 99.0),
                failed
            );
        }
    }
}
