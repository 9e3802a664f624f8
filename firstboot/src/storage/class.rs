//! Device class: what kind of disk holds the data directory (from sysfs) and how fast it syncs.

use crate::config::StorageProfile;
use crate::host::mountinfo::Mount;
use crate::host::sysfs::{self, Disk};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// etcd's guidance: fdatasync p99 should stay under 10 ms.
pub const ETCD_P99_LIMIT_US: u64 = 10_000;

/// USB disks at or below this size without UAS are taken for flash sticks.
const USB_FLASH_MAX_BYTES: u64 = 256 * 1000 * 1000 * 1000;

/// The kind of device, from sysfs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// SD card on the SoC's MMC controller (`mmcblkN`, type SD).
    Sd,
    /// Soldered eMMC (CM4/CM5: `mmcblkN`, type MMC).
    Emmc,
    /// USB flash stick (USB, not UAS, small, non-rotational).
    UsbFlash,
    /// SSD behind a USB bridge (UAS, or large non-rotational USB disk).
    UsbSsd,
    /// NVMe SSD (Pi 5 PCIe).
    Nvme,
    /// Other non-rotational disk (SATA SSD, virtio).
    Ssd,
    /// Rotational disk, on USB or not.
    Hdd,
    /// Not a disk sysfs can name (loop, tmpfs, overlay, network): only the measurement counts.
    Other,
}

/// Measured speed against etcd's guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Speed {
    /// fdatasync p99 under 10 ms.
    Fast,
    /// fdatasync p99 at or above 10 ms.
    Slow,
}

impl Speed {
    /// Classify a measured fdatasync p99 (microseconds).
    pub fn from_p99_us(p99_us: u64) -> Speed {
        if p99_us < ETCD_P99_LIMIT_US {
            Speed::Fast
        } else {
            Speed::Slow
        }
    }
}

/// A device class: kind and measured speed; what the plan, the etcd timing and the rank use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageClass {
    /// What the device is.
    pub kind: DeviceKind,
    /// How fast it synced.
    pub speed: Speed,
}

impl StorageClass {
    /// True for media whose flash translation layer suffers from small synchronous writes.
    pub fn is_sd_like(self) -> bool {
        matches!(
            self.kind,
            DeviceKind::Sd | DeviceKind::Emmc | DeviceKind::UsbFlash
        )
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Sd => "sd",
            DeviceKind::Emmc => "emmc",
            DeviceKind::UsbFlash => "usb-flash",
            DeviceKind::UsbSsd => "usb-ssd",
            DeviceKind::Nvme => "nvme",
            DeviceKind::Ssd => "ssd",
            DeviceKind::Hdd => "hdd",
            DeviceKind::Other => "other",
        })
    }
}

impl std::fmt::Display for StorageClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let speed = match self.speed {
            Speed::Fast => "fast",
            Speed::Slow => "slow",
        };
        write!(f, "{} ({speed})", self.kind)
    }
}

impl StorageProfile {
    /// The class the tuning uses: the measured one, or the forced one.
    pub fn resolve(self, measured: StorageClass) -> StorageClass {
        match self {
            StorageProfile::Auto => measured,
            StorageProfile::Sd => StorageClass {
                kind: DeviceKind::Sd,
                speed: Speed::Slow,
            },
            StorageProfile::Ssd => StorageClass {
                kind: DeviceKind::Ssd,
                speed: Speed::Fast,
            },
        }
    }
}

/// Name the kind of a whole disk from its sysfs directory.
pub fn kind_of_disk(disk: &Disk) -> DeviceKind {
    let dir = &disk.sysfs_dir;
    let rotational = sysfs::attr(dir, "queue/rotational").as_deref() == Some("1");
    if disk.name.starts_with("mmcblk") {
        return match sysfs::attr(dir, "device/type").as_deref() {
            Some("MMC") => DeviceKind::Emmc,
            _ => DeviceKind::Sd,
        };
    }
    if disk.name.starts_with("nvme") {
        return DeviceKind::Nvme;
    }
    if disk.name.starts_with("loop")
        || disk.name.starts_with("ram")
        || disk.name.starts_with("zram")
        || disk.name.starts_with("nbd")
    {
        return DeviceKind::Other;
    }
    if rotational {
        return DeviceKind::Hdd;
    }
    if sysfs::is_usb(dir) {
        let uas = sysfs::usb_driver(dir).as_deref() == Some("uas");
        let small = sysfs::size_bytes(dir).is_some_and(|s| s <= USB_FLASH_MAX_BYTES);
        return if uas || !small {
            DeviceKind::UsbSsd
        } else {
            DeviceKind::UsbFlash
        };
    }
    DeviceKind::Ssd
}

/// The kind of device holding `dir` and the disk it resolved to (None when not a disk).
pub fn detect_kind(
    sysfs_root: &Path,
    dir: &Path,
    mounts: &[Mount],
) -> std::io::Result<(DeviceKind, Option<Disk>)> {
    let disk = sysfs::disk_of_path(sysfs_root, dir, mounts)?;
    let kind = disk.as_ref().map_or(DeviceKind::Other, kind_of_disk);
    Ok((kind, disk))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Build a fake sysfs disk directory with the given attributes.
    pub(crate) fn fake_disk(root: &Path, rel: &str, attrs: &[(&str, &str)]) -> Disk {
        let dir = root.join(rel);
        for (name, value) in attrs {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{value}\n")).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Disk {
            name: PathBuf::from(rel)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into(),
            partition: None,
            sysfs_dir: dir,
        }
    }

    #[test]
    fn classifies_disks_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let sd = fake_disk(r, "devices/mmc0/block/mmcblk0", &[("device/type", "SD")]);
        let emmc = fake_disk(r, "devices/mmc1/block/mmcblk1", &[("device/type", "MMC")]);
        let nvme = fake_disk(
            r,
            "devices/pcie/nvme/nvme0/nvme0n1",
            &[("queue/rotational", "0")],
        );
        let stick = fake_disk(
            r,
            "devices/usb2/2-1/2-1:1.0/host0/block/sda",
            &[("queue/rotational", "0"), ("size", "62521344")],
        );
        let big_usb = fake_disk(
            r,
            "devices/usb2/2-2/2-2:1.0/host1/block/sdb",
            &[("queue/rotational", "0"), ("size", "1953525168")],
        );
        let hdd = fake_disk(
            r,
            "devices/usb2/2-3/2-3:1.0/host2/block/sdc",
            &[("queue/rotational", "1"), ("size", "1953525168")],
        );
        let sata = fake_disk(
            r,
            "devices/ata1/host3/block/sdd",
            &[("queue/rotational", "0")],
        );
        let lo = fake_disk(
            r,
            "devices/virtual/block/loop0",
            &[("queue/rotational", "0")],
        );
        assert_eq!(kind_of_disk(&sd), DeviceKind::Sd);
        assert_eq!(kind_of_disk(&emmc), DeviceKind::Emmc);
        assert_eq!(kind_of_disk(&nvme), DeviceKind::Nvme);
        assert_eq!(kind_of_disk(&stick), DeviceKind::UsbFlash);
        assert_eq!(kind_of_disk(&big_usb), DeviceKind::UsbSsd);
        assert_eq!(kind_of_disk(&hdd), DeviceKind::Hdd);
        assert_eq!(kind_of_disk(&sata), DeviceKind::Ssd);
        assert_eq!(kind_of_disk(&lo), DeviceKind::Other);
    }

    #[test]
    fn uas_bridge_means_ssd_even_when_small() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let d = fake_disk(
            r,
            "devices/usb2/2-1/2-1:1.0/host0/block/sda",
            &[("queue/rotational", "0"), ("size", "234441648")],
        );
        std::fs::create_dir_all(r.join("drivers/uas")).unwrap();
        std::os::unix::fs::symlink(
            r.join("drivers/uas"),
            r.join("devices/usb2/2-1/2-1:1.0/driver"),
        )
        .unwrap();
        assert_eq!(kind_of_disk(&d), DeviceKind::UsbSsd);
    }

    #[test]
    fn speed_threshold_is_etcds_10ms() {
        assert_eq!(Speed::from_p99_us(9_999), Speed::Fast);
        assert_eq!(Speed::from_p99_us(10_000), Speed::Slow);
    }

    #[test]
    fn profile_overrides_measurement() {
        let nvme = StorageClass {
            kind: DeviceKind::Nvme,
            speed: Speed::Fast,
        };
        assert_eq!(StorageProfile::Auto.resolve(nvme), nvme);
        assert_eq!(StorageProfile::Sd.resolve(nvme).kind, DeviceKind::Sd);
        assert_eq!(
            "ssd".parse::<StorageProfile>().unwrap(),
            StorageProfile::Ssd
        );
        assert!("hdd"
            .parse::<StorageProfile>()
            .unwrap_err()
            .contains("auto, sd or ssd"));
    }
}
