//! The disk layout of a Raspberry Pi OS image, written the rootless way, shared by the test bases
//! (tests/machines/base.rs for nspawn machines, tests/vm/base.rs for arm64 VMs): MBR with
//! partition 1 FAT32 `bootfs` at 8 MiB (cmdline.txt, config.txt) and partition 2 ext4 `rootfs`
//! made from a directory (`sfdisk` on a file, `mkfs.vfat --offset` + `mcopy`, `mke2fs -d -E
//! offset=`).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Byte offset of the boot partition (Raspberry Pi OS aligns to 8 MiB).
pub const BOOT_START: u64 = 8 << 20;
/// Size of the boot partition, as on Raspberry Pi OS (mtools needs FAT32 to have >= 65525
/// clusters).
pub const BOOT_SIZE: u64 = 512 << 20;
/// Byte offset of the root partition.
pub const ROOT_START: u64 = BOOT_START + BOOT_SIZE;

/// What goes on the disk.
pub struct Disk<'a> {
    /// MBR disk identifier, `0x` and 8 hex digits (PARTUUIDs are `<id>-01`, `<id>-02`).
    pub id: &'a str,
    /// Size of the root partition in bytes.
    pub root_size: u64,
    /// The boot partition's cmdline.txt and config.txt.
    pub cmdline: &'a str,
    pub config_txt: &'a str,
    /// The tree that becomes the root filesystem.
    pub root: &'a Path,
}

/// Writes `disk` to the file `out` (created or truncated); `work` holds scratch files.
pub fn write(disk: &Disk, work: &Path, out: &Path) -> Result<()> {
    std::fs::File::create(out)?.set_len(ROOT_START + disk.root_size)?;
    let table = format!(
        "label: dos\nlabel-id: {}\nunit: sectors\n\nstart={}, size={}, type=c\nstart={}, size={}, type=83\n",
        disk.id,
        BOOT_START / 512,
        BOOT_SIZE / 512,
        ROOT_START / 512,
        disk.root_size / 512
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
    std::fs::create_dir_all(&boot)?;
    std::fs::write(boot.join("cmdline.txt"), disk.cmdline)?;
    std::fs::write(boot.join("config.txt"), disk.config_txt)?;
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
        .arg(format!("offset={ROOT_START}"))
        .arg("-d")
        .arg(disk.root)
        .arg(out)
        .arg(format!("{}k", disk.root_size / 1024)))
    .context("writing the root filesystem")?;
    Ok(())
}

/// Runs `cmd`, failing with its output when it fails; returns its stdout.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>> {
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
    Ok(out.stdout)
}
