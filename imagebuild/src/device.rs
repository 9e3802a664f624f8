//! Write targets (a block device such as an SD card, or a plain file) and the checks that keep
//! imagebuild from writing over a mounted disk or the disk the running system lives on.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use firstboot::host::mountinfo::{mounts, unescape};
use firstboot::host::sysfs::{self, read_devno, split_dev as devno, DevNo};

/// What a target path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A whole block device, `size` bytes.
    Disk {
        /// Capacity in bytes.
        size: u64,
    },
    /// A regular file (or a path that does not exist yet).
    File {
        /// Whether it existed before.
        existed: bool,
    },
}

/// A checked write target.
#[derive(Debug)]
pub struct Target {
    /// The path given.
    pub path: PathBuf,
    /// Disk or file.
    pub kind: TargetKind,
}

impl Target {
    /// Look at `path` and refuse what must not be written: a mounted disk (or one with a mounted
    /// partition, an active swap, or a device-mapper user), the disk holding `/`, a partition
    /// instead of a whole disk, and anything that is neither a block device nor a regular file.
    pub fn inspect(path: &Path) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target {
                    path: path.to_path_buf(),
                    kind: TargetKind::File { existed: false },
                })
            }
            Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
        };
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok(Target {
                path: path.to_path_buf(),
                kind: TargetKind::File { existed: true },
            });
        }
        if !ft.is_block_device() {
            bail!(
                "{} is neither a block device (such as /dev/sdb or /dev/mmcblk0) nor a regular file",
                path.display()
            );
        }
        let dev = devno(meta.rdev());
        check_disk_unused(path, dev)?;
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = f
            .seek(SeekFrom::End(0))
            .with_context(|| format!("reading the size of {}", path.display()))?;
        Ok(Target {
            path: path.to_path_buf(),
            kind: TargetKind::Disk { size },
        })
    }

    /// A target for `flash`: a whole block device, or (only with `to_file`) a regular file.
    /// Nothing is ever created under /dev: a mistyped device name fails instead of becoming a
    /// file there.
    pub fn for_flash(path: &Path, to_file: bool) -> Result<Target> {
        let under_dev = std::path::absolute(path)
            .map(|p| p.starts_with("/dev"))
            .unwrap_or(false);
        let t = Target::inspect(path)?;
        match t.kind {
            TargetKind::Disk { .. } => Ok(t),
            TargetKind::File { existed: false } if under_dev => bail!(
                "{} does not exist: no such device (is the card plugged in? `imagebuild flash IMAGE` with no device lists the drives)",
                path.display()
            ),
            TargetKind::File { .. } if under_dev => bail!(
                "{} is a regular file, not a device: something wrote a file into /dev (remove it) or the name is mistyped",
                path.display()
            ),
            TargetKind::File { existed } if !to_file => bail!(
                "{} is {}, not a block device; to write the image into a file pass --to-file",
                path.display(),
                if existed { "a regular file" } else { "not an existing device" }
            ),
            TargetKind::File { .. } => Ok(t),
        }
    }

    /// Open for writing: a disk exclusively (O_EXCL fails while the kernel has it in use), a file
    /// created if needed; `truncate` empties a file first so unwritten ranges read as zeros.
    pub fn open_rw(&self, truncate: bool) -> Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        match self.kind {
            TargetKind::Disk { .. } => {
                o.custom_flags(libc::O_EXCL);
            }
            TargetKind::File { .. } => {
                o.create(true).truncate(truncate);
            }
        }
        o.open(&self.path).map_err(|e| {
            let busy = e.raw_os_error() == Some(libc::EBUSY);
            anyhow::Error::new(e).context(if busy {
                format!(
                    "opening {} for writing: the device is busy (mounted or in use by another program)",
                    self.path.display()
                )
            } else {
                format!("opening {} for writing", self.path.display())
            })
        })
    }

    /// Whether this is a block device.
    pub fn is_disk(&self) -> bool {
        matches!(self.kind, TargetKind::Disk { .. })
    }
}

fn sysfs_dir(dev: DevNo) -> Option<PathBuf> {
    sysfs::block_dir(Path::new("/sys"), dev)
}

/// The whole disk a device belongs to (itself when it is not a partition).
fn whole_disk(dev: DevNo) -> Option<(DevNo, PathBuf)> {
    let dir = sysfs_dir(dev)?;
    if dir.join("partition").exists() {
        let parent = dir.parent()?.to_path_buf();
        Some((read_devno(&parent)?, parent))
    } else {
        Some((dev, dir))
    }
}

/// The disk and every partition of it, with their sysfs names.
fn disk_and_partitions(dir: &Path, dev: DevNo) -> Vec<(DevNo, String)> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = vec![(dev, name(dir))];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_devno(&p) {
                    out.push((d, name(&p)));
                }
            }
        }
    }
    out
}

/// Whole disks under a device, following device-mapper/md `slaves` down to real disks.
fn disks_under(dev: DevNo, out: &mut BTreeSet<DevNo>, depth: u32) {
    let Some((disk, dir)) = whole_disk(dev) else {
        return;
    };
    let slaves: Vec<DevNo> = std::fs::read_dir(dir.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .filter_map(|p| read_devno(&p))
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() || depth > 8 {
        out.insert(disk);
    } else {
        for s in slaves {
            disks_under(s, out, depth + 1);
        }
    }
}

/// The disks that hold the running system's root filesystem.
pub fn system_disks() -> BTreeSet<DevNo> {
    let mut out = BTreeSet::new();
    if let Ok(m) = std::fs::metadata("/") {
        disks_under(devno(m.dev()), &mut out, 0);
    }
    for m in mounts().unwrap_or_default() {
        if m.mount_point == Path::new("/") {
            disks_under(m.dev, &mut out, 0);
        }
    }
    out
}

/// Refuse a disk that is the system disk, a partition, mounted, swapped on, or held by dm/md.
pub fn check_disk_unused(path: &Path, dev: DevNo) -> Result<()> {
    let shown = path.display();
    let Some(dir) = sysfs_dir(dev) else {
        bail!(
            "{shown} ({}:{}) is not a block device the kernel lists in /sys/dev/block",
            dev.0,
            dev.1
        );
    };
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| format!("/dev/{}", n.to_string_lossy()))
            .unwrap_or_else(|| "the whole disk".into());
        bail!("{shown} is a partition; give the whole disk ({disk}) instead");
    }
    if system_disks().contains(&dev) {
        bail!("refusing to write to {shown}: it holds the running system's root filesystem (/)");
    }
    let members = disk_and_partitions(&dir, dev);
    for m in mounts().context("reading /proc/self/mountinfo")? {
        if let Some((_, name)) = members.iter().find(|(d, _)| *d == m.dev) {
            bail!(
                "refusing to write to {shown}: /dev/{name} is mounted at {} (source {}); unmount it first (umount {})",
                m.mount_point.display(),
                m.source,
                m.mount_point.display()
            );
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(what) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(unescape(what)) {
                if m.file_type().is_block_device()
                    && members.iter().any(|(d, _)| *d == devno(m.rdev()))
                {
                    bail!("refusing to write to {shown}: {what} is an active swap area; run swapoff {what} first");
                }
            }
        }
    }
    let disk_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (_, name) in &members {
        let hdir = if *name == disk_name {
            dir.join("holders")
        } else {
            dir.join(name).join("holders")
        };
        let users: Vec<String> = std::fs::read_dir(&hdir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !users.is_empty() {
            bail!(
                "refusing to write to {shown}: /dev/{name} is in use by {} (LVM, dm-crypt or RAID); deactivate it first",
                users.join(", ")
            );
        }
    }
    Ok(())
}

/// What sysfs says about a disk, for the summary and the drive list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskInfo {
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// Vendor and model, or the backing file of a loop device.
    pub model: String,
    /// Serial number, when the device reports one.
    pub serial: String,
    /// Bus: usb, mmc, nvme, sata, loop, virtual.
    pub bus: String,
    /// Capacity in bytes.
    pub size: u64,
    /// Whether the kernel flags it removable.
    pub removable: bool,
    /// Mount points of the disk or its partitions.
    pub mounted: Vec<String>,
}

fn sysfs_text(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Model, serial, bus and size of a disk by its kernel name (`sdb`, `mmcblk0`, `loop3`).
pub fn describe(name: &str) -> DiskInfo {
    let dir = Path::new("/sys/class/block").join(name);
    let dev = dir.join("device");
    let real = std::fs::canonicalize(&dir).unwrap_or_default();
    let real_s = real.to_string_lossy();
    let bus = if name.starts_with("loop") {
        "loop"
    } else if real_s.contains("/usb") {
        "usb"
    } else if name.starts_with("mmcblk") {
        "mmc"
    } else if name.starts_with("nvme") {
        "nvme"
    } else if real_s.contains("/ata") {
        "sata"
    } else if real_s.contains("/virtual/") {
        "virtual"
    } else {
        "other"
    };
    let model = if bus == "loop" {
        let f = sysfs_text(&dir.join("loop/backing_file"));
        if f.is_empty() {
            "loop device".into()
        } else {
            format!("loop over {f}")
        }
    } else {
        let parts = [
            sysfs_text(&dev.join("vendor")),
            sysfs_text(&dev.join("model")),
            sysfs_text(&dev.join("name")),
        ];
        let m: Vec<&str> = parts
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        m.join(" ")
    };
    let serial = [dev.join("serial"), dev.join("wwid"), dir.join("wwid")]
        .iter()
        .map(|p| sysfs_text(p))
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let size = sysfs_text(&dir.join("size")).parse::<u64>().unwrap_or(0) * 512;
    let removable = sysfs_text(&dir.join("removable")) == "1";
    let mut mounted = Vec::new();
    if let (Some(devno), Ok(table)) = (read_devno(&dir), mounts()) {
        let members = disk_and_partitions(&real, devno);
        for m in table {
            if members.iter().any(|(d, _)| *d == m.dev) {
                mounted.push(m.mount_point.to_string_lossy().into_owned());
            }
        }
    }
    DiskInfo {
        name: name.to_string(),
        model,
        serial,
        bus: bus.to_string(),
        size,
        removable,
        mounted,
    }
}

/// The disk's kernel name for a device path (`/dev/sdb` -> `sdb`), if it is a block device.
pub fn kernel_name(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    if !m.file_type().is_block_device() {
        return None;
    }
    let dir = sysfs_dir(devno(m.rdev()))?;
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

/// Drives a card could be in: removable disks, and USB disks (card readers often do not say
/// removable), never the system disk. Sorted by name.
pub fn candidate_drives() -> Vec<DiskInfo> {
    let system = system_disks();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(dev) = read_devno(&e.path()) else {
            continue;
        };
        if system.contains(&dev) {
            continue;
        }
        let info = describe(&name);
        if info.size > 0 && (info.removable || info.bus == "usb" || info.bus == "mmc") {
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_disk_is_a_system_disk() {
        // Wherever the tests run, `/` lives on something; if sysfs knows it, it is listed.
        let root = std::fs::metadata("/").unwrap();
        if let Some((disk, _)) = whole_disk(devno(root.dev())) {
            assert!(system_disks().contains(&disk));
        }
    }
}

/// What became of a card after it was written, verified and flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The kernel offered to power the disk off (`/sys/block/NAME/device/delete`, as `eject`
    /// and udisks do for USB readers) and it is gone: pull it out.
    PoweredOff,
    /// Flushed; the kernel offers no power-off for it (an SD slot, a loop device): pull it out.
    Removable(String),
    /// A file, not a card.
    File,
}

/// After a verified write: flush the disk's buffers and, where the kernel offers it, power the
/// disk off (its sysfs `device/delete`), so the card can be pulled without losing anything.
/// `sysfs` is `/sys` (a test gives another root).
pub fn release_card(path: &Path, sysfs: &Path) -> Result<Release> {
    let Some(name) = kernel_name(path) else {
        return Ok(Release::File);
    };
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    // BLKFLSBUF = _IO(0x12, 97): write back and drop the buffer cache of the device.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
    unsafe { libc::ioctl(std::os::unix::io::AsRawFd::as_raw_fd(&f), BLKFLSBUF as _, 0) };
    drop(f);
    power_off(&name, sysfs)
}

/// Power off disk `name` through `<sysfs>/block/NAME/device/delete` when it has one.
pub fn power_off(name: &str, sysfs: &Path) -> Result<Release> {
    let delete = sysfs.join("block").join(name).join("device/delete");
    if !delete.exists() {
        let why = if name.starts_with("loop") {
            "a loop device has nothing to power off"
        } else if name.starts_with("mmcblk") {
            "an SD slot cannot be powered off by itself"
        } else {
            "the kernel offers no power-off for it"
        };
        return Ok(Release::Removable(why.into()));
    }
    std::fs::write(&delete, "1")
        .with_context(|| format!("powering off {name} (writing 1 to {})", delete.display()))?;
    Ok(Release::PoweredOff)
}

#[cfg(test)]
mod release_tests {
    use super::*;

    #[test]
    fn power_off_writes_delete_only_where_the_kernel_offers_it() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("block/sdz/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("delete"), "").unwrap();
        assert_eq!(power_off("sdz", sys.path()).unwrap(), Release::PoweredOff);
        assert_eq!(std::fs::read_to_string(dev.join("delete")).unwrap(), "1");
        std::fs::create_dir_all(sys.path().join("block/loop7")).unwrap();
        assert!(matches!(
            power_off("loop7", sys.path()).unwrap(),
            Release::Removable(w) if w.contains("loop")
        ));
    }
}
