//! The VM tier, one node: firstboot's intake on a real FAT mount.
//!
//! The image is the one a user builds (`imagebuild build`, board rpi4, the aarch64 firstboot),
//! stamped with `imagebuild stamp`, booted by qemu-system-aarch64 `virt` under TCG with the
//! kernel and initrd of its own root filesystem; the guest kernel mounts the FAT partition as
//! vfat at `/boot/firmware`. After a clean power-off the image is read on the host.
//!
//! Slow, so gated: `VM_TESTS=1` (root, qemu-system-arm, gcc-aarch64-linux-gnu; see
//! tests/debian-packages.txt). The first run builds the arm64 base (debootstrap's second stage
//! under TCG, tens of minutes, cached); each test then boots one machine (a few minutes under TCG
//! on 2 cores). Run: `VM_TESTS=1 nice -n 10 cargo test -p systests --test vm_intake -- --nocapture`
//! (on a shared machine under its lock: `flock /work/coord/heavy.lock ...`).

use systests::vm::harness;

use harness::{contains, image, Vm};
use std::time::{Duration, Instant};

/// The environment variable that turns these tests on.
const GATE: &str = "VM_TESTS";
/// Boot to firstboot's first step under TCG on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// What firstboot says right after intake (the identity step; lifecycle/mod.rs).
const AFTER_INTAKE: &str = "finding the node id and setting the hostname";

fn random_token() -> String {
    let mut bytes = [0u8; 12];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("reading /dev/urandom");
    format!("vm-token-{}", hex::encode(bytes))
}

fn cluster_toml(token: &str) -> String {
    format!("[cluster]\nname = \"vmone\"\ntoken = \"{token}\"\nservers = 1\nnodes = 1\n")
}

/// The node image and the imagebuild binary, or None (skip printed).
fn setup(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if let Some(why) = harness::skip_reason(GATE) {
        systests::skip(test, &why);
        return None;
    }
    let t = Instant::now();
    let node = image::node_image().expect("the VM node image");
    eprintln!(
        "vm: node image ready after {:.0} s: {}",
        t.elapsed().as_secs_f64(),
        node.display()
    );
    let imagebuild = image::imagebuild_bin().expect("the imagebuild binary");
    Some((node, imagebuild))
}

#[test]
fn intake_scrubs_the_token_in_place_on_a_real_fat_mount() {
    let Some((node, imagebuild)) = setup("intake_scrubs_the_token_in_place_on_a_real_fat_mount")
    else {
        return;
    };
    let token = random_token();
    let mut vm = Vm::new(&node).expect("a machine");
    vm.stamp(&imagebuild, &cluster_toml(&token))
        .expect("imagebuild stamp");
    assert!(
        contains(&vm.boot_partition().unwrap(), token.as_bytes()),
        "the stamped card holds the token (else the checks below prove nothing)"
    );

    // findmnt prints how the guest mounted the boot partition (systemd runs it after
    // local-fs.target, its output on the console).
    vm.boot(&[
        "\"systemd.run=/usr/bin/findmnt -n -o FSTYPE,TARGET /boot/firmware\"",
        "systemd.run_success_action=none",
        "systemd.run_failure_action=none",
    ])
    .expect("booting");
    let after = vm
        .wait_console(AFTER_INTAKE, BOOT_TIMEOUT)
        .expect("firstboot finished intake");
    eprintln!(
        "vm: boot to after-intake {:.1} s (TCG, {} host cores)",
        after.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    vm.power_down(POWER_OFF_TIMEOUT).expect("a clean power-off");
    let console = vm.console_text();

    assert!(
        console
            .lines()
            .any(|l| l.contains("vfat") && l.contains("/boot/firmware")),
        "the guest mounted /boot/firmware as vfat; console:\n{}",
        harness::base::tail(&vm.console)
    );
    assert!(
        !contains(console.as_bytes(), token.as_bytes()),
        "the token appeared on the serial console (journal)"
    );

    // The boot copy: scrubbed text, same cluster name, no token.
    let boot_copy =
        String::from_utf8(vm.fat_file("cluster.toml").expect("cluster.toml")).expect("utf-8");
    assert!(
        boot_copy.starts_with(firstboot::intake::SCRUB_MARKER),
        "boot copy not scrubbed:\n{boot_copy}"
    );
    assert!(boot_copy.contains("name = \"vmone\""), "{boot_copy}");
    assert!(!boot_copy.contains(&token));

    // The root copy: the token, root-only.
    let root_copy = vm
        .root_file("/etc/firstboot/cluster.toml")
        .expect("root copy /etc/firstboot/cluster.toml");
    assert!(contains(&root_copy, token.as_bytes()));
    assert_eq!(
        vm.root_mode("/etc/firstboot/cluster.toml"),
        Some(0o600),
        "root copy mode"
    );

    // The partition: consistent, and the token in none of its sectors.
    let (clean, fsck) = vm.fsck_boot().expect("fsck.vfat");
    assert!(clean, "fsck.vfat -n of the boot partition:\n{fsck}");
    let raw = vm.boot_partition().unwrap();
    assert!(
        !contains(&raw, token.as_bytes()),
        "the token is still in the boot partition's raw sectors"
    );
}

/// What the raw-sector check is worth: a naive scrub (write a new file without the token, rename
/// it over the old one) run by the guest kernel on the real vfat mount leaves a file and a
/// filesystem that look clean, and the token in freed clusters, which the check finds.
#[test]
fn raw_sector_check_catches_a_naive_scrub() {
    let Some((node, imagebuild)) = setup("raw_sector_check_catches_a_naive_scrub") else {
        return;
    };
    let token = random_token();
    let mut vm = Vm::new(&node).expect("a machine");
    vm.stamp(&imagebuild, &cluster_toml(&token))
        .expect("imagebuild stamp");
    vm.put_fat_file(
        "naive-scrub.sh",
        b"set -e\n\
          grep -q '^/dev/[^ ]* /boot/firmware vfat ' /proc/mounts\n\
          cd /boot/firmware\n\
          grep -v '^token' cluster.toml > cluster.toml.new\n\
          sync cluster.toml.new\n\
          mv cluster.toml.new cluster.toml\n\
          sync\n\
          echo NAIVE-SCRUB-DONE\n",
    )
    .unwrap();
    // firstboot masked: this boot runs only the naive scrub, then powers off.
    vm.boot(&[
        "systemd.mask=firstboot.service",
        "\"systemd.run=/bin/sh /boot/firmware/naive-scrub.sh\"",
        "systemd.run_success_action=poweroff",
        "systemd.run_failure_action=poweroff",
    ])
    .expect("booting");
    vm.wait_stopped(BOOT_TIMEOUT)
        .expect("the machine powered off");
    let console = vm.console_text();
    assert!(
        console.contains("NAIVE-SCRUB-DONE"),
        "the naive scrub did not finish on the vfat mount; console:\n{}",
        harness::base::tail(&vm.console)
    );

    let boot_copy = vm.fat_file("cluster.toml").expect("cluster.toml");
    assert!(
        !contains(&boot_copy, token.as_bytes()),
        "the file itself no longer holds the token"
    );
    let (clean, fsck) = vm.fsck_boot().expect("fsck.vfat");
    assert!(clean, "fsck.vfat -n:\n{fsck}");
    assert!(
        contains(&vm.boot_partition().unwrap(), token.as_bytes()),
        "the raw-sector check must find the token a naive scrub leaves in freed clusters"
    );
}
