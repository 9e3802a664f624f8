//! `flash-bench`: flash time with the bmap versus a full copy of a built image, each against
//! `bmaptool copy` and `dd` on the same image and target, and stamp time.
//!
//!   cargo run --release -p systests --bin flash-bench [-- WORKDIR]
//!
//! Builds a realistic image from a fixture base (2.5 GiB root filesystem, ~600 MiB of files),
//! then flashes it with `imagebuild::flash` (write, fsync, read-back verify) twice: with its
//! bmap and with `--no-bmap`. As root the target is a loop device over a sparse file (a block
//! device, as a card would be); otherwise a plain file. Write and read-back are compared
//! separately, side by side in this run:
//!   - with the bmap: the write against `bmaptool copy` (which checks the image's ranges as it
//!     reads them and does not read the card back), the read-back against `dd` reading every
//!     mapped range of the same target to /dev/null (page cache dropped first, as flash does);
//!   - without: the write against `dd bs=4M conv=fsync`, the read-back against `dd` reading the
//!     image's length of the target.
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
        .arg(&file)
        .output()
        .context("running losetup")?;
    if !out.status.success() {
        bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((PathBuf::from(&dev), Some(Loop(dev))))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> Result<()> {
    let work = match std::env::args().nth(1) {
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
    let options = imagebuild::build::BuildOptions {
        cache_dir: Some(work.join("cache")),
        data_dir: Some(systests::repo_root()),
        ..Default::default()
    };
    let report = imagebuild::build::run(&work.join("image.toml"), options)?;
    let img = report.output.clone();
    let map = imagebuild::bmap::Bmap::load(&imagebuild::output::with_suffix(&img, ".bmap"))?;

    let kind = if systests::is_root() {
        "loop device"
    } else {
        "plain file (not root)"
    };
    let tlen = report.size + (64 << 20);
    let (dev, _l1) = target(&work, "target-bmap.img", tlen)?;
    let with_bmap = flash(
        &img,
        &dev,
        &FlashOptions {
            yes: true,
            to_file: true,
            ..Default::default()
        },
    )?;
    let dd_ranges = dd_read_ranges(&dev, &map);
    drop(_l1);
    // The same flash through the page cache instead of O_DIRECT (block devices only).
    let (dev, _l5) = target(&work, "target-buffered.img", tlen)?;
    let buffered = flash(
        &img,
        &dev,
        &FlashOptions {
            yes: true,
            to_file: true,
            direct: Some(false),
            ..Default::default()
        },
    )?;
    drop(_l5);
    let (dev, _l2) = target(&work, "target-full.img", tlen)?;
    let full = flash(
        &img,
        &dev,
        &FlashOptions {
            yes: true,
            no_bmap: true,
            to_file: true,
            ..Default::default()
        },
    )?;
    drop(_l2);
    let t_bmap = with_bmap.write_time + with_bmap.verify_time;
    let t_full = full.write_time + full.verify_time;
    let (dev, _l3) = target(&work, "target-bmaptool.img", tlen)?;
    let bmaptool = timed(
        Command::new("bmaptool")
            .arg("-q")
            .arg("copy")
            .arg("--bmap")
            .arg(imagebuild::output::with_suffix(&img, ".bmap"))
            .arg(&img)
            .arg(&dev),
    );
    drop(_l3);
    let (dev, _l4) = target(&work, "target-dd.img", tlen)?;
    let dd_write = timed(
        Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", dev.display()))
            .args(["bs=4M", "conv=fsync,notrunc", "status=none"]),
    );
    drop_cache(&dev)?;
    let dd_read = timed(
        Command::new("dd")
            .arg(format!("if={}", dev.display()))
            .args(["of=/dev/null", "bs=4M", "iflag=count_bytes", "status=none"])
            .arg(format!("count={}", report.size)),
    );
    drop(_l4);
    for f in [
        "target-bmap.img",
        "target-full.img",
        "target-bmaptool.img",
        "target-dd.img",
        "target-buffered.img",
    ] {
        let _ = std::fs::remove_file(work.join(f));
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
        "mapped: {} of {} blocks ({:.1}% of the image)",
        map.mapped_blocks(),
        map.blocks_count(),
        map.mapped_blocks() as f64 * 100.0 / map.blocks_count() as f64
    );
    println!(
        "flash with bmap:  {:8.2} s  (write+fsync {:.2} s, read-back {:.2} s, {} MiB)",
        secs(t_bmap),
        secs(with_bmap.write_time),
        secs(with_bmap.verify_time),
        with_bmap.written >> 20
    );
    println!(
        "flash full copy:  {:8.2} s  (write+fsync {:.2} s, read-back {:.2} s, {} MiB)",
        secs(t_full),
        secs(full.write_time),
        secs(full.verify_time),
        full.written >> 20
    );
    println!(
        "ratio full/bmap:  {:8.2}x",
        secs(t_full) / secs(t_bmap).max(1e-9)
    );
    let show = |what: &str, ours: Duration, theirs: &Result<Duration>, name: &str| match theirs {
        Ok(t) => println!(
            "  {what:28} imagebuild {:7.2} s | {name:38} {:7.2} s | ratio {:.2}",
            secs(ours),
            secs(*t),
            secs(ours) / secs(*t).max(1e-9)
        ),
        Err(e) => println!(
            "  {what:28} imagebuild {:7.2} s | {name}: not run ({e:#})",
            secs(ours)
        ),
    };
    println!(
        "with bmap, write+fsync through the page cache instead of O_DIRECT: {:.2} s (O_DIRECT {:.2} s; imagebuild's default on block devices: {}), read-back {:.2} s",
        secs(buffered.write_time),
        secs(with_bmap.write_time),
        if imagebuild::flash::DIRECT_BY_DEFAULT {
            "O_DIRECT"
        } else {
            "page cache"
        },
        secs(buffered.verify_time)
    );
    println!("side by side, same image, same kind of target:");
    show(
        "with bmap, write+fsync:",
        with_bmap.write_time,
        &bmaptool,
        "bmaptool copy (no read-back)",
    );
    show(
        "with bmap, read-back:",
        with_bmap.verify_time,
        &dd_ranges,
        &format!("dd of the {} mapped ranges", map.ranges.len()),
    );
    show(
        "no bmap, write+fsync:",
        full.write_time,
        &dd_write,
        "dd bs=4M conv=fsync",
    );
    show(
        "no bmap, read-back:",
        full.verify_time,
        &dd_read,
        "dd bs=4M of the image's length",
    );
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

/// Run a command to completion, timed; an error when it cannot run or fails.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

/// Forget the target's cached pages (`dd iflag=nocache count=0`), as flash does before reading back.
fn drop_cache(dev: &Path) -> Result<()> {
    timed(
        Command::new("dd")
            .arg(format!("if={}", dev.display()))
            .args(["iflag=nocache", "count=0", "status=none"]),
    )?;
    Ok(())
}

/// `dd` reading every mapped range of the bmap from `dev` to /dev/null, one dd per range.
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
                    "iflag=skip_bytes,count_bytes",
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
