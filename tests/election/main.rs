//! Election simulator runs: safety at every step and liveness over thousands of seeds, flaw detection,
//! and a brief fuzz of the frame decoder.
//!
//! `SIM_SEEDS=N` runs N seeds (default 10,000); `SIM_SEED=S` replays exactly one seed, and with
//! `SIM_TRACE=1` prints every boot, power loss, decision, role and delivered message (hellos too
//! with `SIM_TRACE_HELLO=1`) as it happens. `SIM_OUTCOMES=FILE` writes one line per seed (fingerprint,
//! steps, timings, violation) to FILE, to compare two builds of the core run for run.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use firstboot::election::{
    Ballot, Body, ClusterId, Envelope, Hello, Instance, NodeId, RolePin, Value, MAX_FRAME,
};
use firstboot::keys::MacKey;
use systests::election_sim::{run, Flaw, Outcome, Rng, Scenario};

const CI_SEEDS: u64 = 10_000;

/// The seeds to run: one replayed seed, or `SIM_SEEDS` (default [`CI_SEEDS`]) seeds from 0.
fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.trim().parse().expect("SIM_SEED must be a number")];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .map(|n| n.trim().parse().expect("SIM_SEEDS must be a number"))
        .unwrap_or(CI_SEEDS);
    (0..count).collect()
}

/// Calls `each(slot, seed)` for every seed, spread over all cores; a worker stops when `each`
/// says `Break` (the others finish the seeds they hold).
fn on_all_cores(seeds: &[u64], each: impl Fn(usize, u64) -> ControlFlow<()> + Sync) {
    let next = AtomicU64::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let slot = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(slot) else { break };
                if each(slot, seed).is_break() {
                    break;
                }
            });
        }
    });
}

/// Runs `make(seed)` for every seed on all cores; returns the failing seeds (sorted) with their outcome.
/// With `stop_at_first_unsafe`, only safety violations count and workers stop at the first one.
fn sweep(
    seeds: &[u64],
    make: impl Fn(u64) -> Scenario + Sync,
    stop_at_first_unsafe: bool,
) -> (u64, Vec<(u64, Outcome)>) {
    let ran = AtomicU64::new(0);
    let slowest = AtomicU64::new(0);
    let abandoning = AtomicU64::new(0);
    let killed = AtomicU64::new(0);
    let killed_for_good = AtomicU64::new(0);
    let replaced = AtomicU64::new(0);
    let excused = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    on_all_cores(seeds, |_, seed| {
        if stop_at_first_unsafe && !failures.lock().expect("no panics hold the lock").is_empty() {
            return ControlFlow::Break(());
        }
        let outcome = run(&make(seed));
        ran.fetch_add(1, Ordering::Relaxed);
        if outcome.abandons > 0 {
            abandoning.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.killed_at.is_some() {
            killed.fetch_add(1, Ordering::Relaxed);
        }
        if outcome.killed_for_good_at.is_some() {
            killed_for_good.fetch_add(1, Ordering::Relaxed);
            if outcome.done_at.is_some() && outcome.violation.is_none() {
                replaced.fetch_add(1, Ordering::Relaxed);
            }
        }
        if outcome.excused_stall {
            excused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(done) = outcome.done_at {
            slowest.fetch_max(done.saturating_sub(outcome.quiet_at), Ordering::Relaxed);
        }
        if outcome.violation.is_some() && (outcome.unsafe_run || !stop_at_first_unsafe) {
            failures
                .lock()
                .expect("no panics hold the lock")
                .push((seed, outcome));
        }
        ControlFlow::Continue(())
    });
    let mut failures = failures.into_inner().expect("no panics hold the lock");
    failures.sort_by_key(|(seed, _)| *seed);
    println!(
        "slowest convergence after the world turned quiet: {} ms; runs that decided Abandon somewhere: {}",
        slowest.into_inner(),
        abandoning.into_inner()
    );
    println!(
        "elected node killed: {} runs ({} for good: {} formed without it, {} waited for it because \
         another node had accepted its Go)",
        killed.into_inner(),
        killed_for_good.into_inner(),
        replaced.into_inner(),
        excused.into_inner()
    );
    (ran.into_inner(), failures)
}

#[test]
fn simulator_upholds_safety_and_liveness() {
    let seeds = seeds();
    let started = std::time::Instant::now();
    let (ran, failures) = sweep(&seeds, Scenario::generate, false);
    println!(
        "{ran} seeds, {} failing, {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    for (seed, outcome) in &failures {
        eprintln!(
            "seed {seed} FAILED: {}\n  replay: SIM_SEED={seed} cargo test -p systests --test election_sim -- simulator_upholds_safety_and_liveness --nocapture\n  scenario: {:?}",
            outcome.violation.as_deref().unwrap_or_default(),
            Scenario::generate(*seed),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed",
        failures.len()
    );
}

fn assert_flaw_is_caught(flaw: Flaw) {
    let seeds: Vec<u64> = (0..CI_SEEDS).collect();
    let exhaustive = std::env::var_os("SIM_FLAW_ALL").is_some();
    let (ran, failures) = sweep(
        &seeds,
        |seed| Scenario::generate(seed).with_flaw(flaw),
        !exhaustive,
    );
    if exhaustive {
        for (seed, outcome) in &failures {
            println!(
                "{flaw:?} seed {seed}: {}",
                outcome.violation.as_deref().unwrap_or_default()
            );
        }
    }
    let (seed, outcome) = failures
        .iter()
        .find(|(_, outcome)| outcome.unsafe_run)
        .unwrap_or_else(|| panic!("{flaw:?}: no violation found in {ran} seeds"));
    let violation = outcome.violation.as_deref().unwrap_or_default();
    println!("{flaw:?} caught at seed {seed} after {ran} runs: {violation}");
    assert!(
        outcome.unsafe_run,
        "{flaw:?} must break safety: {violation}"
    );
}

#[test]
fn half_quorum_flaw_is_caught() {
    assert_flaw_is_caught(Flaw::HalfQuorum);
}

#[test]
fn reply_before_persist_flaw_is_caught() {
    assert_flaw_is_caught(Flaw::ReplyBeforePersist);
}

#[test]
fn init_without_go_flaw_is_caught() {
    assert_flaw_is_caught(Flaw::InitWithoutGo);
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 77, 4242] {
        let first = run(&Scenario::generate(seed));
        let second = run(&Scenario::generate(seed));
        assert_eq!(first.trace, second.trace, "seed {seed}");
        assert_eq!(first.steps, second.steps, "seed {seed}");
        assert_eq!(first.done_at, second.done_at, "seed {seed}");
    }
}

/// With `SIM_OUTCOMES=FILE`: the outcome of every seed of [`seeds`], one line each, in seed order, so
/// that a refactoring of the core can be shown to change no run (`diff` the files of two builds).
#[test]
fn outcome_traces_dump() {
    let Some(path) = std::env::var_os("SIM_OUTCOMES") else {
        println!("SIM_OUTCOMES is not set: no outcome file written");
        return;
    };
    let seeds = seeds();
    let lines: Vec<Mutex<String>> = seeds.iter().map(|_| Mutex::new(String::new())).collect();
    on_all_cores(&seeds, |slot, seed| {
        let o = run(&Scenario::generate(seed));
        *lines[slot].lock().expect("no panics hold the lock") = format!(
            "seed {seed} trace {:016x} steps {} elected {:?} init {:?} done {:?} abandons {} \
                     rejected {} violation {:?}\n",
            o.trace,
            o.steps,
            o.first_elected_at,
            o.first_init_at,
            o.done_at,
            o.abandons,
            o.rejected,
            o.violation
        );
        ControlFlow::Continue(())
    });
    let text: String = lines
        .into_iter()
        .map(|l| l.into_inner().expect("no panics hold the lock"))
        .collect();
    std::fs::write(&path, text).expect("writing the SIM_OUTCOMES file");
    println!(
        "{} outcomes written to {}",
        seeds.len(),
        path.to_string_lossy()
    );
}

#[test]
fn decoder_rejects_garbage_and_mutations_without_panicking() {
    let token = b"fuzzing-token-0123";
    let cluster = ClusterId::derive(token, 5, 3);
    let key = MacKey::election(token);
    let ballot = Ballot {
        round: 9,
        node: NodeId(77),
    };
    let genuine: Vec<Vec<u8>> = [
        Body::Hello(Hello {
            pin: RolePin::Auto,
            storage: 100,
            ram_mib: 4096,
            decided: Some(Value::Init(NodeId(77))),
            serving: true,
            wants_seat: true,
            roster: vec![NodeId(77), NodeId(78), NodeId(79)],
        }),
        Body::Prepare {
            instance: Instance::Leader,
            ballot,
        },
        Body::Promise {
            instance: Instance::Fate,
            ballot,
            accepted: Some((ballot, Value::Abandon)),
        },
        Body::Accept {
            instance: Instance::Leader,
            ballot,
            value: Value::Init(NodeId(1)),
        },
        Body::Accept {
            instance: Instance::Fate,
            ballot,
            value: Value::Init(NodeId(1)),
        },
        Body::Decided {
            instance: Instance::Fate,
            value: Value::Abandon,
        },
    ]
    .into_iter()
    .map(|body| {
        Envelope {
            epoch: 2,
            sender: NodeId(5),
            body,
        }
        .encode(&cluster, &key)
    })
    .collect();
    let mut rng = Rng::new(0xF022);
    let mut rejected = 0;
    for round in 0..60_000u32 {
        let frame: Vec<u8> = if round % 2 == 0 {
            (0..rng.range(0, MAX_FRAME as u64 + 64))
                .map(|_| rng.next_u64() as u8)
                .collect()
        } else {
            let mut frame = genuine[round as usize / 2 % genuine.len()].clone();
            match rng.range(0, 2) {
                0 => {
                    for _ in 0..rng.range(1, 4) {
                        let at = rng.range(0, frame.len() as u64 - 1) as usize;
                        frame[at] ^= 1 << rng.range(0, 7);
                    }
                }
                1 => frame.truncate(rng.range(0, frame.len() as u64 - 1) as usize),
                _ => frame.extend((0..rng.range(1, 40)).map(|_| rng.next_u64() as u8)),
            }
            frame
        };
        match Envelope::decode(&frame, &cluster, &key) {
            // Only a genuine frame may pass (a mutation can flip a bit back); anything else is a forgery.
            Ok(envelope) => assert!(
                genuine.contains(&frame),
                "forged frame accepted: {envelope:?}"
            ),
            Err(_) => rejected += 1,
        }
    }
    assert!(
        rejected > 59_000,
        "only {rejected} of 60000 frames were rejected"
    );
    for frame in &genuine {
        assert!(Envelope::decode(frame, &cluster, &key).is_ok());
    }
}
