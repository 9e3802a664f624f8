//! Fixture base images shaped like Raspberry Pi OS bookworm, trixie and Ubuntu for Pi, made rootless.
//!
//! Regenerate one by hand with `cargo run -p systests --bin image-fixture -- bookworm out.img`.
//! Made with the real tools and no root: `sfdisk` on a file, `mkfs.vfat --offset` and `mcopy -i
//! img@@offset` for the FAT boot partition, `mke2fs -d DIR -E offset=N` for the ext4 root, and
//! `debugfs -w` to set owners (mke2fs -d copies the caller's uid).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which upstream image the fixture imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Raspberry Pi OS 12: `init=` first-boot hook, empty machine-id.
    Bookworm,
    /// Raspberry Pi OS 13: `resize` on the cmdline, machine-id "uninitialized".
    Trixie,
    /// Ubuntu Server for Pi: `system-boot` / `writable`, 1 MiB aligned, cloud-init seed files.
    Ubuntu,
}

impl Flavor {
    /// Every flavor.
    pub const ALL: [Flavor; 3] = [Flavor::Bookworm, Flavor::Trixie, Flavor::Ubuntu];

    /// Parse "bookworm", "trixie" or "ubuntu".
    pub fn parse(s: &str) -> Option<Flavor> {
        match s {
            "bookworm" => Some(Flavor::Bookworm),
            "trixie" => Some(Flavor::Trixie),
            "ubuntu" => Some(Flavor::Ubuntu),
            _ => None,
        }
    }

    /// (boot label, root label)
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Flavor::Ubuntu => ("system-boot", "writable"),
            _ => ("bootfs", "rootfs"),
        }
    }

    /// The machine-id file contents upstream ships.
    pub fn machine_id(self) -> &'static [u8] {
        match self {
            Flavor::Bookworm => b"",
            Flavor::Trixie => b"uninitialized\n",
            Flavor::Ubuntu => b"",
        }
    }

    /// The first-boot hook that must survive on the cmdline.
    pub fn hook(self) -> Option<&'static str> {
        match self {
            Flavor::Bookworm => Some("init=/usr/lib/raspberrypi-sys-mods/firstboot"),
            Flavor::Trixie => Some("resize"),
            Flavor::Ubuntu => None,
        }
    }

    fn disk_id(self) -> &'static str {
        match self {
            Flavor::Bookworm => "0x6c3a1e27",
            Flavor::Trixie => "0x9b1f2c44",
            Flavor::Ubuntu => "0x4ac8e2b1",
        }
    }

    /// Byte offset of partition 1 (8 MiB on Raspberry Pi OS, 1 MiB on Ubuntu).
    pub fn boot_start(self) -> u64 {
        match self {
            Flavor::Ubuntu => 1 << 20,
            _ => 8 << 20,
        }
    }
}

/// Sizes and extra content of a fixture.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which upstream image to imitate.
    pub flavor: Flavor,
    /// Root filesystem size in MiB.
    pub root_mib: u64,
    /// Bytes of filler files (spread over many files) in /usr/share/filler.
    pub filler_bytes: u64,
}

impl Spec {
    /// A small fixture: a few hundred MiB, almost all holes.
    pub fn small(flavor: Flavor) -> Spec {
        Spec {
            flavor,
            root_mib: 200,
            filler_bytes: 4 << 20,
        }
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn put(root: &Path, rel: &str, contents: &[u8]) -> Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))
}

/// Deterministic filler: many files of varied sizes with incompressible-ish content.
fn fill(dir: &Path, total: u64) -> Result<()> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let block: Vec<u8> = (0..(1 << 20) + 4096).map(|_| next() as u8).collect();
    let mut written = 0u64;
    let mut i = 0u64;
    while written < total {
        // A mix like a real rootfs: many small files, some medium, a few large.
        let size = match next() % 100 {
            0..=69 => 512 + next() % 16_384,
            70..=96 => 16_384 + next() % 262_144,
            _ => 1_048_576 + next() % 4_194_304,
        }
        .min(total - written);
        let d = dir.join(format!("d{:03}", i % 97));
        std::fs::create_dir_all(&d)?;
        let mut f = std::fs::File::create(d.join(format!("f{i:06}")))?;
        let mut left = size;
        while left > 0 {
            let off = (next() % 4096) as usize;
            let n = left.min(1 << 20) as usize;
            f.write_all(&block[off..off + n])?;
            left -= n as u64;
        }
        written += size;
        i += 1;
    }
    Ok(())
}

fn cmdline(flavor: Flavor, disk_id: &str) -> String {
    let id = disk_id.trim_start_matches("0x");
    match flavor {
        Flavor::Bookworm => format!("console=serial0,115200 console=tty1 root=PARTUUID={id}-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"),
        Flavor::Trixie => format!("console=serial0,115200 console=tty1 root=PARTUUID={id}-02 rootfstype=ext4 fsck.repair=yes rootwait quiet resize\n"),
        Flavor::Ubuntu => "console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc quiet splash\n".to_string(),
    }
}

const CONFIG_TXT: &str = "# For more options and information see\n# http://rptl.io/configtxt\ndtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\nauto_initramfs=1\ndtoverlay=vc4-kms-v3d\nmax_framebuffers=2\ndisable_fw_kms_setup=1\narm_64bit=1\ndisable_overscan=1\narm_boost=1\n\n[cm4]\notg_mode=1\n\n[all]\n";

/// Make a fixture image at `out` (replaced if present). Root is not needed.
pub fn make(spec: &Spec, out: &Path) -> Result<()> {
    let flavor = spec.flavor;
    let (boot_label, root_label) = flavor.labels();
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let boot_start = flavor.boot_start();
    let boot_size: u64 = 512 << 20;
    let root_start = boot_start + boot_size;
    let root_size = spec.root_mib << 20;
    let total = root_start + root_size;
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out)?.set_len(total)?;

    let disk_id = flavor.disk_id();
    let table = format!(
        "label: dos\nlabel-id: {disk_id}\nunit: sectors\n\nstart={}, size={}, type=c{}\nstart={}, size={}, type=83\n",
        boot_start / 512,
        boot_size / 512,
        if flavor == Flavor::Ubuntu { ", bootable" } else { "" },
        root_start / 512,
        root_size / 512
    );
    let mut child = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg("-q")
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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

    // Boot partition: FAT32 with the files the firmware and the OS's first boot read.
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", boot_label, "-i", "12345678"])
        .arg("--offset")
        .arg((boot_start / 512).to_string())
        .arg(out)
        .arg((boot_size / 1024).to_string()))?;
    let boot_dir = work.path().join("boot");
    put(
        &boot_dir,
        "cmdline.txt",
        cmdline(flavor, disk_id).as_bytes(),
    )?;
    put(&boot_dir, "config.txt", CONFIG_TXT.as_bytes())?;
    put(&boot_dir, "start4.elf", &vec![0x5a; 64 << 10])?;
    put(&boot_dir, "kernel8.img", &vec![0xa5; 256 << 10])?;
    put(&boot_dir, "bcm2712-rpi-5-b.dtb", &vec![0xd0; 16 << 10])?;
    if flavor == Flavor::Ubuntu {
        put(&boot_dir, "user-data", b"#cloud-config\n")?;
        put(&boot_dir, "meta-data", b"instance-id: ubuntu\n")?;
        put(&boot_dir, "network-config", b"version: 2\n")?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&boot_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", out.display(), boot_start))
        .args(&files)
        .arg("::"))?;

    // Root filesystem tree.
    let root = work.path().join("root");
    let hook = b"#!/bin/sh\n# stands in for raspberrypi-sys-mods' first-boot script\nexit 0\n";
    // Trixie as pi-gen builds it since 2026-02: a first user without a password gets `nologin`
    // (`adduser --disabled-login`) and no passwordless sudo (no 010_pi-nopasswd from 2026-04).
    // Bookworm keeps bash and 010_pi-nopasswd.
    let first_shell = match flavor {
        Flavor::Trixie => "/usr/sbin/nologin",
        _ => "/bin/bash",
    };
    put(&root, "etc/passwd", format!("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsystemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\npi:x:1000:1000:,,,:/home/pi:{first_shell}\n").as_bytes())?;
    if flavor == Flavor::Bookworm {
        put(
            &root,
            "etc/sudoers.d/010_pi-nopasswd",
            b"pi ALL=(ALL) NOPASSWD: ALL\n",
        )?;
    }
    if flavor != Flavor::Ubuntu {
        // pi-gen stage2/02-net-tweaks: Wi-Fi radio off until a country is set; Bluetooth unblocked.
        put(
            &root,
            "var/lib/NetworkManager/NetworkManager.state",
            b"[main]\nWirelessEnabled=false\n",
        )?;
        put(
            &root,
            "var/lib/systemd/rfkill/platform-107d50c000.serial:bluetooth",
            b"0\n",
        )?;
    }
    put(&root, "etc/group", b"root:x:0:\nsudo:x:27:pi\npi:x:1000:\n")?;
    put(
        &root,
        "etc/shadow",
        b"root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n",
    )?;
    put(&root, "etc/machine-id", flavor.machine_id())?;
    put(&root, "etc/hostname", b"raspberrypi\n")?;
    put(&root, "etc/timezone", b"Etc/UTC\n")?;
    let os_release = match flavor {
        Flavor::Bookworm => {
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n"
        }
        Flavor::Trixie => {
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_CODENAME=trixie\nID=debian\n"
        }
        Flavor::Ubuntu => "PRETTY_NAME=\"Ubuntu 24.04.3 LTS\"\nVERSION_CODENAME=noble\nID=ubuntu\n",
    };
    put(&root, "etc/os-release", os_release.as_bytes())?;
    let boot_mount = "/boot/firmware";
    let id = disk_id.trim_start_matches("0x");
    put(
        &root,
        "etc/fstab",
        format!("proc /proc proc defaults 0 0\nPARTUUID={id}-01 {boot_mount} vfat defaults 0 2\nPARTUUID={id}-02 / ext4 defaults,noatime 0 1\n").as_bytes(),
    )?;
    put(&root, "usr/lib/raspberrypi-sys-mods/firstboot", hook)?;
    put(&root, "usr/share/zoneinfo/Etc/UTC", b"TZif2 fixture\n")?;
    put(
        &root,
        "usr/share/zoneinfo/Europe/Berlin",
        b"TZif2 fixture\n",
    )?;
    put(&root, "home/pi/.bashrc", b"# ~/.bashrc\n")?;
    std::fs::create_dir_all(root.join("etc/NetworkManager/system-connections"))?;
    std::fs::create_dir_all(root.join("etc/ssh"))?;
    std::fs::create_dir_all(root.join("boot/firmware"))?;
    std::fs::create_dir_all(root.join("var/lib"))?;
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", root.join("etc/localtime"))?;
    fill(&root.join("usr/share/filler"), spec.filler_bytes)?;

    let image_offset = format!("{}?offset={root_start}", out.display());
    run(Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .args(["-q", "-F", "-t", "ext4", "-L", root_label])
        .args(["-U", "5f1c2c4e-7d7e-4a53-9a39-2f1d8e0b6a11"])
        .arg("-E")
        .arg(format!(
            "offset={root_start},hash_seed=0b6f3e9e-5b1e-4c0e-8d61-1c9a4c7e2f10"
        ))
        .arg("-d")
        .arg(&root)
        .arg(out)
        .arg(format!("{}k", root_size / 1024)))?;
    // mke2fs -d copies the caller's owners; set them as the real image has them.
    let mut script = String::new();
    for p in ["/home/pi", "/home/pi/.bashrc"] {
        script.push_str(&format!("sif {p} uid 1000\nsif {p} gid 1000\n"));
    }
    for p in [
        "/",
        "/etc",
        "/etc/passwd",
        "/etc/machine-id",
        "/usr",
        "/home",
        "/usr/lib/raspberrypi-sys-mods/firstboot",
    ] {
        script.push_str(&format!("sif {p} uid 0\nsif {p} gid 0\n"));
    }
    script.push_str("sif /home/pi mode 040750\nsif /etc/shadow mode 0100640\nsif /usr/lib/raspberrypi-sys-mods/firstboot mode 0100755\n");
    let script_path = work.path().join("owners.debugfs");
    std::fs::write(&script_path, script)?;
    let o = Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&image_offset)
        .output()
        .context("running debugfs")?;
    let errors: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .map(String::from)
        .collect();
    if !errors.is_empty() {
        bail!("debugfs while fixing owners: {}", errors.join("; "));
    }
    Ok(())
}

/// An image with a partition table but no Raspberry Pi layout (one ext4 partition).
pub fn make_not_pi(out: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out)?.set_len(64 << 20)?;
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(b"label: dos\nstart=2048, type=83\n")?;
    if !child.wait()?.success() {
        bail!("sfdisk failed");
    }
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-E", "offset=1048576"])
        .arg(out)
        .arg("60000k"))?;
    Ok(())
}
