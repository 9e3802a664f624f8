//! `imagebuild flash`: write an image (raw, .zst or .xz, streamed) to a card or file, only its
//! mapped ranges when a bmap is at hand, then read every written range back and verify it.

use crate::bmap::Bmap;
use crate::device::{Target, TargetKind};
use crate::output::with_suffix;
use crate::progress::{say, Meter};
use crate::source::{self, Packing};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Granularity of read-back checks: a mismatch is reported to within this many bytes.
const CHUNK: u64 = 1 << 20;

/// How to flash.
#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// Use this bmap instead of looking for IMAGE.bmap beside the image.
    pub bmap: Option<PathBuf>,
    /// Write the whole image even when a bmap is beside it.
    pub no_bmap: bool,
    /// Do not ask for confirmation.
    pub yes: bool,
}

/// What a flash did.
#[derive(Debug, Clone)]
pub struct FlashReport {
    /// Image size in bytes.
    pub image_size: u64,
    /// Bytes written (and read back).
    pub written: u64,
    /// The bmap used, if any.
    pub bmap: Option<PathBuf>,
    /// Time spent writing and flushing.
    pub write_time: Duration,
    /// Time spent reading back.
    pub verify_time: Duration,
}

/// A verification failure, with where it happened.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image's bytes do not match the bmap's checksum for a range.
    #[error("the image does not match its bmap in bytes {start}..{end} (blocks {first}-{last}): the image is corrupt or the bmap belongs to another image; the target is now incomplete, flash again with a good image")]
    ImageMismatch {
        /// First byte of the range.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// First block.
        first: u64,
        /// Last block.
        last: u64,
    },
    /// The whole image does not match the `.sha256` beside it.
    #[error("the image does not match {sha_file}: it is corrupt; the target is now incomplete, flash again with a good image")]
    ImageHashMismatch {
        /// The checksum file.
        sha_file: PathBuf,
    },
    /// What was read back from the target differs from what was written.
    #[error("read-back verification failed: the target holds different data in bytes {start}..{end} than was written (bad card or reader?)")]
    ReadBackMismatch {
        /// First byte of the differing chunk.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
}

/// The decompressed image as a stream that can skip forward.
struct ImageStream<'a> {
    reader: Box<dyn Read + 'a>,
    /// The raw file, for seeking instead of reading skipped bytes.
    raw: Option<&'a File>,
    pos: u64,
}

impl ImageStream<'_> {
    fn skip_to(&mut self, off: u64) -> Result<()> {
        if off < self.pos {
            bail!("internal error: skipping backwards in the image");
        }
        if self.raw.is_some() {
            self.pos = off;
            return Ok(());
        }
        let n = std::io::copy(
            &mut (&mut self.reader).take(off - self.pos),
            &mut std::io::sink(),
        )
        .context("decompressing the image")?;
        self.pos += n;
        if self.pos != off {
            bail!("the image ends at byte {} before byte {off}", self.pos);
        }
        Ok(())
    }

    /// Fill `buf` as far as the image goes; returns the bytes read (short only at the end).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self.raw {
                Some(f) => f.read_at(&mut buf[got..], self.pos),
                None => self.reader.read(&mut buf[got..]),
            };
            match n {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(e).context("reading the image (truncated or corrupt archive?)")
                }
            }
        }
        Ok(got)
    }
}

/// The bmap beside an image: `IMAGE.bmap`, or for `x.img.zst` also `x.img.bmap`.
pub fn bmap_beside(image: &Path) -> Option<PathBuf> {
    let direct = with_suffix(image, ".bmap");
    if direct.is_file() {
        return Some(direct);
    }
    let stem = unpacked_name(image)?;
    let p = with_suffix(&stem, ".bmap");
    p.is_file().then_some(p)
}

/// `x.img` for `x.img.zst` / `.xz` / `.gz`.
fn unpacked_name(image: &Path) -> Option<PathBuf> {
    let ext = image.extension()?.to_str()?;
    matches!(ext, "zst" | "xz" | "gz").then(|| image.with_extension(""))
}

/// The sha256 of the raw image from a `sha256sum` file beside it, if there is one.
fn expected_sha(image: &Path) -> Option<(PathBuf, String)> {
    let candidates = [Some(image.to_path_buf()), unpacked_name(image)];
    for c in candidates.into_iter().flatten() {
        let p = with_suffix(&c, ".sha256");
        if let Ok(text) = std::fs::read_to_string(&p) {
            let hash = text.split_whitespace().next()?.to_ascii_lowercase();
            if hash.len() == 64 {
                return Some((p, hash));
            }
        }
    }
    None
}

/// Flash `image` to `target` (a whole block device or a file), verifying every written byte.
pub fn flash(image: &Path, target: &Path, options: &FlashOptions) -> Result<FlashReport> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let packing = source::detect_packing(image)?;
    let bmap_path = match (&options.bmap, options.no_bmap) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => bmap_beside(image),
    };
    let bmap = bmap_path.as_deref().map(Bmap::load).transpose()?;
    let raw_len = file.metadata()?.len();
    let image_size = match (&bmap, packing) {
        (Some(b), Packing::Raw) => {
            if b.image_size != raw_len {
                bail!(
                    "the bmap {} describes a {}-byte image but {} has {raw_len} bytes: it belongs to another image (pass --bmap or --no-bmap)",
                    bmap_path.as_deref().unwrap_or(Path::new("")).display(),
                    b.image_size,
                    image.display()
                );
            }
            Some(raw_len)
        }
        (Some(b), _) => Some(b.image_size),
        (None, Packing::Raw) => Some(raw_len),
        // A compressed image without a bmap: its size shows only while it is written.
        (None, _) => None,
    };

    let tgt = Target::inspect(target)?;
    if let (Ok(a), Ok(b)) = (file.metadata(), std::fs::metadata(target)) {
        use std::os::unix::fs::MetadataExt;
        if a.dev() == b.dev() && a.ino() == b.ino() {
            bail!("{} is the image itself", target.display());
        }
    }
    let device_size = match tgt.kind {
        TargetKind::Disk { size } => Some(size),
        TargetKind::File { .. } => None,
    };
    if let (Some(dev), Some(img)) = (device_size, image_size) {
        if dev < img {
            bail!(
                "{} is too small: it holds {} but the image needs {}",
                target.display(),
                crate::size::ByteSize(dev),
                crate::size::ByteSize(img)
            );
        }
    }
    confirm(&tgt, image, options.yes)?;

    let out = tgt.open_rw(true)?;
    if let (TargetKind::File { .. }, Some(size)) = (&tgt.kind, image_size) {
        out.set_len(size)
            .with_context(|| format!("sizing {}", target.display()))?;
    }
    let mut stream = ImageStream {
        reader: if packing == Packing::Raw {
            Box::new(std::io::empty())
        } else {
            source::unpacked(packing, BufReader::with_capacity(1 << 20, &file))?
        },
        raw: (packing == Packing::Raw).then_some(&file),
        pos: 0,
    };

    let started = Instant::now();
    // (offset, length, sha256) of every chunk written, to check the read-back and say where.
    let mut chunks: Vec<(u64, u64, [u8; 32])> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut written: u64 = 0;
    let write_chunk =
        |at: u64, data: &[u8], chunks: &mut Vec<(u64, u64, [u8; 32])>| -> Result<()> {
            if let Some(dev) = device_size {
                if at + data.len() as u64 > dev {
                    bail!(
                        "{} is too small: the image continues past its end ({} bytes)",
                        target.display(),
                        dev
                    );
                }
            }
            out.write_all_at(data, at)
                .with_context(|| format!("writing {} at byte {at}", target.display()))?;
            chunks.push((at, data.len() as u64, Sha256::digest(data).into()));
            Ok(())
        };
    match &bmap {
        Some(map) => {
            let mut meter = Meter::new("flashing (mapped blocks)", Some(map.mapped_bytes()));
            for r in &map.ranges {
                let (start, end) = map.span(r);
                stream.skip_to(start)?;
                let mut h = Sha256::new();
                let mut pos = start;
                while pos < end {
                    let want = ((end - pos) as usize).min(buf.len());
                    let n = stream.read(&mut buf[..want])?;
                    if n < want {
                        bail!(
                            "the image ends at byte {} but its bmap maps bytes up to {end}",
                            pos + n as u64
                        );
                    }
                    h.update(&buf[..n]);
                    write_chunk(pos, &buf[..n], &mut chunks)?;
                    pos += n as u64;
                    written += n as u64;
                    meter.add(n as u64);
                }
                if hex::encode(h.finalize()) != r.sha256 {
                    return Err(FlashError::ImageMismatch {
                        start,
                        end,
                        first: r.first,
                        last: r.last,
                    }
                    .into());
                }
            }
            meter.finish();
        }
        None => {
            let mut meter = Meter::new("flashing (whole image)", image_size);
            let mut h = Sha256::new();
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                write_chunk(written, &buf[..n], &mut chunks)?;
                written += n as u64;
                meter.add(n as u64);
            }
            meter.finish();
            if written == 0 {
                bail!("{} is empty: nothing to flash", image.display());
            }
            if let Some((sha_file, want)) = expected_sha(image) {
                if hex::encode(h.finalize()) != want {
                    return Err(FlashError::ImageHashMismatch { sha_file }.into());
                }
            }
        }
    }
    say(&format!("flushing {}", target.display()));
    out.sync_all().with_context(|| {
        format!(
            "flushing {} (the card may be faulty or removed)",
            target.display()
        )
    })?;
    drop_cache(&out);
    let write_time = started.elapsed();

    let started = Instant::now();
    read_back(&out, &chunks, bmap.as_ref(), written)?;
    let verify_time = started.elapsed();
    if tgt.is_disk() {
        reread_partitions(&out);
    }
    Ok(FlashReport {
        image_size: image_size.unwrap_or(written),
        written,
        bmap: bmap_path,
        write_time,
        verify_time,
    })
}

/// Ask the kernel to read the new partition table, so the card's partitions show up without
/// replugging it. Best effort: a kernel that says "busy" picks it up on the next plug.
fn reread_partitions(out: &File) {
    // BLKRRPART = _IO(0x12, 95).
    const BLKRRPART: libc::c_ulong = 0x125f;
    // SAFETY: BLKRRPART takes no argument; the descriptor is an open block device.
    unsafe {
        libc::ioctl(out.as_raw_fd(), BLKRRPART as _);
    }
}

/// Forget cached pages of the target so the read-back comes from the medium, not from memory.
fn drop_cache(out: &File) {
    // SAFETY: posix_fadvise only takes a descriptor and offsets; failure only means a weaker check.
    unsafe {
        libc::posix_fadvise(out.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn read_back(
    out: &File,
    chunks: &[(u64, u64, [u8; 32])],
    bmap: Option<&Bmap>,
    total: u64,
) -> Result<()> {
    let mut meter = Meter::new("verifying (reading back)", Some(total));
    let mut buf = vec![0u8; CHUNK as usize];
    // With a bmap each range's hash is checked again against the map; chunks say where.
    let mut ranges = bmap.map(|m| m.ranges.iter().map(move |r| (m.span(r), &r.sha256)));
    let mut current: Option<((u64, u64), &String, Sha256)> = None;
    for &(at, len, sha) in chunks {
        let b = &mut buf[..len as usize];
        out.read_exact_at(b, at)
            .with_context(|| format!("reading back byte {at} of the target"))?;
        if <[u8; 32]>::from(Sha256::digest(&*b)) != sha {
            return Err(FlashError::ReadBackMismatch {
                start: at,
                end: at + len,
            }
            .into());
        }
        if let Some(it) = ranges.as_mut() {
            if current.is_none() {
                current = it.next().map(|(span, s)| (span, s, Sha256::new()));
            }
            if let Some((span, want, h)) = current.as_mut() {
                h.update(&*b);
                if at + len == span.1 {
                    let (span, want, h) = (*span, *want, std::mem::take(h));
                    if &hex::encode(h.finalize()) != want {
                        return Err(FlashError::ReadBackMismatch {
                            start: span.0,
                            end: span.1,
                        }
                        .into());
                    }
                    current = None;
                }
            }
        }
        meter.add(len);
    }
    meter.finish();
    Ok(())
}

fn confirm(tgt: &Target, image: &Path, yes: bool) -> Result<()> {
    let what = match tgt.kind {
        TargetKind::Disk { size } => format!(
            "the disk {} ({}): everything on it will be overwritten",
            tgt.path.display(),
            crate::size::ByteSize(size)
        ),
        TargetKind::File { existed: true } => {
            format!("the file {}: it will be replaced", tgt.path.display())
        }
        // A new file destroys nothing.
        TargetKind::File { existed: false } => return Ok(()),
    };
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("refusing to write {} to {what}; there is no terminal to ask on, so pass --yes to confirm", image.display());
    }
    eprint!(
        "Write {} to {what}. Type yes to continue: ",
        image.display()
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was written");
    }
    Ok(())
}
