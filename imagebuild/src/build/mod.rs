//! `imagebuild build`: the pipeline, one stage per file, each taking the previous stage's output.
//!
//! [`plan`] (recipe, board, outputs, overlays: all checked first) → [`base`] (fetch, verify,
//! decompress and recognize the upstream image; fetch K3s and firstboot) → [`rootfs`] (partition 2
//! in a scratch file: user setup, node payload, image manifest from [`manifest`], grown and
//! written) → [`disk`] (the root filesystem becomes partition 2, in place where the filesystem
//! can insert a range; the base's head in front; partition 2 grown) → [`boot`] (cmdline.txt,
//! config.txt, ssh, first user, cluster.toml) → [`publish`] (one read of the image: sha256,
//! `.bmap`, compressed copy; report; renamed at the end). [`checks`] holds what the base
//! must support. The byte-level primitives (copies, extents, hashing) are in [`crate::io`].

// The stages are private; the links above are for `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod base;
mod boot;
mod checks;
mod disk;
mod manifest;
mod plan;
mod publish;
mod rootfs;

pub use plan::BuildPlan;

use crate::boards::OsFamily;
use crate::disk::DiskLayout;
use crate::interrupt;
use crate::output::PendingOutputs;
use crate::payload::{NodeOptions, Versions};
use crate::recipe::Recipe;
use crate::rootfs::payload::Payload;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How to run a build: the recipe plus command-line overrides and extra payload.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Output path overriding the recipe's.
    pub output: Option<PathBuf>,
    /// Base overriding the recipe's (path or URL).
    pub base: Option<String>,
    /// Never download.
    pub offline: bool,
    /// Cache directory overriding the XDG default.
    pub cache_dir: Option<PathBuf>,
    /// Data directory (boards/, overlays/) overriding the default.
    pub data_dir: Option<PathBuf>,
    /// Extra declared files, applied last (after overlays, user setup and the node payload).
    pub payload: Payload,
    /// Install K3s and firstboot (`imagebuild build` always does; None leaves them out).
    pub node: Option<NodeOptions>,
}

/// What a build did: printed with --json and written as `OUT.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The image written.
    pub output: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Build time (SOURCE_DATE_EPOCH when set), RFC 3339.
    pub build_time: String,
    /// Build time in seconds since 1970.
    pub build_epoch: i64,
    /// Board profile.
    pub board: String,
    /// Boot media.
    pub media: crate::recipe::Media,
    /// Base description (catalog name, path or URL).
    pub base: String,
    /// sha256 of the base as published.
    pub base_sha256: String,
    /// Whether the raw base came from the cache without download or decompression.
    pub base_from_cache: bool,
    /// OS family.
    pub os_family: OsFamily,
    /// Partition layout after growth.
    pub layout: DiskLayout,
    /// Root filesystem size before and after.
    pub rootfs_size_before: u64,
    /// Root filesystem size after growth.
    pub rootfs_size_after: u64,
    /// Free bytes in the root filesystem after the payload.
    pub rootfs_free: u64,
    /// cmdline.txt as written.
    pub cmdline: String,
    /// Lines added to config.txt.
    pub config_lines: Vec<String>,
    /// Whether cluster.toml was stamped.
    pub cluster_stamped: bool,
    /// Overlays applied in order.
    pub overlays: Vec<PathBuf>,
    /// Number of declared root filesystem entries written.
    pub entries: usize,
    /// Compressed copy, if any.
    pub compressed: Option<PathBuf>,
    /// Whether the base's partitions were copied by reflink (copy-on-write filesystems).
    pub reflinked: bool,
    /// Whether the edited root filesystem became partition 2 in place (FALLOC_FL_INSERT_RANGE on
    /// ext4 and xfs), so its bytes were written once; else it was copied in.
    pub rootfs_in_place: bool,
    /// The files written beside the image.
    pub artifacts: Artifacts,
    /// Versions of what the image carries (K3s, firstboot, base).
    pub versions: Versions,
    /// Warnings printed during the build (valid, but probably not what you want).
    pub warnings: Vec<String>,
}

/// The files a build writes, for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Artifacts {
    /// The raw image.
    pub image: PathBuf,
    /// `IMAGE.sha256` (sha256sum format).
    pub sha256: PathBuf,
    /// `IMAGE.bmap` (bmap 2.0).
    pub bmap: PathBuf,
    /// `IMAGE.json` (this report).
    pub report: PathBuf,
    /// `IMAGE.zst` or `IMAGE.xz`, when the recipe asks for one.
    pub compressed: Option<PathBuf>,
}

/// Run a build from a recipe file.
pub fn run(recipe_path: &Path, options: BuildOptions) -> Result<BuildReport> {
    interrupt::install().context("installing the interrupt handler")?;
    let recipe = Recipe::load(recipe_path)?;
    run_recipe(&recipe, options).map_err(explain_no_space)
}

fn explain_no_space(e: anyhow::Error) -> anyhow::Error {
    let enospc = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            == Some(libc::ENOSPC)
            || c.to_string().contains("No space left on device")
    });
    let erofs = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            == Some(libc::EROFS)
    });
    if erofs {
        e.context(
            "the output path is on a read-only filesystem: choose another output directory with -o",
        )
    } else if enospc {
        e.context("no room to write the output: the disk holding the output path is full; free some space or choose another output directory")
    } else {
        e
    }
}

/// Run a build from a parsed recipe: the stages in order.
pub fn run_recipe(recipe: &Recipe, options: BuildOptions) -> Result<BuildReport> {
    let plan = BuildPlan::new(recipe, &options)?;
    let (base, node) = base::fetch(recipe, &plan, &options)?;
    // Outputs under temporary names: removed on any error or interrupt.
    let mut pending = PendingOutputs::new();
    let image = pending.add(&plan.output_path);
    let rootfs = rootfs::edit(recipe, &plan, &base, node, &options.payload, &mut pending)?;
    let disk = disk::grow(&base, &rootfs, &image)?;
    let boot = boot::stamp(recipe, &plan, &base, &disk)?;
    publish::publish(recipe, plan, &base, rootfs, disk, boot, pending)
}
