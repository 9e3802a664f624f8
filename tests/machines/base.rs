//! The test base image: Debian bookworm amd64 from debootstrap, laid out like Raspberry Pi OS.
//!
//! MBR with partition 1 FAT32 `bootfs` (cmdline.txt, config.txt) at 8 MiB and partition 2 ext4
//! `rootfs`, made the rootless way (`sfdisk` on a file, `mkfs.vfat --offset` + `mcopy`,
//! `mke2fs -d -E offset=`). Only debootstrap needs root. The image is cached under
//! `<target>/machines-cache/base-<key>.img`, the key hashing every input (suite, mirror,
//! packages and this file's source), so a second run never debootstraps again.

#![allow(dead_code)] // each test uses a different part of the machines harness

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian suite of the base (matches the host's glibc, so host-built test binaries run in it).
pub const SUITE: &str = "bookworm";
/// Where debootstrap fetches packages (the only network use of the machine tests).
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages beyond minbase: an init, the system bus, mDNS, NTP client, `ip`, what firstboot calls.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "avahi-daemon",
    "systemd-timesyncd",
    "iproute2",
    "kmod",
    "procps",
];
/// Byte offset of the boot partition (Raspberry Pi OS aligns to 8 MiB).
pub const BOOT_START: u64 = 8 << 20;
/// Size of the boot partition, as on Raspberry Pi OS (mtools needs FAT32 to have >= 65525 clusters).
pub const BOOT_SIZE: u64 = 512 << 20;
/// Bytes of headroom in the root filesystem beyond the debootstrapped tree.
const ROOT_HEADROOM: u64 = 192 << 20;
const ALIGN: u64 = 8 << 20;

/// The cache directory of the machine tests: `<target>/machines-cache`.
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // <target>/<profile>/deps/<test> (or <target>/<profile>/<bin>): find the profile's parent.
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    dir.join("machines-cache")
}

/// The cache key of the base: sha256 over every input that shapes it.
pub fn key() -> String {
    let mut h = Sha256::new();
    for part in [SUITE, MIRROR, &PACKAGES.join(","), include_str!("base.rs")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The MBR disk id of the base (`PARTUUID=<id>-01`), derived from the key so it is stable.
pub fn disk_id() -> String {
    format!("0x{}", &key()[..8])
}

/// Returns the base image, building and caching it first when needed (takes a file lock, so
/// tests running in parallel build it once).
pub fn image() -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("base-{}.img", key()));
    let lock_file = std::fs::File::create(dir.join("base.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the base cache")?;
    if path.exists() {
        return Ok(path);
    }
    eprintln!(
        "machines: building the test base image {} (debootstrap {SUITE}, once)",
        path.display()
    );
    let work = tempfile::Builder::new()
        .prefix("base-build-")
        .tempdir_in(&dir)
        .context("creating the base work dir")?;
    let partial = work.path().join("base.img");
    build(work.path(), &partial)?;
    std::fs::rename(&partial, &path).context("moving the base into the cache")?;
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn put(dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
}

fn du_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-B1", "--apparent-size"])
        .arg(dir)
        .output()
        .context("running du")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("parsing du output")
}

/// Debootstraps the root tree, shapes it like Raspberry Pi OS bookworm and writes the image.
fn build(work: &Path, out: &Path) -> Result<()> {
    let root = work.join("rootfs");
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(MIRROR))
    .context("debootstrapping the base (needs deb.debian.org)")?;

    let id = disk_id();
    let part = id.trim_start_matches("0x");
    // Raspberry Pi OS bookworm ships an empty machine-id (first boot makes one) and this fstab.
    put(&root, "etc/machine-id", b"")?;
    put(&root, "etc/hostname", b"raspberrypi\n")?;
    put(
        &root,
        "etc/fstab",
        format!(
            "proc            /proc           proc    defaults          0       0\n\
             PARTUUID={part}-01  /boot/firmware  vfat    defaults          0       2\n\
             PARTUUID={part}-02  /               ext4    defaults,noatime  0       1\n"
        )
        .as_bytes(),
    )?;
    std::fs::create_dir_all(root.join("boot/firmware"))?;
    // Raspberry Pi OS bookworm's first-boot hook (named on cmdline.txt; imagebuild keeps it). A
    // container never runs it: systemd-nspawn starts /sbin/init, not the kernel command line.
    put(
        &root,
        "usr/lib/raspberrypi-sys-mods/firstboot",
        b"#!/bin/sh\n# stands in for raspberrypi-sys-mods' first-boot script\nexec /sbin/init\n",
    )?;
    std::fs::set_permissions(
        root.join("usr/lib/raspberrypi-sys-mods/firstboot"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    // Smaller image: package caches are not part of an installed system.
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in std::fs::read_dir(root.join(d))?.flatten() {
            if e.path().is_file() {
                std::fs::remove_file(e.path())?;
            }
        }
    }

    let root_size = (du_bytes(&root)? * 13 / 10 + ROOT_HEADROOM).div_ceil(ALIGN) * ALIGN;
    let root_start = BOOT_START + BOOT_SIZE;
    let total = root_start + root_size;
    std::fs::File::create(out)?.set_len(total)?;
    let table = format!(
        "label: dos\nlabel-id: {id}\nunit: sectors\n\nstart={}, size={}, type=c\nstart={}, size={}, type=83\n",
        BOOT_START / 512,
        BOOT_SIZE / 512,
        root_start / 512,
        root_size / 512
    );
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running sfdisk")?;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(table.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("sfdisk failed: {}", String::from_utf8_lossy(&o.stderr));
    }

    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "bootfs"])
        .arg("--offset")
        .arg((BOOT_START / 512).to_string())
        .arg(out)
        .arg((BOOT_SIZE / 1024).to_string()))?;
    let boot = work.join("boot");
    put(
        &boot,
        "cmdline.txt",
        format!(
            "console=serial0,115200 console=tty1 root=PARTUUID={part}-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
        )
        .as_bytes(),
    )?;
    put(
        &boot,
        "config.txt",
        b"# Test base (amd64 machines under systemd-nspawn): shaped like Raspberry Pi OS.\n[all]\n",
    )?;
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", out.display(), BOOT_START))
        .arg(boot.join("cmdline.txt"))
        .arg(boot.join("config.txt"))
        .arg("::"))?;

    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "rootfs"])
        .arg("-E")
        .arg(format!("offset={root_start}"))
        .arg("-d")
        .arg(&root)
        .arg(out)
        .arg(format!("{}k", root_size / 1024)))
    .context("writing the root filesystem")?;

    run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={root_start}", out.display())))
    .context("checking the root filesystem")?;
    Ok(())
}
