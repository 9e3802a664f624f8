//! The arm64 test base of the VM tier: Debian trixie arm64 laid out like Raspberry Pi OS trixie,
//! with Debian's arm64 kernel, its modules and an initramfs in the root filesystem, so an emulated
//! `virt` machine boots it with the kernel and initrd of the image itself.
//!
//! How it is made (there is no binfmt_misc on the build host, so no arm64 program runs there):
//! 1. `debootstrap --foreign --arch=arm64` on the host: packages downloaded, the essential ones
//!    unpacked, nothing configured;
//! 2. the disk laid out the rootless way, like Raspberry Pi OS: MBR, partition 1 FAT32 `bootfs` at
//!    8 MiB (cmdline.txt, config.txt), partition 2 ext4 `rootfs` holding the unfinished tree
//!    (`mke2fs -d`);
//! 3. the second stage runs inside the emulated machine: qemu-system-aarch64 `virt` boots Debian's
//!    kernel (taken from the downloaded `linux-image-*-arm64` package) with a small initramfs made
//!    here (busybox from `busybox-static`, the modules that mount the root partition); its init
//!    mounts the ext4 partition and runs `debootstrap --second-stage` in it, then the shaping
//!    script below, then powers off. The kernel package's own postinst makes the initramfs the
//!    image boots with later.
//!
//! What it reproduces of Raspberry Pi OS trixie (research/raspios-fidelity.md): `/etc/hostname`
//! and the `127.0.1.1 raspberrypi` line of `/etc/hosts`, fstab by PARTUUID (the FAT at
//! `/boot/firmware`, fsck pass 2), `/etc/machine-id` = `uninitialized` (systemd's first-boot
//! `preset-all` runs), `resize` on cmdline.txt, NetworkManager's state file with
//! `WirelessEnabled=false`, the first user `pi` (uid 1000).
//! Not reproduced (yet): userconf-pi's rename service, the Raspberry Pi kernel and firmware (the
//! `virt` machine has none: see tests/vm/README section of the top README).
//! Differences the emulated machine needs: `/etc/initramfs-tools/modules` lists the virtio and
//! ext4/vfat modules (a Pi boots from its SD host controller instead).
//!
//! Cached as `<target>/machines-cache/vm-base-arm64-<key>.img`, the key hashing every input
//! (suite, mirror, packages, this file's source), under a file lock.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian suite (Raspberry Pi OS trixie is Debian 13).
pub const SUITE: &str = "trixie";
/// Where debootstrap fetches packages (the only network use of the VM tier).
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages beyond minbase: those of the nspawn machines' base, the kernel, the FAT checker that
/// fstab's pass 2 runs, and busybox (the second stage's initramfs takes its binary).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "avahi-daemon",
    "systemd-timesyncd",
    "iproute2",
    "kmod",
    "procps",
    "linux-image-arm64",
    "initramfs-tools",
    "dosfstools",
    "busybox-static",
];
use crate::raspios_disk::{self, run};
pub use crate::raspios_disk::{BOOT_SIZE, BOOT_START};
/// The root partition: the installed tree (~700 MiB with the kernel) plus room for imagebuild.
const ROOT_SIZE: u64 = 2048 << 20;
/// The modules the second stage's initramfs loads (with their dependencies) unless built in;
/// ext4 needs the crc32c algorithm (a soft dependency, not in its `depends=`).
const STAGE2_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
];
/// How long the second stage may take under TCG on a loaded 2-core machine.
const STAGE2_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// The cache directory shared with the nspawn machine tests: `<target>/machines-cache`.
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
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
    for part in [
        SUITE,
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

/// The MBR disk id (`PARTUUID=<id>-01`), derived from the key so it is stable.
pub fn disk_id() -> String {
    format!("0x{}", &key()[..8])
}

/// Why the VM tier cannot run here, if it cannot (for a printed skip).
pub fn skip_reason() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root (debootstrap, network namespaces)".into());
    }
    for tool in [
        "qemu-system-aarch64",
        "debootstrap",
        "dpkg-deb",
        "xz",
        "sfdisk",
        "mkfs.vfat",
        "mcopy",
        "mke2fs",
        "e2fsck",
        "debugfs",
        "fsck.vfat",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is missing (apt-get install the packages of tests/debian-packages.txt)"
            ));
        }
    }
    None
}

/// The full path of a program on PATH (or in the sbin directories).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Returns the base image, building and caching it first when needed (file lock: parallel tests
/// build it once).
pub fn image() -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("vm-base-arm64-{}.img", key()));
    let lock_file = std::fs::File::create(dir.join("vm-base.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the VM base cache")?;
    if path.exists() {
        return Ok(path);
    }
    let stage1 = host_stage()?;
    eprintln!(
        "vm: building the arm64 test base {} (second stage under qemu-system-aarch64: once, \
         many minutes under TCG)",
        path.display()
    );
    let work = tempfile::Builder::new()
        .prefix("vm-base-build-")
        .tempdir_in(&dir)
        .context("creating the base work dir")?;
    let partial = work.path().join("base.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(stage1.join("disk.img"))
        .arg(&partial))?;
    guest_stage(
        &stage1.join("vmlinuz"),
        &stage1.join("stage2.cpio"),
        work.path(),
        &partial,
    )?;
    std::fs::rename(&partial, &path).context("moving the base into the cache")?;
    // The unfinished disk is of no further use.
    std::fs::remove_dir_all(&stage1).ok();
    Ok(path)
}

/// The host's part, cached on its own (it needs no emulated machine, so it can run while
/// another test holds the machine): `<cache>/vm-base-stage1-<key>/` with `disk.img` (the laid
/// out disk, the unfinished tree in its ext4), `vmlinuz` and `stage2.cpio`.
pub fn host_stage() -> Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("vm-base-stage1-{}", key()));
    let lock_file =
        std::fs::File::create(dir.join("vm-base-stage1.lock")).context("creating the lock")?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the VM base cache")?;
    if path.is_dir() {
        return Ok(path);
    }
    eprintln!(
        "vm: debootstrap --foreign {SUITE} arm64 into {}",
        path.display()
    );
    let work = tempfile::Builder::new()
        .prefix("vm-base-stage1-build-")
        .tempdir_in(&dir)
        .context("creating the base work dir")?;
    let out = work.path().join("out");
    std::fs::create_dir_all(&out)?;
    build(work.path(), &out)?;
    std::fs::rename(&out, &path).context("moving the first stage into the cache")?;
    Ok(path)
}

fn put(dir: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// The one downloaded package whose file name starts with `prefix` (e.g. `linux-image-6`).
fn cached_deb(root: &Path, prefix: &str) -> Result<PathBuf> {
    let archives = root.join("var/cache/apt/archives");
    std::fs::read_dir(&archives)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".deb")
        })
        .with_context(|| format!("no {prefix}*.deb in {}", archives.display()))
}

/// The script the second stage's init runs in the finished tree (chrooted): Raspberry Pi OS
/// trixie's first-boot traits, and the initramfs the image boots with.
fn shape_script(part: &str) -> String {
    format!(
        r#"#!/bin/sh
set -ex
# Raspberry Pi OS trixie (pi-gen c4e9044f): systemd's first boot runs preset-all.
printf 'uninitialized\n' > /etc/machine-id
printf 'raspberrypi\n' > /etc/hostname
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t\traspberrypi\n' > /etc/hosts
cat > /etc/fstab <<EOF
proc            /proc           proc    defaults          0       0
PARTUUID={part}-01  /boot/firmware  vfat    defaults          0       2
PARTUUID={part}-02  /               ext4    defaults,noatime  0       1
EOF
mkdir -p /boot/firmware /var/lib/NetworkManager
printf '[main]\nWirelessEnabled=false\n' > /var/lib/NetworkManager/NetworkManager.state
useradd -m -u 1000 -U -s /bin/bash pi
# The emulated machine's disk and filesystems (a Pi boots from its SD host controller).
printf 'virtio_pci\nvirtio_mmio\nvirtio_blk\nvirtio_net\next4\nvfat\nnls_cp437\nnls_ascii\n' >> /etc/initramfs-tools/modules
update-initramfs -u -k all
ls /boot/vmlinuz-* /boot/initrd.img-*
rm -f /var/cache/apt/archives/*.deb /var/lib/apt/lists/*_Packages
"#
    )
}

/// The second stage's `/init` (busybox sh). Prints `VM-BASE-STAGE2 rc=<n>` on the console.
const STAGE2_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
i=0
while [ ! -b /dev/vda2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda2 /root || { echo "VM-BASE-STAGE2 rc=98"; poweroff -f; }
(
  set -e
  chroot /root /debootstrap/debootstrap --second-stage
  mount -t proc proc /root/proc
  mount -t sysfs sysfs /root/sys
  mount --bind /dev /root/dev
  chroot /root /bin/sh /vm-base-shape.sh
)
rc=$?
rm -f /root/vm-base-shape.sh
umount /root/dev /root/sys /root/proc 2>/dev/null
sync
umount /root
echo "VM-BASE-STAGE2 rc=$rc"
poweroff -f
"#;

/// Debootstraps and lays out the disk: `disk.img`, `vmlinuz` and `stage2.cpio` into `out_dir`.
fn build(work: &Path, out_dir: &Path) -> Result<()> {
    let out = &out_dir.join("disk.img");
    let root = work.join("rootfs");
    run(Command::new("nice")
        .arg("debootstrap")
        .args(["--foreign", "--arch=arm64", "--variant=minbase"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(MIRROR))
    .context("debootstrap --foreign (needs deb.debian.org)")?;

    // Kernel and busybox for the second stage, out of the downloaded packages.
    let kernel_dir = work.join("kernel");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(cached_deb(&root, "linux-image-6")?)
        .arg(&kernel_dir))?;
    let busybox_dir = work.join("busybox");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(cached_deb(&root, "busybox-static_")?)
        .arg(&busybox_dir))?;
    let vmlinuz = find_prefixed(&kernel_dir.join("boot"), "vmlinuz-")?;
    std::fs::copy(&vmlinuz, out_dir.join("vmlinuz"))?;
    let initrd = out_dir.join("stage2.cpio");
    write_stage2_initramfs(&kernel_dir, &busybox_dir, &initrd)?;

    let id = disk_id();
    let part = id.trim_start_matches("0x").to_string();
    put(
        &root,
        "vm-base-shape.sh",
        shape_script(&part).as_bytes(),
        0o755,
    )?;

    // The disk, as Raspberry Pi OS lays it out.
    raspios_disk::write(
        &raspios_disk::Disk {
            id: &id,
            root_size: ROOT_SIZE,
            cmdline: &format!(
                "console=serial0,115200 console=tty1 root=PARTUUID={part}-02 rootfstype=ext4 fsck.repair=yes rootwait resize\n"
            ),
            config_txt: "# Test base (arm64 VMs under qemu virt): shaped like Raspberry Pi OS trixie.\n[all]\n",
            root: &root,
        },
        work,
        out,
    )
    .context("writing the unfinished disk")?;
    Ok(())
}

/// Boots the disk `out` in the emulated machine, whose init runs debootstrap's second stage and
/// the shaping script, then checks the result.
fn guest_stage(vmlinuz: &Path, initrd: &Path, work: &Path, out: &Path) -> Result<()> {
    let root_start = BOOT_START + BOOT_SIZE;
    let console = work.join("stage2-console.log");
    eprintln!(
        "vm: second stage running in qemu-system-aarch64; console: {}",
        console.display()
    );
    let started = Instant::now();
    // No `nice` here: the caller nices the whole run (`nice -n 10`); nicing qemu again left it
    // at 19 behind every compiler on a shared machine (2nd run: 6 CPU-minutes in 13 minutes).
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args([
        "-M",
        "virt",
        "-cpu",
        "cortex-a72",
        "-smp",
        "2",
        "-m",
        "1024",
    ])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyAMA0 rdinit=/init panic=-1"])
    .arg("-drive")
    // Flushes ignored: dpkg fsyncs every file, and the result is kept only after the guest
    // synced, unmounted and powered off cleanly and e2fsck passed.
    .arg(format!(
        "file={},format=raw,if=virtio,cache=unsafe",
        out.display()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = qemu.spawn().context("starting qemu-system-aarch64")?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut err).ok();
                }
                bail!("qemu-system-aarch64 failed ({status}): {err}");
            }
            break;
        }
        if started.elapsed() > STAGE2_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            bail!(
                "the second stage did not finish in {STAGE2_TIMEOUT:?}; console: {}",
                tail(&console)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    if !log.contains("VM-BASE-STAGE2 rc=0") {
        bail!("the second stage failed; console:\n{}", tail(&console));
    }
    eprintln!(
        "vm: second stage done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={root_start}", out.display())))
    .context("checking the root filesystem")?;
    Ok(())
}

/// The last 60 lines of a console log.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// The module directory of an unpacked kernel package (`lib/modules/<ver>` or, merged-/usr,
/// `usr/lib/modules/<ver>`).
fn modules_dir(kernel_dir: &Path) -> Result<PathBuf> {
    for base in ["usr/lib/modules", "lib/modules"] {
        let d = kernel_dir.join(base);
        if d.is_dir() {
            return find_prefixed(&d, "");
        }
    }
    bail!("no modules directory in {}", kernel_dir.display())
}

/// A module's name as the kernel knows it (`-` and `_` are the same).
fn module_name(file: &str) -> String {
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst` with the host's tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => Ok(std::fs::read(path)?),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {tool}"))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` list of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    for (i, w) in ko.windows(key.len()).enumerate() {
        if w == key && (i == 0 || ko[i - 1] == 0) {
            let rest = &ko[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            return String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect();
        }
    }
    Vec::new()
}

/// The second stage's initramfs: busybox, `/init`, and the modules of [`STAGE2_MODULES`] with their
/// dependencies in load order (decompressed, for busybox's insmod).
fn write_stage2_initramfs(kernel_dir: &Path, busybox_dir: &Path, out: &Path) -> Result<()> {
    let mods = modules_dir(kernel_dir)?;
    let builtin: std::collections::HashSet<String> =
        std::fs::read_to_string(mods.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(module_name)
            .collect();
    let mut files = std::collections::HashMap::new();
    let mut stack = vec![mods.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(".ko") {
                    files.insert(module_name(&n), p);
                }
            }
        }
    }
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        files: &std::collections::HashMap<String, PathBuf>,
        builtin: &std::collections::HashSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if builtin.contains(name) || order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            bail!("kernel module {name} is neither built in nor in the package");
        };
        let ko = read_module(path)?;
        for dep in module_depends(&ko) {
            visit(&dep, files, builtin, order)?;
        }
        order.push((name.to_string(), ko));
        Ok(())
    }
    for m in STAGE2_MODULES {
        visit(m, &files, &builtin, &mut order)?;
    }

    let busybox = std::fs::read(busybox_dir.join("bin/busybox"))
        .or_else(|_| std::fs::read(busybox_dir.join("usr/bin/busybox")))
        .context("reading busybox from busybox-static")?;
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "root", "modules"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, STAGE2_INIT.as_bytes());
    let mut list = String::new();
    for (name, ko) in &order {
        cpio.file(&format!("modules/{name}.ko"), 0o644, ko);
        list.push_str(&format!("{name}.ko\n"));
    }
    cpio.file("modules/order", 0o644, list.as_bytes());
    std::fs::write(out, cpio.finish()).context("writing the second stage's initramfs")
}

/// A `newc` cpio archive (the kernel's initramfs format), written without the cpio tool.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }
    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}
