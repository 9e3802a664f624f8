//! Block maps (bmap 2.0, as read by Debian's `bmaptool`): which blocks of an image hold data, with
//! a sha256 per mapped range, so flashing writes only those and can verify each one.

use crate::io;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Block size of the maps we write (the page and ext4 block size).
pub const BLOCK_SIZE: u64 = 4096;

/// Length of a hex sha256.
const SHA256_HEX: usize = 64;

/// The words before the whole image's sha256 in the comment of the maps we write.
const IMAGE_SHA256_NOTE: &str = "sha256 of the whole image (imagebuild):";

/// A run of mapped blocks `first..=last` and the sha256 of their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRange {
    /// First block number.
    pub first: u64,
    /// Last block number (inclusive).
    pub last: u64,
    /// sha256 (hex) of the range's bytes, the last block cut at the image's end.
    pub sha256: String,
}

/// A parsed or computed block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Mapped ranges in increasing order.
    pub ranges: Vec<BlockRange>,
    /// sha256 (hex) of the whole image, when the map records it (maps written by imagebuild do,
    /// in a comment that bmaptool ignores): pairs the map with its image by content.
    pub image_sha256: Option<String>,
}

impl Bmap {
    /// Blocks in the image (the last may be partial).
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// Blocks listed in the map.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes `[start, end)` of a range, cut at the image's end.
    pub fn span(&self, r: &BlockRange) -> (u64, u64) {
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        (start, end)
    }

    /// Bytes the map says must be written.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (s, e) = self.span(r);
                e - s
            })
            .sum()
    }

    /// The map of an image file from its holes (SEEK_DATA/SEEK_HOLE), each range hashed; the
    /// whole image's sha256 is `known_sha256` when the caller has it, else computed in the same
    /// read ([`io::digest`]).
    pub fn for_image(image: &Path, known_sha256: Option<&str>) -> Result<Bmap> {
        Ok(io::digest::digest(image, known_sha256, None)?.map)
    }

    /// The bmap 2.0 XML text, with BmapFileChecksum filled in.
    pub fn to_xml(&self) -> String {
        let mapped = self.mapped_blocks();
        let percent = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str("<!-- Block map of a disk image: the ranges of blocks that hold data, each with\n     its sha256. Only these need to be written to the target; `bmaptool copy` and\n     `imagebuild flash` read it. Written by imagebuild. -->\n\n");
        x.push_str("<bmap version=\"2.0\">\n");
        x.push_str(&format!(
            "    <!-- Image size in bytes: {} -->\n    <ImageSize> {} </ImageSize>\n\n",
            crate::size::ByteSize(self.image_size),
            self.image_size
        ));
        if let Some(h) = &self.image_sha256 {
            x.push_str(&format!("    <!-- {IMAGE_SHA256_NOTE} {h} -->\n\n"));
        }
        x.push_str(&format!(
            "    <!-- Size of a block in bytes -->\n    <BlockSize> {} </BlockSize>\n\n",
            self.block_size
        ));
        x.push_str(&format!(
            "    <!-- Count of blocks in the image file -->\n    <BlocksCount> {} </BlocksCount>\n\n",
            self.blocks_count()
        ));
        x.push_str(&format!(
            "    <!-- Count of mapped blocks: {} or {percent:.1}% -->\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n",
            crate::size::ByteSize(self.mapped_bytes())
        ));
        x.push_str("    <!-- Type of checksum used in this file -->\n    <ChecksumType> sha256 </ChecksumType>\n\n");
        x.push_str("    <!-- The checksum of this bmap file. When it is calculated, the value of\n         the checksum has be zero (all ASCII \"0\" symbols). -->\n");
        let zeros = "0".repeat(SHA256_HEX);
        x.push_str(&format!(
            "    <BmapFileChecksum> {zeros} </BmapFileChecksum>\n\n"
        ));
        x.push_str("    <!-- The block map: ranges of mapped blocks, each with the sha256 of its bytes -->\n    <BlockMap>\n");
        for r in &self.ranges {
            let blocks = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            x.push_str(&format!(
                "        <Range chksum=\"{}\"> {blocks} </Range>\n",
                r.sha256
            ));
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        // The zeros occur once (range checksums are quoted attributes, never 64 zeros in a tag).
        x.replacen(
            &format!("<BmapFileChecksum> {zeros} "),
            &format!("<BmapFileChecksum> {sum} "),
            1,
        )
    }

    /// Parse bmap 2.x XML and check its BmapFileChecksum.
    pub fn parse(text: &str) -> Result<Bmap> {
        let root = crate::xml::parse(text)
            .context("this is not a bmap file: it is not well-formed XML")?;
        let version = (root.name == "bmap")
            .then(|| root.attribute("version"))
            .flatten()
            .context("no <bmap version=\"...\"> element: this is not a bmap file")?;
        if !version.starts_with("2.") {
            bail!("bmap version {version} is not supported (only 2.x, with sha256 checksums); recreate it with `bmaptool create` or `imagebuild bmap`");
        }
        let text_of = |name: &str| -> Result<String> {
            Ok(root
                .element(name)
                .with_context(|| format!("the bmap has no <{name}>"))?
                .text())
        };
        let number = |name: &str| -> Result<u64> {
            text_of(name)?
                .parse::<u64>()
                .with_context(|| format!("the bmap's <{name}> is not a number"))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 {
            bail!("the bmap's <BlockSize> is 0");
        }
        let kind = text_of("ChecksumType")?;
        if kind != "sha256" {
            bail!("the bmap uses {kind} checksums; only sha256 is supported");
        }
        let file_sum = text_of("BmapFileChecksum")?;
        if file_sum.len() != SHA256_HEX {
            bail!("the bmap's <BmapFileChecksum> is not a sha256");
        }
        // The format defines this checksum over the file's bytes with its own value zeroed.
        let zeroed = text.replacen(&file_sum, &"0".repeat(SHA256_HEX), 1);
        if hex::encode(Sha256::digest(zeroed.as_bytes())) != file_sum {
            bail!("the bmap file is damaged: its BmapFileChecksum does not match its contents");
        }
        let mut ranges = Vec::new();
        // A map of an image without data may have no <BlockMap> at all.
        let listed = root.elements("BlockMap").flat_map(|m| m.elements("Range"));
        for range in listed {
            let blocks = range.text();
            let sha256 = range
                .attribute("chksum")
                .map(str::to_string)
                .with_context(|| format!("bmap range {blocks} has no chksum"))?;
            let (a, b) = blocks.split_once('-').unwrap_or((&blocks, &blocks));
            let first: u64 = a
                .trim()
                .parse()
                .with_context(|| format!("bad bmap range {blocks:?}"))?;
            let last: u64 = b
                .trim()
                .parse()
                .with_context(|| format!("bad bmap range {blocks:?}"))?;
            if last < first || first * block_size >= image_size.max(1) {
                bail!("bmap range {blocks} lies outside the {image_size}-byte image");
            }
            if ranges.last().is_some_and(|p: &BlockRange| p.last >= first) {
                bail!("bmap ranges overlap or are out of order at {blocks}");
            }
            ranges.push(BlockRange {
                first,
                last,
                sha256,
            });
        }
        let image_sha256 = root.comments().find_map(|c| {
            let h = c.trim().strip_prefix(IMAGE_SHA256_NOTE)?.trim();
            (h.len() == SHA256_HEX && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| h.to_ascii_lowercase())
        });
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
            image_sha256,
        })
    }

    /// Read and check a bmap file.
    pub fn load(path: &Path) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the bmap {}", path.display()))?;
        Bmap::parse(&text).with_context(|| format!("reading the bmap {}", path.display()))
    }
}

impl Bmap {
    /// The map of `image` after bytes `[start, end)` changed (a stamp of the boot partition):
    /// ranges outside that stretch are kept, the stretch (widened to the ranges touching it) is
    /// mapped and hashed again from the file. Reads only the changed part of the image.
    pub fn refreshed(&self, image: &Path, start: u64, end: u64) -> Result<Bmap> {
        let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let image_size = file.metadata()?.len();
        if image_size != self.image_size {
            bail!(
                "{} changed size ({} bytes, the bmap says {}): recreate the map with `imagebuild bmap`",
                image.display(),
                image_size,
                self.image_size
            );
        }
        let bs = self.block_size;
        let (mut lo, mut hi) = (start / bs, end.div_ceil(bs).max(start / bs + 1) - 1);
        for r in &self.ranges {
            if r.first <= hi && r.last >= lo {
                lo = lo.min(r.first);
                hi = hi.max(r.last);
            }
        }
        let (lo_b, hi_b) = (lo * bs, ((hi + 1) * bs).min(image_size));
        let blocks = io::digest::mapped_blocks(&file, lo_b, hi_b, bs);
        let mut fresh = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for (first, last) in blocks {
            let mut h = Sha256::new();
            let (s, e) = (first * bs, ((last + 1) * bs).min(image_size));
            let mut pos = s;
            while pos < e {
                let n = ((e - pos) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], pos)
                    .with_context(|| format!("reading {}", image.display()))?;
                h.update(&buf[..n]);
                pos += n as u64;
            }
            fresh.push(BlockRange {
                first,
                last,
                sha256: hex::encode(h.finalize()),
            });
        }
        let mut ranges: Vec<BlockRange> = self
            .ranges
            .iter()
            .filter(|r| r.last < lo)
            .cloned()
            .collect();
        ranges.extend(fresh);
        ranges.extend(self.ranges.iter().filter(|r| r.first > hi).cloned());
        // The whole image's hash changed with the stretch; the caller records the new one.
        Ok(Bmap {
            image_size,
            block_size: bs,
            ranges,
            image_sha256: None,
        })
    }
}

/// Compute the block map of `image` and write it to `bmap_path` (flushed to disk). A compressed
/// image is refused in one line naming the command to unpack it first.
pub fn write_for(image: &Path, bmap_path: &Path, known_sha256: Option<&str>) -> Result<Bmap> {
    crate::source::require_raw(image, "imagebuild bmap")?;
    let map = Bmap::for_image(image, known_sha256)?;
    io::write_synced(bmap_path, map.to_xml().as_bytes())?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn holes_are_left_out_and_xml_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        let mut f = File::create(&p).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[7u8; 9000]).unwrap();
        f.sync_all().unwrap();
        let map = Bmap::for_image(&p, None).unwrap();
        assert_eq!(map.image_size, 10 << 20);
        assert!(map.mapped_blocks() < map.blocks_count() / 2, "{map:?}");
        assert!(map.ranges.iter().any(|r| r.first == 0));
        let whole = crate::io::sha256_file(&p).unwrap();
        assert_eq!(map.image_sha256.as_deref(), Some(whole.as_str()));
        let xml = map.to_xml();
        assert_eq!(Bmap::parse(&xml).unwrap(), map);
        let tampered = xml.replacen("<BlockSize> 4096", "<BlockSize> 4097", 1);
        assert!(Bmap::parse(&tampered).is_err());
    }
}
