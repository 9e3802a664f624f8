//! Stage 6, publishing: the edited root filesystem written into partition 2 and the image hashed
//! on the way, then `.sha256`, `.bmap`, the compressed copy and the JSON report beside it; every
//! file under a temporary name until all exist, then renamed.
//!
//! Each output is one function over the finished image, so the passes over its bytes (hash,
//! block map, compression) are visible here in order.

use super::base::Base;
use super::boot::BootEdits;
use super::disk::GrownDisk;
use super::plan::BuildPlan;
use super::rootfs::EditedRootfs;
use super::{Artifacts, BuildReport};
use crate::io::{append_and_hash, write_synced};
use crate::output::{self, with_suffix, PendingOutputs};
use crate::progress::say;
use crate::recipe::{Compression, Recipe};
use crate::{epoch, interrupt};
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Write the root filesystem into the image, then every output beside it, and commit them all.
pub fn publish(
    recipe: &Recipe,
    plan: BuildPlan,
    base: &Base,
    rootfs: EditedRootfs,
    disk: GrownDisk,
    boot: BootEdits,
    mut pending: PendingOutputs,
) -> Result<BuildReport> {
    let sha = write_rootfs(base, &rootfs, &disk)?;
    let image = &disk.path;
    let output_path = &plan.output_path;
    let size = std::fs::metadata(image)?.len();
    let sha_path = checksum_file(&mut pending, output_path, &sha)?;
    let bmap_path = block_map(&mut pending, image, output_path, &sha)?;
    let compressed = compressed_copy(
        &mut pending,
        recipe.image.compress,
        image,
        output_path,
        &sha,
    )?;
    let json_path = with_suffix(output_path, ".json");
    let mut warnings = plan.warnings;
    warnings.extend(rootfs.warnings);
    let report = BuildReport {
        output: output_path.clone(),
        sha256: sha,
        size,
        build_time: epoch::rfc3339(plan.epoch),
        build_epoch: plan.epoch,
        board: plan.board.name.clone(),
        media: recipe.image.media,
        base: plan.base_text,
        base_sha256: base.raw.source_sha256.clone(),
        base_from_cache: base.raw.from_cache,
        os_family: base.layout.family,
        layout: disk.layout,
        rootfs_size_before: rootfs.size_before,
        rootfs_size_after: rootfs.after.size(),
        rootfs_free: rootfs.after.free_bytes(),
        cmdline: boot.cmdline,
        config_lines: boot.config_lines,
        cluster_stamped: plan.cluster_file.is_some(),
        overlays: plan.overlays,
        entries: rootfs.entries,
        compressed: compressed.clone(),
        reflinked: rootfs.reflinked && disk.reflinked,
        artifacts: Artifacts {
            image: output_path.clone(),
            sha256: sha_path,
            bmap: bmap_path,
            report: json_path.clone(),
            compressed,
        },
        versions: rootfs.versions,
        warnings,
    };
    let json_tmp = pending.add(&json_path);
    write_synced(&json_tmp, serde_json::to_string_pretty(&report)?.as_bytes())?;
    pending.commit()?;
    say(&format!(
        "wrote {} ({})",
        output_path.display(),
        report.sha256
    ));
    Ok(report)
}

/// The edited root filesystem goes into partition 2, the whole image checksummed on the way;
/// the scratch file is removed after. Returns the image's sha256.
fn write_rootfs(base: &Base, rootfs: &EditedRootfs, disk: &GrownDisk) -> Result<String> {
    let sha = {
        let out = OpenOptions::new().read(true).write(true).open(&disk.path)?;
        let root_file = File::open(&rootfs.path)?;
        let sha = append_and_hash(
            &out,
            base.layout.root.start,
            &root_file,
            rootfs.len,
            "writing the root filesystem",
        )?;
        out.sync_all().context("flushing the image")?;
        sha
    };
    std::fs::remove_file(&rootfs.path).context("removing the scratch root filesystem")?;
    interrupt::check()?;
    Ok(sha)
}

/// `IMAGE.sha256` in sha256sum format.
fn checksum_file(pending: &mut PendingOutputs, output_path: &Path, sha: &str) -> Result<PathBuf> {
    let sha_path = with_suffix(output_path, ".sha256");
    let sha_tmp = pending.add(&sha_path);
    write_synced(&sha_tmp, output::sha256_line(sha, output_path).as_bytes())?;
    Ok(sha_path)
}

/// `IMAGE.bmap`, the image's data ranges with their checksums (bmap 2.0).
fn block_map(
    pending: &mut PendingOutputs,
    image: &Path,
    output_path: &Path,
    sha: &str,
) -> Result<PathBuf> {
    let bmap_path = with_suffix(output_path, ".bmap");
    let bmap_tmp = pending.add(&bmap_path);
    crate::bmap::write_for(image, &bmap_tmp, Some(sha))?;
    Ok(bmap_path)
}

/// `IMAGE.zst` or `IMAGE.xz` when the recipe asks for one.
fn compressed_copy(
    pending: &mut PendingOutputs,
    how: Compression,
    image: &Path,
    output_path: &Path,
    sha: &str,
) -> Result<Option<PathBuf>> {
    let ext = match how {
        Compression::None => return Ok(None),
        Compression::Zstd => ".zst",
        Compression::Xz => ".xz",
    };
    let path = with_suffix(output_path, ext);
    let ctmp = pending.add(&path);
    output::compress(image, &ctmp, how, sha)?;
    Ok(Some(path))
}
