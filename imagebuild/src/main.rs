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
    },
    /// List the known boards and base images.
    Boards,
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
    /// Write an image to a card (or a file) and verify it by reading it back.
    ///
    /// IMAGE may be .img, .img.zst or .img.xz (decompressed on the fly). With a bmap (IMAGE.bmap
    /// beside it, or --bmap) only the mapped blocks are written and each range's sha256 is
    /// checked; otherwise the whole image is written. Refuses a mounted disk, the disk holding
    /// `/`, and a disk smaller than the image; asks before overwriting unless --yes.
    Flash {
        /// The image: .img, .img.zst or .img.xz.
        image: PathBuf,
        /// A whole-disk device (/dev/sdb, /dev/mmcblk0) or a file.
        device: PathBuf,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(long)]
        yes: bool,
        /// Use this bmap instead of IMAGE.bmap.
        #[arg(long, value_name = "PATH", conflicts_with = "no_bmap")]
        bmap: Option<PathBuf>,
        /// Write the whole image even when a bmap is beside it.
        #[arg(long)]
        no_bmap: bool,
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
        Cmd::Verify { target } => {
            let v = imagebuild::verify::verify(&target)
                .with_context(|| format!("verifying {}", target.display()))?;
            println!(
                "{}: both filesystems clean, {} payload files match the manifest",
                target.display(),
                v.files_checked
            );
        }
        Cmd::Stamp {
            target,
            cluster,
            sets,
            token_file,
        } => {
            let options = imagebuild::stamp::StampOptions { sets, token_file };
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
            let map = imagebuild::bmap::write_for(&image, &out)
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
            device,
            yes,
            bmap,
            no_bmap,
        } => {
            let options = imagebuild::flash::FlashOptions { bmap, no_bmap, yes };
            let r = imagebuild::flash::flash(&image, &device, &options)
                .with_context(|| format!("flashing {} to {}", image.display(), device.display()))?;
            println!(
                "{}: wrote and verified {} of {} ({}) in {:.1}s + {:.1}s read-back",
                device.display(),
                imagebuild::size::ByteSize(r.written),
                imagebuild::size::ByteSize(r.image_size),
                match &r.bmap {
                    Some(b) => format!("bmap {}", b.display()),
                    None => "whole image".into(),
                },
                r.write_time.as_secs_f64(),
                r.verify_time.as_secs_f64()
            );
        }
        Cmd::Boards => {
            let catalog = imagebuild::boards::Catalog::load(&data).context("loading boards")?;
            print!("{}", catalog.listing());
        }
    }
    Ok(())
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
