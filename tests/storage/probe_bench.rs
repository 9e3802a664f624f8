//! probe-bench: the storage probe against etcd's fio reference test on the same directory.
//!
//! `probe-bench [--dir D] [--rounds N] [--only dir,loop,throttled,slow]` compares, in each
//! setting, N rounds (default 7) of three interleaved runs: the probe, fio, and fio again (the
//! order rotates every round, and `sync` runs before each, so no run always follows the same
//! one). It prints every run; per series the median of the runs' p99s and the p99 of all their
//! fdatasyncs pooled (fio's json+ histogram, the probe's own samples); the probe/fio ratios; and
//! as the noise floor the same statistics between two halves of all 2N fio runs, over every way
//! to split them. A verdict line per statistic says PASS or FAIL against the 25% goal, or
//! UNDECIDED when the host's own noise floor exceeds 25% and so cannot judge it.
//!
//! Settings: `dir` is D (default /var/tmp); as root, `loop` is ext4 on a tmpfs-backed loop device,
//! `throttled` is a loop device whose writes a cgroup limits to 400 IOPS (fio capped at 2 s),
//! and `slow` runs the probe on two deliberately slowed devices, which it must classify slow: a
//! loop device throttled to 20 write IOPS by a cgroup, and a loop device over an image on a FUSE
//! filesystem that delays each write and fsync (also compared with fio capped at 2 s).
//! `probe-bench probe-once DIR [--samples]` prints one probe result as JSON, and with `--samples`
//! a second line with every fdatasync latency in microseconds (used inside a throttled cgroup).
//!
//! The probe issues the same system calls as fio (create the file, fallocate 22 MiB, then write
//! 2300 bytes and fdatasync, repeated; strace both to check), but stops after 2 s where fio
//! writes all 22 MiB, so on a slow device fio's p99 covers a longer stretch of time. Run it under
//! `chrt -f 10` so that CPU scheduling stays out of the tail.

use systests::storage::{delayed_disk, devices};

use anyhow::Context;
use delayed_disk::{DelayedDisk, Delays};
use devices::{fio_args, parse_fio, FioResult, LoopDevice, MountedLoop, ThrottledCgroup, FIO_FILE};
use firstboot::storage::class::Speed;
use firstboot::storage::probe::{ProbeResult, StorageProbe};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Write IOPS of the moderately throttled device (a probe-versus-fio comparison).
const STEADY_WRITE_IOPS: u32 = 400;
/// Write IOPS of the slow throttled device (an SD stand-in: must classify slow).
const SLOW_WRITE_IOPS: u32 = 20;
/// Delays of the FUSE-backed slow device.
const SLOW_FUSE: Delays = Delays {
    write: Duration::from_millis(2),
    fsync: Duration::from_millis(10),
};
/// fio's runtime cap on slowed devices, where 22 MiB would take minutes: the probe's own time
/// budget, so that both measure the same stretch of time and take as many samples.
const SLOWED_FIO_SECS: u32 = 2;
/// The goal: probe and fio p99 within 25% of each other.
const GOAL: f64 = 1.25;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe-once") {
        let dir = args
            .get(1)
            .context("usage: probe-bench probe-once DIR [--samples]")?;
        let (r, samples) = StorageProbe::new(dir).run_sampled().context("probing")?;
        println!("{}", serde_json::to_string(&r)?);
        if args.get(2).map(String::as_str) == Some("--samples") {
            println!("{}", serde_json::to_string(&samples)?);
        }
        return Ok(());
    }
    let usage = "usage: probe-bench [--dir D] [--rounds N] [--only dir,loop,throttled,slow]";
    let mut dir = PathBuf::from("/var/tmp");
    let mut rounds = 7usize;
    let mut only: Vec<String> = ["dir", "loop", "throttled", "slow"]
        .map(String::from)
        .to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().context("--dir needs a value")?.into(),
            "--rounds" => rounds = it.next().context("--rounds needs a value")?.parse()?,
            "--only" => {
                only = it
                    .next()
                    .context("--only needs a value")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            other => anyhow::bail!("unknown argument {other}; {usage}"),
        }
    }
    let rounds = rounds.max(1);
    let wants = |s: &str| only.iter().any(|o| o == s);
    if wants("dir") {
        let work = tempfile::Builder::new()
            .prefix("probe-bench.")
            .tempdir_in(&dir)?;
        let target = Target::direct(work.path());
        compare(&format!("directory {}", dir.display()), &target, rounds)?;
    }
    if !systests::is_root() {
        println!("\nskipping loop-device, throttled and slowed-device runs: they need root");
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    if wants("loop") {
        let shm = tempfile::Builder::new()
            .prefix("probe-bench.")
            .tempdir_in("/dev/shm")?;
        let dev = MountedLoop::ext4(
            LoopDevice::create(&shm.path().join("disk.img"), 256 << 20)?,
            &scratch.path().join("loop"),
        )?;
        compare(
            "ext4 on a tmpfs-backed loop device",
            &Target::direct(&dev.dir),
            rounds,
        )?;
    }
    if wants("throttled") {
        throttled(scratch.path(), STEADY_WRITE_IOPS, rounds, false)?;
    }
    if wants("slow") {
        throttled(scratch.path(), SLOW_WRITE_IOPS, rounds, true)?;
        fuse_delayed(scratch.path(), rounds)?;
    }
    Ok(())
}

/// Where a run happens: a directory, optionally inside a throttling cgroup, with fio's cap.
struct Target<'a> {
    dir: PathBuf,
    cgroup: Option<&'a ThrottledCgroup>,
    fio_runtime: Option<u32>,
}

impl<'a> Target<'a> {
    fn direct(dir: &Path) -> Target<'a> {
        Target {
            dir: dir.to_path_buf(),
            cgroup: None,
            fio_runtime: None,
        }
    }

    /// One probe run: its result and every fdatasync latency as a histogram.
    fn probe(&self) -> anyhow::Result<(ProbeResult, Histogram)> {
        nix::unistd::sync();
        let (result, samples_us): (ProbeResult, Vec<u64>) = match self.cgroup {
            None => StorageProbe::new(&self.dir)
                .run_sampled()
                .context("running the probe")?,
            Some(cg) => {
                let exe = std::env::current_exe()?;
                let dir = self.dir.to_string_lossy();
                let out = cg.run(&exe, &["probe-once", &dir, "--samples"])?;
                let mut lines = out.lines();
                let mut next = || lines.next().context("probe-once printed too little");
                (
                    serde_json::from_str(next()?).context("parsing probe-once result")?,
                    serde_json::from_str(next()?).context("parsing probe-once samples")?,
                )
            }
        };
        let mut hist = Histogram::new();
        for us in samples_us {
            *hist.entry(us * 1000).or_default() += 1;
        }
        Ok((result, hist))
    }

    /// One fio run: its result (with its histogram of fdatasync latencies).
    fn fio(&self) -> anyhow::Result<FioResult> {
        nix::unistd::sync();
        let args = fio_args(&self.dir, self.fio_runtime);
        let out = match self.cgroup {
            None => devices::run(Command::new("fio").args(&args)).map(|o| o.stdout),
            Some(cg) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cg.run(Path::new("fio"), &args).map(String::into_bytes)
            }
        };
        let _ = std::fs::remove_file(self.dir.join(FIO_FILE));
        parse_fio(&out?)
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// fdatasync latencies: nanoseconds -> how many (fio's bins, or the probe's exact samples).
type Histogram = BTreeMap<u64, u64>;

fn median(v: &[u64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2] as f64
    } else {
        (s[n / 2 - 1] + s[n / 2]) as f64 / 2.0
    }
}

/// Nearest-rank percentile (as fio computes it) of several runs' latencies pooled, in ns.
fn pooled_percentile(runs: &[&Histogram], p: f64) -> u64 {
    let mut pool = Histogram::new();
    for h in runs {
        for (&ns, &n) in h.iter() {
            *pool.entry(ns).or_default() += n;
        }
    }
    let total: u64 = pool.values().sum();
    let rank = ((p / 100.0 * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (ns, n) in pool {
        seen += n;
        if seen >= rank {
            return ns;
        }
    }
    0
}

/// How far apart two figures are, as larger/smaller (1.0 = equal).
fn apart(a: f64, b: f64) -> f64 {
    a.max(b) / a.min(b).max(1.0)
}

/// The 95th percentile of `apart(stat(one half), stat(other half))` over the ways to split `n`
/// runs of the same command in two halves: how far two series land apart by chance alone.
fn split_noise(n: usize, stat: impl Fn(&[usize]) -> f64) -> f64 {
    let half = n / 2;
    let mut gaps = vec![];
    let mut add = |mask: u64| {
        let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| mask & (1 << i) != 0);
        gaps.push(apart(stat(&a), stat(&b)));
    };
    if n <= 16 {
        for mask in 0u64..(1 << n) {
            if mask.count_ones() as usize == half {
                add(mask);
            }
        }
    } else {
        // Too many splits to enumerate: a fixed pseudo-random sample (xorshift, shuffled halves).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            let mut idx: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                idx.swap(i, (x % (i as u64 + 1)) as usize);
            }
            add(idx[..half].iter().fold(0, |m, &i| m | (1 << i)));
        }
    }
    gaps.sort_by(f64::total_cmp);
    gaps[(gaps.len() * 95).div_ceil(100).max(1) - 1]
}

/// The verdict on a probe/fio gap given the noise floor (both as larger/smaller ratios).
fn verdict(gap: f64, floor: f64) -> String {
    let pct = |x: f64| (x - 1.0) * 100.0;
    if floor > GOAL {
        format!(
            "UNDECIDED: the host's own noise ({:.0}%) is larger than the 25% goal, so a {:.0}% probe/fio gap can neither confirm nor refute it here ({})",
            pct(floor),
            pct(gap),
            if gap <= floor { "the gap is within the noise" } else { "the gap exceeds even the noise" }
        )
    } else if gap <= GOAL {
        format!(
            "PASS: {:.0}% apart, within 25% (noise floor {:.0}%)",
            pct(gap),
            pct(floor)
        )
    } else {
        format!(
            "FAIL: {:.0}% apart, more than 25% and more than the noise floor ({:.0}%)",
            pct(gap),
            pct(floor)
        )
    }
}

/// Run the probe, fio and fio again `rounds` times in `target`, interleaved, and print figures.
fn compare(title: &str, target: &Target, rounds: usize) -> anyhow::Result<()> {
    println!("\n== {title}");
    match target.fio_runtime {
        Some(s) => {
            println!("fio capped at {s} s (--runtime={s}); the probe stops after 2 s or 22 MiB")
        }
        None => println!("fio as etcd documents it (22 MiB); the probe stops after 2 s or 22 MiB"),
    }
    println!("round  run     p50 ms    p99 ms   syncs   probe bytes  elapsed ms");
    const NAMES: [&str; 3] = ["probe", "fio", "fio#2"];
    let mut p99: [Vec<u64>; 3] = Default::default();
    let mut hists: [Vec<Histogram>; 3] = Default::default();
    let (mut probe_ms, mut probe_bytes) = (0u64, 0u64);
    for round in 1..=rounds {
        for k in 0..3 {
            let arm = (round - 1 + k) % 3;
            let (r50, r99, syncs, bytes, elapsed, hist) = if arm == 0 {
                let (p, hist) = target.probe()?;
                probe_ms = probe_ms.max(p.elapsed_ms);
                probe_bytes = probe_bytes.max(p.bytes);
                let bytes = p.bytes.to_string();
                (p.p50_us, p.p99_us, p.writes, bytes, p.elapsed_ms, hist)
            } else {
                let f = target.fio()?;
                let hist = f.sync_bins_ns.iter().copied().collect();
                (f.p50_us, f.p99_us, f.syncs, "-".into(), f.runtime_ms, hist)
            };
            println!(
                "{round:>5}  {:<6} {:>8.3}  {:>8.3}  {syncs:>6}  {bytes:>12}  {elapsed:>10}",
                NAMES[arm],
                ms(r50),
                ms(r99),
            );
            p99[arm].push(r99);
            hists[arm].push(hist);
        }
    }
    let pooled = |arm: usize, idx: &[usize], p: f64| {
        let runs: Vec<&Histogram> = idx.iter().map(|&i| &hists[arm][i]).collect();
        pooled_percentile(&runs, p) as f64 / 1000.0
    };
    let every: Vec<usize> = (0..rounds).collect();
    println!("per arm over {rounds} rounds: median of the runs' p99s, and all runs' syncs pooled:");
    for arm in 0..3 {
        println!(
            "  {:<6} median p99 {:>8.3} ms (runs {:.3} .. {:.3})   pooled p99 {:>8.3} ms  p50 {:>8.3} ms",
            NAMES[arm],
            median(&p99[arm]) / 1000.0,
            ms(*p99[arm].iter().min().unwrap_or(&0)),
            ms(*p99[arm].iter().max().unwrap_or(&0)),
            pooled(arm, &every, 99.0) / 1000.0,
            pooled(arm, &every, 50.0) / 1000.0,
        );
    }
    // The noise floor: the same statistic between two halves of all 2N fio runs, every split.
    let fio_p99s: Vec<u64> = p99[1].iter().chain(&p99[2]).copied().collect();
    let fio_hists: Vec<&Histogram> = hists[1].iter().chain(&hists[2]).collect();
    let n = fio_p99s.len();
    let median_floor = split_noise(n, |idx| {
        median(&idx.iter().map(|&i| fio_p99s[i]).collect::<Vec<_>>())
    });
    let pooled_floor = split_noise(n, |idx| {
        let runs: Vec<&Histogram> = idx.iter().map(|&i| fio_hists[i]).collect();
        pooled_percentile(&runs, 99.0) as f64
    });
    let median_gap = apart(median(&p99[0]), median(&p99[1]));
    let pooled_gap = apart(pooled(0, &every, 99.0), pooled(1, &every, 99.0));
    println!(
        "probe/fio p99:  median of runs {:.2}, pooled {:.2};  fio#2/fio: {:.2}, {:.2} (the same command against itself)",
        median(&p99[0]) / median(&p99[1]).max(1.0),
        pooled(0, &every, 99.0) / pooled(1, &every, 99.0).max(1.0),
        median(&p99[2]) / median(&p99[1]).max(1.0),
        pooled(2, &every, 99.0) / pooled(1, &every, 99.0).max(1.0),
    );
    println!(
        "noise floor: two halves of the {n} fio runs differ by up to {:.0}% (median of runs) / {:.0}% (pooled), 95th percentile over every split",
        (median_floor - 1.0) * 100.0,
        (pooled_floor - 1.0) * 100.0
    );
    println!(
        "verdict, pooled p99:         {}",
        verdict(pooled_gap, pooled_floor)
    );
    println!(
        "verdict, median of run p99s: {}",
        verdict(median_gap, median_floor)
    );
    println!(
        "probe cost: at most {probe_ms} ms (goal < 3000) and {probe_bytes} bytes (goal < {})",
        32u64 << 20
    );
    Ok(())
}

/// A loop device throttled by a cgroup to `iops` writes per second: compared with fio (capped),
/// or, when `must_be_slow`, probed `rounds` times and required to classify slow every time.
fn throttled(scratch: &Path, iops: u32, rounds: usize, must_be_slow: bool) -> anyhow::Result<()> {
    let dev = MountedLoop::ext4(
        LoopDevice::create(&scratch.join(format!("throttled{iops}.img")), 256 << 20)?,
        &scratch.join(format!("throttled{iops}")),
    )?;
    let cgroup = ThrottledCgroup::new(
        &format!("probe-bench-{}-{iops}", std::process::id()),
        &dev.device.major_minor()?,
        iops,
    )?;
    let target = Target {
        dir: dev.dir.clone(),
        cgroup: Some(&cgroup),
        fio_runtime: Some(SLOWED_FIO_SECS),
    };
    let title = format!(
        "ext4 on a loop device throttled to {iops} write IOPS ({})",
        cgroup.mechanism
    );
    if must_be_slow {
        classify_slow(&title, &target, rounds)
    } else {
        compare(&title, &target, rounds)
    }
}

/// ext4 on a loop device over an image on the delaying FUSE filesystem: compared with fio
/// (capped) and required to classify slow in every probe run.
fn fuse_delayed(scratch: &Path, rounds: usize) -> anyhow::Result<()> {
    if let Some(why) = delayed_disk::unavailable() {
        println!("\nskipping the FUSE-delayed device: {why}");
        return Ok(());
    }
    let backing = tempfile::Builder::new()
        .prefix("probe-bench.")
        .tempdir_in("/dev/shm")?;
    let disk = DelayedDisk::mount(
        &scratch.join("fuse"),
        &backing.path().join("image"),
        64 << 20,
        SLOW_FUSE,
    )?;
    let dev = MountedLoop::ext4(LoopDevice::attach(&disk.image)?, &scratch.join("delayed"))?;
    let title = format!(
        "ext4 on a loop device over a FUSE image delaying writes {:?} and fsyncs {:?}",
        SLOW_FUSE.write, SLOW_FUSE.fsync
    );
    let target = Target {
        dir: dev.dir.clone(),
        cgroup: None,
        fio_runtime: Some(SLOWED_FIO_SECS),
    };
    classify_slow(&title, &target, rounds)?;
    compare(&title, &target, rounds)?;
    drop(dev);
    drop(disk);
    Ok(())
}

/// Probe `rounds` times; fail unless every run classifies slow.
fn classify_slow(title: &str, target: &Target, rounds: usize) -> anyhow::Result<()> {
    println!("\n== {title}: must classify slow");
    println!("round    p50 ms    p99 ms  writes  elapsed ms  class");
    for round in 1..=rounds {
        let (r, _) = target.probe()?;
        let speed = Speed::from_p99_us(r.p99_us);
        println!(
            "{round:>5}  {:>8.2}  {:>8.2}  {:>6}  {:>10}  {speed:?}",
            ms(r.p50_us),
            ms(r.p99_us),
            r.writes,
            r.elapsed_ms
        );
        anyhow::ensure!(
            speed == Speed::Slow,
            "the slowed device was classified {speed:?}"
        );
    }
    println!("classified Slow in all {rounds} rounds");
    Ok(())
}
