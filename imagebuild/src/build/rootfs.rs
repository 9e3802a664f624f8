//! Stage 3, the root filesystem: partition 2 copied into a scratch file of its own, user setup,
//! the node payload, the recipe's extra files and the image manifest declared, the filesystem
//! grown to fit them plus `free_space`, and everything written in one debugfs batch.
//!
//! A file of its own, because resize2fs on `image?offset=N` truncates the image file to the
//! filesystem's size (e2fsprogs 1.47), so growing in place would destroy the image. The next
//! stage turns this file into the image without copying it where the filesystem allows.

use super::base::Base;
use super::checks::check_base_supports;
use super::manifest::image_manifest;
use super::plan::BuildPlan;
use crate::boards::OsFamily;
use crate::disk::{round_up, ALIGN};
use crate::interrupt;
use crate::io::copy_range;
use crate::output::PendingOutputs;
use crate::payload::{NodePayload, Versions};
use crate::progress::say;
use crate::recipe::Recipe;
use crate::rootfs::payload::Payload;
use crate::rootfs::superblock::Superblock;
use crate::rootfs::{user, Rootfs};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::PathBuf;

/// The edited root filesystem, in its scratch file, ready to go into partition 2.
pub struct EditedRootfs {
    /// The scratch file holding it.
    pub path: PathBuf,
    /// Bytes of it that go into the image (the file or the filesystem, whichever is larger).
    pub len: u64,
    /// Filesystem size before the build.
    pub size_before: u64,
    /// Its superblock after the build (size, free bytes).
    pub after: Superblock,
    /// Versions of what it carries, as in the manifest.
    pub versions: Versions,
    /// Number of declared entries written.
    pub entries: usize,
    /// Whether the copy out of the base was a reflink.
    pub reflinked: bool,
    /// Warnings this stage printed.
    pub warnings: Vec<String>,
}

/// Copy partition 2 out of the base and edit it.
pub fn edit(
    recipe: &Recipe,
    plan: &BuildPlan,
    base: &Base,
    node: Option<NodePayload>,
    extra: &Payload,
    pending: &mut PendingOutputs,
) -> Result<EditedRootfs> {
    let root_tmp = pending.scratch(&plan.output_path, "rootfs");
    let root = base.layout.root.clone();
    let base_file = File::open(&base.raw.path)
        .with_context(|| format!("opening {}", base.raw.path.display()))?;
    let root_file =
        File::create(&root_tmp).with_context(|| format!("creating {}", root_tmp.display()))?;
    let reflinked = copy_range(
        &base_file,
        root.start,
        root.size,
        &root_file,
        0,
        "copying the root filesystem",
    )?;
    drop(root_file);
    interrupt::check()?;

    let rootfs = Rootfs::new(&root_tmp, 0, plan.epoch);
    let warnings = check_base_supports(recipe, &rootfs, base.layout.family)?;
    let passwd =
        String::from_utf8_lossy(&rootfs.read_file("/etc/passwd")?.unwrap_or_default()).into_owned();
    let account = user::find_account(&passwd, &recipe.os.user);
    // Ubuntu creates its first user at first boot (cloud-init user-data, written to the boot
    // partition later); only an account the image already has gets keys in the root filesystem.
    let ubuntu = base.layout.family == OsFamily::Ubuntu;
    let mut os = recipe.os.clone();
    if ubuntu && account.is_none() {
        os.ssh_authorized_keys.clear();
    }
    let facts = user::BaseFacts {
        passwd,
        network_manager: !ubuntu,
        creates_user: ubuntu,
    };
    let mut payload = plan.payload.clone();
    payload.extend(user::entries(&os, account.as_ref(), &facts)?);
    let versions = match node {
        Some(NodePayload {
            payload: p,
            versions,
        }) => {
            payload.extend(p);
            versions
        }
        None => Versions {
            base: plan.base_text.clone(),
            ..Default::default()
        },
    };
    payload.extend(extra.clone());
    let manifest = image_manifest(
        recipe,
        &base.raw.source_sha256,
        plan.epoch,
        &versions,
        &payload,
    )?;
    payload.bytes(firstboot::manifest::ABSOLUTE_PATH, manifest.to_vec(), 0o644);

    // Grow the filesystem so payload plus free_space fit, then write the payload.
    let free_space = recipe.image.free_space.0;
    let size_before = base.layout.root_super.size();
    grow(
        &rootfs,
        root.start,
        root.size,
        payload.size_estimate() + free_space,
    )?;
    interrupt::check()?;
    let staging = tempfile::Builder::new()
        .prefix(".imagebuild-staging-")
        .tempdir_in(&plan.out_dir)
        .or_else(|_| tempfile::tempdir())
        .context("creating a staging directory")?;
    rootfs.apply(&payload, staging.path())?;
    interrupt::check()?;
    // The estimate is conservative, but never trust it: top up until free_space really is free.
    for _ in 0..3 {
        let sb = rootfs.superblock()?;
        if sb.free_bytes() >= free_space {
            break;
        }
        let short = free_space - sb.free_bytes();
        say(&format!(
            "rootfs: {short} bytes short of free_space, growing further"
        ));
        grow(
            &rootfs,
            root.start,
            sb.size(),
            free_space + short / 8 + (16 << 20),
        )?;
    }
    let after = rootfs.superblock()?;
    if after.free_bytes() < free_space {
        bail!(
            "the root filesystem cannot grow enough: {} bytes free, {} wanted",
            after.free_bytes(),
            free_space
        );
    }
    let len = std::fs::metadata(&root_tmp)?.len().max(after.size());
    Ok(EditedRootfs {
        path: root_tmp,
        len,
        size_before,
        after,
        versions,
        entries: payload.entries.len(),
        reflinked,
        warnings,
    })
}

/// Grow the filesystem (in its own file) so that `need` more bytes are free; no-op if they are.
/// The new size keeps the partition's end on the 8 MiB grid.
fn grow(rootfs: &Rootfs, part_start: u64, part_size: u64, need: u64) -> Result<()> {
    let sb = rootfs.superblock()?;
    let free = sb.free_bytes();
    if free >= need {
        return Ok(());
    }
    let missing = need - free;
    // New block groups bring inode tables, bitmaps and 5% root-reserved blocks with them.
    let extra = missing + missing / 8 + (16 << 20);
    let new_size = round_up(part_start + sb.size().max(part_size) + extra, ALIGN) - part_start;
    say(&format!(
        "rootfs: growing from {} to {}",
        crate::size::ByteSize(sb.size()),
        crate::size::ByteSize(new_size)
    ));
    rootfs.resize(new_size)
}
