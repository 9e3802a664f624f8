//! Test devices for the storage tests and benchmark: loop devices and I/O-throttled cgroups.
//!
//! Used by `probe-bench` and the root-only tests; everything it creates is
//! removed on drop (unmount, detach, rmdir), in reverse order of creation.

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
        LoopDevice::attach(backing)
    }

    /// Attach an existing file (its size is the device's size).
    pub fn attach(backing: &Path) -> anyhow::Result<LoopDevice> {
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
    ///
    /// Inode tables and journal are initialised by mkfs, not lazily after mounting, so that no
    /// background ext4lazyinit writes compete with a measurement.
    pub fn ext4(device: LoopDevice, dir: &Path) -> anyhow::Result<MountedLoop> {
        run(Command::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            ])
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
    /// Which mechanism throttles: "cgroup v2 io.max" or "cgroup v1 blkio".
    pub mechanism: &'static str,
}

/// The mount point of a cgroup v2 hierarchy whose children can use the io controller (enabled
/// in its `cgroup.subtree_control` here if it is not yet), or why there is none.
pub fn cgroup2_io_root() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("reading /proc/self/mounts: {e}"))?;
    let mut seen = vec![];
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[2] != "cgroup2" {
            continue;
        }
        let root = PathBuf::from(f[1]);
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "io") {
            let control = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if enabled.split_whitespace().any(|c| c == "io") {
                return Ok(root);
            }
            // Refused when the hierarchy's root holds processes (a delegated, non-root cgroup).
            return match std::fs::write(&control, "+io") {
                Ok(()) => Ok(root),
                Err(e) => Err(format!(
                    "cgroup2 at {} offers io but enabling it for children failed: {e}",
                    root.display()
                )),
            };
        }
        seen.push(format!(
            "{} offers [{}]",
            root.display(),
            controllers.trim()
        ));
    }
    if seen.is_empty() {
        Err("no cgroup2 hierarchy is mounted".into())
    } else {
        Err(format!(
            "no cgroup2 hierarchy offers the io controller ({}); it is bound to cgroup v1 blkio or absent",
            seen.join("; ")
        ))
    }
}

/// The cgroup v1 blkio hierarchy, or why there is none.
pub fn blkio_v1_root() -> Result<PathBuf, String> {
    let root = PathBuf::from("/sys/fs/cgroup/blkio");
    if root.join("blkio.throttle.write_iops_device").exists() {
        Ok(root)
    } else {
        Err("no cgroup v1 blkio hierarchy with throttling at /sys/fs/cgroup/blkio".into())
    }
}

impl ThrottledCgroup {
    /// A cgroup v2 child of `root` (from [`cgroup2_io_root`]) with `io.max` `wiops=write_iops`.
    pub fn io_max(
        root: &Path,
        name: &str,
        major_minor: &str,
        write_iops: u32,
    ) -> anyhow::Result<ThrottledCgroup> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).context("creating cgroup v2")?;
        let cgroup = ThrottledCgroup {
            procs: dir.join("cgroup.procs"),
            dir,
            mechanism: "cgroup v2 io.max",
        };
        std::fs::write(
            cgroup.dir.join("io.max"),
            format!("{major_minor} wiops={write_iops}"),
        )
        .context("writing io.max")?;
        Ok(cgroup)
    }

    /// A cgroup v1 blkio child of `root` (from [`blkio_v1_root`]) with a write-IOPS limit.
    pub fn blkio_v1(
        root: &Path,
        name: &str,
        major_minor: &str,
        write_iops: u32,
    ) -> anyhow::Result<ThrottledCgroup> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).context("creating blkio cgroup")?;
        let cgroup = ThrottledCgroup {
            procs: dir.join("cgroup.procs"),
            dir,
            mechanism: "cgroup v1 blkio",
        };
        std::fs::write(
            cgroup.dir.join("blkio.throttle.write_iops_device"),
            format!("{major_minor} {write_iops}"),
        )
        .context("writing blkio.throttle.write_iops_device")?;
        Ok(cgroup)
    }

    /// Whichever this host offers: cgroup v2 `io.max` first, else cgroup v1 blkio.
    pub fn new(name: &str, major_minor: &str, write_iops: u32) -> anyhow::Result<ThrottledCgroup> {
        match (cgroup2_io_root(), blkio_v1_root()) {
            (Ok(root), _) => ThrottledCgroup::io_max(&root, name, major_minor, write_iops),
            (_, Ok(root)) => ThrottledCgroup::blkio_v1(&root, name, major_minor, write_iops),
            (Err(v2), Err(v1)) => bail!("no I/O throttling here: {v2}; {v1}"),
        }
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

/// What one run of fio's etcd reference test measured.
#[derive(Debug, Clone)]
pub struct FioResult {
    /// Median fdatasync latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile fdatasync latency, microseconds.
    pub p99_us: u64,
    /// Number of fdatasyncs.
    pub syncs: u64,
    /// fio's own runtime of the job, milliseconds.
    pub runtime_ms: u64,
    /// fio's histogram of fdatasync latencies: (nanoseconds, count), from `json+` output.
    pub sync_bins_ns: Vec<(u64, u64)>,
}

/// The name fio gives the file of job `t`.
pub const FIO_FILE: &str = "t.0.0";

/// fio's etcd reference command (`fio ARGS`) in `dir`, optionally capped at `runtime_secs`.
pub fn fio_args(dir: &Path, runtime_secs: Option<u32>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--rw=write",
        "--ioengine=sync",
        "--fdatasync=1",
        "--size=22m",
        "--bs=2300",
        "--name=t",
        // json+ adds the full latency histogram, so that runs can be pooled.
        "--output-format=json+",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--directory={}", dir.display()));
    if let Some(s) = runtime_secs {
        args.push(format!("--runtime={s}"));
    }
    args
}

/// Parse fio's JSON (or json+) output of the reference test.
pub fn parse_fio(json: &[u8]) -> anyhow::Result<FioResult> {
    let v: serde_json::Value = serde_json::from_slice(json).context("parsing fio JSON")?;
    let job = &v["jobs"][0];
    let lat = &job["sync"]["lat_ns"];
    let us = |k: &str| {
        lat["percentile"][k]
            .as_u64()
            .map(|ns| ns / 1000)
            .with_context(|| format!("fio percentile {k}"))
    };
    Ok(FioResult {
        p50_us: us("50.000000")?,
        p99_us: us("99.000000")?,
        syncs: lat["N"].as_u64().context("fio sync count")?,
        runtime_ms: job["job_runtime"].as_u64().context("fio job runtime")?,
        sync_bins_ns: lat["bins"]
            .as_object()
            .map(|bins| {
                bins.iter()
                    .filter_map(|(ns, n)| Some((ns.parse().ok()?, n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Run fio's etcd reference test in `dir` (its file removed afterwards).
pub fn fio_fdatasync(dir: &Path, runtime_secs: Option<u32>) -> anyhow::Result<FioResult> {
    let out = run(Command::new("fio").args(fio_args(dir, runtime_secs)));
    let _ = std::fs::remove_file(dir.join(FIO_FILE));
    parse_fio(&out?.stdout)
}
