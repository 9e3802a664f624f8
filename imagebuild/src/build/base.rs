//! Stage 2, the base: the upstream image fetched (or found in the cache), its sha256 checked,
//! decompressed, recognized as a Pi image, and the node payload (K3s, firstboot) fetched and
//! verified, all before any output exists.

use super::plan::{check_room, BuildPlan};
use super::BuildOptions;
use crate::interrupt;
use crate::layout::{self, PiLayout};
use crate::payload::NodePayload;
use crate::recipe::Recipe;
use crate::source::{self, Cache, RawBase};
use anyhow::Result;

/// The base image as raw bytes on disk.
pub struct Base {
    /// The decompressed raw base (in the cache).
    pub raw: RawBase,
    /// Its partitions and OS family.
    pub layout: PiLayout,
}

/// Obtain the base and the node payload (K3s and firstboot, when the build installs them), then
/// check the output directory has room for both.
pub fn fetch(
    recipe: &Recipe,
    plan: &BuildPlan,
    options: &BuildOptions,
) -> Result<(Base, Option<NodePayload>)> {
    let cache = Cache::locate(options.cache_dir.as_deref())?;
    let raw = source::obtain(&plan.source, &cache, options.offline)?;
    interrupt::check()?;
    let layout = layout::recognize(&raw.path, raw.catalog.as_ref())?;
    // K3s and firstboot: fetched and verified before any output exists.
    let node = match &options.node {
        Some(n) => {
            let mut node = crate::payload::assemble(
                &recipe.k3s,
                &plan.board,
                &recipe.dir(),
                &plan.data,
                &cache,
                options.offline,
                n,
            )?;
            node.versions.base = plan.base_text.clone();
            Some(node)
        }
        None => None,
    };
    interrupt::check()?;
    check_room(
        &raw.path,
        &plan.out_dir,
        plan.payload.size_estimate()
            + options.payload.size_estimate()
            + node.as_ref().map_or(0, |n| n.payload.size_estimate()),
    )?;
    Ok((Base { raw, layout }, node))
}
