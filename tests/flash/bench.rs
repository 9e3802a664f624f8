//! `flash-bench`: flash time with the bmap versus a full copy of a built image, each against
//! `bmaptool copy` and `dd` on the same image and target, the release build against the debug
//! build, and stamp time.
//!
//!   cargo run --release -p systests --bin flash-bench [-- WORKDIR]
//!
//! Builds a realistic image from a fixture base (2.5 GiB root filesystem, ~600 MiB of files),
//! then flashes it with `imagebuild::flash` (write, fsync, read-back verify) with its bmap and
//! with `--no-bmap`, once with this program's release build and once with its debug build (it
//! builds the other profile itself and runs both as children on the same image and targets).
//! As root the target is a loop device over a sparse file with `--direct-io=on`: its reads and
//! writes go to the disk under the file, as a card's go to the card (`FLASH_BENCH_LOOP_DIO=0`
//! backs it by the page cache instead: memory speed, where hashing is all there is to
//! measure); otherwise a plain file. Write and read-back are compared separately, side by side
//! in this run, and every read (ours and the floors') bypasses the page cache, since a check
//! that reads memory verifies nothing:
//!   - with the bmap: the write against `bmaptool copy` (which checks the image's ranges as it
//!     reads them and does not read the card back), the read-back against `dd iflag=direct`
//!     reading every mapped range of the same target to /dev/null;
//!   - without: the write against `dd bs=4M conv=fsync`, the read-back against
//!     `dd iflag=direct` reading the image's length of the target.
//!
//! Each flash and each floor runs twice on fresh targets (the two builds in alternating order,
//! after a `sync`), and the shorter time of each is printed.
//!
//! Then the time of `imagebuild stamp` on the image (median of 7). Last, 4 cards side by side:
//! one `flash` of 4 cards in parallel, 4 flashes in sequence, and `bmaptool copy` 4 times.

use systests::image::fixture;

use anyhow::{bail, Context, Result};
use imagebuild::flash::{flash, FlashOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Whether loop targets read and write the disk under their file (`--direct-io=on`).
fn loop_dio() -> bool {
    std::env::var("FLASH_BENCH_LOOP_DIO").map_or(true, |v| v != "0")
}

/// A fresh target of `len` bytes: a loop device over a sparse file as root, else the file.
fn target(work: &Path, name: &str, len: u64) -> Result<(PathBuf, Option<Loop>)> {
    let file = work.join(name);
    let _ = std::fs::remove_file(&file);
    std::fs::File::create(&file)?.set_len(len)?;
    if !systests::is_root() {
        return Ok((file, None));
    }
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(format!(
            "--direct-io={}",
            if loop_dio() { "on" } else { "off" }
        ))
        .arg(&file)
        .output()
        .context("running losetup")?;
    if !out.status.success() {
        bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if loop_dio() {
        let name = dev.trim_start_matches("/dev/");
        let dio = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))?;
        if dio.trim() != "1" {
            bail!("{dev} did not take --direct-io=on (the file system under {} may not support O_DIRECT); run with FLASH_BENCH_LOOP_DIO=0", work.display());
        }
    }
    Ok((PathBuf::from(&dev), Some(Loop(dev))))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// How a child flash runs: with the bmap beside the image, without it, or with the bmap and
/// the writes through the page cache instead of `O_DIRECT`.
const MODES: [&str; 3] = ["bmap", "full", "cached"];

fn options(mode: &str) -> FlashOptions {
    FlashOptions {
        yes: true,
        to_file: true,
        no_bmap: mode == "full",
        direct: (mode == "cached").then_some(false),
        ..Default::default()
    }
}

/// The child side: one flash of IMAGE to TARGET in MODE; prints "WRITE_S VERIFY_S WRITTEN".
fn child(args: &[String]) -> Result<()> {
    let [img, dev, mode] = args else {
        bail!("usage: flash-bench --flash-child IMAGE TARGET bmap|full|cached");
    };
    let r = flash(Path::new(img), Path::new(dev), &options(mode))?;
    println!(
        "{} {} {}",
        secs(r.write_time),
        secs(r.verify_time),
        r.written
    );
    Ok(())
}

/// One flash by the program `exe` (a build of this bench) onto a fresh target.
struct Run {
    write: Duration,
    verify: Duration,
    written: u64,
}

fn child_flash(exe: &Path, work: &Path, img: &Path, len: u64, mode: &str) -> Result<Run> {
    let (dev, _loop) = target(work, &format!("target-{mode}.img"), len)?;
    settle()?;
    let out = Command::new(exe)
        .arg("--flash-child")
        .arg(img)
        .arg(&dev)
        .arg(mode)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    drop(_loop);
    let _ = std::fs::remove_file(work.join(format!("target-{mode}.img")));
    if !out.status.success() {
        bail!(
            "{} --flash-child ({mode}) failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|x| x.parse().ok())
            .with_context(|| format!("the child printed {text:?}"))
    };
    Ok(Run {
        write: Duration::from_secs_f64(num(0)?),
        verify: Duration::from_secs_f64(num(1)?),
        written: num(2)? as u64,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--flash-child") {
        return child(&args[2..]);
    }
    let work = match args.get(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("flash-bench"),
    };
    std::fs::create_dir_all(work.join("out"))?;
    let base = work.join("base.img");
    if !base.exists() {
        eprintln!("making the fixture base (once) ...");
        let spec = fixture::Spec {
            flavor: fixture::Flavor::Trixie,
            root_mib: 2560,
            filler_bytes: 600 << 20,
        };
        fixture::make(&spec, &base)?;
    }
    std::fs::write(
        work.join("cluster.toml"),
        "[cluster]\nname = \"bench\"\ntoken = \"bench-token-0123456789abcdef\"\nservers = 3\n",
    )?;
    std::fs::write(
        work.join("image.toml"),
        format!(
            "[image]\nboard = \"rpi5\"\nbase = \"{}\"\noutput = \"out/node.img\"\nfree_space = \"256MiB\"\n\n[k3s]\nversion = \"v1.31.10+k3s1\"\n\n[cluster]\nfile = \"cluster.toml\"\n",
            base.display()
        ),
    )?;
    let builds = systests::profiles::both()?;
    let options = imagebuild::build::BuildOptions {
        cache_dir: Some(work.join("cache")),
        data_dir: Some(systests::repo_root()),
        ..Default::default()
    };
    let report = imagebuild::build::run(&work.join("image.toml"), options)?;
    let img = report.output.clone();
    let map = imagebuild::bmap::Bmap::load(&imagebuild::output::with_suffix(&img, ".bmap"))?;

    let kind = match (systests::is_root(), loop_dio()) {
        (true, true) => "loop device over a file, --direct-io=on (reads and writes reach the disk)",
        (true, false) => "loop device over a file, --direct-io=off (backed by the page cache)",
        (false, _) => "plain file (not root)",
    };
    let tlen = report.size + (64 << 20);
    // Every flash of both builds, on a fresh target each, mode by mode, ROUNDS times in
    // alternating order (release first, then debug first), and the best of each kept: on a
    // shared machine the first of two like runs was often the slower one.
    let mut runs: Vec<(&str, &str, Run)> = Vec::new();
    for mode in MODES {
        for round in 0..ROUNDS {
            let mut order: Vec<&(&str, PathBuf)> = builds.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (profile, exe) in order {
                if mode == "cached" && *profile != "release" {
                    continue;
                }
                eprintln!("flash, {profile} build, {mode}, round {} ...", round + 1);
                runs.push((profile, mode, child_flash(exe, &work, &img, tlen, mode)?));
            }
        }
    }
    let run = |profile: &str, mode: &str| -> Run {
        let mine = || runs.iter().filter(|(p, m, _)| *p == profile && *m == mode);
        Run {
            write: mine().map(|r| r.2.write).min().unwrap_or_default(),
            verify: mine().map(|r| r.2.verify).min().unwrap_or_default(),
            written: mine().map(|r| r.2.written).max().unwrap_or_default(),
        }
    };

    // The floors, on the same kind of target, best of ROUNDS as well.
    let (mut bmaptool, mut dd_ranges, mut dd_write, mut dd_read) = (
        Err(anyhow::anyhow!("not run")),
        Err(anyhow::anyhow!("not run")),
        Err(anyhow::anyhow!("not run")),
        Err(anyhow::anyhow!("not run")),
    );
    for _ in 0..ROUNDS {
        eprintln!("the floors: bmaptool copy, dd ...");
        let (dev, _l) = target(&work, "target-bmaptool.img", tlen)?;
        settle()?;
        best(
            &mut bmaptool,
            timed(
                Command::new("bmaptool")
                    .arg("-q")
                    .arg("copy")
                    .arg("--bmap")
                    .arg(imagebuild::output::with_suffix(&img, ".bmap"))
                    .arg(&img)
                    .arg(&dev),
            ),
        );
        best(&mut dd_ranges, dd_read_ranges(&dev, &map));
        drop(_l);
        let (dev, _l) = target(&work, "target-dd.img", tlen)?;
        settle()?;
        best(
            &mut dd_write,
            timed(
                Command::new("dd")
                    .arg(format!("if={}", img.display()))
                    .arg(format!("of={}", dev.display()))
                    .args(["bs=4M", "conv=fsync,notrunc", "status=none"]),
            ),
        );
        drop_cache(&dev)?;
        best(
            &mut dd_read,
            timed(
                Command::new("dd")
                    .arg(format!("if={}", dev.display()))
                    .args([
                        "of=/dev/null",
                        "bs=4M",
                        "iflag=direct,count_bytes",
                        "status=none",
                    ])
                    .arg(format!("count={}", report.size)),
            ),
        );
        drop(_l);
        for f in ["target-bmaptool.img", "target-dd.img"] {
            let _ = std::fs::remove_file(work.join(f));
        }
    }

    // Stamp: the same image, new settings each time (median of 7 runs of the CLI's library call).
    let mut times = Vec::new();
    for i in 0..7 {
        let opts = imagebuild::stamp::StampOptions {
            sets: vec![format!("node.hostname=bench-{i}")],
            ..Default::default()
        };
        let t = Instant::now();
        imagebuild::stamp::stamp(&img, &work.join("cluster.toml"), &opts)?;
        times.push(t.elapsed());
    }
    times.sort();

    println!(
        "image: {} ({} bytes), target: {kind}",
        img.display(),
        report.size
    );
    println!(
        "mapped: {} of {} blocks ({:.1}% of the image) in {} ranges",
        map.mapped_blocks(),
        map.blocks_count(),
        map.mapped_blocks() as f64 * 100.0 / map.blocks_count() as f64,
        map.ranges.len()
    );
    let (bm, full) = (run("release", "bmap"), run("release", "full"));
    let t_bmap = bm.write + bm.verify;
    let t_full = full.write + full.verify;
    println!(
        "flash with bmap:  {:8.2} s  (write+fsync {:.2} s, read-back {:.2} s, {} MiB)",
        secs(t_bmap),
        secs(bm.write),
        secs(bm.verify),
        bm.written >> 20
    );
    println!(
        "flash full copy:  {:8.2} s  (write+fsync {:.2} s, read-back {:.2} s, {} MiB)",
        secs(t_full),
        secs(full.write),
        secs(full.verify),
        full.written >> 20
    );
    println!(
        "ratio full/bmap:  {:8.2}x",
        secs(t_full) / secs(t_bmap).max(1e-9)
    );
    let cached = run("release", "cached");
    println!(
        "with bmap, write+fsync through the page cache instead of O_DIRECT: {:.2} s (O_DIRECT {:.2} s; imagebuild's default on block devices: {}), read-back {:.2} s",
        secs(cached.write),
        secs(bm.write),
        if imagebuild::flash::DIRECT_BY_DEFAULT {
            "O_DIRECT"
        } else {
            "page cache"
        },
        secs(cached.verify)
    );
    let show = |what: &str, ours: Duration, theirs: &Result<Duration>, name: &str| match theirs {
        Ok(t) => println!(
            "  {what:24} imagebuild {:7.2} s | {name:40} {:7.2} s | ratio {:.2}",
            secs(ours),
            secs(*t),
            secs(ours) / secs(*t).max(1e-9)
        ),
        Err(e) => println!(
            "  {what:24} imagebuild {:7.2} s | {name}: not run ({e:#})",
            secs(ours)
        ),
    };
    println!("side by side, same image, same kind of target (imagebuild: the release build):");
    show(
        "with bmap, write+fsync:",
        bm.write,
        &bmaptool,
        "bmaptool copy (no read-back)",
    );
    show(
        "with bmap, read-back:",
        bm.verify,
        &dd_ranges,
        &format!("dd iflag=direct, {} mapped ranges", map.ranges.len()),
    );
    show(
        "no bmap, write+fsync:",
        full.write,
        &dd_write,
        "dd bs=4M conv=fsync",
    );
    show(
        "no bmap, read-back:",
        full.verify,
        &dd_read,
        "dd bs=4M iflag=direct, image's length",
    );
    println!("release build against debug build, same image, same kind of target:");
    for (mode, what) in [("bmap", "with bmap"), ("full", "no bmap")] {
        let (r, d) = (run("release", mode), run("debug", mode));
        for (part, rt, dt) in [
            ("write+fsync", r.write, d.write),
            ("read-back", r.verify, d.verify),
        ] {
            println!(
                "  {:24} release {:7.2} s | debug {:7.2} s | release/debug {:.2}",
                format!("{what}, {part}:"),
                secs(rt),
                secs(dt),
                secs(rt) / secs(dt).max(1e-9)
            );
        }
    }
    println!(
        "stamp:            {:8.1} ms median ({:.1} .. {:.1} ms over {} runs)",
        secs(times[times.len() / 2]) * 1000.0,
        secs(times[0]) * 1000.0,
        secs(times[times.len() - 1]) * 1000.0,
        times.len()
    );
    four_cards(&work, &img, report.size)?;
    Ok(())
}

/// Timed runs of each flash and each floor; the best is reported.
const ROUNDS: usize = 2;

/// Keep the shorter of two timings (a failure only when nothing succeeded).
fn best(kept: &mut Result<Duration>, new: Result<Duration>) {
    match (&*kept, new) {
        (Ok(a), Ok(b)) if b < *a => *kept = Ok(b),
        (Err(_), n) => *kept = n,
        _ => {}
    }
}

/// Let the disk finish what earlier steps left dirty (the build's image, a previous target), so
/// a timed step does not pay for it: `sync`, and a pause for the device to drain.
fn settle() -> Result<()> {
    timed(&mut Command::new("sync"))?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Run a command to completion, timed; an error when it cannot run or fails.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

/// Forget the target's cached pages (`blockdev --flushbufs`; `dd iflag=nocache count=0` for a
/// file), as flash does before reading back. The floors' reads also use `iflag=direct`.
fn drop_cache(dev: &Path) -> Result<()> {
    if dev.starts_with("/dev") {
        timed(Command::new("blockdev").arg("--flushbufs").arg(dev))?;
    }
    timed(
        Command::new("dd")
            .arg(format!("if={}", dev.display()))
            .args(["iflag=nocache", "count=0", "status=none"]),
    )?;
    Ok(())
}

/// `dd iflag=direct` reading every mapped range of the bmap from `dev` to /dev/null, one dd per
/// range.
fn dd_read_ranges(dev: &Path, map: &imagebuild::bmap::Bmap) -> Result<Duration> {
    drop_cache(dev)?;
    let t = Instant::now();
    for r in &map.ranges {
        let (start, end) = map.span(r);
        timed(
            Command::new("dd")
                .arg(format!("if={}", dev.display()))
                .args([
                    "of=/dev/null",
                    "bs=4M",
                    "iflag=direct,skip_bytes,count_bytes",
                    "status=none",
                ])
                .arg(format!("skip={start}"))
                .arg(format!("count={}", end - start)),
        )?;
    }
    Ok(t.elapsed())
}

/// 4 cards written by one `flash_cards` call (one read of the image, 4 writers), by 4 calls in
/// a row, and by `bmaptool copy` 4 times in a row, each with write, fsync and verification.
fn four_cards(work: &Path, img: &Path, size: u64) -> Result<()> {
    use imagebuild::flash::{flash_cards, Card};
    let opts = FlashOptions {
        yes: true,
        to_file: true,
        ..Default::default()
    };
    let make = |tag: &str| -> Result<Vec<(PathBuf, Option<Loop>)>> {
        (0..4)
            .map(|i| target(work, &format!("card-{tag}-{i}.img"), size + (64 << 20)))
            .collect()
    };
    let cards = make("par")?;
    let t = Instant::now();
    let batch = flash_cards(
        img,
        cards
            .iter()
            .map(|(p, _)| Card {
                target: p.clone(),
                stamp: None,
            })
            .collect(),
        &opts,
    )?;
    let parallel = t.elapsed();
    for c in &batch.cards {
        if let Err(e) = &c.result {
            bail!("{}: {e:#}", c.target.display());
        }
    }
    drop(cards);
    let cards = make("seq")?;
    let t = Instant::now();
    for (p, _) in &cards {
        flash(img, p, &opts)?;
    }
    let sequential = t.elapsed();
    drop(cards);
    let cards = make("bmaptool")?;
    let t = Instant::now();
    let mut bmaptool = true;
    for (p, _) in &cards {
        let st = Command::new("bmaptool")
            .arg("-q")
            .arg("copy")
            .arg("--bmap")
            .arg(imagebuild::output::with_suffix(img, ".bmap"))
            .arg(img)
            .arg(p)
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            bmaptool = false;
            break;
        }
    }
    let bmaptool_time = t.elapsed();
    drop(cards);
    println!("4 cards, each written with the bmap, fsynced and verified:");
    println!(
        "  imagebuild flash, 4 in parallel (one command):  {:8.2} s",
        secs(parallel)
    );
    println!(
        "  imagebuild flash, 4 in sequence:                {:8.2} s",
        secs(sequential)
    );
    if bmaptool {
        println!(
            "  bmaptool copy, 4 in sequence:                   {:8.2} s  (checks the image's ranges; no read-back of the card)",
            secs(bmaptool_time)
        );
    } else {
        println!("  bmaptool copy: not run (bmaptool missing or failed)");
    }
    for tag in ["par", "seq", "bmaptool"] {
        for i in 0..4 {
            let _ = std::fs::remove_file(work.join(format!("card-{tag}-{i}.img")));
        }
    }
    Ok(())
}
