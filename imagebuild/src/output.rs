//! Publishing outputs atomically: a temporary name until everything succeeded, then renames.

use crate::progress::{Meter, MeteredReader};
use crate::recipe::Compression;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Files being written under temporary names next to their final paths; removed unless committed.
#[derive(Debug)]
pub struct PendingOutputs {
    pending: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl PendingOutputs {
    /// Nothing pending yet.
    pub fn new() -> PendingOutputs {
        PendingOutputs {
            pending: Vec::new(),
            committed: false,
        }
    }

    /// A temporary path in `final_path`'s directory, removed on failure.
    pub fn add(&mut self, final_path: &Path) -> PathBuf {
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let tmp = final_path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        self.pending.push((tmp.clone(), final_path.to_path_buf()));
        tmp
    }

    /// Rename every temporary file to its final name; the first one added is renamed last.
    pub fn commit(mut self) -> Result<()> {
        crate::interrupt::check()?;
        let mut done: Vec<PathBuf> = Vec::new();
        for (tmp, fin) in self.pending.iter().rev() {
            if let Err(e) = std::fs::rename(tmp, fin) {
                for d in &done {
                    let _ = std::fs::remove_file(d);
                }
                return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()));
            }
            done.push(fin.clone());
        }
        self.committed = true;
        Ok(())
    }
}

impl Default for PendingOutputs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PendingOutputs {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.pending {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Copy `src` to a new file `dst`: a reflink when the filesystem offers one, else a sparse copy
/// that leaves holes as holes. Returns true when it was a reflink.
pub fn copy_image(src: &Path, dst: &Path) -> Result<bool> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input.metadata()?.len();
    let output = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    // FICLONE: share the blocks copy-on-write (btrfs, xfs). The ioctl number is _IOW(0x94, 9, int).
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes an fd value.
    let rc = unsafe { libc::ioctl(output.as_raw_fd(), FICLONE as _, input.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let mut meter = Meter::new("copying the base image", Some(len));
    let in_fd = input.as_raw_fd();
    let out_fd = output.as_raw_fd();
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        crate::interrupt::check()?;
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let data = unsafe { libc::lseek(in_fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // no more data: the rest is a hole
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(in_fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off_in = data as libc::loff_t;
        let mut off_out = data as libc::loff_t;
        let mut left = (hole - data) as usize;
        while left > 0 {
            crate::interrupt::check()?;
            let chunk = left.min(64 << 20);
            // SAFETY: offsets point to valid loff_t values; descriptors are open.
            let n = unsafe {
                libc::copy_file_range(in_fd, &mut off_in, out_fd, &mut off_out, chunk, 0)
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("copying {} to {}", src.display(), dst.display()));
            }
            if n == 0 {
                bail!("{} changed size while being copied", src.display());
            }
            left -= n as usize;
            meter.add(n as u64);
        }
        pos = hole;
    }
    output.set_len(len).context("sizing the output image")?;
    meter.finish();
    Ok(false)
}

/// sha256 of a file as hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    crate::source::sha256_file(path)
}

/// Write a compressed copy of `src` to `dst` (zstd level 19 multithreaded, or xz level 6).
pub fn compress(src: &Path, dst: &Path, how: Compression) -> Result<()> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input.metadata()?.len();
    let out = BufWriter::new(File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
    let mut meter = Meter::new(&format!("compressing ({how:?})"), Some(len));
    let mut reader = BufReader::with_capacity(1 << 20, MeteredReader::new(input, &mut meter));
    match how {
        Compression::None => return Ok(()),
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, 10).context("starting zstd")?;
            // Worker count does not change zstd's output bytes, so the result stays reproducible.
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
            enc.multithread(threads).context("starting zstd workers")?;
            enc.include_checksum(true)?;
            std::io::copy(&mut reader, &mut enc).context("compressing with zstd")?;
            enc.finish()?.flush().context("finishing the .zst file")?;
        }
        Compression::Xz => {
            let mut enc = xz2::write::XzEncoder::new(out, 6);
            std::io::copy(&mut reader, &mut enc).context("compressing with xz")?;
            enc.finish()?.flush().context("finishing the .xz file")?;
        }
    }
    meter.finish();
    Ok(())
}

/// The `sha256sum`-format line for a file.
pub fn sha256_line(hash: &str, final_path: &Path) -> String {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{hash}  {name}\n")
}

/// `path` with `suffix` appended to its file name (`out.img` -> `out.img.sha256`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Write `contents` to `path` and flush it to disk.
pub fn write_synced(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    Ok(())
}
