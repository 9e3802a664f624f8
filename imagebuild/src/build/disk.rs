//! Stage 4, the disk: the edited root filesystem becomes partition 2 of the output, the base's
//! head (partition table, boot partition) goes in front of it, and partition 2 is grown to fit.
//!
//! Where the filesystem can insert a range into a file (FALLOC_FL_INSERT_RANGE: ext4, xfs), the
//! scratch file holding the root filesystem becomes the image itself: its blocks are shifted up
//! by partition 2's offset without being read or written, so the root filesystem's bytes are
//! written exactly once (by the copy out of the base and the edits). Elsewhere (tmpfs, btrfs,
//! ...) they are copied into the image by `copy_file_range` (a reflink on btrfs and xfs).

use super::base::Base;
use super::rootfs::EditedRootfs;
use crate::disk::DiskLayout;
use crate::io::copy_range;
use anyhow::{Context, Result};
use nix::fcntl::{fallocate, FallocateFlags};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The output image with the base's head, the edited root filesystem in partition 2, and a
/// partition table sized for it.
pub struct GrownDisk {
    /// The output image (under its temporary name).
    pub path: PathBuf,
    /// The partition layout after growth.
    pub layout: DiskLayout,
    /// Whether the head was copied by reflink.
    pub reflinked: bool,
    /// Whether the scratch root filesystem became the image in place (no second write).
    pub rootfs_in_place: bool,
}

/// Make `image` from the head of `base` and the edited root filesystem, partition 2 grown to fit.
pub fn grow(base: &Base, rootfs: &EditedRootfs, image: &Path) -> Result<GrownDisk> {
    let root = &base.layout.root;
    let mut layout = base.layout.disk.clone();
    let base_file = File::open(&base.raw.path)
        .with_context(|| format!("opening {}", base.raw.path.display()))?;
    let rootfs_in_place = adopt_in_place(&rootfs.path, image, root.start)?;
    let mut out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!rootfs_in_place)
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
    if !rootfs_in_place {
        let root_file = File::open(&rootfs.path)
            .with_context(|| format!("opening {}", rootfs.path.display()))?;
        copy_range(
            &root_file,
            0,
            root_file.metadata()?.len(),
            &out,
            root.start,
            "writing the root filesystem",
        )?;
        drop(root_file);
        std::fs::remove_file(&rootfs.path).context("removing the scratch root filesystem")?;
    }
    let new_end = root.start + rootfs.len;
    if new_end > root.end() {
        layout.grow_last_partition(&mut out, new_end)?;
    }
    out.set_len(new_end.max(root.end()))
        .context("sizing the output image")?;
    crate::interrupt::check()?;
    Ok(GrownDisk {
        path: image.to_path_buf(),
        layout,
        reflinked,
        rootfs_in_place,
    })
}

/// Shift the scratch root filesystem up by `offset` bytes (a hole in front, filled by the head
/// later) and rename it to `image`. False when the filesystem cannot insert ranges: then
/// nothing changed.
fn adopt_in_place(scratch: &Path, image: &Path, offset: u64) -> Result<bool> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(scratch)
        .with_context(|| format!("opening {}", scratch.display()))?;
    // Needs offset and length on the filesystem's block grid (partition starts are 4 or 8 MiB
    // aligned) and a file longer than the offset (0 here); anything unsupported says so.
    if offset == 0 || f.metadata()?.len() == 0 {
        return Ok(false);
    }
    match fallocate(
        f.as_raw_fd(),
        FallocateFlags::FALLOC_FL_INSERT_RANGE,
        0,
        offset as libc::off_t,
    ) {
        Ok(()) => {}
        Err(_) => return Ok(false),
    }
    drop(f);
    std::fs::rename(scratch, image)
        .with_context(|| format!("renaming {} to {}", scratch.display(), image.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_file_becomes_the_image_shifted_or_stays_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("rootfs");
        let image = dir.path().join("image");
        let content: Vec<u8> = (0..(3 << 20) + 4096).map(|i| (i % 241) as u8 + 1).collect();
        std::fs::write(&scratch, &content).unwrap();
        let offset = 8u64 << 20;
        if adopt_in_place(&scratch, &image, offset).unwrap() {
            assert!(!scratch.exists());
            let got = std::fs::read(&image).unwrap();
            assert_eq!(got.len() as u64, offset + content.len() as u64);
            assert!(got[..offset as usize].iter().all(|&b| b == 0));
            assert!(got[offset as usize..] == content[..]);
            // The head is a hole until the boot partition is copied in.
            let f = File::open(&image).unwrap();
            let first = crate::io::stretches(&f, 0, offset);
            assert!(first.iter().all(|s| !s.data), "{first:?}");
        } else {
            // A filesystem without FALLOC_FL_INSERT_RANGE (tmpfs, btrfs): nothing changed.
            eprintln!("note: the temporary directory cannot insert ranges; checked the fallback");
            assert!(!image.exists());
            assert!(std::fs::read(&scratch).unwrap() == content);
        }
    }
}
