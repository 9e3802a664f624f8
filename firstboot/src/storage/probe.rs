//! StorageProbe: etcd-like small sequential writes with fdatasync, timed per sync.
//!
//! etcd appends ~2 KiB WAL records and fdatasyncs after each; its reference test is
//! `fio --rw=write --ioengine=sync --fdatasync=1 --bs=2300`. The probe does the same into a
//! temporary file in the target directory, bounded by time and by bytes so that a first boot on
//! a slow SD card spends seconds, not minutes, and writes far less than fio's 22 MiB when slow.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes per write, as in etcd's fio reference test.
pub const WRITE_SIZE: usize = 2300;
/// Default time budget for the sync loop.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2);
/// Default byte budget: the reference test's 22 MiB, well under the 32 MiB promise.
pub const DEFAULT_MAX_BYTES: u64 = 22 * 1024 * 1024;

/// Why a probe could not measure.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe file could not be created, written, synced or removed.
    #[error("{what} {}", path.display())]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The probe file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The budget did not allow a single write.
    #[error("the probe budget allows no write ({max_bytes} bytes, {duration:?})")]
    NoBudget {
        /// Byte budget.
        max_bytes: u64,
        /// Time budget.
        duration: Duration,
    },
}

/// A latency measurement of small sequential writes with fdatasync in one directory.
#[derive(Debug, Clone)]
pub struct StorageProbe {
    /// Directory whose device is measured; the probe file is created (and removed) in it.
    pub dir: PathBuf,
    /// Stop after this long (checked between writes).
    pub duration: Duration,
    /// Stop before writing more than this many bytes.
    pub max_bytes: u64,
    /// Bytes per write.
    pub write_size: usize,
}

/// What a probe measured: fdatasync latency percentiles and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    /// Number of write+fdatasync pairs.
    pub writes: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time of the whole probe (create, writes, remove), in milliseconds.
    pub elapsed_ms: u64,
    /// Median fdatasync latency in microseconds.
    pub p50_us: u64,
    /// 99th percentile fdatasync latency in microseconds (etcd wants under 10 ms).
    pub p99_us: u64,
    /// Slowest fdatasync in microseconds.
    pub max_us: u64,
}

impl StorageProbe {
    /// A probe of `dir` with the default budgets (2 s, 22 MiB, 2300-byte writes).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageProbe {
            dir: dir.into(),
            duration: DEFAULT_DURATION,
            max_bytes: DEFAULT_MAX_BYTES,
            write_size: WRITE_SIZE,
        }
    }

    /// Run the probe: write, fdatasync and time each sync; the probe file is always removed.
    pub fn run(&self) -> Result<ProbeResult, ProbeError> {
        self.run_sampled().map(|(result, _)| result)
    }

    /// Like [`StorageProbe::run`], also returning every fdatasync latency (microseconds, in order).
    pub fn run_sampled(&self) -> Result<(ProbeResult, Vec<u64>), ProbeError> {
        if self.write_size == 0 || self.max_bytes < self.write_size as u64 {
            return Err(ProbeError::NoBudget {
                max_bytes: self.max_bytes,
                duration: self.duration,
            });
        }
        let started = Instant::now();
        remove_stale_probe_files(&self.dir);
        let path = self
            .dir
            .join(format!("{PROBE_FILE_PREFIX}{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| ProbeError::Io {
                what: "creating probe file",
                path: path.clone(),
                source,
            })?;
        let guard = ProbeFile { path: &path };
        preallocate(&file, self.max_bytes);
        let measured = self.sync_loop(file, &path);
        let removed = guard.remove();
        let (latencies, bytes) = measured?;
        removed?;
        let result = summarize(&latencies, bytes, started.elapsed());
        Ok((result, latencies))
    }

    fn sync_loop(&self, mut file: File, path: &Path) -> Result<(Vec<u64>, u64), ProbeError> {
        let buf = pattern(self.write_size);
        let io = |what, source| ProbeError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let mut latencies = Vec::with_capacity(4096);
        let mut bytes = 0u64;
        let started = Instant::now();
        while bytes + buf.len() as u64 <= self.max_bytes
            && (latencies.is_empty() || started.elapsed() < self.duration)
        {
            file.write_all(&buf)
                .map_err(|e| io("writing probe file", e))?;
            let t = Instant::now();
            file.sync_data()
                .map_err(|e| io("fdatasync of probe file", e))?;
            latencies.push(t.elapsed().as_micros() as u64);
            bytes += buf.len() as u64;
        }
        Ok((latencies, bytes))
    }
}

/// Probe files are named this plus the probing process's id.
const PROBE_FILE_PREFIX: &str = ".firstboot-storage-probe.";

/// Remove probe files left by a power loss mid-probe: those whose process no longer exists
/// (after a reboot that includes our own id, which a new boot may reuse).
fn remove_stale_probe_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PROBE_FILE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes the probe file on every exit path; `remove` reports the error on the normal one.
struct ProbeFile<'a> {
    path: &'a Path,
}

impl ProbeFile<'_> {
    fn remove(self) -> Result<(), ProbeError> {
        let result = std::fs::remove_file(self.path).map_err(|source| ProbeError::Io {
            what: "removing probe file",
            path: self.path.to_path_buf(),
            source,
        });
        std::mem::forget(self);
        result
    }
}

impl Drop for ProbeFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path);
    }
}

/// Allocate the byte budget up front as etcd does for its WAL segments (and fio for its file):
/// each sync then converts an allocated extent instead of growing the file. Filesystems without
/// fallocate (FAT, some network filesystems) are measured as they are.
fn preallocate(file: &File, len: u64) {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let _ = fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, len as i64);
}

/// Non-repeating bytes, so that no layer can compress or deduplicate the writes away.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Nearest-rank percentile of unsorted samples in microseconds; 0 for no samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(latencies: &[u64], bytes: u64, elapsed: Duration) -> ProbeResult {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    ProbeResult {
        writes: sorted.len() as u64,
        bytes,
        elapsed_ms: elapsed.as_millis() as u64,
        p50_us: percentile(&sorted, 50.0),
        p99_us: percentile(&sorted, 99.0),
        max_us: sorted.last().copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn probe_respects_byte_budget_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let probe = StorageProbe {
            max_bytes: 50 * WRITE_SIZE as u64 + 10,
            ..StorageProbe::new(dir.path())
        };
        let r = probe.run().unwrap();
        assert_eq!(r.writes, 50);
        assert_eq!(r.bytes, 50 * WRITE_SIZE as u64);
        assert!(r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn samples_are_the_latencies_the_summary_is_made_of() {
        let dir = tempfile::tempdir().unwrap();
        let probe = StorageProbe {
            max_bytes: 200 * WRITE_SIZE as u64,
            ..StorageProbe::new(dir.path())
        };
        let (r, samples) = probe.run_sampled().unwrap();
        assert_eq!(samples.len(), 200);
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        assert_eq!(r.p99_us, percentile(&sorted, 99.0));
        assert_eq!(r.max_us, *sorted.last().unwrap());
    }

    #[test]
    fn probe_respects_time_budget() {
        let dir = tempfile::tempdir().unwrap();
        let probe = StorageProbe {
            duration: Duration::ZERO,
            ..StorageProbe::new(dir.path())
        };
        // A zero budget still takes one sample, so a result always has a p99.
        assert_eq!(probe.run().unwrap().writes, 1);
    }

    #[test]
    fn stale_probe_files_from_a_power_loss_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir
            .path()
            .join(format!("{PROBE_FILE_PREFIX}{}", std::process::id()));
        let dead = dir.path().join(format!("{PROBE_FILE_PREFIX}{}", u32::MAX));
        let other = dir.path().join("keep.me");
        for f in [&own, &dead, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        let probe = StorageProbe {
            max_bytes: 10 * WRITE_SIZE as u64,
            ..StorageProbe::new(dir.path())
        };
        assert_eq!(probe.run().unwrap().writes, 10);
        assert!(!own.exists() && !dead.exists() && other.exists());
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_file() {
        let err = StorageProbe::new("/nonexistent/dir").run().unwrap_err();
        assert!(err
            .to_string()
            .contains("creating probe file /nonexistent/dir/"));
    }
}
