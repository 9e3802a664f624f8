//! Stage 6, publishing: one read of the finished image yields its sha256, the `.bmap` with every
//! range's checksum and the compressed copy ([`crate::io::digest`]); then `.sha256` and the
//! JSON report beside it; every file under a temporary name until all exist, then renamed.

use super::base::Base;
use super::boot::BootEdits;
use super::disk::GrownDisk;
use super::plan::BuildPlan;
use super::rootfs::EditedRootfs;
use super::{Artifacts, BuildReport};
use crate::io::write_synced;
use crate::output::{self, with_suffix, Packer, PendingOutputs};
use crate::progress::say;
use crate::recipe::{Compression, Recipe};
use crate::{epoch, interrupt};
use anyhow::{Context, Result};

/// Every output beside the finished image from one read of it, then commit them all.
pub fn publish(
    recipe: &Recipe,
    plan: BuildPlan,
    base: &Base,
    rootfs: EditedRootfs,
    disk: GrownDisk,
    boot: BootEdits,
    mut pending: PendingOutputs,
) -> Result<BuildReport> {
    let image = &disk.path;
    let output_path = &plan.output_path;
    let size = std::fs::metadata(image)?.len();
    std::fs::File::open(image)
        .and_then(|f| f.sync_all())
        .context("flushing the image")?;
    let compressed_path = match recipe.image.compress {
        Compression::None => None,
        Compression::Zstd => Some(with_suffix(output_path, ".zst")),
        Compression::Xz => Some(with_suffix(output_path, ".xz")),
    };
    let packer = match &compressed_path {
        Some(p) => {
            let tmp = pending.add(p);
            Packer::start(&tmp, recipe.image.compress, recipe.image.compress_level())?
        }
        None => None,
    };
    let digest = crate::io::digest::digest(image, None, packer)?;
    interrupt::check()?;
    let sha = digest.sha256;
    let sha_path = with_suffix(output_path, ".sha256");
    write_synced(
        &pending.add(&sha_path),
        output::sha256_line(&sha, output_path).as_bytes(),
    )?;
    let bmap_path = with_suffix(output_path, ".bmap");
    write_synced(&pending.add(&bmap_path), digest.map.to_xml().as_bytes())?;
    let compressed = compressed_path;
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
        rootfs_in_place: disk.rootfs_in_place,
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
