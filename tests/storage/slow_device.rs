//! The probe classifies deliberately slowed devices as slow (root only). Three ways to slow one:
//! a cgroup v2 `io.max` write-IOPS limit, a cgroup v1 blkio limit (whichever the host has; each
//! test skips with the reason when its mechanism is missing), and a loop device over an image on
//! a FUSE filesystem that delays every write and fsync (works wherever FUSE does).

use systests::storage::{delayed_disk, devices};

use delayed_disk::{DelayedDisk, Delays};
use devices::{blkio_v1_root, cgroup2_io_root, LoopDevice, MountedLoop, ThrottledCgroup};
use firstboot::config::StorageProfile;
use firstboot::storage::assessment::assess;
use firstboot::storage::class::{DeviceKind, Speed};
use firstboot::storage::probe::{ProbeResult, StorageProbe};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Write IOPS of the throttled devices: an SD card with a bad day.
const SLOW_WRITE_IOPS: u32 = 20;

/// Probe an ext4 loop device throttled by `make_cgroup`, inside that cgroup, and check the class.
fn throttled_is_slow(
    test: &str,
    make_cgroup: impl FnOnce(&str, &str) -> anyhow::Result<ThrottledCgroup>,
) {
    let t = tempfile::tempdir().unwrap();
    let slow = MountedLoop::ext4(
        LoopDevice::create(&t.path().join("slow.img"), 128 << 20).unwrap(),
        &t.path().join("mnt"),
    )
    .unwrap();
    let cgroup = make_cgroup(
        &format!("{test}-{}", std::process::id()),
        &slow.device.major_minor().unwrap(),
    )
    .unwrap();
    let out = cgroup
        .run(
            Path::new(env!("CARGO_BIN_EXE_probe-bench")),
            &["probe-once", slow.dir.to_str().unwrap()],
        )
        .unwrap();
    let r: ProbeResult = serde_json::from_str(out.trim()).unwrap();
    println!("{} throttled probe: {r:?}", cgroup.mechanism);
    assert!(r.writes >= 1 && r.bytes < 32 << 20);
    assert!(r.elapsed_ms < 3000, "{r:?}");
    assert_eq!(Speed::from_p99_us(r.p99_us), Speed::Slow, "{r:?}");
    assert_eq!(only_lost_and_found(&slow.dir), 0, "probe file removed");
}

fn only_lost_and_found(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != "lost+found")
        .count()
}

#[test]
fn io_max_throttled_loop_device_is_classified_slow() {
    const TEST: &str = "io_max_throttled_loop_device_is_classified_slow";
    if !systests::is_root() {
        println!("skipping {TEST}: needs root for loop devices and cgroups");
        return;
    }
    let root = match cgroup2_io_root() {
        Ok(root) => root,
        Err(why) => {
            println!("skipping {TEST}: {why}");
            return;
        }
    };
    throttled_is_slow("storage-io-max", |name, dev| {
        ThrottledCgroup::io_max(&root, name, dev, SLOW_WRITE_IOPS)
    });
}

#[test]
fn blkio_v1_throttled_loop_device_is_classified_slow() {
    const TEST: &str = "blkio_v1_throttled_loop_device_is_classified_slow";
    if !systests::is_root() {
        println!("skipping {TEST}: needs root for loop devices and cgroups");
        return;
    }
    let root = match blkio_v1_root() {
        Ok(root) => root,
        Err(why) => {
            println!("skipping {TEST}: {why}");
            return;
        }
    };
    throttled_is_slow("storage-blkio", |name, dev| {
        ThrottledCgroup::blkio_v1(&root, name, dev, SLOW_WRITE_IOPS)
    });
}

/// The FUSE-delayed device, assessed through the same call the daemon makes (`assess`): measured
/// slow, of kind `other` (a loop device), and the delays really were in the I/O path. A second,
/// undelayed FUSE device is the control: the same stack without the delays syncs at least three
/// times faster at the median, so the slowness comes from the delays, not from FUSE or loop
/// overhead (its own class is not asserted: on a loaded host, scheduling alone can push a p99
/// past 10 ms).
#[test]
fn fuse_delayed_loop_device_is_classified_slow() {
    const TEST: &str = "fuse_delayed_loop_device_is_classified_slow";
    if let Some(why) = delayed_disk::unavailable() {
        println!("skipping {TEST}: {why}");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let backing = tempfile::Builder::new()
        .prefix("storage-slow-test.")
        .tempdir_in("/dev/shm")
        .unwrap();
    let assess_on = |name: &str, delays: Delays| {
        let disk = DelayedDisk::mount(
            &t.path().join(format!("{name}-fuse")),
            &backing.path().join(name),
            64 << 20,
            delays,
        )
        .unwrap();
        let dev = MountedLoop::ext4(
            LoopDevice::attach(&disk.image).unwrap(),
            &t.path().join(name),
        )
        .unwrap();
        let (writes0, fsyncs0) = (
            disk.counters.writes.load(Ordering::Relaxed),
            disk.counters.fsyncs.load(Ordering::Relaxed),
        );
        let a = assess(
            &StorageProbe::new(&dev.dir),
            Path::new("/sys"),
            StorageProfile::Auto,
        )
        .unwrap();
        let served = (
            disk.counters.writes.load(Ordering::Relaxed) - writes0,
            disk.counters.fsyncs.load(Ordering::Relaxed) - fsyncs0,
        );
        println!(
            "{name}: {}; FUSE writes {} fsyncs {} during the probe",
            a.status_line(),
            served.0,
            served.1
        );
        assert_eq!(only_lost_and_found(&dev.dir), 0, "probe file removed");
        drop(dev);
        drop(disk);
        (a, served)
    };

    let (slow, served) = assess_on(
        "delayed",
        Delays {
            write: Duration::from_millis(2),
            fsync: Duration::from_millis(10),
        },
    );
    assert_eq!(slow.measured.kind, DeviceKind::Other);
    assert_eq!(slow.measured.speed, Speed::Slow, "{:?}", slow.probe);
    assert!(slow.probe.p50_us >= 10_000, "{:?}", slow.probe);
    assert!(slow.probe.elapsed_ms < 3000 && slow.probe.bytes < 32 << 20);
    // Each fdatasync reached the FUSE filesystem as at least one write and one fsync.
    assert!(
        served.0 >= slow.probe.writes && served.1 >= slow.probe.writes,
        "{served:?} for {} probe writes",
        slow.probe.writes
    );

    let (control, _) = assess_on(
        "undelayed",
        Delays {
            write: Duration::ZERO,
            fsync: Duration::ZERO,
        },
    );
    assert!(
        control.probe.p50_us * 3 < slow.probe.p50_us,
        "undelayed {:?} versus delayed {:?}",
        control.probe,
        slow.probe
    );
}
