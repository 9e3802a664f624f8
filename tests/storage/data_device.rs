//! data_device on real loop devices (root only): an empty disk is formatted, filled with the old
//! data directory and mounted under a test root; a disk holding anything is refused untouched.

use systests::storage::devices;

use devices::{run, LoopDevice};
use firstboot::storage::data_device::{move_data_to, DataDeviceError, Host, Signature, LABEL};
use std::path::Path;
use std::process::Command;

fn root_or_skip(test: &str) -> bool {
    if !systests::is_root() {
        println!("skipping {test}: needs root for loop devices and mount");
        return false;
    }
    true
}

/// A test root with an fstab and pre-seeded data (as imagebuild leaves air-gap images).
fn test_root(t: &Path) -> std::path::PathBuf {
    let root = t.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/fstab"),
        "PARTUUID=1a2b3c4d-02  /  ext4  defaults,noatime  0  1\n",
    )
    .unwrap();
    let images = root.join("var/lib/rancher/k3s/agent/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("airgap.tar.zst"), b"pretend images").unwrap();
    root
}

fn blkid(dev: &Path, tag: &str) -> String {
    let out = run(Command::new("blkid")
        .args(["-s", tag, "-o", "value"])
        .arg(dev))
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mount_source(target: &Path) -> Option<String> {
    let mounts = firstboot::host::mountinfo::mounts().unwrap();
    mounts
        .into_iter()
        .find(|m| m.mount_point == target)
        .map(|m| m.source)
}

/// Unmounts the data directory when a test ends, even on failure.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let umount = || {
            Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
        };
        while umount().is_ok_and(|s| s.success()) {}
    }
}

#[test]
fn empty_disk_is_formatted_filled_and_mounted_then_resumed_idempotently() {
    if !root_or_skip("empty_disk_is_formatted_filled_and_mounted") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = test_root(t.path());
    let target = root.join("var/lib/rancher");
    let dev = LoopDevice::create(&t.path().join("empty.img"), 64 << 20).unwrap();
    let _unmount = Unmount(target.clone());

    let moved = move_data_to(&Host::system(&root).unwrap(), &dev.path, false)
        .unwrap_or_else(|e| panic!("moving onto empty {}: {e}", dev.path.display()));
    assert!(moved.formatted && moved.mounted);
    assert_eq!(
        mount_source(&target).as_deref(),
        Some(dev.path.to_str().unwrap())
    );
    assert_eq!(blkid(&dev.path, "LABEL"), LABEL);
    assert_eq!(blkid(&dev.path, "UUID"), moved.uuid);
    assert_eq!(
        std::fs::read(target.join("k3s/agent/images/airgap.tar.zst")).unwrap(),
        b"pretend images",
        "existing data is copied onto the new disk"
    );
    assert!(target
        .join(firstboot::storage::data_device::COPIED_MARKER)
        .exists());
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert!(fstab.starts_with("PARTUUID=1a2b3c4d-02  /  ext4  defaults,noatime  0  1\n"));
    assert!(fstab.contains(&format!(
        "UUID={}\t/var/lib/rancher\text4\tdefaults,noatime,nofail\t0\t2\n",
        moved.uuid
    )));
    let dropin = std::fs::read_to_string(
        root.join("etc/systemd/system/k3s.service.d/60-firstboot-data-device.conf"),
    )
    .unwrap();
    assert!(dropin.contains("RequiresMountsFor=/var/lib/rancher"));

    // Running again while mounted changes nothing.
    let again = move_data_to(&Host::system(&root).unwrap(), &dev.path, false).unwrap();
    assert!(!again.formatted && !again.mounted);
    assert_eq!(again.uuid, moved.uuid);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/fstab")).unwrap(),
        fstab
    );

    // After an unmount (a power loss, or the disk missing at boot), our own disk is resumed, not
    // refused, and the stale copy on the root filesystem never overwrites newer data on the disk.
    std::fs::write(
        target.join("k3s/agent/images/airgap.tar.zst"),
        b"newer on the disk",
    )
    .unwrap();
    run(Command::new("umount").arg(&target)).unwrap();
    let resumed = move_data_to(&Host::system(&root).unwrap(), &dev.path, false).unwrap();
    assert!(!resumed.formatted && resumed.mounted);
    assert_eq!(resumed.uuid, moved.uuid);
    assert_eq!(
        std::fs::read(target.join("k3s/agent/images/airgap.tar.zst")).unwrap(),
        b"newer on the disk"
    );
    run(Command::new("umount").arg(&target)).unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&dev.path)).unwrap();
}

/// Refusing leaves the device's bytes, the fstab and the mounts exactly as they were.
fn assert_refused_untouched(dev: &Path, expect: impl Fn(&DataDeviceError) -> bool, needle: &str) {
    let t = tempfile::tempdir().unwrap();
    let root = test_root(t.path());
    let _unmount = Unmount(root.join("var/lib/rancher"));
    let fstab = std::fs::read(root.join("etc/fstab")).unwrap();
    let before = imagebuild::io::sha256_file_quiet(dev).unwrap();
    let err = move_data_to(&Host::system(&root).unwrap(), dev, false).unwrap_err();
    assert!(expect(&err), "unexpected error: {err}");
    let msg = err.to_string();
    assert!(msg.contains(needle), "{msg}");
    assert!(
        msg.contains("data_device_force"),
        "the error says how to override: {msg}"
    );
    assert_eq!(
        imagebuild::io::sha256_file_quiet(dev).unwrap(),
        before,
        "device bytes unchanged"
    );
    assert_eq!(std::fs::read(root.join("etc/fstab")).unwrap(), fstab);
    assert_eq!(mount_source(&root.join("var/lib/rancher")), None);
}

#[test]
fn disk_with_a_filesystem_is_refused_and_not_touched() {
    if !root_or_skip("disk_with_a_filesystem_is_refused_and_not_touched") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dev = LoopDevice::create(&t.path().join("used.img"), 64 << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "precious"])
        .arg(&dev.path))
    .unwrap();
    assert_refused_untouched(
        &dev.path,
        |e| matches!(e, DataDeviceError::NotEmpty { signature: Signature::Ext { label, .. }, .. } if label == "precious"),
        "ext4 filesystem labelled \"precious\"",
    );
    let fat = LoopDevice::create(&t.path().join("fat.img"), 64 << 20).unwrap();
    run(Command::new("mkfs.vfat").arg(&fat.path)).unwrap();
    assert_refused_untouched(
        &fat.path,
        |e| {
            matches!(
                e,
                DataDeviceError::NotEmpty {
                    signature: Signature::Fat,
                    ..
                }
            )
        },
        "a FAT filesystem",
    );
}

#[test]
fn disk_with_a_partition_table_is_refused_and_not_touched() {
    if !root_or_skip("disk_with_a_partition_table_is_refused_and_not_touched") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    for (label, sig) in [("dos", Signature::Mbr), ("gpt", Signature::Gpt)] {
        let dev = LoopDevice::create(&t.path().join(format!("{label}.img")), 64 << 20).unwrap();
        let mut sfdisk = Command::new("sfdisk");
        sfdisk
            .arg("--quiet")
            .arg(&dev.path)
            .stdin(std::process::Stdio::piped());
        let mut child = sfdisk.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("label: {label}\n,,L\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let want = sig.clone();
        assert_refused_untouched(
            &dev.path,
            move |e| matches!(e, DataDeviceError::NotEmpty { signature, .. } if *signature == want),
            "partition table",
        );
    }
}

#[test]
fn force_erases_a_used_disk_but_never_a_mounted_one() {
    if !root_or_skip("force_erases_a_used_disk_but_never_a_mounted_one") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dev = LoopDevice::create(&t.path().join("used.img"), 64 << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "old"])
        .arg(&dev.path))
    .unwrap();

    // Mounted elsewhere: refused even with force, bytes unchanged.
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    run(Command::new("mount").arg(&dev.path).arg(&elsewhere)).unwrap();
    let root = test_root(t.path());
    let err = move_data_to(&Host::system(&root).unwrap(), &dev.path, true).unwrap_err();
    run(Command::new("umount").arg(&elsewhere)).unwrap();
    assert!(matches!(err, DataDeviceError::Mounted { .. }), "{err}");
    assert!(err.to_string().contains("is mounted at"));
    assert_eq!(blkid(&dev.path, "LABEL"), "old");

    let _unmount = Unmount(root.join("var/lib/rancher"));
    let moved = move_data_to(&Host::system(&root).unwrap(), &dev.path, true).unwrap();
    assert!(moved.formatted);
    assert_eq!(blkid(&dev.path, "LABEL"), LABEL);
}

#[test]
fn a_mounted_disk_other_than_the_data_disk_is_a_snapshot_candidate() {
    use firstboot::storage::class::DeviceKind;
    use firstboot::storage::plan::find_snapshot_candidates;
    if !root_or_skip("a_mounted_disk_other_than_the_data_disk_is_a_snapshot_candidate") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dev = LoopDevice::create(&t.path().join("snap.img"), 32 << 20).unwrap();
    let mnt = t.path().join("mnt");
    let mounted = devices::MountedLoop::ext4(dev, &mnt).unwrap();
    let mounts = firstboot::host::mountinfo::mounts().unwrap();
    let name = mounted
        .device
        .path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let found = find_snapshot_candidates(Path::new("/sys"), &mounts, Some("mmcblk0"));
    let ours = found.iter().find(|c| c.mount_point == mnt);
    assert_eq!(ours.map(|c| c.kind), Some(DeviceKind::Other), "{found:?}");
    // The data disk itself is never a candidate.
    let found = find_snapshot_candidates(Path::new("/sys"), &mounts, Some(&name));
    assert!(found.iter().all(|c| c.mount_point != mnt), "{found:?}");
}
