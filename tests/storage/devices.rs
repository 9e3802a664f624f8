//! Test devices for the storage tests and benchmark: loop devices and an I/O-throttled cgroup.
//!
//! Shared by `probe-bench` and the root-only tests through `#[path]`; everything it creates is
//! removed on drop (unmount, detach, rmdir), in reverse order of creation.

#![allow(dead_code)]

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Run a command, failing with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A loop device over a sparse backing file; detached on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
}

impl LoopDevice {
    /// Create a sparse file of `size` bytes at `backing` and attach it.
    pub fn create(backing: &Path, size: u64) -> anyhow::Result<LoopDevice> {
        let f = std::fs::File::create(backing).context("creating backing file")?;
        f.set_len(size).context("sizing backing file")?;
        drop(f);
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(backing))?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice { path })
    }

    /// `major:minor` of the device.
    pub fn major_minor(&self) -> anyhow::Result<String> {
        let name = self
            .path
            .file_name()
            .context("loop path")?
            .to_string_lossy()
            .into_owned();
        Ok(std::fs::read_to_string(format!("/sys/block/{name}/dev"))?
            .trim()
            .to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// An ext4 filesystem on a loop device, mounted at a directory; unmounted on drop.
pub struct MountedLoop {
    /// Where it is mounted.
    pub dir: PathBuf,
    /// The device (dropped after the unmount).
    pub device: LoopDevice,
}

impl MountedLoop {
    /// Format `device` as ext4 and mount it at `dir`.
    pub fn ext4(device: LoopDevice, dir: &Path) -> anyhow::Result<MountedLoop> {
        run(Command::new("mkfs.ext4")
            .args(["-F", "-q"])
            .arg(&device.path))?;
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount").arg(&device.path).arg(dir))?;
        Ok(MountedLoop {
            dir: dir.to_path_buf(),
            device,
        })
    }
}

impl Drop for MountedLoop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A cgroup whose members' writes to one device are limited to a number of IOPS.
pub struct ThrottledCgroup {
    dir: PathBuf,
    procs: PathBuf,
}

impl ThrottledCgroup {
    /// Create the cgroup with a write-IOPS limit on `major_minor`: cgroup v2 `io.max` when the io
    /// controller is available, else cgroup v1 `blkio.throttle.write_iops_device`.
    pub fn new(name: &str, major_minor: &str, write_iops: u32) -> anyhow::Result<ThrottledCgroup> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let has_io_v2 =
            std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|x| x == "io"));
        if has_io_v2 {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+io");
            let dir = Path::new("/sys/fs/cgroup").join(name);
            std::fs::create_dir_all(&dir).context("creating cgroup v2")?;
            std::fs::write(
                dir.join("io.max"),
                format!("{major_minor} wiops={write_iops}"),
            )
            .context("writing io.max")?;
            return Ok(ThrottledCgroup {
                procs: dir.join("cgroup.procs"),
                dir,
            });
        }
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        if v1.is_dir() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).context("creating blkio cgroup")?;
            std::fs::write(
                dir.join("blkio.throttle.write_iops_device"),
                format!("{major_minor} {write_iops}"),
            )
            .context("writing blkio.throttle.write_iops_device")?;
            return Ok(ThrottledCgroup {
                procs: dir.join("cgroup.procs"),
                dir,
            });
        }
        bail!("neither the cgroup v2 io controller nor cgroup v1 blkio is available")
    }

    /// Run `program args` inside the cgroup (the shell joins it, then execs) and return stdout.
    pub fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&self.procs)
            .arg(program)
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for ThrottledCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// fio's reference etcd test in `dir`; returns (p99, p50) of fdatasync latency in microseconds.
pub fn fio_fdatasync(dir: &Path, runtime_secs: Option<u32>) -> anyhow::Result<(u64, u64, u64)> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--rw=write",
        "--ioengine=sync",
        "--fdatasync=1",
        "--size=22m",
        "--bs=2300",
    ])
    .arg(format!("--directory={}", dir.display()))
    .args(["--name=t", "--output-format=json"]);
    if let Some(s) = runtime_secs {
        cmd.arg(format!("--runtime={s}"));
    }
    let out = run(&mut cmd)?;
    let _ = std::fs::remove_file(dir.join("t.0.0"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing fio JSON")?;
    let lat = &v["jobs"][0]["sync"]["lat_ns"]["percentile"];
    let us = |k: &str| {
        lat[k]
            .as_u64()
            .map(|ns| ns / 1000)
            .with_context(|| format!("fio percentile {k}"))
    };
    let runtime = v["jobs"][0]["job_runtime"].as_u64().unwrap_or(0);
    Ok((us("99.000000")?, us("50.000000")?, runtime))
}
