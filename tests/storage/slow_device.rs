//! The probe classifies a deliberately slowed device as slow (root only): ext4 on a loop device
//! whose writes a cgroup throttles to a few IOPS, probed by `probe-bench probe-once` inside it.

#[path = "devices.rs"]
mod devices;

use devices::{LoopDevice, MountedLoop, ThrottledCgroup};
use firstboot::storage::class::Speed;
use firstboot::storage::probe::ProbeResult;
use std::path::Path;

#[test]
fn throttled_loop_device_is_classified_slow() {
    if !systests::is_root() {
        println!("skipping throttled_loop_device_is_classified_slow: needs root for loop devices and cgroups");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let slow = MountedLoop::ext4(
        LoopDevice::create(&t.path().join("slow.img"), 128 << 20).unwrap(),
        &t.path().join("mnt"),
    )
    .unwrap();
    let cgroup = ThrottledCgroup::new(
        &format!("storage-slow-test-{}", std::process::id()),
        &slow.device.major_minor().unwrap(),
        20,
    )
    .unwrap();
    let out = cgroup
        .run(
            Path::new(env!("CARGO_BIN_EXE_probe-bench")),
            &["probe-once", slow.dir.to_str().unwrap()],
        )
        .unwrap();
    let r: ProbeResult = serde_json::from_str(out.trim()).unwrap();
    println!("throttled probe: {r:?}");
    assert!(r.writes >= 1 && r.bytes < 32 << 20);
    assert_eq!(Speed::from_p99_us(r.p99_us), Speed::Slow, "{r:?}");
    assert_eq!(
        std::fs::read_dir(&slow.dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "lost+found")
            .count(),
        0,
        "probe file removed"
    );
}
