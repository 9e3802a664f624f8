//! The test base images: Debian amd64 from debootstrap, laid out like Raspberry Pi OS, one per
//! Raspberry Pi OS release the catalog offers ([`Release`]: bookworm and trixie).
//!
//! What each reproduces of its Raspberry Pi OS release's first boot (research/raspios-fidelity.md):
//! - both: `/etc/hostname` and the `127.0.1.1 raspberrypi` line of `/etc/hosts` (pi-gen's
//!   stage1 net tweaks), fstab by PARTUUID, the boot partition's cmdline.txt and config.txt;
//! - bookworm: an empty `/etc/machine-id` (no first-boot presets) and the `init=` first-boot hook;
//! - trixie: `/etc/machine-id` = `uninitialized` (pi-gen c4e9044f), so systemd runs its first-boot
//!   `preset-all` and enables every unit with an `[Install]` section that no preset disables;
//!   `resize` on cmdline.txt instead of `init=`; NetworkManager's state file with
//!   `WirelessEnabled=false` (pi-gen e86b901e; NetworkManager itself is not installed: it would
//!   take over the harness's `eth0`); a first user `pi` (uid 1000) and a stand-in of userconf-pi's
//!   `userconfig.service` that renames it after `userconf.txt` on first boot.
//!
//! MBR with partition 1 FAT32 `bootfs` (cmdline.txt, config.txt) at 8 MiB and partition 2 ext4
//! `rootfs`, made the rootless way (`sfdisk` on a file, `mkfs.vfat --offset` + `mcopy`,
//! `mke2fs -d -E offset=`). Only debootstrap needs root. The image is cached under
//! `<target>/machines-cache/base-<key>.img`, the key hashing every input (suite, mirror,
//! packages and this file's source), so a second run never debootstraps again.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Raspberry Pi OS release a base imitates (its Debian suite). Host-built test binaries run in
/// both: bookworm matches the host's glibc, trixie's is newer (glibc is backward compatible).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Raspberry Pi OS bookworm (Debian 12).
    Bookworm,
    /// Raspberry Pi OS trixie (Debian 13), the catalog's default.
    Trixie,
}

/// The environment variable choosing the base of [`Release::from_env`].
pub const BASE_ENV: &str = "MACHINES_BASE";

impl Release {
    /// Both releases.
    pub const ALL: [Release; 2] = [Release::Bookworm, Release::Trixie];

    /// The Debian suite debootstrap installs.
    pub fn suite(self) -> &'static str {
        match self {
            Release::Bookworm => "bookworm",
            Release::Trixie => "trixie",
        }
    }

    /// Parses a suite name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim() {
            "bookworm" => Ok(Release::Bookworm),
            "trixie" => Ok(Release::Trixie),
            other => bail!("unknown machine base {other:?}: use bookworm or trixie"),
        }
    }

    /// The base named by `MACHINES_BASE` (bookworm or trixie); trixie when it is unset.
    pub fn from_env() -> Self {
        match std::env::var(BASE_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                Self::parse(&v).unwrap_or_else(|e| panic!("{BASE_ENV}: {e}"))
            }
            _ => Release::Trixie,
        }
    }
}
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
use crate::raspios_disk::{self, run};
pub use crate::raspios_disk::{BOOT_SIZE, BOOT_START};
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

/// The cache key of a base: sha256 over every input that shapes it.
pub fn key(release: Release) -> String {
    let mut h = Sha256::new();
    for part in [
        release.suite(),
        MIRROR,
        &PACKAGES.join(","),
        include_str!("base.rs"),
        include_str!("../raspios_disk.rs"),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The MBR disk id of the base (`PARTUUID=<id>-01`), derived from the key so it is stable.
pub fn disk_id(release: Release) -> String {
    format!("0x{}", &key(release)[..8])
}

/// Returns the base image of `release`, building and caching it first when needed (takes a file
/// lock, so tests running in parallel build it once).
pub fn image(release: Release) -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("base-{}-{}.img", release.suite(), key(release)));
    let lock_file = std::fs::File::create(dir.join("base.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the base cache")?;
    if path.exists() {
        return Ok(path);
    }
    eprintln!(
        "machines: building the test base image {} (debootstrap {}, once)",
        path.display(),
        release.suite()
    );
    let work = tempfile::Builder::new()
        .prefix("base-build-")
        .tempdir_in(&dir)
        .context("creating the base work dir")?;
    let partial = work.path().join("base.img");
    build(release, work.path(), &partial)?;
    std::fs::rename(&partial, &path).context("moving the base into the cache")?;
    Ok(path)
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

/// Debootstraps the root tree, shapes it like Raspberry Pi OS `release` and writes the image.
fn build(release: Release, work: &Path, out: &Path) -> Result<()> {
    let root = work.join("rootfs");
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(release.suite())
        .arg(&root)
        .arg(MIRROR))
    .context("debootstrapping the base (needs deb.debian.org)")?;

    let id = disk_id(release);
    let part = id.trim_start_matches("0x");
    // Raspberry Pi OS bookworm ships an empty machine-id (first boot makes one, no presets);
    // trixie `uninitialized` (first boot makes one AND runs `systemctl preset-all`).
    let machine_id: &[u8] = match release {
        Release::Bookworm => b"",
        Release::Trixie => b"uninitialized\n",
    };
    put(&root, "etc/machine-id", machine_id)?;
    put(&root, "etc/hostname", b"raspberrypi\n")?;
    // pi-gen's /etc/hosts (both releases): the hostname on 127.0.1.1.
    put(
        &root,
        "etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
          ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t\traspberrypi\n",
    )?;
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
    match release {
        Release::Bookworm => {
            // Raspberry Pi OS bookworm's first-boot hook (named on cmdline.txt; imagebuild keeps
            // it). A container never runs it: systemd-nspawn starts /sbin/init, not the kernel
            // command line.
            put(
                &root,
                "usr/lib/raspberrypi-sys-mods/firstboot",
                b"#!/bin/sh\n# stands in for raspberrypi-sys-mods' first-boot script\nexec /sbin/init\n",
            )?;
            std::fs::set_permissions(
                root.join("usr/lib/raspberrypi-sys-mods/firstboot"),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
        }
        Release::Trixie => shape_trixie(&root)?,
    }
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
    // Bookworm resizes through the init= hook; trixie's initramfs and rpi-resize.service act on
    // the `resize` word (pi-gen arm64 stage1 cmdline.txt).
    let first_boot_word = match release {
        Release::Bookworm => "quiet init=/usr/lib/raspberrypi-sys-mods/firstboot",
        Release::Trixie => "resize",
    };
    raspios_disk::write(
        &raspios_disk::Disk {
            id: &id,
            root_size,
            cmdline: &format!(
                "console=serial0,115200 console=tty1 root=PARTUUID={part}-02 rootfstype=ext4 fsck.repair=yes rootwait {first_boot_word}\n"
            ),
            config_txt: "# Test base (amd64 machines under systemd-nspawn): shaped like Raspberry Pi OS.\n[all]\n",
            root: &root,
        },
        work,
        out,
    )?;

    run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={root_start}", out.display())))
    .context("checking the root filesystem")?;
    Ok(())
}

/// The stand-in of userconf-pi's first-boot rename (`userconfig.service` running
/// `userconf-service`), written for the test base from userconf-pi's documented behaviour: the
/// first line of `userconf.txt` is `name:encrypted-password`; a name must match
/// `^[a-z][a-z0-9-]*$` and be shorter than 30 characters, the password must not be empty; the
/// uid-1000 user and its group are renamed (home moved), the password set with `chpasswd -e`, and
/// the file removed. A rejected file becomes `failed_userconf.txt` (the real one then asks on tty8).
const USERCONF_SCRIPT: &str = r#"#!/bin/sh
# TEST BASE stand-in for userconf-pi's userconf-service (tests/machines/base.rs).
set -e
boot=/boot/firmware
file=$boot/userconf.txt
[ -f "$file" ] || file=$boot/userconf
[ -f "$file" ] || exit 0
line=$(head -n1 "$file" | tr -d '\r')
name=${line%%:*}
pass=${line#*:}
old=$(getent passwd 1000 | cut -d: -f1)
if ! echo "$name" | grep -Eq '^[a-z][a-z0-9-]*$' || [ "${#name}" -ge 30 ] || [ -z "$pass" ] || [ "$pass" = "$line" ]; then
    echo "userconf: rejected $file (user name must match ^[a-z][a-z0-9-]*\$ and be under 30 characters)" >&2
    mv "$file" "$boot/failed_userconf.txt"
    exit 0
fi
if [ "$old" != "$name" ]; then
    usermod -l "$name" -d "/home/$name" -m "$old"
    groupmod -n "$name" "$old" || true
fi
echo "$name:$pass" | chpasswd -e
rm -f "$file"
systemctl disable userconfig.service || true
"#;

const USERCONF_UNIT: &str =
    "# TEST BASE stand-in for userconf-pi's userconfig.service (tests/machines/base.rs).\n\
[Unit]\nDescription=Rename the first user after userconf.txt (test stand-in of userconf-pi)\n\
After=local-fs.target\nBefore=systemd-user-sessions.service\n\n\
[Service]\nType=oneshot\nExecStart=/usr/lib/userconf-pi/userconf-service\n\n\
[Install]\nWantedBy=multi-user.target\n";

/// What Raspberry Pi OS trixie has that the plain debootstrapped tree lacks (see the module doc).
fn shape_trixie(root: &Path) -> Result<()> {
    // pi-gen stage2/02-net-tweaks: no Wi-Fi country set, so the radio starts disabled.
    put(
        root,
        "var/lib/NetworkManager/NetworkManager.state",
        b"[main]\nWirelessEnabled=false\n",
    )?;
    // pi-gen's first user (FIRST_USER_NAME=pi, uid 1000), renamed on first boot by userconf-pi.
    run(Command::new("chroot").arg(root).args([
        "useradd",
        "-m",
        "-u",
        "1000",
        "-U",
        "-s",
        "/bin/bash",
        "pi",
    ]))
    .context("creating the first user")?;
    put(
        root,
        "usr/lib/userconf-pi/userconf-service",
        USERCONF_SCRIPT.as_bytes(),
    )?;
    std::fs::set_permissions(
        root.join("usr/lib/userconf-pi/userconf-service"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    put(
        root,
        "usr/lib/systemd/system/userconfig.service",
        USERCONF_UNIT.as_bytes(),
    )?;
    // Enabled as `rename-user -f -s` leaves it.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/userconfig.service",
        wants.join("userconfig.service"),
    )?;
    Ok(())
}
