//! One emulated arm64 machine: a copy of the node image booted by qemu-system-aarch64 `virt`
//! under TCG.
//!
//! - Kernel and initrd: `/boot/vmlinuz-*` and `/boot/initrd.img-*` read out of the image's own
//!   root filesystem (`debugfs`), passed with `-kernel`/`-initrd` (a Pi's firmware would load the
//!   Raspberry Pi kernel from the FAT partition instead; that part only hardware tests).
//! - Kernel command line: the image's own `cmdline.txt` with its `console=` words replaced by the
//!   `virt` machine's serial port (`console=ttyAMA0,115200`, last, so it is `/dev/console`);
//!   `root=PARTUUID=...` and the rest are the image's.
//! - Disk: the image as one virtio disk, so `/boot/firmware` is the image's FAT partition mounted
//!   by the guest kernel as vfat (fstab), the root its ext4 partition.
//! - Console: the serial port written to `console.log` (the test overlay copies the journal to
//!   the console). A clean power-off is `system_powerdown` on the qemu monitor (the `virt`
//!   machine's power button); a power cut is SIGKILL to qemu.
//! - Network: none yet (`-nic none`); the namespaced LAN (tap devices on a bridge in a namespace
//!   the test creates, 198.18.0.0/15) is not built yet.
//!
//! After power-off the outcome is read from the image: [`Vm::boot_partition`] (raw bytes),
//! [`Vm::fat_file`] (mtools), [`Vm::root_file`] / [`Vm::root_mode`] (debugfs).
//! `VM_KEEP=1` keeps the machine's directory for a post-mortem.

pub use super::{base, image};

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the VM tests do not run here (printed as the skip reason), if they do not.
pub fn skip_reason(gate_env: &str) -> Option<String> {
    if std::env::var_os(gate_env).is_none_or(|v| v.is_empty() || v == "0") {
        return Some(format!(
            "slow (boots an emulated arm64 machine under TCG; the first run builds the arm64 base, \
             tens of minutes): set {gate_env}=1 to run it"
        ));
    }
    if let Some(why) = base::skip_reason() {
        return Some(why);
    }
    if base::which("aarch64-linux-gnu-gcc").is_none() {
        return Some(
            "aarch64-linux-gnu-gcc is missing (apt-get install gcc-aarch64-linux-gnu): the K3s \
             double's C dependencies need it"
                .into(),
        );
    }
    None
}

/// The partitions of an MBR disk image: (byte offset, byte length) of the first two.
pub fn partitions(image: &Path) -> Result<[(u64, u64); 2]> {
    let mut mbr = [0u8; 512];
    std::fs::File::open(image)?.read_exact(&mut mbr)?;
    if mbr[510..] != [0x55, 0xaa] {
        bail!("{} has no MBR", image.display());
    }
    let entry = |i: usize| {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64 * 512;
        let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64 * 512;
        (start, len)
    };
    Ok([entry(0), entry(1)])
}

fn mtools(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

use crate::raspios_disk::run as checked;

/// One emulated machine and its disk.
pub struct Vm {
    dir: tempfile::TempDir,
    /// The machine's disk (a sparse copy of the node image).
    pub image: PathBuf,
    /// The serial console, as written so far.
    pub console: PathBuf,
    monitor: PathBuf,
    child: Option<Child>,
    booted_at: Option<Instant>,
}

impl Vm {
    /// A machine with a fresh copy of `node_image` as its disk.
    pub fn new(node_image: &Path) -> Result<Vm> {
        let cache = base::cache_dir();
        let dir = tempfile::Builder::new()
            .prefix("vm-")
            .tempdir_in(&cache)
            .context("creating the machine's directory")?;
        let image = dir.path().join("disk.img");
        checked(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(node_image)
                .arg(&image),
        )?;
        Ok(Vm {
            console: dir.path().join("console.log"),
            monitor: dir.path().join("monitor.sock"),
            image,
            dir,
            child: None,
            booted_at: None,
        })
    }

    /// The machine's directory (console log, kernel, disk).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stamps `cluster_toml` onto the disk with `imagebuild stamp`, as a user stamps a card.
    pub fn stamp(&self, imagebuild: &Path, cluster_toml: &str) -> Result<()> {
        let file = self.dir.path().join("cluster.toml");
        std::fs::write(&file, cluster_toml)?;
        checked(
            Command::new(imagebuild)
                .arg("stamp")
                .arg(&self.image)
                .arg(&file),
        )?;
        std::fs::remove_file(&file)?;
        Ok(())
    }

    fn boot_offset(&self) -> Result<u64> {
        Ok(partitions(&self.image)?[0].0)
    }

    fn root_spec(&self) -> Result<String> {
        let [_, (start, _)] = partitions(&self.image)?;
        Ok(format!("{}?offset={start}", self.image.display()))
    }

    /// The FAT partition's raw bytes, every sector of it.
    pub fn boot_partition(&self) -> Result<Vec<u8>> {
        let [(start, len), _] = partitions(&self.image)?;
        let mut f = std::fs::File::open(&self.image)?;
        f.seek(SeekFrom::Start(start))?;
        let mut bytes = vec![0u8; len as usize];
        f.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// `fsck.vfat -n` of the FAT partition (on a copy of its bytes): (clean, output).
    pub fn fsck_boot(&self) -> Result<(bool, String)> {
        let copy = self.dir.path().join("bootfs.img");
        std::fs::write(&copy, self.boot_partition()?)?;
        let out = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&copy)
            .stdin(Stdio::null())
            .output()
            .context("running fsck.vfat")?;
        std::fs::remove_file(&copy).ok();
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// A file at the root of the FAT partition (mtools), if present.
    pub fn fat_file(&self, name: &str) -> Option<Vec<u8>> {
        let out = mtools("mtype")
            .arg("-i")
            .arg(format!(
                "{}@@{}",
                self.image.display(),
                self.boot_offset().ok()?
            ))
            .arg(format!("::{name}"))
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// Puts a file at the root of the FAT partition (mtools).
    pub fn put_fat_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = self.dir.path().join(name);
        std::fs::write(&file, bytes)?;
        checked(
            mtools("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(format!("{}@@{}", self.image.display(), self.boot_offset()?))
                .arg(&file)
                .arg(format!("::{name}")),
        )?;
        std::fs::remove_file(&file)?;
        Ok(())
    }

    /// A file of the root filesystem (debugfs), if present.
    pub fn root_file(&self, path: &str) -> Option<Vec<u8>> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(self.root_spec().ok()?)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        // debugfs prints nothing (and still exits 0) for a missing file: ask stat to tell.
        self.root_mode(path)?;
        out.status.success().then_some(out.stdout)
    }

    /// The permission bits of a root filesystem path (debugfs `stat`), if it exists.
    pub fn root_mode(&self, path: &str) -> Option<u32> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(self.root_spec().ok()?)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mode = text.split("Mode:").nth(1)?.split_whitespace().next()?;
        u32::from_str_radix(mode.trim_start_matches('0'), 8)
            .ok()
            .or(Some(0))
            .map(|m| m & 0o7777)
    }

    /// Names in a root filesystem directory (debugfs `ls -p`).
    pub fn root_ls(&self, dir: &str) -> Result<Vec<String>> {
        let out = checked(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("ls -p {dir}"))
                .arg(self.root_spec()?),
        )?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    /// Copies `/boot/<prefix>*` out of the root filesystem into the machine's directory.
    fn dump_boot_file(&self, prefix: &str) -> Result<PathBuf> {
        let name = self
            .root_ls("/boot")?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .max()
            .with_context(|| format!("no /boot/{prefix}* in the image's root filesystem"))?;
        let out = self.dir.path().join(&name);
        checked(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("dump /boot/{name} {}", out.display()))
                .arg(self.root_spec()?),
        )?;
        if std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) == 0 {
            bail!("could not read /boot/{name} out of the image");
        }
        Ok(out)
    }

    /// The kernel command line: the image's cmdline.txt with the serial console of `virt`.
    pub fn cmdline(&self) -> Result<String> {
        let text = self
            .fat_file("cmdline.txt")
            .context("the image has no cmdline.txt")?;
        let mut words: Vec<String> = String::from_utf8_lossy(&text)
            .split_whitespace()
            .filter(|w| !w.starts_with("console="))
            .map(str::to_string)
            .collect();
        words.push("console=ttyAMA0,115200".into());
        Ok(words.join(" "))
    }

    /// Boots the machine (`extra` words appended to the kernel command line).
    pub fn boot(&mut self, extra: &[&str]) -> Result<()> {
        if self.child.is_some() {
            bail!("the machine is running already");
        }
        let kernel = self.dump_boot_file("vmlinuz-")?;
        let initrd = self.dump_boot_file("initrd.img-")?;
        let mut cmdline = self.cmdline()?;
        for w in extra {
            cmdline.push(' ');
            cmdline.push_str(w);
        }
        // Each boot appends to the console log, marked.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console)?;
        writeln!(log, "\n===== vm harness: boot, cmdline: {cmdline}")?;
        drop(log);
        let _ = std::fs::remove_file(&self.monitor);
        // Not niced here: the caller nices the run (`nice -n 10 cargo test ...`).
        let child = Command::new("qemu-system-aarch64")
            .args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a72",
                "-smp",
                "2",
                "-m",
                "1024",
            ])
            .args(["-display", "none", "-no-reboot", "-nic", "none"])
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", self.monitor.display()))
            .arg("-chardev")
            .arg(format!(
                "file,id=console,path={},append=on",
                self.console.display()
            ))
            .args(["-serial", "chardev:console"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&cmdline)
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio",
                self.image.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting qemu-system-aarch64")?;
        self.child = Some(child);
        self.booted_at = Some(Instant::now());
        Ok(())
    }

    /// The console log so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// True while qemu runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the console shows `needle` (after the last boot); the time since boot.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console_text();
            let this_boot = text.rsplit("===== vm harness: boot").next().unwrap_or("");
            if this_boot.contains(needle) {
                return Ok(self.booted_at.map(|t| t.elapsed()).unwrap_or_default());
            }
            if !self.is_running() {
                bail!(
                    "the machine stopped before its console showed {needle:?}; console:\n{}",
                    base::tail(&self.console)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the console did not show {needle:?} within {timeout:?}; console:\n{}",
                    base::tail(&self.console)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits for qemu to exit on its own (a power-off from inside).
    pub fn wait_stopped(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                bail!(
                    "the machine did not power off within {timeout:?}; console:\n{}",
                    base::tail(&self.console)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Some(mut c) = self.child.take() {
            c.wait().ok();
        }
        Ok(())
    }

    /// A clean power-off: the power button (`system_powerdown`), then waits for qemu to exit.
    pub fn power_down(&mut self, timeout: Duration) -> Result<()> {
        let mut sock = std::os::unix::net::UnixStream::connect(&self.monitor)
            .context("connecting to the qemu monitor")?;
        sock.write_all(b"system_powerdown\n")?;
        self.wait_stopped(timeout)
    }

    /// A power cut: SIGKILL to qemu, nothing flushed by the guest.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("VM_KEEP").is_some_and(|v| v == "1") {
            let kept = self.dir.path().to_path_buf();
            eprintln!("VM_KEEP=1: kept {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::TempDir::new().expect("a temp dir"),
            ));
        }
    }
}

/// `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
