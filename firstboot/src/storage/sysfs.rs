//! Block devices as the kernel shows them: /sys/dev/block, /sys/block and /proc/self/mountinfo.
//!
//! Every function takes the sysfs root as a path so tests can build a fake tree; on a node it is
//! `/sys`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted filesystem (anonymous for btrfs, overlay, tmpfs).
    pub dev: (u32, u32),
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `ext4`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/mmcblk0p2`.
    pub source: String,
    /// Per-mount options, e.g. `rw,noatime`.
    pub options: String,
}

/// Parse `/proc/self/mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = l.get(2)?.split_once(':')?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                options: l.get(5)?.to_string(),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// Read and parse this process's mount table.
pub fn mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount whose mount point is the longest prefix of `path` (which should be canonical).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// Split a `dev_t` into major and minor (glibc/musl encoding).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The whole disk behind `major:minor`, or None when sysfs has no block device for it.
pub fn disk_of_dev(sysfs: &Path, dev: (u32, u32)) -> Option<Disk> {
    let link = sysfs.join(format!("dev/block/{}:{}", dev.0, dev.1));
    let dir = std::fs::canonicalize(link).ok()?;
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
    fn parses_mountinfo_lines() {
        let text = "29 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                    40 29 8:1 / /mnt/usb\\040disk rw,relatime shared:7 - ext4 /dev/sda1 rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, (179, 2));
        assert_eq!(m[0].source, "/dev/mmcblk0p2");
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/usb disk"));
        assert_eq!(
            mount_of(&m, Path::new("/mnt/usb disk/x")).map(|m| m.dev),
            Some((8, 1))
        );
        assert_eq!(
            mount_of(&m, Path::new("/var")).map(|m| m.dev),
            Some((179, 2))
        );
    }

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
