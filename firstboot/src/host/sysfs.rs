//! Block devices as sysfs shows them: `/sys/dev/block`, `/sys/block` and their attributes.
//!
//! Every function takes the sysfs root as a path so tests can build a fake tree; on a node it is
//! `/sys`.

use super::mountinfo::{mount_of, Mount};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A device number as `major:minor`, the form mountinfo and sysfs use.
pub type DevNo = (u32, u32);

/// The whole disk holding a filesystem, with the sysfs facts used to classify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name of the whole disk, e.g. `mmcblk0`, `sda`, `nvme0n1`.
    pub name: String,
    /// Kernel name of the partition when the filesystem is on one, e.g. `mmcblk0p2`.
    pub partition: Option<String>,
    /// Canonical sysfs directory of the whole disk (under `/sys/devices/...`).
    pub sysfs_dir: PathBuf,
}

/// Split a `dev_t` into major and minor (glibc/musl encoding).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The canonical sysfs directory of block device `major:minor` (a disk or a partition), or None
/// when sysfs has no block device for it.
pub fn block_dir(sysfs: &Path, dev: DevNo) -> Option<PathBuf> {
    std::fs::canonicalize(sysfs.join(format!("dev/block/{}:{}", dev.0, dev.1))).ok()
}

/// The `major:minor` a block device's sysfs directory states in its `dev` attribute.
pub fn read_devno(dir: &Path) -> Option<DevNo> {
    let text = attr(dir, "dev")?;
    let (a, b) = text.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The whole disk behind `major:minor`, or None when sysfs has no block device for it.
pub fn disk_of_dev(sysfs: &Path, dev: DevNo) -> Option<Disk> {
    let dir = block_dir(sysfs, dev)?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    if dir.join("partition").exists() {
        let parent = dir.parent()?;
        Some(Disk {
            name: parent.file_name()?.to_string_lossy().into_owned(),
            partition: Some(name),
            sysfs_dir: parent.to_path_buf(),
        })
    } else {
        Some(Disk {
            name,
            partition: None,
            sysfs_dir: dir,
        })
    }
}

/// The whole disk holding the filesystem of `dir`: by its `st_dev`, else by the mount source
/// (btrfs and some stacked filesystems report an anonymous `st_dev`).
pub fn disk_of_path(sysfs: &Path, dir: &Path, mounts: &[Mount]) -> std::io::Result<Option<Disk>> {
    let meta = std::fs::metadata(dir)?;
    if let Some(disk) = disk_of_dev(sysfs, split_dev(meta.dev())) {
        return Ok(Some(disk));
    }
    let canonical = std::fs::canonicalize(dir)?;
    let Some(mount) = mount_of(mounts, &canonical) else {
        return Ok(None);
    };
    if !mount.source.starts_with("/dev/") {
        return Ok(None);
    }
    Ok(std::fs::metadata(&mount.source)
        .ok()
        .and_then(|m| disk_of_dev(sysfs, split_dev(m.rdev()))))
}

/// Read a small sysfs attribute, trimmed; None when absent or unreadable.
pub fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The disk's size in bytes (sysfs `size` counts 512-byte sectors whatever the block size).
pub fn size_bytes(disk_dir: &Path) -> Option<u64> {
    attr(disk_dir, "size")?.parse::<u64>().ok().map(|s| s * 512)
}

/// The name of the driver bound to the USB interface above a disk (`uas` or `usb-storage`),
/// when the disk sits on USB.
pub fn usb_driver(disk_dir: &Path) -> Option<String> {
    let mut dir = disk_dir;
    while let Some(parent) = dir.parent() {
        let name = dir.file_name()?.to_string_lossy();
        // USB interfaces are named `<bus>-<port path>:<config>.<interface>`, e.g. `2-1:1.0`.
        if name.contains(':') && name.contains('-') && name.contains('.') {
            if let Ok(target) = std::fs::read_link(dir.join("driver")) {
                return Some(target.file_name()?.to_string_lossy().into_owned());
            }
        }
        dir = parent;
    }
    None
}

/// True when the disk's device path runs through a USB controller.
pub fn is_usb(disk_dir: &Path) -> bool {
    disk_dir
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with("usb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_dev_t() {
        // makedev(179, 2) and makedev(259, 65537) in the glibc encoding.
        assert_eq!(split_dev((179 << 8) | 2), (179, 2));
        let big = ((259u64 & 0xfff) << 8) | (65537 & 0xff) | ((65537u64 & !0xff) << 12);
        assert_eq!(split_dev(big), (259, 65537));
    }

    #[test]
    fn resolves_partition_to_whole_disk_in_a_fake_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let disk = sys.join("devices/platform/emmc2bus/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0");
        std::fs::create_dir_all(disk.join("mmcblk0p2")).unwrap();
        std::fs::write(disk.join("mmcblk0p2/partition"), "2\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(disk.join("mmcblk0p2"), sys.join("dev/block/179:2")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/179:0")).unwrap();
        let d = disk_of_dev(sys, (179, 2)).unwrap();
        assert_eq!(d.name, "mmcblk0");
        assert_eq!(d.partition.as_deref(), Some("mmcblk0p2"));
        assert_eq!(d.sysfs_dir, std::fs::canonicalize(&disk).unwrap());
        assert_eq!(disk_of_dev(sys, (179, 0)).unwrap().partition, None);
        assert_eq!(disk_of_dev(sys, (8, 0)), None);
    }

    #[test]
    fn finds_the_usb_driver_above_a_disk() {
        let t = tempfile::tempdir().unwrap();
        let iface = t.path().join("devices/platform/scb/pcie/usb2/2-1/2-1:1.0");
        let disk = iface.join("host0/target0:0:0/0:0:0:0/block/sda");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::create_dir_all(t.path().join("bus/usb/drivers/uas")).unwrap();
        std::os::unix::fs::symlink(t.path().join("bus/usb/drivers/uas"), iface.join("driver"))
            .unwrap();
        assert!(is_usb(&disk));
        assert_eq!(usb_driver(&disk).as_deref(), Some("uas"));
        assert!(!is_usb(Path::new(
            "/sys/devices/platform/emmc2bus/block/mmcblk0"
        )));
    }
}
