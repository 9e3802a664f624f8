//! Stage 4, the disk: the base's head (partition table, boot partition) copied into the output,
//! and partition 2 grown to hold the edited root filesystem.

use super::base::Base;
use super::rootfs::EditedRootfs;
use crate::disk::DiskLayout;
use crate::io::copy_range;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The output image with the base's head and a partition table sized for the new root.
pub struct GrownDisk {
    /// The output image (under its temporary name).
    pub path: PathBuf,
    /// The partition layout after growth.
    pub layout: DiskLayout,
    /// Whether the head was copied by reflink.
    pub reflinked: bool,
}

/// Copy the head of `base` into `image` and grow partition 2 to fit `rootfs`.
pub fn grow(base: &Base, rootfs: &EditedRootfs, image: &Path) -> Result<GrownDisk> {
    let root = &base.layout.root;
    let mut layout = base.layout.disk.clone();
    let base_file = File::open(&base.raw.path)
        .with_context(|| format!("opening {}", base.raw.path.display()))?;
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    let reflinked = copy_range(
        &base_file,
        0,
        root.start,
        &out,
        0,
        "copying the boot partition",
    )?;
    let new_end = root.start + rootfs.len;
    if new_end > root.end() {
        layout.grow_last_partition(&mut out, new_end)?;
    }
    out.set_len(new_end.max(root.end()))
        .context("sizing the output image")?;
    Ok(GrownDisk {
        path: image.to_path_buf(),
        layout,
        reflinked,
    })
}
