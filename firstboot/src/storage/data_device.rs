//! data_device: move `/var/lib/rancher` to an empty disk (ext4 with a label, fstab, mount).
//!
//! A disk is empty when its first and last MiB hold nothing: no partition table, no filesystem
//! or volume signature, no data at all. Anything else is refused, naming what was found, unless
//! `data_device_force` is set; a mounted disk or the boot disk is refused even then. A disk we
//! formatted ourselves (our label, and the UUID our fstab entry names) is recognised after a
//! power loss and the move resumes instead of refusing.

use super::apply::{under, write_if_changed};
use crate::config;
use crate::host::mountinfo::{self, Mount};
use crate::host::sysfs;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the data goes.
pub const DATA_DIR: &str = crate::paths::RANCHER_DIR;
/// Label of the filesystem we create.
pub const LABEL: &str = "k3s-data";
/// K3s unit drop-ins that keep K3s off the SD card when the data disk is missing.
pub const K3S_MOUNT_DROPINS: [&str; 2] = crate::paths::K3S_DATA_DEVICE_DROPINS;
const MIB: u64 = 1024 * 1024;

/// What was found on a disk that is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// GPT header (primary or backup).
    Gpt,
    /// MBR partition table (boot signature without a filesystem boot sector).
    Mbr,
    /// ext2/3/4 superblock, with its label.
    Ext {
        /// Volume label.
        label: String,
        /// Filesystem UUID.
        uuid: String,
    },
    /// XFS superblock.
    Xfs,
    /// btrfs superblock.
    Btrfs,
    /// FAT12/16/32 boot sector.
    Fat,
    /// exFAT boot sector.
    ExFat,
    /// NTFS boot sector.
    Ntfs,
    /// F2FS superblock.
    F2fs,
    /// LVM2 physical volume label.
    Lvm,
    /// Linux swap signature.
    Swap,
    /// LUKS encrypted volume header.
    Luks,
    /// Linux software RAID member.
    MdRaid,
    /// ISO 9660 image.
    Iso9660,
    /// No known signature but non-zero bytes.
    Data {
        /// Byte offset of the first non-zero byte found.
        offset: u64,
    },
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signature::Gpt => f.write_str("a GPT partition table"),
            Signature::Mbr => f.write_str("an MBR partition table"),
            Signature::Ext { label, .. } if label.is_empty() => f.write_str("an ext4 filesystem"),
            Signature::Ext { label, .. } => write!(f, "an ext4 filesystem labelled {label:?}"),
            Signature::Xfs => f.write_str("an XFS filesystem"),
            Signature::Btrfs => f.write_str("a btrfs filesystem"),
            Signature::Fat => f.write_str("a FAT filesystem"),
            Signature::ExFat => f.write_str("an exFAT filesystem"),
            Signature::Ntfs => f.write_str("an NTFS filesystem"),
            Signature::F2fs => f.write_str("an F2FS filesystem"),
            Signature::Lvm => f.write_str("an LVM physical volume"),
            Signature::Swap => f.write_str("a swap area"),
            Signature::Luks => f.write_str("a LUKS encrypted volume"),
            Signature::MdRaid => f.write_str("a software RAID member"),
            Signature::Iso9660 => f.write_str("an ISO 9660 image"),
            Signature::Data { offset } => write!(f, "unrecognised data at byte {offset}"),
        }
    }
}

/// Why a disk was not used.
#[derive(Debug, thiserror::Error)]
pub enum DataDeviceError {
    /// The disk holds something; only `data_device_force = true` overrides this.
    #[error("refusing to format {}: it holds {signature}. Wipe it first (wipefs -a {0}) or set data_device_force = true in [storage] to erase it", device.display())]
    NotEmpty {
        /// The device.
        device: PathBuf,
        /// What was found.
        signature: Signature,
    },
    /// The disk or one of its partitions is mounted; never formatted, even with force.
    #[error("refusing to format {}: it is mounted at {}", device.display(), mount_point.display())]
    Mounted {
        /// The device.
        device: PathBuf,
        /// Where it is mounted.
        mount_point: PathBuf,
    },
    /// The disk holds the running system; never formatted, even with force.
    #[error("refusing to format {}: it holds the running system", device.display())]
    BootDisk {
        /// The device.
        device: PathBuf,
    },
    /// `auto` found more than one empty disk and will not guess.
    #[error("data_device = \"auto\" found several empty disks ({}): name one in [storage] data_device", list(.candidates))]
    Ambiguous {
        /// The empty disks found.
        candidates: Vec<PathBuf>,
    },
    /// Not a block device.
    #[error("{} is not a block device", device.display())]
    NotABlockDevice {
        /// The path given.
        device: PathBuf,
    },
    /// Reading the device, running mkfs, writing fstab or mounting failed.
    #[error("{what}: {source:#}")]
    Failed {
        /// The step that failed.
        what: String,
        /// The underlying error.
        source: anyhow::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn failed(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> DataDeviceError {
    let what = what.into();
    move |source| DataDeviceError::Failed { what, source }
}

/// The result of a move: the device now holding `/var/lib/rancher`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataDevice {
    /// The device.
    pub device: PathBuf,
    /// UUID of its ext4 filesystem (what fstab names).
    pub uuid: String,
    /// True when this call formatted it; false when resuming or already done.
    pub formatted: bool,
    /// True when this call mounted it (false when it already was).
    pub mounted: bool,
}

/// Where to look: all paths a test may redirect.
#[derive(Debug, Clone)]
pub struct Host {
    /// Root prefix for /etc/fstab, /var/lib/rancher and the unit drop-ins.
    pub root: PathBuf,
    /// sysfs (normally `/sys`).
    pub sysfs: PathBuf,
    /// Directory of device nodes used by `auto` (normally `/dev`).
    pub dev_dir: PathBuf,
    /// The mount table (normally from `/proc/self/mountinfo`).
    pub mounts: Vec<Mount>,
}

impl Host {
    /// The running system with everything written under `root`.
    pub fn system(root: impl Into<PathBuf>) -> std::io::Result<Host> {
        Ok(Host {
            root: root.into(),
            sysfs: "/sys".into(),
            dev_dir: "/dev".into(),
            mounts: mountinfo::mounts()?,
        })
    }
}

/// Read the first and last MiB of a disk and name the first signature found.
pub fn detect_signature(device: &Path) -> std::io::Result<Option<Signature>> {
    let file = File::open(device)?;
    let size = device_size(&file)?;
    let head_len = size.min(MIB);
    let mut head = vec![0u8; head_len as usize];
    file.read_exact_at(&mut head, 0)?;
    let tail_start = size.saturating_sub(MIB);
    let mut tail = vec![0u8; (size - tail_start) as usize];
    file.read_exact_at(&mut tail, tail_start)?;
    Ok(signature_in(&head, &tail, tail_start, size))
}

fn device_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    // Seeking to the end works for block devices, whose metadata size is 0.
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

fn at(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

/// Signature detection on the first and last MiB (pure, for tests).
pub fn signature_in(head: &[u8], tail: &[u8], tail_start: u64, size: u64) -> Option<Signature> {
    const MD_MAGIC: [u8; 4] = [0xfc, 0x4e, 0x2b, 0xa9];
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if tail.len() >= 512 && at(tail, tail.len() - 512, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if at(head, 1080, &[0x53, 0xef]) {
        let text = |r: std::ops::Range<usize>| head.get(r).unwrap_or_default().to_vec();
        let label = String::from_utf8_lossy(&text(1144..1160))
            .trim_end_matches('\0')
            .to_string();
        return Some(Signature::Ext {
            label,
            uuid: format_uuid(&text(1128..1144)),
        });
    }
    let checks: [(bool, Signature); 12] = [
        (at(head, 0, b"XFSB"), Signature::Xfs),
        (at(head, 0x10040, b"_BHRfS_M"), Signature::Btrfs),
        (at(head, 3, b"EXFAT   "), Signature::ExFat),
        (at(head, 3, b"NTFS    "), Signature::Ntfs),
        (
            at(head, 0x36, b"FAT1") || at(head, 0x52, b"FAT32"),
            Signature::Fat,
        ),
        (at(head, 1024, &[0x10, 0x20, 0xf5, 0xf2]), Signature::F2fs),
        (
            (0..4).any(|s| at(head, s * 512, b"LABELONE")),
            Signature::Lvm,
        ),
        (
            [4096usize, 8192, 16384, 65536]
                .iter()
                .any(|p| at(head, p - 10, b"SWAPSPACE2") || at(head, p - 10, b"SWAP-SPACE")),
            Signature::Swap,
        ),
        (at(head, 0, b"LUKS\xba\xbe"), Signature::Luks),
        (
            at(head, 0, &MD_MAGIC)
                || at(head, 4096, &MD_MAGIC)
                || md_at_end(tail, tail_start, size),
            Signature::MdRaid,
        ),
        (at(head, 32769, b"CD001"), Signature::Iso9660),
        (at(head, 510, &[0x55, 0xaa]), Signature::Mbr),
    ];
    if let Some((_, sig)) = checks.into_iter().find(|(hit, _)| *hit) {
        return Some(sig);
    }
    if let Some(i) = head.iter().position(|&b| b != 0) {
        return Some(Signature::Data { offset: i as u64 });
    }
    tail.iter().position(|&b| b != 0).map(|i| Signature::Data {
        offset: tail_start + i as u64,
    })
}

/// md superblocks 0.90 (last 64 KiB-aligned block) and 1.0 (8 KiB from the end, 4 KiB-aligned).
fn md_at_end(tail: &[u8], tail_start: u64, size: u64) -> bool {
    let v090 = (size & !0xffff).saturating_sub(0x10000);
    let v10 = (size.saturating_sub(8192)) & !0xfff;
    [v090, v10].iter().any(|&off| {
        off >= tail_start && at(tail, (off - tail_start) as usize, &[0xfc, 0x4e, 0x2b, 0xa9])
    })
}

fn format_uuid(b: &[u8]) -> String {
    let h = hex::encode(b);
    if h.len() != 32 {
        return h;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn random_uuid() -> anyhow::Result<String> {
    let mut b = crate::host::random::bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(format_uuid(&b))
}

/// The UUID our fstab entry for the data directory names, if there is one.
pub fn fstab_uuid(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(crate::paths::FSTAB)).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let spec = f.next()?;
            (f.next()? == DATA_DIR).then(|| spec.strip_prefix("UUID=").map(str::to_string))?
        })
}

/// Kernel disk names that hold the running system (`/`, `/boot`, `/boot/firmware`).
fn boot_disks(host: &Host) -> Vec<String> {
    ["/", "/boot", "/boot/firmware"]
        .iter()
        .filter_map(|mp| host.mounts.iter().find(|m| m.mount_point == Path::new(mp)))
        .filter_map(|m| disk_of_source(host, m))
        .collect()
}

fn disk_of_source(host: &Host, m: &Mount) -> Option<String> {
    let rdev = std::fs::metadata(&m.source)
        .ok()
        .filter(|md| md.file_type().is_block_device())?
        .rdev();
    sysfs::disk_of_dev(&host.sysfs, sysfs::split_dev(rdev)).map(|d| d.name)
}

/// Refuse mounted and boot disks; only block devices are checked (tests use files for `auto`).
fn check_not_in_use(host: &Host, device: &Path) -> Result<(), DataDeviceError> {
    let Ok(meta) = std::fs::metadata(device) else {
        return Err(DataDeviceError::NotABlockDevice {
            device: device.into(),
        });
    };
    if !meta.file_type().is_block_device() {
        return Ok(());
    }
    let Some(disk) = sysfs::disk_of_dev(&host.sysfs, sysfs::split_dev(meta.rdev())) else {
        return Ok(());
    };
    if let Some(m) = host
        .mounts
        .iter()
        .find(|m| disk_of_source(host, m).as_deref() == Some(&disk.name))
    {
        return Err(DataDeviceError::Mounted {
            device: device.into(),
            mount_point: m.mount_point.clone(),
        });
    }
    if boot_disks(host).contains(&disk.name) {
        return Err(DataDeviceError::BootDisk {
            device: device.into(),
        });
    }
    Ok(())
}

/// Whole disks `auto` may consider: not virtual, not eMMC boot areas, non-empty size.
fn auto_candidates(host: &Host) -> Vec<String> {
    let boot = boot_disks(host);
    let Ok(entries) = std::fs::read_dir(host.sysfs.join("block")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "dm-", "md", "sr", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
                && !n.contains("boot")
                && !n.contains("rpmb")
                && !boot.contains(n)
        })
        .filter(|n| sysfs::size_bytes(&host.sysfs.join("block").join(n)).is_some_and(|s| s > 0))
        .collect();
    names.sort();
    names
}

/// Resolve `choice` to a device: None for `Keep`, or for `Auto` when no empty disk exists.
pub fn choose(
    host: &Host,
    choice: &config::DataDevice,
) -> Result<Option<PathBuf>, DataDeviceError> {
    match choice {
        config::DataDevice::None => Ok(None),
        config::DataDevice::Path(p) => Ok(Some(p.clone())),
        config::DataDevice::Auto => {
            let ours = fstab_uuid(&host.root);
            let mut usable = Vec::new();
            for name in auto_candidates(host) {
                let dev = host.dev_dir.join(&name);
                if check_not_in_use(host, &dev).is_err() {
                    continue;
                }
                match detect_signature(&dev) {
                    Ok(None) => usable.push(dev),
                    // Our own disk after a power loss: it is the one, whatever else exists.
                    Ok(Some(Signature::Ext { label, uuid }))
                        if label == LABEL && Some(&uuid) == ours.as_ref() =>
                    {
                        return Ok(Some(dev));
                    }
                    _ => {}
                }
            }
            match usable.len() {
                0 => Ok(None),
                1 => Ok(usable.pop()),
                _ => Err(DataDeviceError::Ambiguous { candidates: usable }),
            }
        }
    }
}

/// Move `/var/lib/rancher` (under `host.root`) onto `device`: check, format, fstab, copy, mount.
pub fn move_data_to(
    host: &Host,
    device: &Path,
    force: bool,
) -> Result<DataDevice, DataDeviceError> {
    let meta = std::fs::metadata(device)
        .map_err(|e| failed(format!("inspecting {}", device.display()))(e.into()))?;
    if !meta.file_type().is_block_device() {
        return Err(DataDeviceError::NotABlockDevice {
            device: device.into(),
        });
    }
    let target = under(&host.root, Path::new(DATA_DIR));
    let signature = detect_signature(device)
        .map_err(|e| failed(format!("reading {}", device.display()))(e.into()))?;
    let ours = fstab_uuid(&host.root);
    let resumed_uuid = match &signature {
        Some(Signature::Ext { label, uuid }) if label == LABEL && Some(uuid) == ours.as_ref() => {
            Some(uuid.clone())
        }
        _ => None,
    };
    if let Some(uuid) = &resumed_uuid {
        let mounted_here = host
            .mounts
            .iter()
            .any(|m| m.mount_point == target && same_device(&m.source, device));
        if mounted_here {
            return Ok(DataDevice {
                device: device.into(),
                uuid: uuid.clone(),
                formatted: false,
                mounted: false,
            });
        }
    }
    check_not_in_use(host, device)?;
    let (uuid, formatted) = match resumed_uuid {
        Some(uuid) => (uuid, false),
        None => {
            if let (Some(signature), false) = (signature, force) {
                return Err(DataDeviceError::NotEmpty {
                    device: device.into(),
                    signature,
                });
            }
            let uuid = random_uuid().map_err(failed("generating a filesystem UUID"))?;
            format(device, &uuid).map_err(failed(format!("formatting {}", device.display())))?;
            (uuid, true)
        }
    };
    write_fstab(&host.root, &uuid).map_err(failed("writing the fstab entry"))?;
    for dropin in K3S_MOUNT_DROPINS {
        let text = format!(
            "# Written by firstboot: K3s data lives on {LABEL}; never start on the SD card without it.\n\
             [Unit]\nRequiresMountsFor={DATA_DIR}\n"
        );
        write_if_changed(&host.root.join(dropin), text.as_bytes(), 0o644)
            .map_err(failed(format!("writing {dropin}")))?;
    }
    copy_and_mount(device, &target).map_err(failed(format!(
        "moving {} onto {}",
        target.display(),
        device.display()
    )))?;
    Ok(DataDevice {
        device: device.into(),
        uuid,
        formatted,
        mounted: true,
    })
}

fn same_device(source: &str, device: &Path) -> bool {
    let rdev = |p: &Path| std::fs::metadata(p).ok().map(|m| m.rdev());
    rdev(Path::new(source)).is_some() && rdev(Path::new(source)) == rdev(device)
}

fn format(device: &Path, uuid: &str) -> anyhow::Result<()> {
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", LABEL, "-U", uuid])
        .arg(device)
        .output()
        .map_err(|e| anyhow::anyhow!("running mkfs.ext4: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Replace any entry for the data directory by ours; `nofail` keeps the node reachable when the
/// disk is missing, and the K3s drop-in keeps K3s from starting on the SD card then.
fn write_fstab(root: &Path, uuid: &str) -> anyhow::Result<()> {
    let path = root.join(crate::paths::FSTAB);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.trim_start().starts_with('#') || l.split_whitespace().nth(1) != Some(DATA_DIR)
        })
        .map(str::to_string)
        .collect();
    lines.push(format!(
        "UUID={uuid}\t{DATA_DIR}\text4\tdefaults,noatime,nofail\t0\t2"
    ));
    write_if_changed(&path, (lines.join("\n") + "\n").as_bytes(), 0o644)?;
    Ok(())
}

/// Written on the new filesystem once the copy is complete; a resumed move never copies again,
/// so data written on the disk later is never overwritten by the stale copy on the SD card.
pub const COPIED_MARKER: &str = ".firstboot-data-copied";

/// Copy what is already in the data directory (air-gap images) onto the new filesystem through a
/// staging mount, then mount it over the directory.
fn copy_and_mount(device: &Path, target: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(target)?;
    let staging = target.with_file_name(".rancher-data-staging");
    std::fs::create_dir_all(&staging)?;
    mount(
        Some(device),
        &staging,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "mounting {} on {}: {e}",
            device.display(),
            staging.display()
        )
    })?;
    let copied = copy_once(target, &staging);
    unmount_staging(&staging)?;
    std::fs::remove_dir(&staging)?;
    copied?;
    mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mounting {} on {}: {e}", device.display(), target.display()))?;
    Ok(())
}

/// Unmount the staging mount. A child forked by another thread can hold one of our
/// (close-on-exec) descriptors for an instant and make umount fail with EBUSY, so retry briefly;
/// the copy is already synced, so a lazy detach is a safe last resort.
fn unmount_staging(staging: &Path) -> anyhow::Result<()> {
    use nix::mount::{umount, umount2, MntFlags};
    for _ in 0..20 {
        match umount(staging) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => anyhow::bail!("unmounting {}: {e}", staging.display()),
        }
    }
    umount2(staging, MntFlags::MNT_DETACH)
        .map_err(|e| anyhow::anyhow!("detaching {}: {e}", staging.display()))
}

fn copy_once(from: &Path, to: &Path) -> anyhow::Result<()> {
    let marker = to.join(COPIED_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .map_err(|e| anyhow::anyhow!("running cp: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "cp -a failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The data must be durable before the marker says so.
    let dir = File::open(to)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))?;
    write_if_changed(&marker, b"copied by firstboot\n", 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(head: &[u8]) -> Option<Signature> {
        let mut h = head.to_vec();
        h.resize(MIB as usize, 0);
        signature_in(&h, &vec![0; MIB as usize], 7 * MIB, 8 * MIB)
    }

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; MIB as usize];
        v[offset..offset + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn zeroes_are_empty() {
        assert_eq!(sig(&[]), None);
    }

    #[test]
    fn known_signatures_are_named() {
        assert_eq!(sig(&with(512, b"EFI PART")), Some(Signature::Gpt));
        assert_eq!(sig(&with(510, &[0x55, 0xaa])), Some(Signature::Mbr));
        assert_eq!(sig(&with(0, b"XFSB")), Some(Signature::Xfs));
        assert_eq!(sig(&with(0x10040, b"_BHRfS_M")), Some(Signature::Btrfs));
        assert_eq!(sig(&with(0x52, b"FAT32")), Some(Signature::Fat));
        assert_eq!(sig(&with(512, b"LABELONE")), Some(Signature::Lvm));
        assert_eq!(sig(&with(4086, b"SWAPSPACE2")), Some(Signature::Swap));
        assert_eq!(sig(&with(0, b"LUKS\xba\xbe")), Some(Signature::Luks));
        assert_eq!(
            sig(&with(4096, &[0xfc, 0x4e, 0x2b, 0xa9])),
            Some(Signature::MdRaid)
        );
        assert!(matches!(
            sig(&with(1080, &[0x53, 0xef])),
            Some(Signature::Ext { .. })
        ));
        assert_eq!(sig(&with(777, b"x")), Some(Signature::Data { offset: 777 }));
    }

    #[test]
    fn backup_gpt_and_trailing_data_are_found_in_the_last_mib() {
        let head = vec![0u8; MIB as usize];
        let mut tail = vec![0u8; MIB as usize];
        tail[MIB as usize - 512..MIB as usize - 504].copy_from_slice(b"EFI PART");
        assert_eq!(
            signature_in(&head, &tail, 7 * MIB, 8 * MIB),
            Some(Signature::Gpt)
        );
        let mut tail = vec![0u8; MIB as usize];
        tail[5] = 1;
        assert_eq!(
            signature_in(&head, &tail, 7 * MIB, 8 * MIB),
            Some(Signature::Data {
                offset: 7 * MIB + 5
            })
        );
    }

    #[test]
    fn choice_parses_the_config_value() {
        assert_eq!(
            "".parse::<config::DataDevice>().unwrap(),
            config::DataDevice::None
        );
        assert_eq!(
            "auto".parse::<config::DataDevice>().unwrap(),
            config::DataDevice::Auto
        );
        assert_eq!(
            "/dev/sda".parse::<config::DataDevice>().unwrap(),
            config::DataDevice::Path("/dev/sda".into())
        );
        assert!("sda".parse::<config::DataDevice>().is_err());
    }

    /// A fake host whose `auto` sees disks `names` (files in a dev dir, sizes in sysfs).
    fn fake_host(t: &Path, disks: &[(&str, Option<&[u8]>)]) -> Host {
        for (name, content) in disks {
            let blk = t.join("sys/block").join(name);
            std::fs::create_dir_all(&blk).unwrap();
            std::fs::write(blk.join("size"), "16384\n").unwrap();
            std::fs::create_dir_all(t.join("dev")).unwrap();
            let mut bytes = vec![0u8; 8 * MIB as usize];
            if let Some(c) = content {
                bytes[..c.len()].copy_from_slice(c);
            }
            std::fs::write(t.join("dev").join(name), bytes).unwrap();
        }
        Host {
            root: t.join("root"),
            sysfs: t.join("sys"),
            dev_dir: t.join("dev"),
            mounts: vec![],
        }
    }

    #[test]
    fn auto_picks_the_single_empty_disk() {
        let t = tempfile::tempdir().unwrap();
        let mut gpt = vec![0u8; 520];
        gpt[512..520].copy_from_slice(b"EFI PART");
        let host = fake_host(
            t.path(),
            &[
                ("sda", Some(&gpt)),
                ("sdb", None),
                ("loop0", None),
                ("mmcblk0boot0", None),
            ],
        );
        assert_eq!(
            choose(&host, &config::DataDevice::Auto).unwrap(),
            Some(t.path().join("dev/sdb"))
        );
    }

    #[test]
    fn auto_refuses_ambiguity_and_accepts_none() {
        let t = tempfile::tempdir().unwrap();
        let host = fake_host(t.path(), &[("sda", None), ("nvme0n1", None)]);
        let err = choose(&host, &config::DataDevice::Auto).unwrap_err();
        assert!(matches!(&err, DataDeviceError::Ambiguous { candidates } if candidates.len() == 2));
        assert!(err
            .to_string()
            .contains("name one in [storage] data_device"));
        let t2 = tempfile::tempdir().unwrap();
        let host = fake_host(t2.path(), &[("sda", Some(b"\x01"))]);
        assert_eq!(choose(&host, &config::DataDevice::Auto).unwrap(), None);
    }

    #[test]
    fn uuid_is_rfc4122_v4() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
