//! `imagebuild flash`: write an image (raw, .zst or .xz, streamed) to a card or file, only its
//! mapped ranges when a bmap is at hand, then read every written range back and verify it.

use crate::bmap::Bmap;
use crate::device::{describe, DiskInfo, Target, TargetKind};
use crate::interrupt;
use crate::io::aligned::{AlignedBuf, ALIGN};
use crate::output::with_suffix;
use crate::progress::say;
use crate::source::{self, Packing};
use crate::stamp::PreparedStamp;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per read and write: large, on the 4 KiB grid, so a card gets long sequential writes
/// (flash-bench: a 3 GiB `O_DIRECT` copy to a disk took 8.1 s in 4 MiB writes, 2.1 s in 16 MiB
/// ones, 2.1 s in 64 MiB ones). Without a bmap it is also the granularity of the read-back
/// check (a mismatch is reported to within this many bytes); with one, the map's ranges are.
const CHUNK: u64 = 16 << 20;

/// Chunks queued for each card's writer (memory: this many times [`CHUNK`] per card).
const QUEUED: usize = 4;

/// How much of a bmap range the reader holds back until the range's checksum is known good.
const HOLD: u64 = 64 << 20;

/// How to flash.
#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// Use this bmap instead of looking for IMAGE.bmap beside the image.
    pub bmap: Option<PathBuf>,
    /// Write the whole image even when a bmap is beside it.
    pub no_bmap: bool,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Allow a regular file as the target (never under /dev).
    pub to_file: bool,
    /// Write a block device with `O_DIRECT` (Some(true)) or through the page cache
    /// (Some(false)); None = [`DIRECT_BY_DEFAULT`]. Files are always written through the cache.
    pub direct: Option<bool>,
}

/// Whether block devices are written with `O_DIRECT` unless told otherwise (flash-bench measures
/// both on the same target).
pub const DIRECT_BY_DEFAULT: bool = true;

/// One card to write, and what to stamp on it afterwards.
#[derive(Debug, Clone)]
pub struct Card {
    /// A whole-disk device, or a file with `to_file`.
    pub target: PathBuf,
    /// Settings to stamp into its boot partition after writing.
    pub stamp: Option<PreparedStamp>,
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

/// What happened to one card of a batch.
#[derive(Debug)]
pub struct CardReport {
    /// The target path.
    pub target: PathBuf,
    /// Model, serial and bus from sysfs (empty for files).
    pub info: DiskInfo,
    /// The kit (cluster name) stamped on it, if any.
    pub kit: Option<String>,
    /// Files stamped into its boot partition.
    pub stamped: Vec<String>,
    /// The outcome: written and verified, or why not.
    pub result: Result<FlashReport>,
}

/// A batch of cards written from one read of the image.
#[derive(Debug)]
pub struct Batch {
    /// The bmap used, if any.
    pub bmap: Option<PathBuf>,
    /// Why a bmap beside the image was not used, if one was passed over.
    pub bmap_note: Option<String>,
    /// One report per card, in the order given.
    pub cards: Vec<CardReport>,
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

/// A companion file (`.bmap`, `.sha256`) of `image`: `IMAGE.ext`, or for `x.img.zst` also
/// `x.img.ext`, but only when its content proves it describes the compressed file's image: the
/// sha256 of the whole image it records equals the one the .zst carries (`build` writes it in
/// a zstd skippable frame; `stamp` on `x.img` changes the map's and leaves the .zst's). Anything
/// else is passed over with the reason.
fn companion(image: &Path, ext: &str) -> (Option<PathBuf>, Option<String>) {
    let direct = with_suffix(image, ext);
    if direct.is_file() {
        return (Some(direct), None);
    }
    let Some(stem) = unpacked_name(image) else {
        return (None, None);
    };
    let p = with_suffix(&stem, ext);
    if !p.is_file() {
        return (None, None);
    }
    let described = if ext == ".bmap" {
        Bmap::load(&p).ok().and_then(|b| b.image_sha256)
    } else {
        sha_in(&p)
    };
    let carried = source::packed_image_sha256(image);
    let (p_, i_) = (p.display(), image.display());
    match (described, carried) {
        (Some(d), Some(c)) if d == c => (Some(p), None),
        (Some(_), Some(_)) => (
            None,
            Some(format!(
                "{p_} is not used: it describes another image than {i_} holds (their image sha256 differ: {} was changed, e.g. stamped, after {i_} was made)",
                stem.display()
            )),
        ),
        (None, _) => (
            None,
            Some(format!(
                "{p_} is not used: it does not record its image's sha256 (made by bmaptool or an older imagebuild), so it cannot be matched with {i_}; pass --bmap {p_} if you know it belongs"
            )),
        ),
        (Some(_), None) => (
            None,
            Some(format!(
                "{p_} is not used: {i_} does not say which image it holds (only .zst files from `imagebuild build` do), so the map may describe another image; pass --bmap {p_} if you know it belongs"
            )),
        ),
    }
}

/// The first word of a `sha256sum` file, when it is a sha256.
fn sha_in(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let hash = text.split_whitespace().next()?.to_ascii_lowercase();
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// The bmap that belongs to `image`, if there is one beside it.
pub fn bmap_beside(image: &Path) -> Option<PathBuf> {
    companion(image, ".bmap").0
}

/// `x.img` for `x.img.zst` / `.xz` / `.gz`.
fn unpacked_name(image: &Path) -> Option<PathBuf> {
    let ext = image.extension()?.to_str()?;
    matches!(ext, "zst" | "xz" | "gz").then(|| image.with_extension(""))
}

/// The sha256 of the raw image from a `sha256sum` file that belongs to it, if there is one.
fn expected_sha(image: &Path) -> Option<(PathBuf, String)> {
    let p = companion(image, ".sha256").0?;
    let hash = sha_in(&p)?;
    Some((p, hash))
}

/// Flash `image` to one `target` (a whole block device, or a file with `to_file`), verifying
/// every written byte.
pub fn flash(image: &Path, target: &Path, options: &FlashOptions) -> Result<FlashReport> {
    let card = Card {
        target: target.to_path_buf(),
        stamp: None,
    };
    let mut batch = flash_cards(image, vec![card], options)?;
    batch
        .cards
        .pop()
        .context("internal error: no card report")?
        .result
}

/// A chunk of the image for every card's writer.
enum Piece {
    /// `data` goes at byte `at`.
    Chunk { at: u64, data: Arc<AlignedBuf> },
    /// The image was read to the end and matched its checks; without a bmap, the sha256 of
    /// every chunk (taken once for all cards, beside the reader), for the read-back.
    End(Option<Arc<Vec<Expected>>>),
}

/// The image as the reader found it, for the read-back, and how to write it.
struct ImageFacts {
    size: Option<u64>,
    bmap: Option<Arc<Bmap>>,
    direct: bool,
}

/// Flash `image` to several cards at once: the image is read (and decompressed) once, every
/// chunk goes to one writer thread per card; each card is then read back, stamped with its own
/// settings, and its boot partition read back. A card that fails does not stop the others.
/// Errors before anything is written (a bad target, a bmap of another image) fail the batch.
pub fn flash_cards(image: &Path, cards: Vec<Card>, options: &FlashOptions) -> Result<Batch> {
    interrupt::install().context("installing the interrupt handler")?;
    if cards.is_empty() {
        bail!("no card to write: name a device such as /dev/sdb");
    }
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let packing = source::detect_packing(image)?;
    let (bmap_path, bmap_note) = match (&options.bmap, options.no_bmap) {
        (Some(p), _) => (Some(p.clone()), None),
        (None, true) => (None, None),
        (None, false) => companion(image, ".bmap"),
    };
    if let Some(n) = &bmap_note {
        say(&format!("note: {n}"));
    }
    let bmap = bmap_path.as_deref().map(Bmap::load).transpose()?;
    if let (Some(b), Some(carried)) = (&bmap, source::packed_image_sha256(image)) {
        if b.image_sha256.as_ref().is_some_and(|d| *d != carried) {
            bail!(
                "the bmap {} describes another image than {} holds (their image sha256 differ): pass the right --bmap, or --no-bmap",
                bmap_path.as_deref().unwrap_or(Path::new("")).display(),
                image.display()
            );
        }
    }
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

    let mut targets = Vec::new();
    for c in &cards {
        let tgt = Target::for_flash(&c.target, options.to_file)?;
        if let (Ok(a), Ok(b)) = (file.metadata(), std::fs::metadata(&c.target)) {
            use std::os::unix::fs::MetadataExt;
            if a.dev() == b.dev() && a.ino() == b.ino() {
                bail!("{} is the image itself", c.target.display());
            }
        }
        if let (TargetKind::Disk { size }, Some(img)) = (&tgt.kind, image_size) {
            if *size < img {
                bail!(
                    "{} is too small: it holds {} but the image needs {}",
                    c.target.display(),
                    crate::size::ByteSize(*size),
                    crate::size::ByteSize(img)
                );
            }
        }
        let canon = std::fs::canonicalize(&c.target).unwrap_or_else(|_| c.target.clone());
        if targets.iter().any(|(_, p): &(Target, PathBuf)| *p == canon) {
            bail!("{} is named twice", c.target.display());
        }
        targets.push((tgt, canon));
    }
    let targets: Vec<Target> = targets.into_iter().map(|(t, _)| t).collect();
    confirm(&targets, image, options.yes)?;

    let facts = Arc::new(ImageFacts {
        size: image_size,
        bmap: bmap.map(Arc::new),
        direct: options.direct.unwrap_or(DIRECT_BY_DEFAULT),
    });
    let bars = Bars::new();
    let label_width = targets
        .iter()
        .map(|t| t.path.display().to_string().len())
        .max()
        .unwrap_or(8);
    // Open every target before writing any, so a busy device fails before the others start.
    let mut writers = Vec::new();
    let mut reports: Vec<Option<CardReport>> = Vec::new();
    for (tgt, card) in targets.into_iter().zip(cards) {
        let info = crate::device::kernel_name(&tgt.path)
            .map(|n| describe(&n))
            .unwrap_or_default();
        let kit = card.stamp.as_ref().map(|s| s.name.clone());
        let total = facts.bmap.as_ref().map(|b| b.mapped_bytes()).or(facts.size);
        let bar = bars.card(
            &format!("{:width$}", tgt.path.display(), width = label_width),
            total,
        );
        match tgt.open_rw(true) {
            Ok(out) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(QUEUED);
                let facts = Arc::clone(&facts);
                let stamp = card.stamp.clone();
                let handle = std::thread::spawn(move || {
                    let r = write_card(&tgt, out, rx, &facts, stamp.as_ref(), bar);
                    if r.is_err() {
                        if let TargetKind::File { existed: false } = tgt.kind {
                            // A new file that failed is not an image: leave nothing behind.
                            let _ = std::fs::remove_file(&tgt.path);
                        }
                    }
                    r
                });
                writers.push(Some((tx, handle)));
                reports.push(Some(CardReport {
                    target: card.target,
                    info,
                    kit,
                    stamped: Vec::new(),
                    result: Err(anyhow::anyhow!("not written")),
                }));
            }
            Err(e) => {
                writers.push(None);
                reports.push(Some(CardReport {
                    target: card.target,
                    info,
                    kit,
                    stamped: Vec::new(),
                    result: Err(e),
                }));
            }
        }
    }

    // One read of the image feeds every writer; a writer that stopped is skipped from then on.
    let mut senders: Vec<Option<SyncSender<Piece>>> = writers
        .iter()
        .map(|w| w.as_ref().map(|(tx, _)| tx.clone()))
        .collect();
    let read = read_image(&file, packing, image, &facts, &mut senders);
    if let Ok(chunks) = &read {
        for tx in senders.iter().flatten() {
            let _ = tx.send(Piece::End(chunks.clone()));
        }
    }
    drop(senders);
    let read_error = read.err().map(|e| format!("{e:#}"));
    for (w, report) in writers.into_iter().zip(reports.iter_mut()) {
        let Some((tx, handle)) = w else { continue };
        drop(tx);
        let r = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))
            .and_then(|r| r);
        if let Some(rep) = report.as_mut() {
            rep.result = match (r, &read_error) {
                (Ok((rep_ok, stamped)), _) => {
                    rep.stamped = stamped;
                    Ok(FlashReport {
                        bmap: bmap_path.clone(),
                        ..rep_ok
                    })
                }
                (Err(_), Some(why)) => Err(anyhow::anyhow!(
                    "{why}; {} is incomplete: flash it again before using it",
                    rep.target.display()
                )),
                (Err(e), None) => Err(e),
            };
        }
    }
    Ok(Batch {
        bmap: bmap_path,
        bmap_note,
        cards: reports.into_iter().flatten().collect(),
    })
}

/// Read the image once and hand every chunk to every live writer, checking each bmap range (or
/// the whole image against its .sha256) as it goes. Without a bmap, a second thread takes every
/// chunk's sha256 for the read-back (returned), while this one reads and checks the whole.
fn read_image(
    file: &File,
    packing: Packing,
    image: &Path,
    facts: &ImageFacts,
    senders: &mut [Option<SyncSender<Piece>>],
) -> Result<Option<Arc<Vec<Expected>>>> {
    let mut stream = ImageStream {
        reader: if packing == Packing::Raw {
            Box::new(std::io::empty())
        } else {
            source::unpacked(packing, BufReader::with_capacity(1 << 20, file))?
        },
        raw: (packing == Packing::Raw).then_some(file),
        pos: 0,
    };
    let mut send = |at: u64, data: Arc<AlignedBuf>| -> Result<()> {
        if interrupt::requested() {
            bail!("interrupted by a signal while writing");
        }
        let mut live = 0;
        for s in senders.iter_mut() {
            if let Some(tx) = s {
                let piece = Piece::Chunk {
                    at,
                    data: Arc::clone(&data),
                };
                if tx.send(piece).is_err() {
                    *s = None; // that card failed; the others go on
                } else {
                    live += 1;
                }
            }
        }
        if live == 0 {
            bail!("every card failed");
        }
        Ok(())
    };
    match &facts.bmap {
        Some(map) => {
            for r in &map.ranges {
                let (start, end) = map.span(r);
                stream.skip_to(start)?;
                let mut h = Sha256::new();
                let mut pos = start;
                let mut pending: Vec<(u64, AlignedBuf)> = Vec::new();
                while pos < end {
                    let want = ((end - pos) as usize).min(CHUNK as usize);
                    let mut buf = AlignedBuf::zeroed(want);
                    let n = stream.read(&mut buf)?;
                    if n < want {
                        bail!(
                            "the image ends at byte {} but its bmap maps bytes up to {end}",
                            pos + n as u64
                        );
                    }
                    h.update(&buf[..]);
                    // A range is held back until its checksum is known good (up to HOLD; a
                    // longer range goes out in pieces before its check), so a corrupt image
                    // seldom reaches a card; when it does, the card is reported incomplete.
                    pending.push((pos, buf));
                    pos += n as u64;
                    if pending.len() as u64 >= HOLD / CHUNK && pos < end {
                        for (at, b) in pending.drain(..) {
                            send(at, Arc::new(b))?;
                        }
                    }
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
                for (at, b) in pending {
                    send(at, Arc::new(b))?;
                }
            }
        }
        None => {
            // The whole image is hashed only when there is a .sha256 to check it against.
            let expected = expected_sha(image);
            let mut h = expected.as_ref().map(|_| Sha256::new());
            let mut written = 0u64;
            let chunks = std::thread::scope(|s| -> Result<Vec<Expected>> {
                let (htx, hrx) = std::sync::mpsc::sync_channel::<(u64, Arc<AlignedBuf>)>(QUEUED);
                let hasher = s.spawn(move || {
                    hrx.iter()
                        .map(|(at, data)| Expected {
                            start: at,
                            end: at + data.len() as u64,
                            sha256: Sha256::digest(&data[..]).into(),
                        })
                        .collect::<Vec<_>>()
                });
                loop {
                    let mut buf = AlignedBuf::zeroed(CHUNK as usize);
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    if let Some(h) = h.as_mut() {
                        h.update(&buf[..]);
                    }
                    let data = Arc::new(buf);
                    htx.send((written, Arc::clone(&data)))
                        .context("internal error: the chunk hasher stopped")?;
                    send(written, data)?;
                    written += n as u64;
                }
                drop(htx);
                hasher
                    .join()
                    .map_err(|_| anyhow::anyhow!("internal error: the chunk hasher panicked"))
            })?;
            if written == 0 {
                bail!("{} is empty: nothing to flash", image.display());
            }
            if let (Some((sha_file, want)), Some(h)) = (expected, h) {
                if hex::encode(h.finalize()) != want {
                    return Err(FlashError::ImageHashMismatch { sha_file }.into());
                }
            }
            return Ok(Some(Arc::new(chunks)));
        }
    }
    Ok(None)
}

/// One card: write what the reader sends, flush, read back, stamp, read the stamp back.
fn write_card(
    tgt: &Target,
    out: File,
    rx: Receiver<Piece>,
    facts: &ImageFacts,
    stamp: Option<&PreparedStamp>,
    mut bar: CardBar,
) -> Result<(FlashReport, Vec<String>)> {
    let shown = tgt.path.display().to_string();
    let device_size = match tgt.kind {
        TargetKind::Disk { size } => Some(size),
        TargetKind::File { .. } => None,
    };
    if let (TargetKind::File { .. }, Some(size)) = (&tgt.kind, facts.size) {
        out.set_len(size)
            .with_context(|| format!("sizing {shown}"))?;
    }
    let started = Instant::now();
    // Large aligned writes straight to the card: no copy through the page cache, no gigabytes
    // of dirty pages for the final fsync to wait on. A write the device refuses unaligned
    // (EINVAL: the image's tail on a 4 KiB-sector disk) and the rest go through the cache.
    let mut direct = tgt.is_disk() && facts.direct && set_direct(&out, true);
    // Without a bmap, each chunk's sha256 (taken once beside the reader, for every card)
    // comes with the end of the image and is checked on read-back; with one, the map's range
    // checksums are.
    let mut chunks: Arc<Vec<Expected>> = Arc::new(Vec::new());
    let mut written = 0u64;
    let mut finished = false;
    for piece in rx.iter() {
        if interrupt::requested() {
            bail!("interrupted by a signal: {shown} is incomplete, flash it again before using it");
        }
        match piece {
            Piece::End(hashed) => {
                if let Some(h) = hashed {
                    chunks = h;
                }
                finished = true;
                break;
            }
            Piece::Chunk { at, data } => {
                if let Some(dev) = device_size {
                    if at + data.len() as u64 > dev {
                        bail!(
                            "{shown} is too small: the image continues past its end ({dev} bytes)"
                        );
                    }
                }
                let mut r = out.write_all_at(&data, at);
                if direct && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
                    direct = !set_direct(&out, false);
                    r = out.write_all_at(&data, at);
                }
                r.with_context(|| format!("writing {shown} at byte {at}"))?;
                written += data.len() as u64;
                bar.add(data.len() as u64);
            }
        }
    }
    if !finished {
        bail!("the image could not be read to the end: {shown} is incomplete, flash it again before using it");
    }
    if direct {
        set_direct(&out, false);
    }
    bar.stage("flushing");
    out.sync_all()
        .with_context(|| format!("flushing {shown} (the card may be faulty or removed)"))?;
    drop_cache(&out);
    let write_time = started.elapsed();
    let started = Instant::now();
    bar.stage("verifying");
    if let Some(map) = facts.bmap.as_deref() {
        chunks = Arc::new(
            map.ranges
                .iter()
                .map(|r| {
                    let (start, end) = map.span(r);
                    let mut sha256 = [0u8; 32];
                    hex::decode_to_slice(&r.sha256, &mut sha256).with_context(|| {
                        format!("the bmap's checksum of blocks {}-{}", r.first, r.last)
                    })?;
                    Ok(Expected { start, end, sha256 })
                })
                .collect::<Result<_>>()?,
        );
    }
    // A disk is read back with O_DIRECT whatever the writes used: the medium, not memory.
    read_back(&out, tgt.is_disk(), device_size, &chunks, &mut bar)
        .with_context(|| format!("{shown} is not usable"))?;
    let verify_time = started.elapsed();
    let mut out = out;
    let mut stamped = Vec::new();
    if let Some(s) = stamp {
        bar.stage("stamping");
        let (_, files) = crate::stamp::write_boot(&mut out, &tgt.path, &s.cluster)
            .with_context(|| format!("stamping {shown}"))?;
        drop_cache(&out);
        crate::stamp::check_boot(&mut out, &tgt.path, &s.cluster)?;
        stamped = files;
    }
    if tgt.is_disk() {
        reread_partitions(&out);
    }
    out.sync_all()
        .with_context(|| format!("flushing {shown}"))?;
    bar.done("verified");
    Ok((
        FlashReport {
            image_size: facts.size.unwrap_or(written),
            written,
            bmap: None,
            write_time,
            verify_time,
        },
        stamped,
    ))
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

/// Turn `O_DIRECT` on or off for `out`; true when the descriptor now has it as asked.
fn set_direct(out: &File, on: bool) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = out.as_raw_fd();
    let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) else {
        return false;
    };
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).is_ok()
}

/// Forget cached pages of the target so the read-back comes from the medium, not from memory.
fn drop_cache(out: &File) {
    // SAFETY: posix_fadvise only takes a descriptor and offsets; failure only means a weaker check.
    unsafe {
        libc::posix_fadvise(out.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// A stretch of the target and the sha256 it must read back as.
struct Expected {
    start: u64,
    end: u64,
    sha256: [u8; 32],
}

/// Bytes per read-back request, on the 4 KiB grid ([`READERS`] of them in flight). Reads do not
/// gain from size as writes do: `dd iflag=direct` of 1 GiB from a disk read 0.86 s in 1 MiB
/// requests, 0.91 s in 4 MiB ones and 1.07-1.14 s in 16 MiB ones.
const READ: u64 = 4 << 20;

/// Stretches closer than this are read in one request (the gap is read and ignored): a card
/// reads 64 KiB in less time than a separate request costs, and a bmap of a real root
/// filesystem has thousands of small ranges.
const MERGE_GAP: u64 = 64 << 10;

/// Reader threads per card during the read-back: two requests in flight keep the device busy
/// while the previous one completes (and while this thread hashes).
const READERS: usize = 2;

/// Read buffers per reader thread: one being read, one being hashed.
const BUFFERS_PER_READER: usize = 2;

/// The requests that read every expected stretch: `[start, end)` windows on the `ALIGN` grid
/// (an `O_DIRECT` read needs it), neighbours closer than [`MERGE_GAP`] merged, none longer than
/// [`READ`], in increasing order. `limit` (the device size) cuts the last window's rounding.
fn read_plan(expected: &[Expected], limit: Option<u64>) -> Vec<(u64, u64)> {
    let align = ALIGN as u64;
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for e in expected {
        let start = e.start / align * align;
        let mut end = e.end.div_ceil(align) * align;
        if let Some(l) = limit {
            end = end.min(l.max(e.end));
        }
        match windows.last_mut() {
            Some(w) if start <= w.1 + MERGE_GAP => w.1 = w.1.max(end),
            _ => windows.push((start, end)),
        }
    }
    let mut plan = Vec::new();
    for (mut s, e) in windows {
        while s < e {
            let n = (e - s).min(READ);
            plan.push((s, s + n));
            s += n;
        }
    }
    plan
}

/// Read every expected stretch back from the target and check its sha256. A reader thread
/// issues large aligned requests (`O_DIRECT` when `direct`: the medium, never the page cache;
/// a request the device refuses unaligned falls back to a read through the cache, which was
/// dropped after the write) into a few recycled buffers while this thread hashes, so the check
/// runs at the speed of the slower of the two. `expected` is in increasing order.
fn read_back(
    out: &File,
    direct: bool,
    limit: Option<u64>,
    expected: &[Expected],
    bar: &mut CardBar,
) -> Result<()> {
    let limit = limit.or_else(|| out.metadata().ok().map(|m| m.len()));
    let plan = read_plan(expected, limit);
    let size = plan.iter().map(|(s, e)| e - s).max().unwrap_or(0) as usize;
    let direct = AtomicBool::new(direct && set_direct(out, true));
    let result = std::thread::scope(|s| -> Result<()> {
        type Got = std::io::Result<(u64, u64, AlignedBuf)>;
        let mut got = Vec::new();
        let mut free = Vec::new();
        for first in 0..READERS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Got>(BUFFERS_PER_READER);
            let (free_tx, free_rx) = std::sync::mpsc::channel::<AlignedBuf>();
            for _ in 0..BUFFERS_PER_READER {
                let _ = free_tx.send(AlignedBuf::zeroed(size));
            }
            got.push(rx);
            free.push(free_tx);
            let (plan, direct) = (&plan, &direct);
            s.spawn(move || {
                for &(start, end) in plan.iter().skip(first).step_by(READERS) {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let n = (end - start) as usize;
                    let mut r = out.read_exact_at(&mut buf[..n], start);
                    if direct.load(Ordering::Relaxed)
                        && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
                    {
                        direct.store(!set_direct(out, false), Ordering::Relaxed);
                        r = out.read_exact_at(&mut buf[..n], start);
                    }
                    let failed = r.is_err();
                    if tx.send(r.map(|_| (start, end, buf))).is_err()
                        || failed
                        || interrupt::requested()
                    {
                        return;
                    }
                }
            });
        }
        let mut next = expected.iter().peekable();
        let mut h = Sha256::new();
        for k in 0..plan.len() {
            if interrupt::requested() {
                bail!("interrupted by a signal while reading back");
            }
            let at = plan[k].0;
            let (start, end, buf) = got[k % READERS]
                .recv()
                .context("internal error: a read-back reader stopped")?
                .with_context(|| format!("reading back the target near byte {at}"))?;
            while let Some(e) = next.peek() {
                if e.start >= end {
                    break;
                }
                let from = e.start.max(start);
                let to = e.end.min(end);
                if from < to {
                    h.update(&buf[(from - start) as usize..(to - start) as usize]);
                    bar.add(to - from);
                }
                if e.end > end {
                    break;
                }
                let done = std::mem::replace(&mut h, Sha256::new());
                if <[u8; 32]>::from(done.finalize()) != e.sha256 {
                    return Err(FlashError::ReadBackMismatch {
                        start: e.start,
                        end: e.end,
                    }
                    .into());
                }
                next.next();
            }
            let _ = free[k % READERS].send(buf);
        }
        if next.peek().is_some() {
            bail!("internal error: the read-back plan missed a stretch");
        }
        Ok(())
    });
    if direct.load(Ordering::Relaxed) {
        set_direct(out, false);
    }
    result
}

fn confirm(targets: &[Target], image: &Path, yes: bool) -> Result<()> {
    let doomed: Vec<String> = targets
        .iter()
        .filter_map(|t| match t.kind {
            TargetKind::Disk { size } => Some(format!(
                "the disk {} ({})",
                t.path.display(),
                crate::size::ByteSize(size)
            )),
            TargetKind::File { existed: true } => Some(format!("the file {}", t.path.display())),
            // A new file destroys nothing.
            TargetKind::File { existed: false } => None,
        })
        .collect();
    if doomed.is_empty() || yes {
        return Ok(());
    }
    let what = format!(
        "{}: everything on it will be overwritten",
        doomed.join(", ")
    );
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

/// Progress of every card: one bar per card on a terminal, a line per quarter otherwise.
struct Bars {
    multi: Option<indicatif::MultiProgress>,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            multi: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
        }
    }

    fn card(&self, label: &str, total: Option<u64>) -> CardBar {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            });
            let style = indicatif::ProgressStyle::with_template(
                "{prefix} {msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_prefix(label.to_string());
            b.set_message("writing");
            b
        });
        CardBar {
            label: label.trim().to_string(),
            stage: "writing".into(),
            total,
            done: 0,
            next_line: 0,
            bar,
        }
    }
}

/// One card's progress line.
struct CardBar {
    label: String,
    stage: String,
    total: Option<u64>,
    done: u64,
    next_line: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl CardBar {
    fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.set_position(self.done),
            None => {
                if self.done >= self.next_line {
                    let step = self.total.map(|t| (t / 4).max(1)).unwrap_or(256 << 20);
                    if self.next_line > 0 {
                        match self.total {
                            Some(t) => say(&format!(
                                "{}: {} {}%",
                                self.label,
                                self.stage,
                                self.done.saturating_mul(100) / t.max(1)
                            )),
                            None => say(&format!(
                                "{}: {} {} MiB",
                                self.label,
                                self.stage,
                                self.done >> 20
                            )),
                        }
                    }
                    self.next_line = self.done + step;
                }
            }
        }
    }

    fn stage(&mut self, stage: &str) {
        self.stage = stage.to_string();
        self.done = 0;
        self.next_line = 0;
        match &self.bar {
            Some(b) => {
                b.set_message(stage.to_string());
                b.set_position(0);
            }
            None => say(&format!("{}: {stage}", self.label)),
        }
    }

    fn done(&mut self, what: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(what.to_string()),
            None => say(&format!("{}: {what}", self.label)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_bar() -> CardBar {
        CardBar {
            label: "t".into(),
            stage: "verifying".into(),
            total: None,
            done: 0,
            next_line: u64::MAX,
            bar: None,
        }
    }

    #[test]
    fn read_back_checks_every_stretch_and_names_the_one_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.img");
        // 3 stretches, one longer than a chunk, so the reader thread hands over several pieces.
        let data: Vec<u8> = (0..(CHUNK as usize * 2 + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let spans = [
            (0u64, 4096u64),
            (8192, CHUNK + 8192 + 100),
            (CHUNK * 2, data.len() as u64),
        ];
        let expected: Vec<Expected> = spans
            .iter()
            .map(|&(start, end)| Expected {
                start,
                end,
                sha256: Sha256::digest(&data[start as usize..end as usize]).into(),
            })
            .collect();
        // Through the cache, and with O_DIRECT (this file's unaligned tail falls back).
        for direct in [false, true] {
            let f = File::open(&p).unwrap();
            read_back(&f, direct, None, &expected, &mut quiet_bar()).unwrap();
        }

        // One byte of the card differs in the second stretch: that stretch is named.
        let mut bad = data.clone();
        bad[CHUNK as usize + 100] ^= 0x55;
        std::fs::write(&p, &bad).unwrap();
        let f = File::open(&p).unwrap();
        let err = read_back(&f, false, None, &expected, &mut quiet_bar()).unwrap_err();
        match err.downcast_ref::<FlashError>() {
            Some(FlashError::ReadBackMismatch { start, end }) => {
                assert_eq!((*start, *end), spans[1]);
            }
            other => panic!("expected a read-back mismatch, got {other:?} ({err:#})"),
        }
    }

    fn stretch(start: u64, end: u64) -> Expected {
        Expected {
            start,
            end,
            sha256: [0; 32],
        }
    }

    #[test]
    fn the_read_plan_is_aligned_merges_neighbours_and_caps_requests() {
        let a = ALIGN as u64;
        let expected = [
            stretch(a, 3 * a),
            // 8 KiB after the first: merged with it.
            stretch(5 * a, 6 * a + 100),
            // Far away: a request of its own.
            stretch(10 << 20, (10 << 20) + 3 * READ + 5),
        ];
        let plan = read_plan(&expected, Some(1 << 30));
        assert_eq!(plan[0], (a, 7 * a));
        assert_eq!(plan[1], (10 << 20, (10 << 20) + READ));
        assert_eq!(plan.len(), 5);
        let last = plan[4];
        assert_eq!(last.1, ((10 << 20) + 3 * READ + 5).div_ceil(a) * a);
        for (s, e) in &plan {
            assert_eq!(s % a, 0);
            assert_eq!(e % a, 0);
            assert!(e - s <= READ);
        }
        // Every byte of every stretch is in some request.
        for x in &expected {
            for b in [x.start, x.end - 1] {
                assert!(plan.iter().any(|(s, e)| *s <= b && b < *e), "byte {b}");
            }
        }
        // The end of the device cuts the rounding of the last request.
        let plan = read_plan(&[stretch(0, a + 10)], Some(a + 512));
        assert_eq!(plan, vec![(0, a + 512)]);
    }
}
