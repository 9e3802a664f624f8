//! probe-bench: the storage probe against etcd's fio reference test on the same directory.
//!
//! `probe-bench [--dir D] [--rounds N] [--throttled-only]` runs N rounds (default 3) of fio,
//! probe, fio in D (default /var/tmp) and prints the p99s, the probe/fio ratio, the fio/fio
//! ratio as the host's noise floor, and the probe's duration and bytes. As root it repeats this on ext4 over a tmpfs-backed loop device, then inside
//! cgroups that throttle a loop device to 400 write IOPS (moderate; blk-throttle works in time
//! slices, so its tail is bursty) and to 20 (a slow SD stand-in: the probe must classify it
//! slow). `probe-bench probe-once DIR` prints one probe result as JSON (used inside the
//! throttled cgroup, and by the slow-device test).
//!
//! The probe issues the same system calls as fio (fallocate the file, then write 2300 bytes and
//! fdatasync, repeated), so differences between the two p99s come from the device and the host
//! varying over time; on a busy host run it under `chrt -f 10` to keep CPU scheduling out of the
//! tail, and use more rounds.

#[path = "devices.rs"]
mod devices;

use anyhow::Context;
use devices::{fio_fdatasync, LoopDevice, MountedLoop, ThrottledCgroup};
use firstboot::storage::class::Speed;
use firstboot::storage::probe::{ProbeResult, StorageProbe};
use std::path::{Path, PathBuf};

/// Write IOPS allowed on the throttled loop device.
const SLOW_WRITE_IOPS: u32 = 20;
/// Write IOPS of the moderately throttled device (a second probe-versus-fio comparison).
const STEADY_WRITE_IOPS: u32 = 400;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("probe-once") {
        let dir = args.get(1).context("usage: probe-bench probe-once DIR")?;
        let r = StorageProbe::new(dir).run().context("probing")?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let mut dir = PathBuf::from("/var/tmp");
    let mut rounds = 3usize;
    let mut throttled_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().context("--dir needs a value")?.into(),
            "--rounds" => rounds = it.next().context("--rounds needs a value")?.parse()?,
            "--throttled-only" => throttled_only = true,
            other => {
                anyhow::bail!("unknown argument {other}; usage: probe-bench [--dir D] [--rounds N] [--throttled-only]")
            }
        }
    }
    if !throttled_only {
        let work = tempfile::Builder::new()
            .prefix("probe-bench.")
            .tempdir_in(&dir)?;
        compare(&format!("directory {}", dir.display()), work.path(), rounds)?;
    }
    if !systests::is_root() {
        println!("\nskipping loop-device and throttled-device runs: they need root");
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    if throttled_only {
        return slowed(scratch.path(), rounds);
    }
    let shm = tempfile::Builder::new()
        .prefix("probe-bench.")
        .tempdir_in("/dev/shm")?;
    let steady = MountedLoop::ext4(
        LoopDevice::create(&shm.path().join("disk.img"), 256 << 20)?,
        &scratch.path().join("steady"),
    )?;
    compare("ext4 on a tmpfs-backed loop device", &steady.dir, rounds)?;
    drop(steady);
    slowed(scratch.path(), rounds)?;
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Alternate probe and fio `rounds` times in `dir` and print the figures.
fn compare(title: &str, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    println!("\n== {title}");
    println!(
        "Each round runs fio, the probe, then fio again: the probe is compared with the first"
    );
    println!("fio run, and the two fio runs with each other (the host's own noise floor).");
    println!(
        "round  probe p50   probe p99   fio p50     fio p99     fio2 p99    probe/fio  fio2/fio  probe ms  probe bytes  fio ms"
    );
    let (mut durations, mut bytes) = (vec![], vec![]);
    let (mut ratios, mut controls) = (vec![], vec![]);
    for round in 1..=rounds.max(1) {
        let (f99, f50, fio_ms) = fio_fdatasync(dir, None)?;
        let p = StorageProbe::new(dir).run().context("running the probe")?;
        let (g99, _, _) = fio_fdatasync(dir, None)?;
        let ratio = p.p99_us as f64 / f99.max(1) as f64;
        let control = g99 as f64 / f99.max(1) as f64;
        println!(
            "{round:>5}  {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>8.3} ms {:>9.2} {:>9.2}  {:>8}  {:>11}  {:>6}",
            ms(p.p50_us),
            ms(p.p99_us),
            ms(f50),
            ms(f99),
            ms(g99),
            ratio,
            control,
            p.elapsed_ms,
            p.bytes,
            fio_ms
        );
        ratios.push(ratio);
        controls.push(control);
        durations.push(p.elapsed_ms);
        bytes.push(p.bytes);
    }
    let spread = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "median {:.2}, min {:.2}, max {:.2}",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        )
    };
    println!("probe/fio p99: {} (goal 0.75..1.25)", spread(ratios));
    println!("fio2/fio p99:  {} (noise floor)", spread(controls));
    println!(
        "probe: max {} ms (goal < 3000), max {} bytes (goal < {})",
        durations.iter().max().copied().unwrap_or(0),
        bytes.iter().max().copied().unwrap_or(0),
        32u64 << 20
    );
    Ok(())
}

/// Probe loop devices throttled through a cgroup: at a moderate rate (a second
/// probe-versus-fio comparison) and at a few IOPS (a slow SD stand-in, which must classify slow).
fn slowed(scratch: &Path, rounds: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    for (i, iops) in [STEADY_WRITE_IOPS, SLOW_WRITE_IOPS].into_iter().enumerate() {
        println!("\n== ext4 on a loop device throttled to {iops} write IOPS (cgroup)");
        println!(
            "round  probe p50   probe p99   fio p99 (10 s cap)  p99 ratio  probe writes  class"
        );
        let dev = MountedLoop::ext4(
            LoopDevice::create(&scratch.join(format!("throttled{i}.img")), 256 << 20)?,
            &scratch.join(format!("throttled{i}")),
        )?;
        let cgroup = ThrottledCgroup::new(
            &format!("probe-bench-{}-{iops}", std::process::id()),
            &dev.device.major_minor()?,
            iops,
        )?;
        let dir = dev.dir.to_string_lossy().into_owned();
        let mut ratios = vec![];
        for round in 1..=rounds.max(1) {
            let out = cgroup.run(&exe, &["probe-once", &dir])?;
            let r: ProbeResult =
                serde_json::from_str(out.trim()).context("parsing probe-once output")?;
            let speed = Speed::from_p99_us(r.p99_us);
            let fio = cgroup.run(Path::new("sh"), &["-c", &format!(
                "fio --rw=write --ioengine=sync --fdatasync=1 --size=22m --bs=2300 --directory={dir} --name=t --runtime=10 --output-format=json && rm -f {dir}/t.0.0"
            )])?;
            let v: serde_json::Value = serde_json::from_str(&fio).context("parsing fio JSON")?;
            let f99 = v["jobs"][0]["sync"]["lat_ns"]["percentile"]["99.000000"]
                .as_u64()
                .context("fio p99")?
                / 1000;
            let ratio = r.p99_us as f64 / f99.max(1) as f64;
            ratios.push(ratio);
            println!(
                "{round:>5}  {:>8.2} ms {:>8.2} ms {:>12.2} ms {:>14.2}  {:>12}  {speed:?}",
                ms(r.p50_us),
                ms(r.p99_us),
                ms(f99),
                ratio,
                r.writes
            );
            if iops == SLOW_WRITE_IOPS {
                anyhow::ensure!(
                    speed == Speed::Slow,
                    "the throttled device was classified {speed:?}"
                );
            }
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "per-round p99 ratios: median {:.2}, min {:.2}, max {:.2}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
        drop(cgroup);
        drop(dev);
    }
    println!("the {SLOW_WRITE_IOPS}-IOPS device was classified Slow in every round");
    Ok(())
}
