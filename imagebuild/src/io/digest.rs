//! One read of a finished image yields everything published beside it: the image's sha256, the
//! bmap's ranges with their checksums, and the compressed copy. Each consumer runs on its own
//! thread, so the read goes at the speed of the slowest one, not of their sum.

use super::extents::stretches;
use crate::bmap::{BlockRange, Bmap, BLOCK_SIZE};
use crate::output::Packer;
use crate::progress::Meter;
use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Bytes read at a time.
const CHUNK: u64 = 4 << 20;

/// The image's stretches in order: mapped bytes (with the index of their range and whether they
/// end it), or zeros between ranges.
#[derive(Clone)]
enum Piece {
    Data {
        ends_range: bool,
        bytes: Arc<Vec<u8>>,
    },
    Zeros(u64),
}

/// What one pass over an image found.
pub struct ImageDigest {
    /// sha256 (hex) of the whole image.
    pub sha256: String,
    /// Its block map, every range hashed, recording the image's sha256.
    pub map: Bmap,
}

/// The blocks of `[start, end)` of `file` that hold data (SEEK_DATA/SEEK_HOLE), widened to whole
/// blocks of `bs` bytes; neighbours sharing a block merge. Inclusive block numbers.
pub fn mapped_blocks(file: &File, start: u64, end: u64, bs: u64) -> Vec<(u64, u64)> {
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for st in stretches(file, start, end).into_iter().filter(|s| s.data) {
        if st.len == 0 {
            continue;
        }
        let (first, last) = (st.offset / bs, (st.offset + st.len - 1) / bs);
        match blocks.last_mut() {
            Some((_, l)) if first <= *l + 1 => *l = (*l).max(last),
            _ => blocks.push((first, last)),
        }
    }
    blocks
}

/// Read `image` once: its sha256 (unless `known_sha256` is given), its block map with every
/// range's sha256, and, when `packer` is given, its compressed copy (finished with the sha256).
pub fn digest(
    image: &Path,
    known_sha256: Option<&str>,
    packer: Option<Packer>,
) -> Result<ImageDigest> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = file.metadata()?.len();
    let blocks = mapped_blocks(&file, 0, size, BLOCK_SIZE);
    let spans: Vec<(u64, u64)> = blocks
        .iter()
        .map(|&(f, l)| (f * BLOCK_SIZE, ((l + 1) * BLOCK_SIZE).min(size)))
        .collect();
    let label = match &packer {
        Some(p) => format!("hashing and compressing ({})", p.name()),
        None => "hashing the image and its block map".to_string(),
    };
    let mut meter = Meter::new(&label, Some(size));
    let (sha, range_sums) = std::thread::scope(|s| -> Result<(Option<String>, Vec<String>)> {
        let mut senders: Vec<SyncSender<Piece>> = Vec::new();
        let mut channel = || {
            let (tx, rx) = sync_channel::<Piece>(4);
            senders.push(tx);
            rx
        };
        let whole = known_sha256.is_none().then(|| {
            let rx = channel();
            s.spawn(move || whole_sha256(rx))
        });
        let ranges = {
            let rx = channel();
            let n = spans.len();
            s.spawn(move || range_sha256s(rx, n))
        };
        let packed = packer.map(|p| {
            let rx = channel();
            s.spawn(move || pack(rx, p))
        });
        let read = read_pieces(&file, image, size, &spans, &senders, &mut meter);
        drop(senders);
        let whole = whole
            .map(|h| h.join().map_err(|_| anyhow!("the sha256 thread panicked")))
            .transpose()?;
        let ranges = ranges
            .join()
            .map_err(|_| anyhow!("the block map thread panicked"))?;
        let packed = packed
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("the compression thread panicked"))
            })
            .transpose()?;
        // A compressor that failed (disk full) stopped the reader too: its error is the cause.
        let packed = packed.transpose()?;
        read?;
        let sha = whole;
        if let Some(p) = packed {
            let id = sha
                .clone()
                .or(known_sha256.map(str::to_ascii_lowercase))
                .context("internal error: no image sha256 for the compressed copy")?;
            p.finish(&id)?;
        }
        Ok((sha, ranges))
    })?;
    meter.finish();
    let sha256 = match sha {
        Some(s) => s,
        None => known_sha256
            .map(str::to_ascii_lowercase)
            .context("internal error: no image sha256")?,
    };
    let map = Bmap {
        image_size: size,
        block_size: BLOCK_SIZE,
        ranges: blocks
            .into_iter()
            .zip(range_sums)
            .map(|((first, last), sha256)| BlockRange {
                first,
                last,
                sha256,
            })
            .collect(),
        image_sha256: Some(sha256.clone()),
    };
    Ok(ImageDigest { sha256, map })
}

/// The reading side: every mapped span read in chunks, the gaps sent as zeros.
fn read_pieces(
    file: &File,
    image: &Path,
    size: u64,
    spans: &[(u64, u64)],
    senders: &[SyncSender<Piece>],
    meter: &mut Meter,
) -> Result<()> {
    let send = |p: Piece| -> Result<()> {
        for tx in senders {
            tx.send(p.clone())
                .map_err(|_| anyhow!("a hashing or compression thread stopped"))?;
        }
        Ok(())
    };
    let mut pos = 0u64;
    for &(start, end) in spans {
        crate::interrupt::check()?;
        if start > pos {
            send(Piece::Zeros(start - pos))?;
            meter.add(start - pos);
        }
        let mut at = start;
        while at < end {
            crate::interrupt::check()?;
            let n = (end - at).min(CHUNK);
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, at)
                .with_context(|| format!("reading {}", image.display()))?;
            at += n;
            send(Piece::Data {
                ends_range: at == end,
                bytes: Arc::new(buf),
            })?;
            meter.add(n);
        }
        pos = end;
    }
    if size > pos {
        send(Piece::Zeros(size - pos))?;
        meter.add(size - pos);
    }
    Ok(())
}

fn zeros_in_chunks(mut n: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        f(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn whole_sha256(rx: Receiver<Piece>) -> String {
    let mut h = Sha256::new();
    for p in rx {
        match p {
            Piece::Data { bytes, .. } => h.update(&*bytes),
            Piece::Zeros(n) => {
                let _ = zeros_in_chunks(n, |z| {
                    h.update(z);
                    Ok(())
                });
            }
        }
    }
    hex::encode(h.finalize())
}

fn range_sha256s(rx: Receiver<Piece>, count: usize) -> Vec<String> {
    let mut sums = Vec::with_capacity(count);
    let mut h = Sha256::new();
    for p in rx {
        if let Piece::Data {
            ends_range, bytes, ..
        } = p
        {
            h.update(&*bytes);
            if ends_range {
                sums.push(hex::encode(std::mem::take(&mut h).finalize()));
            }
        }
    }
    sums
}

fn pack(rx: Receiver<Piece>, mut packer: Packer) -> Result<Packer> {
    for p in rx {
        match p {
            Piece::Data { bytes, .. } => packer.write(&bytes)?,
            Piece::Zeros(n) => zeros_in_chunks(n, |z| packer.write(z))?,
        }
    }
    Ok(packer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Compression;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// A sparse image: data at the start, a range longer than a read, data at the very end.
    fn sparse_image(dir: &Path) -> PathBuf {
        let p = dir.join("a.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        let big: Vec<u8> = (0..(CHUNK as usize + 5000))
            .map(|i| (i % 253) as u8)
            .collect();
        f.write_all(&big).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 10)).unwrap();
        f.write_all(b"0123456789").unwrap();
        f.sync_all().unwrap();
        p
    }

    use std::path::PathBuf;

    #[test]
    fn one_read_gives_the_sha256_the_range_checksums_and_the_compressed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse_image(dir.path());
        let bytes = std::fs::read(&img).unwrap();
        let zst = dir.path().join("a.img.zst");
        let packer = Packer::start(&zst, Compression::Zstd, 3).unwrap();
        let d = digest(&img, None, packer).unwrap();

        assert_eq!(d.sha256, crate::io::sha256_bytes(&bytes));
        assert_eq!(d.map.image_sha256.as_deref(), Some(d.sha256.as_str()));
        assert!(d.map.ranges.len() >= 2, "{:?}", d.map);
        assert!(d.map.mapped_blocks() < d.map.blocks_count() / 2);
        for r in &d.map.ranges {
            let (s, e) = d.map.span(r);
            assert_eq!(
                r.sha256,
                crate::io::sha256_bytes(&bytes[s as usize..e as usize])
            );
        }
        // Every data byte lies in a range (holes are zeros).
        for (i, b) in bytes.iter().enumerate() {
            if *b != 0 {
                let blk = i as u64 / BLOCK_SIZE;
                assert!(d.map.ranges.iter().any(|r| r.first <= blk && blk <= r.last));
            }
        }
        // The copy unpacks to the image and names it by its sha256.
        assert_eq!(
            crate::source::packed_image_sha256(&zst).as_deref(),
            Some(d.sha256.as_str())
        );
        let mut unpacked = Vec::new();
        zstd::stream::read::Decoder::new(File::open(&zst).unwrap())
            .unwrap()
            .read_to_end(&mut unpacked)
            .unwrap();
        assert!(unpacked == bytes, "the .zst does not hold the image");

        // Given the sha256, the map is the same and nothing else is needed.
        let known = digest(&img, Some(&d.sha256), None).unwrap();
        assert_eq!(known.map, d.map);
    }

    #[test]
    fn the_xz_copy_unpacks_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse_image(dir.path());
        let xz = dir.path().join("a.img.xz");
        let packer = Packer::start(&xz, Compression::Xz, 0).unwrap();
        digest(&img, None, packer).unwrap();
        let mut unpacked = Vec::new();
        xz2::read::XzDecoder::new(File::open(&xz).unwrap())
            .read_to_end(&mut unpacked)
            .unwrap();
        assert!(unpacked == std::fs::read(&img).unwrap());
    }
}
