//! Recognizing a Raspberry Pi OS (or Ubuntu for Pi) disk layout and its OS family.

use crate::boards::{BaseImage, OsFamily};
use crate::boot::BootPartition;
use crate::disk::{DiskLayout, Partition};
use crate::rootfs::{Rootfs, Superblock};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::path::Path;

/// The two partitions of a Pi image and what they say about the OS.
#[derive(Debug, Clone, Serialize)]
pub struct PiLayout {
    /// The partition table.
    pub disk: DiskLayout,
    /// Partition 1 (FAT, firmware and kernel).
    pub boot: Partition,
    /// Partition 2 (ext4 root).
    pub root: Partition,
    /// FAT volume label.
    pub boot_label: String,
    /// ext4 volume label.
    pub root_label: String,
    /// The OS family, from the catalog or recognized from the image.
    pub family: OsFamily,
    /// The root filesystem's superblock.
    pub root_super: Superblock,
}

fn not_pi(image: &Path, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a Raspberry Pi OS layout: {why}. Expected an MBR image with partition 1 FAT \
         (label bootfs or system-boot, holding cmdline.txt and config.txt) and partition 2 ext4 \
         (label rootfs or writable). Use a Raspberry Pi OS Lite or Ubuntu for Pi image as the base.",
        image.display()
    )
}

/// Check that `image` has a Pi layout, and work out its OS family.
pub fn recognize(image: &Path, catalog: Option<&BaseImage>) -> Result<PiLayout> {
    let mut file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let disk = DiskLayout::read(&mut file).map_err(|e| not_pi(image, &format!("{e:#}")))?;
    let boot = disk
        .partition(1)
        .cloned()
        .ok_or_else(|| not_pi(image, "it has no partition 1"))?;
    let root = disk
        .partition(2)
        .cloned()
        .ok_or_else(|| not_pi(image, "it has no partition 2"))?;
    if !boot.is_fat_type() {
        return Err(not_pi(
            image,
            &format!("partition 1 has type {}, not FAT", boot.type_id),
        ));
    }
    if boot.end() > disk.image_size || root.end() > disk.image_size {
        return Err(not_pi(
            image,
            "a partition extends past the end of the file (truncated image?)",
        ));
    }
    let (boot_label, cmdline) = {
        let fat = BootPartition::open(&mut file, &boot, 315_532_800)
            .map_err(|e| not_pi(image, &format!("{e:#}")))?;
        let names: Vec<String> = fat
            .root_names()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        if !names.iter().any(|n| n == "cmdline.txt") || !names.iter().any(|n| n == "config.txt") {
            return Err(not_pi(
                image,
                "partition 1 has no cmdline.txt and config.txt",
            ));
        }
        let cmdline =
            String::from_utf8_lossy(&fat.read("cmdline.txt")?.unwrap_or_default()).into_owned();
        // Read-only use: dropping without unmount writes nothing we need.
        (fat.label(), cmdline)
    };
    let root_super =
        Superblock::read(image, root.start).map_err(|e| not_pi(image, &format!("{e:#}")))?;
    let root_label = root_super.label.clone();
    let family = match catalog {
        Some(c) => {
            if !c.boot_label.eq_ignore_ascii_case(&boot_label) || c.root_label != root_label {
                bail!(
                    "{} does not look like catalog base `{}`: labels are {boot_label:?}/{root_label:?}, expected {:?}/{:?}",
                    image.display(),
                    c.name,
                    c.boot_label,
                    c.root_label
                );
            }
            c.os_family
        }
        None => detect_family(image, root.start, &boot_label, &cmdline)?,
    };
    Ok(PiLayout {
        disk,
        boot,
        root,
        boot_label,
        root_label,
        family,
        root_super,
    })
}

fn detect_family(
    image: &Path,
    root_offset: u64,
    boot_label: &str,
    cmdline: &str,
) -> Result<OsFamily> {
    if boot_label.eq_ignore_ascii_case("system-boot") {
        return Ok(OsFamily::Ubuntu);
    }
    if cmdline.contains("init=/usr/lib/raspberrypi-sys-mods/firstboot") {
        return Ok(OsFamily::RaspiosBookworm);
    }
    if cmdline.split_whitespace().any(|w| w == "resize") {
        return Ok(OsFamily::RaspiosTrixie);
    }
    let rootfs = Rootfs::new(image, root_offset, 315_532_800);
    let os_release = rootfs.read_file("/etc/os-release")?.unwrap_or_default();
    let text = String::from_utf8_lossy(&os_release);
    Ok(if text.contains("VERSION_CODENAME=bookworm") {
        OsFamily::RaspiosBookworm
    } else if text.contains("ID=ubuntu") {
        OsFamily::Ubuntu
    } else {
        OsFamily::RaspiosTrixie
    })
}
