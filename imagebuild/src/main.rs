//! The `imagebuild` command line: parse arguments and dispatch into the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Build flashable Raspberry Pi images that form a K3s cluster by themselves.
///
/// imagebuild takes an upstream Raspberry Pi OS (or Ubuntu for Pi) image, grows it, edits its boot
/// and root filesystems without root, mounts or loop devices, and writes a reproducible image
/// (set SOURCE_DATE_EPOCH for byte-identical rebuilds).
///
/// Start with `imagebuild boards` to see the boards and base images, then write an image.toml:
///
///   [image]
///   board = "rpi5"
///   base = "raspios-lite-arm64"
///   output = "homelab.img"
///
/// and run `imagebuild build image.toml`.
#[derive(Debug, Parser)]
#[command(name = "imagebuild", version, propagate_version = true)]
struct Cli {
    /// Directory holding boards/ and overlays/ (default: $IMAGEBUILD_DATA_DIR, the installed data, or the source tree).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build an image from a recipe (image.toml).
    ///
    /// The base is fetched (or taken from the cache), checked against its sha256, copied to a
    /// temporary file next to the output, grown, customized, and renamed into place only when
    /// everything succeeded. Next to OUT it writes OUT.sha256, OUT.bmap, OUT.json (the build report) and,
    /// when the recipe asks, OUT.zst or OUT.xz.
    Build {
        /// The recipe file, e.g. image.toml.
        recipe: PathBuf,
        /// Write the image here instead of the recipe's `output`.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Use this base image (a local .img/.img.xz/.zst/.gz or a URL) instead of the recipe's.
        #[arg(long, value_name = "PATH|URL")]
        base: Option<String>,
        /// Never download: fail unless the base is local or already cached.
        #[arg(long)]
        offline: bool,
        /// Cache directory for downloads and raw bases (default: $XDG_CACHE_HOME/imagebuild).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Print the build report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Install this static firstboot binary instead of building it from the workspace.
        #[arg(long, value_name = "PATH")]
        firstboot_bin: Option<PathBuf>,
    },
    /// Show an image's partitions, labels, free space, boot settings and warnings.
    Inspect {
        /// The image file.
        target: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an image: fsck both filesystems and compare payload files with the image manifest.
    Verify {
        /// The image file.
        target: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the known boards and base images.
    Boards {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write cluster.toml into the boot partition of an image or an already-flashed card.
    ///
    /// The settings are checked with firstboot's own schema first: when they are invalid,
    /// nothing is written. `--set` changes single keys (typed by the schema), e.g.
    /// `--set node.role=server --set cluster.servers=5`. A value on the command line is visible
    /// to other users of this machine (ps, /proc): give the token with `--token-file PATH`,
    /// `--token-file -` or `--set cluster.token=-` (both read standard input) instead.
    Stamp {
        /// An image file or a card's whole-disk device (/dev/sdb, /dev/mmcblk0).
        target: PathBuf,
        /// The cluster settings (cluster.toml); a token_file it names is stamped too.
        cluster: PathBuf,
        /// Override one key: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Read the cluster token from this file, or from standard input with `-`.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
    /// Print a new random cluster token.
    Token,
    /// Write IMAGE.bmap (bmap 2.0 with sha256 per range) for an image file.
    Bmap {
        /// The raw image file.
        image: PathBuf,
        /// Where to write the map [default: IMAGE.bmap].
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Write an image to one or more cards, stamp each card's settings, verify everything.
    ///
    /// IMAGE may be .img, .img.zst or .img.xz (decompressed on the fly, once for all cards).
    /// With a bmap (IMAGE.bmap beside it, or --bmap) only the mapped blocks are written and each
    /// range's sha256 is checked; otherwise the whole image is written. Every card is read back.
    /// With --cluster the card's boot partition is then stamped (as `imagebuild stamp` would)
    /// and read back too. Several devices are written in parallel; `{n}` in a --set value is
    /// the card's number (1, 2, ...), e.g. `--set cluster.name=kit-{n}`: every kit gets its
    /// own token. Refuses a mounted disk, the disk holding `/`, a disk smaller than the image
    /// and any path that is not a block device (files only with --to-file); asks before
    /// overwriting unless --yes. Without a device it lists the removable drives and asks.
    Flash {
        /// The image: .img, .img.zst or .img.xz.
        image: PathBuf,
        /// Whole-disk devices (/dev/sdb, /dev/mmcblk0); none: list the drives and ask.
        devices: Vec<PathBuf>,
        /// Do not ask for confirmation (needed without a terminal; a device must be named).
        #[arg(long)]
        yes: bool,
        /// Use this bmap instead of IMAGE.bmap.
        #[arg(long, value_name = "PATH", conflicts_with = "no_bmap")]
        bmap: Option<PathBuf>,
        /// Write the whole image even when a bmap is beside it.
        #[arg(long)]
        no_bmap: bool,
        /// Allow writing into a regular file (an image copy) instead of a device.
        #[arg(long)]
        to_file: bool,
        /// Stamp these cluster settings (cluster.toml) on every card after writing it.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Override one key: section.key=value (repeatable); `{n}` is the card's number.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "cluster")]
        sets: Vec<String>,
        /// The cluster token from this file (`-`: standard input); once for all cards of one
        /// kit, or once per card.
        #[arg(long, value_name = "PATH", requires = "cluster")]
        token_file: Vec<PathBuf>,
        /// A kits file ([[kit]] name, nodes, cards, token_file): cards go to kits in order;
        /// a kit without token_file gets a fresh random token (kept as NAME.token).
        #[arg(long, value_name = "FILE", requires = "cluster")]
        kits: Option<PathBuf>,
        /// Where new kits' tokens are kept (default: beside --kits, else the current directory).
        #[arg(long, value_name = "DIR")]
        tokens_dir: Option<PathBuf>,
        /// Leave verified cards powered on (by default a USB reader's disk is powered off
        /// where the kernel offers it, so the card can be pulled at once).
        #[arg(long)]
        no_power_off: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let data = imagebuild::boards::DataDir::locate(cli.data_dir.as_deref());
    match cli.command {
        Cmd::Build {
            recipe,
            output,
            base,
            offline,
            cache_dir,
            json,
            firstboot_bin,
        } => {
            let options = imagebuild::build::BuildOptions {
                output,
                base,
                offline,
                cache_dir,
                data_dir: Some(data.root),
                payload: Default::default(),
                node: Some(imagebuild::payload::NodeOptions {
                    firstboot_bin,
                    ..Default::default()
                }),
            };
            let report = imagebuild::build::run(&recipe, options)
                .with_context(|| format!("building {}", recipe.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
        Cmd::Inspect { target, json } => {
            let report = imagebuild::inspect::inspect(&target)
                .with_context(|| format!("inspecting {}", target.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Cmd::Verify { target, json } => {
            let v = imagebuild::verify::verify(&target)
                .with_context(|| format!("verifying {}", target.display()))?;
            if json {
                let out = serde_json::json!({
                    "image": target,
                    "filesystems_clean": true,
                    "files_checked": v.files_checked,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{}: both filesystems clean, {} payload files match the manifest",
                    target.display(),
                    v.files_checked
                );
            }
        }
        Cmd::Stamp {
            target,
            cluster,
            sets,
            token_file,
        } => {
            let options = imagebuild::stamp::StampOptions {
                sets,
                token_file,
                token: None,
            };
            let r = imagebuild::stamp::stamp(&target, &cluster, &options)
                .with_context(|| format!("stamping {}", target.display()))?;
            println!(
                "{}: wrote {} to partition {}: {}",
                target.display(),
                r.files.join(", "),
                r.partition,
                r.summary
            );
        }
        Cmd::Token => println!("{}", imagebuild::token::new_token()?),
        Cmd::Bmap { image, output } => {
            let out = output.unwrap_or_else(|| imagebuild::output::with_suffix(&image, ".bmap"));
            let map = imagebuild::bmap::write_for(&image, &out, None)
                .with_context(|| format!("mapping {}", image.display()))?;
            println!(
                "{}: {} of {} blocks mapped",
                out.display(),
                map.mapped_blocks(),
                map.blocks_count()
            );
        }
        Cmd::Flash {
            image,
            devices,
            yes,
            bmap,
            no_bmap,
            to_file,
            cluster,
            sets,
            token_file,
            kits,
            tokens_dir,
            no_power_off,
        } => {
            let devices = if devices.is_empty() {
                vec![pick_drive(yes)?]
            } else {
                devices
            };
            let stamps = match cluster {
                Some(cluster) => {
                    let req = imagebuild::kits::KitRequest {
                        cluster,
                        sets,
                        token_files: token_file,
                        kits,
                        tokens_dir,
                    };
                    let plan =
                        imagebuild::kits::plan(&req, devices.len(), &mut std::io::stdin().lock())?;
                    let mut warned = std::collections::BTreeSet::new();
                    for p in &plan {
                        for w in &p.warnings {
                            if warned.insert(w.clone()) {
                                imagebuild::progress::say(&format!("warning: {w}"));
                            }
                        }
                    }
                    plan.into_iter().map(Some).collect()
                }
                None => vec![None; devices.len()],
            };
            let cards = devices
                .iter()
                .zip(stamps)
                .map(|(d, stamp)| imagebuild::flash::Card {
                    target: d.clone(),
                    stamp,
                })
                .collect();
            let options = imagebuild::flash::FlashOptions {
                bmap,
                no_bmap,
                yes,
                to_file,
                direct: None,
            };
            let batch = imagebuild::flash::flash_cards(&image, cards, &options)
                .with_context(|| format!("flashing {}", image.display()))?;
            print_batch(&batch, !no_power_off);
            let failed = batch.cards.iter().filter(|c| c.result.is_err()).count();
            match (failed, batch.cards.len()) {
                (0, _) => {}
                (_, 1) => anyhow::bail!("the card failed (see above)"),
                (f, n) => {
                    anyhow::bail!("{f} of {n} cards failed (see above); the others are verified")
                }
            }
        }
        Cmd::Boards { json } => {
            let catalog = imagebuild::boards::Catalog::load(&data).context("loading boards")?;
            if json {
                let out = serde_json::json!({
                    "boards": catalog.boards.values().collect::<Vec<_>>(),
                    "bases": catalog.bases.values().collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", catalog.listing());
            }
        }
    }
    Ok(())
}

/// Print one line per card, then the summary table.
fn print_batch(batch: &imagebuild::flash::Batch, power_off: bool) {
    use imagebuild::size::ByteSize;
    let how = match &batch.bmap {
        Some(b) => format!("bmap {}", b.display()),
        None => "whole image".into(),
    };
    for c in &batch.cards {
        match &c.result {
            Ok(r) => println!(
                "{}: wrote and verified {} of {} ({how}) in {:.1}s + {:.1}s read-back{}",
                c.target.display(),
                ByteSize(r.written),
                ByteSize(r.image_size),
                r.write_time.as_secs_f64(),
                r.verify_time.as_secs_f64(),
                if c.stamped.is_empty() {
                    String::new()
                } else {
                    format!("; stamped {} and read it back", c.stamped.join(", "))
                }
            ),
            Err(e) => eprintln!("{}: FAILED: {e:#}", c.target.display()),
        }
    }
    if batch.cards.len() > 1 || batch.cards.iter().any(|c| c.kit.is_some()) {
        let rows: Vec<[String; 5]> = batch
            .cards
            .iter()
            .map(|c| {
                [
                    c.target.display().to_string(),
                    dash(&c.info.model),
                    dash(&c.info.serial),
                    c.kit.clone().unwrap_or_else(|| "-".into()),
                    if c.result.is_ok() { "yes" } else { "FAILED" }.into(),
                ]
            })
            .collect();
        let head = ["card", "model", "serial", "kit", "verified"];
        let mut w = head.map(str::len);
        for r in &rows {
            for (i, cell) in r.iter().enumerate() {
                w[i] = w[i].max(cell.len());
            }
        }
        let line = |cells: [&str; 5]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:width$}", width = w[i]))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(head);
        for r in &rows {
            line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
        }
    }
    if batch.cards.iter().any(|c| c.result.is_ok()) {
        // Every card was fsynced by its writer; this flushes anything else still in flight.
        // SAFETY: sync() takes no arguments and cannot fail.
        unsafe { libc::sync() };
        use imagebuild::device::{release_card, Release};
        for c in batch.cards.iter().filter(|c| c.result.is_ok()) {
            let shown = c.target.display();
            let released = if power_off {
                release_card(&c.target, std::path::Path::new("/sys"))
            } else {
                imagebuild::device::kernel_name(&c.target).map_or(Ok(Release::File), |_| {
                    Ok(Release::Removable("--no-power-off".into()))
                })
            };
            match released {
                Ok(Release::PoweredOff) => {
                    println!("{shown}: flushed and powered off: remove the card now.")
                }
                Ok(Release::Removable(why)) => println!(
                    "{shown}: flushed: the card can be removed now (not powered off: {why})."
                ),
                Ok(Release::File) => println!("{shown}: flushed."),
                Err(e) => println!(
                    "{shown}: flushed: the card can be removed now (power-off failed: {e:#})."
                ),
            }
        }
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// No device named: list the drives a card could be in and ask which one to write.
fn pick_drive(yes: bool) -> Result<PathBuf> {
    use std::io::IsTerminal;
    if yes {
        anyhow::bail!("--yes needs a device: name it, e.g. imagebuild flash IMAGE /dev/sdb --yes (run without --yes to see the drives)");
    }
    let drives = imagebuild::device::candidate_drives();
    let mut listing = String::new();
    for (i, d) in drives.iter().enumerate() {
        listing.push_str(&format!(
            "  {}) /dev/{}  {}  {}  {}  {}\n",
            i + 1,
            d.name,
            imagebuild::size::ByteSize(d.size),
            dash(&d.model),
            d.bus,
            if d.mounted.is_empty() {
                "not mounted".to_string()
            } else {
                format!("mounted at {}", d.mounted.join(", "))
            }
        ));
    }
    if drives.is_empty() {
        anyhow::bail!("no removable drive found: plug in the card reader, or name the device (lsblk lists the disks)");
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no device named and no terminal to ask on; removable drives:\n{listing}name one, e.g. imagebuild flash IMAGE /dev/{} --yes", drives[0].name);
    }
    eprint!("Removable drives:\n{listing}Which one should be written? Type its number: ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    let n: usize = answer
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=drives.len()).contains(n))
        .with_context(|| {
            format!(
                "{:?} is not one of the numbers 1-{}",
                answer.trim(),
                drives.len()
            )
        })?;
    Ok(PathBuf::from(format!("/dev/{}", drives[n - 1].name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
