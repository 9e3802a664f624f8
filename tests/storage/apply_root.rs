//! The tuning plan of every storage class applied to a Raspberry Pi OS-like `--root` tree:
//! which files are written, with which values, and that applying twice changes nothing.

use firstboot::storage::apply::{apply, JOURNALD_DROPIN, K3S_DROPINS, SYSCTL_DROPIN, UDEV_RULE};
use firstboot::storage::class::{DeviceKind, Speed, StorageClass};
use firstboot::storage::plan::{SnapshotCandidate, TuningPlan};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FSTAB: &str = "proc            /proc           proc    defaults          0       0\n\
PARTUUID=1a2b3c4d-01  /boot/firmware  vfat    defaults          0       2\n\
PARTUUID=1a2b3c4d-02  /               ext4    defaults,noatime  0       1\n\
# a comment stays as it is\n";

/// A root that looks like Raspberry Pi OS: fstab, dphys-swapfile (bookworm), rpi-swap (trixie).
fn pi_os_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = t.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("etc/fstab", FSTAB);
    w(
        "etc/dphys-swapfile",
        "# size of swap\nCONF_SWAPSIZE=100\n#CONF_MAXSWAP=2048\n",
    );
    w(
        "usr/lib/systemd/system/dphys-swapfile.service",
        "[Service]\n",
    );
    w(
        "usr/lib/systemd/system-generators/rpi-swap-generator",
        "#!/bin/sh\n",
    );
    t
}

/// Every file and link under `root` with its bytes or link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else if meta.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

fn root_fstab_options(root: &Path) -> String {
    read(root, "etc/fstab")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap()
}

fn is_masked(root: &Path, rel: &str) -> bool {
    std::fs::read_link(root.join(rel)).ok().as_deref() == Some(Path::new("/dev/null"))
}

/// Apply the plan of `class` twice; check the second run changes nothing; return the root.
fn applied(kind: DeviceKind, speed: Speed) -> (tempfile::TempDir, TuningPlan) {
    let root = pi_os_root();
    let class = StorageClass { kind, speed };
    let plan = TuningPlan::for_class(class, Some("disk0"), &[]);
    let first = apply(&plan, root.path(), Path::new("/var/lib/rancher")).unwrap();
    assert!(
        !first.changed.is_empty(),
        "{class}: the first apply changes files"
    );
    let before = snapshot(root.path());
    let second = apply(&plan, root.path(), Path::new("/var/lib/rancher")).unwrap();
    assert_eq!(
        second.changed,
        Vec::<PathBuf>::new(),
        "{class}: second apply"
    );
    assert_eq!(
        snapshot(root.path()),
        before,
        "{class}: tree unchanged by second apply"
    );
    (root, plan)
}

#[test]
fn slow_sd_gets_noatime_commit_volatile_journal_swap_off_writeback_bfq_and_ionice() {
    let (root, _) = applied(DeviceKind::Sd, Speed::Slow);
    let r = root.path();
    assert_eq!(root_fstab_options(r), "defaults,noatime,commit=60");
    let fstab = read(r, "etc/fstab").unwrap();
    assert!(fstab
        .contains("PARTUUID=1a2b3c4d-01  /boot/firmware  vfat    defaults          0       2\n"));
    assert!(fstab.contains("# a comment stays as it is\n"));
    let journald = read(r, JOURNALD_DROPIN).unwrap();
    assert!(journald.contains("[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n"));
    assert!(read(r, "etc/dphys-swapfile")
        .unwrap()
        .ends_with("#CONF_MAXSWAP=2048\nCONF_SWAPSIZE=0\n"));
    assert!(!read(r, "etc/dphys-swapfile")
        .unwrap()
        .contains("CONF_SWAPSIZE=100"));
    assert!(is_masked(r, "etc/systemd/system/dphys-swapfile.service"));
    assert!(is_masked(
        r,
        "etc/systemd/system-generators/rpi-swap-generator"
    ));
    let sysctl = read(r, SYSCTL_DROPIN).unwrap();
    assert!(sysctl.contains("vm.dirty_background_bytes = 16777216\n"));
    assert!(sysctl.contains("vm.dirty_bytes = 67108864\n"));
    assert!(sysctl.contains("vm.dirty_expire_centisecs = 1500\n"));
    assert!(read(r, UDEV_RULE).unwrap().contains(
        "ACTION==\"add|change\", SUBSYSTEM==\"block\", KERNEL==\"disk0\", ATTR{queue/scheduler}=\"bfq\"\n"
    ));
    for dropin in K3S_DROPINS {
        assert!(read(r, dropin)
            .unwrap()
            .ends_with("[Service]\nIOSchedulingClass=best-effort\nIOSchedulingPriority=0\n"));
    }
}

#[test]
fn fast_sd_keeps_a_capped_persistent_journal() {
    let (root, _) = applied(DeviceKind::Sd, Speed::Fast);
    let journald = read(root.path(), JOURNALD_DROPIN).unwrap();
    assert!(journald.contains("Storage=persistent\nSystemMaxUse=64M\nSystemMaxFileSize=8M\n"));
    assert_eq!(
        root_fstab_options(root.path()),
        "defaults,noatime,commit=60"
    );
}

#[test]
fn emmc_and_usb_flash_are_tuned_like_sd() {
    for kind in [DeviceKind::Emmc, DeviceKind::UsbFlash] {
        let (root, _) = applied(kind, Speed::Slow);
        assert_eq!(
            root_fstab_options(root.path()),
            "defaults,noatime,commit=60",
            "{kind}"
        );
        assert!(read(root.path(), SYSCTL_DROPIN).is_some(), "{kind}");
        assert!(is_masked(
            root.path(),
            "etc/systemd/system/dphys-swapfile.service"
        ));
    }
}

#[test]
fn nvme_and_ssds_get_only_noatime_scheduler_and_ionice() {
    for (kind, sched) in [
        (DeviceKind::Nvme, "none"),
        (DeviceKind::Ssd, "mq-deadline"),
        (DeviceKind::UsbSsd, "mq-deadline"),
    ] {
        let (root, _) = applied(kind, Speed::Fast);
        let r = root.path();
        assert_eq!(root_fstab_options(r), "defaults,noatime", "{kind}");
        assert_eq!(read(r, JOURNALD_DROPIN), None, "{kind}");
        assert_eq!(read(r, SYSCTL_DROPIN), None, "{kind}");
        assert_eq!(
            read(r, "etc/dphys-swapfile").unwrap(),
            "# size of swap\nCONF_SWAPSIZE=100\n#CONF_MAXSWAP=2048\n"
        );
        assert!(!is_masked(r, "etc/systemd/system/dphys-swapfile.service"));
        assert!(!is_masked(
            r,
            "etc/systemd/system-generators/rpi-swap-generator"
        ));
        assert!(read(r, UDEV_RULE)
            .unwrap()
            .contains(&format!("ATTR{{queue/scheduler}}=\"{sched}\"")));
        assert!(read(r, K3S_DROPINS[0]).is_some());
    }
}

#[test]
fn hdd_bounds_writeback_without_a_commit_change() {
    let (root, _) = applied(DeviceKind::Hdd, Speed::Fast);
    let r = root.path();
    assert_eq!(root_fstab_options(r), "defaults,noatime");
    assert!(read(r, JOURNALD_DROPIN)
        .unwrap()
        .contains("SystemMaxUse=256M"));
    assert!(read(r, SYSCTL_DROPIN).is_some());
    assert!(read(r, UDEV_RULE).unwrap().contains("\"bfq\""));
}

#[test]
fn unknown_slow_device_is_tuned_for_slowness_without_a_scheduler_rule() {
    let root = pi_os_root();
    let class = StorageClass {
        kind: DeviceKind::Other,
        speed: Speed::Slow,
    };
    let plan = TuningPlan::for_class(class, None, &[]);
    apply(&plan, root.path(), Path::new("/var/lib/rancher")).unwrap();
    assert_eq!(read(root.path(), UDEV_RULE), None);
    assert!(read(root.path(), SYSCTL_DROPIN).is_some());
}

#[test]
fn a_later_plan_removes_drop_ins_it_no_longer_wants() {
    let root = pi_os_root();
    let r = root.path();
    let data = Path::new("/var/lib/rancher");
    let sd = TuningPlan::for_class(
        StorageClass {
            kind: DeviceKind::Sd,
            speed: Speed::Slow,
        },
        Some("mmcblk0"),
        &[],
    );
    apply(&sd, r, data).unwrap();
    let nvme = TuningPlan::for_class(
        StorageClass {
            kind: DeviceKind::Nvme,
            speed: Speed::Fast,
        },
        Some("nvme0n1"),
        &[],
    );
    let changed = apply(&nvme, r, data).unwrap().changed;
    assert!(changed.contains(&PathBuf::from(JOURNALD_DROPIN)));
    assert_eq!(read(r, JOURNALD_DROPIN), None);
    assert_eq!(read(r, SYSCTL_DROPIN), None);
    assert!(read(r, UDEV_RULE).unwrap().contains("KERNEL==\"nvme0n1\""));
}

#[test]
fn snapshot_directory_is_created_private_on_the_better_disk() {
    use std::os::unix::fs::PermissionsExt;
    let root = pi_os_root();
    let cands = [SnapshotCandidate {
        mount_point: "/mnt/ssd".into(),
        kind: DeviceKind::UsbSsd,
    }];
    let plan = TuningPlan::for_class(
        StorageClass {
            kind: DeviceKind::Sd,
            speed: Speed::Slow,
        },
        Some("mmcblk0"),
        &cands,
    );
    let first = apply(&plan, root.path(), Path::new("/var/lib/rancher")).unwrap();
    assert!(first
        .changed
        .contains(&PathBuf::from("mnt/ssd/k3s-etcd-snapshots")));
    let meta = std::fs::metadata(root.path().join("mnt/ssd/k3s-etcd-snapshots")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert!(apply(&plan, root.path(), Path::new("/var/lib/rancher"))
        .unwrap()
        .changed
        .is_empty());
}

#[test]
fn missing_fstab_is_noted_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let plan = TuningPlan::for_class(
        StorageClass {
            kind: DeviceKind::Sd,
            speed: Speed::Slow,
        },
        None,
        &[],
    );
    let out = apply(&plan, t.path(), Path::new("/var/lib/rancher")).unwrap();
    assert!(out.notes.iter().any(|n| n.contains("no /etc/fstab")));
    assert!(!t.path().join("etc/fstab").exists());
}
