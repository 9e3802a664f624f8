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
    pending: Vec<(PathBuf, Option<PathBuf>)>,
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
        self.pending
            .push((tmp.clone(), Some(final_path.to_path_buf())));
        tmp
    }

    /// A scratch file next to `near` that is always removed, never renamed.
    pub fn scratch(&mut self, near: &Path, what: &str) -> PathBuf {
        let tmp = near.with_file_name(format!(".imagebuild-{what}.partial-{}", std::process::id()));
        self.pending.push((tmp.clone(), None));
        tmp
    }

    /// Rename every temporary file to its final name; the first one added is renamed last.
    pub fn commit(mut self) -> Result<()> {
        crate::interrupt::check()?;
        let mut done: Vec<PathBuf> = Vec::new();
        for (tmp, fin) in self.pending.iter().rev() {
            let Some(fin) = fin else {
                let _ = std::fs::remove_file(tmp);
                continue;
            };
            if let Err(e) = std::fs::rename(tmp, fin) {
                for d in &done {
                    let _ = std::fs::remove_file(d);
                }
                return Err(e)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()));
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

/// Copy `len` bytes at `src_off` of `src` to `dst_off` of `dst`, sparse-aware: holes stay holes.
/// Tries a reflink (FICLONERANGE) first. Returns true when it was a reflink.
pub fn copy_range(
    src: &File,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
    label: &str,
) -> Result<bool> {
    if dst.metadata()?.len() < dst_off + len {
        dst.set_len(dst_off + len)
            .context("sizing the output file")?;
    }
    #[repr(C)]
    struct FileCloneRange {
        src_fd: i64,
        src_offset: u64,
        src_length: u64,
        dest_offset: u64,
    }
    // FICLONERANGE = _IOW(0x94, 13, struct file_clone_range): shares blocks copy-on-write on
    // btrfs and xfs. It needs block-aligned ranges; anything else falls back to copying.
    const FICLONERANGE: libc::c_ulong = 0x4020_940d;
    let arg = FileCloneRange {
        src_fd: src.as_raw_fd() as i64,
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: `arg` is a valid file_clone_range for the duration of the call; fds are open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONERANGE as _, &arg) };
    if rc == 0 {
        return Ok(true);
    }
    let mut meter = Meter::new(label, Some(len));
    let in_fd = src.as_raw_fd();
    let out_fd = dst.as_raw_fd();
    let end = (src_off + len) as i64;
    let mut pos = src_off as i64;
    while pos < end {
        crate::interrupt::check()?;
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let data = unsafe { libc::lseek(in_fd, pos, libc::SEEK_DATA) };
        if data < 0 || data >= end {
            break; // the rest of the range is a hole
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(in_fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off_in = data as libc::loff_t;
        let mut off_out = (data - src_off as i64 + dst_off as i64) as libc::loff_t;
        let mut left = (hole - data) as usize;
        while left > 0 {
            crate::interrupt::check()?;
            let chunk = left.min(64 << 20);
            // SAFETY: the offsets point to live loff_t values; descriptors are open.
            let mut n = unsafe {
                libc::copy_file_range(in_fd, &mut off_in, out_fd, &mut off_out, chunk, 0)
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    // Across filesystems (older kernels) or where unsupported: copy by hand.
                    Some(libc::EXDEV)
                    | Some(libc::ENOSYS)
                    | Some(libc::EOPNOTSUPP)
                    | Some(libc::EINVAL) => {
                        n = copy_by_hand(src, off_in as u64, dst, off_out as u64, chunk)? as isize;
                        off_in += n as libc::loff_t;
                        off_out += n as libc::loff_t;
                    }
                    _ => return Err(err).context("copying image data"),
                }
            }
            if n == 0 {
                bail!("the source image ended early while copying");
            }
            left -= n as usize;
            meter.add(n as u64);
        }
        pos = hole;
    }
    meter.finish();
    Ok(false)
}

/// One stretch of a file: data at `offset`, or a hole (zeros) of `len` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Stretch {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// True for data, false for a hole.
    pub data: bool,
}

/// The data and hole stretches of `[start, end)` of a file (SEEK_DATA/SEEK_HOLE).
pub fn stretches(file: &File, start: u64, end: u64) -> Vec<Stretch> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        let data = if data < 0 {
            end
        } else {
            (data as u64).min(end)
        };
        if data > pos {
            out.push(Stretch {
                offset: pos,
                len: data - pos,
                data: false,
            });
        }
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        out.push(Stretch {
            offset: data,
            len: hole - data,
            data: true,
        });
        pos = hole;
    }
    out
}

enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

/// Write `src[0..len)` into `out` at `at`, hashing the whole of `out[0..at+len)` on the way: the
/// head already in `out` is hashed first, then every piece of `src` as it is written, so the
/// image is never read back just to checksum it. A second thread hashes while this one copies.
pub fn append_and_hash(out: &File, at: u64, src: &File, len: u64, label: &str) -> Result<String> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 4 << 20;
    if out.metadata()?.len() < at + len {
        out.set_len(at + len).context("sizing the output image")?;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(8);
    let hasher = std::thread::spawn(move || {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let zeros = vec![0u8; CHUNK as usize];
        for piece in rx {
            match piece {
                Piece::Data(b) => h.update(&b),
                Piece::Zeros(mut n) => {
                    while n > 0 {
                        let k = n.min(CHUNK) as usize;
                        h.update(&zeros[..k]);
                        n -= k as u64;
                    }
                }
            }
        }
        hex::encode(h.finalize())
    });
    let mut meter = Meter::new(label, Some(at + len));
    let send = |p: Piece| {
        tx.send(p)
            .map_err(|_| anyhow::anyhow!("the checksum thread stopped"))
    };
    let mut pump = |file: &File, stretches: Vec<Stretch>, write_at: Option<u64>| -> Result<()> {
        for st in stretches {
            crate::interrupt::check()?;
            if !st.data {
                send(Piece::Zeros(st.len))?;
                meter.add(st.len);
                continue;
            }
            let mut off = st.offset;
            while off < st.offset + st.len {
                crate::interrupt::check()?;
                let n = (st.offset + st.len - off).min(CHUNK) as usize;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, off)
                    .context("reading image data")?;
                if let Some(base) = write_at {
                    out.write_all_at(&buf, base + off)
                        .context("writing the image")?;
                }
                meter.add(n as u64);
                send(Piece::Data(buf))?;
                off += n as u64;
            }
        }
        Ok(())
    };
    let result = pump(out, stretches(out, 0, at), None)
        .and_then(|_| pump(src, stretches(src, 0, len), Some(at)));
    drop(tx);
    let hash = hasher
        .join()
        .map_err(|_| anyhow::anyhow!("the checksum thread panicked"))?;
    result?;
    meter.finish();
    Ok(hash)
}

fn copy_by_hand(src: &File, at: u64, dst: &File, to: u64, len: usize) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(4 << 20)];
    let n = src.read_at(&mut buf, at).context("reading image data")?;
    dst.write_all_at(&buf[..n], to)
        .context("writing image data")?;
    Ok(n)
}

/// sha256 of a file as hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    crate::source::sha256_file(path)
}

/// Write a compressed copy of `src` (whose sha256 is `src_sha256`) to `dst`: zstd multithreaded,
/// led by a skippable frame that records `src_sha256` (so `flash` pairs a bmap with this file by
/// content), or xz level 6.
pub fn compress(src: &Path, dst: &Path, how: Compression, src_sha256: &str) -> Result<()> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input.metadata()?.len();
    let mut out =
        BufWriter::new(File::create(dst).with_context(|| format!("creating {}", dst.display()))?);
    let mut meter = Meter::new(&format!("compressing ({how:?})"), Some(len));
    let mut reader = BufReader::with_capacity(1 << 20, MeteredReader::new(input, &mut meter));
    match how {
        Compression::None => return Ok(()),
        Compression::Zstd => {
            out.write_all(&crate::source::image_id_frame(src_sha256))
                .with_context(|| format!("writing {}", dst.display()))?;
            let mut enc = zstd::stream::write::Encoder::new(out, 10).context("starting zstd")?;
            // Worker count does not change zstd's output bytes, so the result stays reproducible.
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as u32;
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
