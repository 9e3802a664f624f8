//! The few ext4 superblock fields the build needs: sizes, free space and the label.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Fields of an ext4 superblock.
#[derive(Debug, Clone, Serialize)]
pub struct Superblock {
    /// Block size in bytes.
    pub block_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks (including the root-reserved ones).
    pub free_blocks: u64,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Volume label.
    pub label: String,
    /// Filesystem UUID.
    pub uuid: String,
}

impl Superblock {
    /// Read the superblock of the ext2/3/4 filesystem at byte `offset` of `image`.
    pub fn read(image: &Path, offset: u64) -> Result<Superblock> {
        let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let mut sb = [0u8; 1024];
        f.seek(SeekFrom::Start(offset + 1024))?;
        f.read_exact(&mut sb)
            .context("reading the ext4 superblock")?;
        let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
            bail!("partition 2 is not an ext4 filesystem (no ext2/3/4 magic number)");
        }
        let is_64bit = u32_at(0x60) & 0x80 != 0;
        let hi = |o: usize| if is_64bit { u32_at(o) << 32 } else { 0 };
        let label_bytes = &sb[0x78..0x88];
        let end = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
        let u = &sb[0x68..0x78];
        Ok(Superblock {
            block_size: 1024u64 << u32_at(0x18).min(6),
            blocks: u32_at(0x4) | hi(0x150),
            reserved_blocks: u32_at(0x8) | hi(0x154),
            free_blocks: u32_at(0xC) | hi(0x158),
            free_inodes: u32_at(0x10),
            label: String::from_utf8_lossy(&label_bytes[..end]).into_owned(),
            uuid: format!(
                "{}-{}-{}-{}-{}",
                hex::encode(&u[0..4]),
                hex::encode(&u[4..6]),
                hex::encode(&u[6..8]),
                hex::encode(&u[8..10]),
                hex::encode(&u[10..16])
            ),
        })
    }

    /// Filesystem size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// Bytes free for ordinary users (root-reserved blocks not counted).
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks.saturating_sub(self.reserved_blocks) * self.block_size
    }
}
