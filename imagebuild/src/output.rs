//! Publishing outputs atomically: a temporary name until everything succeeded, then renames.

use crate::recipe::Compression;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
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

/// zstd level of the compressed copy when the recipe sets none: chosen by image-build-bench's
/// figures (issue 20; see imagebuild/README.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// xz preset of the compressed copy when the recipe sets none.
pub const DEFAULT_XZ_LEVEL: i32 = 6;

/// The compressed copy of an image being written, fed the image's bytes in order: zstd
/// multithreaded behind a skippable frame that records the image's sha256 (so `flash` pairs a
/// bmap with this file by content), or xz. The sha256 is known only once every byte went
/// through, so the frame is written as a placeholder of the same length and filled in by
/// [`Packer::finish`].
pub struct Packer {
    dst: PathBuf,
    how: Compression,
    enc: Encoder,
}

enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
    Xz(xz2::write::XzEncoder<BufWriter<File>>),
}

impl Packer {
    /// Start `dst` as the `how` copy at `level`; None for [`Compression::None`].
    pub fn start(dst: &Path, how: Compression, level: i32) -> Result<Option<Packer>> {
        let create = || -> Result<BufWriter<File>> {
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(dst).with_context(|| format!("creating {}", dst.display()))?,
            ))
        };
        let enc = match how {
            Compression::None => return Ok(None),
            Compression::Zstd => {
                let mut out = create()?;
                out.write_all(&crate::source::image_id_frame(&"0".repeat(64)))
                    .with_context(|| format!("writing {}", dst.display()))?;
                let mut enc =
                    zstd::stream::write::Encoder::new(out, level).context("starting zstd")?;
                // Worker count does not change zstd's output bytes, so the result stays
                // reproducible.
                let threads = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1) as u32;
                enc.multithread(threads).context("starting zstd workers")?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            Compression::Xz => {
                let preset = u32::try_from(level).context("xz preset out of range")?;
                Encoder::Xz(xz2::write::XzEncoder::new(create()?, preset))
            }
        };
        Ok(Some(Packer {
            dst: dst.to_path_buf(),
            how,
            enc,
        }))
    }

    /// The compression's name, for progress lines.
    pub fn name(&self) -> &'static str {
        match self.how {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    /// The next bytes of the image.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let r = match &mut self.enc {
            Encoder::Zstd(e) => e.write_all(bytes),
            Encoder::Xz(e) => e.write_all(bytes),
        };
        r.with_context(|| format!("compressing into {}", self.dst.display()))
    }

    /// End the stream, record `image_sha256` in the zstd frame, flush to disk.
    pub fn finish(self, image_sha256: &str) -> Result<()> {
        let what = || format!("finishing {}", self.dst.display());
        let file = match self.enc {
            Encoder::Zstd(e) => {
                let file = e
                    .finish()
                    .with_context(what)?
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(what)?;
                use std::os::unix::fs::FileExt;
                file.write_all_at(&crate::source::image_id_frame(image_sha256), 0)
                    .with_context(what)?;
                file
            }
            Encoder::Xz(e) => e
                .finish()
                .with_context(what)?
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(what)?,
        };
        file.sync_all().with_context(what)
    }
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
