//! Publishing outputs atomically: a temporary name until everything succeeded, then renames.

use crate::progress::{Meter, MeteredReader};
use crate::recipe::Compression;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
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
