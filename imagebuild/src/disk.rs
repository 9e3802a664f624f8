//! The partition table (MBR read/write, GPT read) and byte windows onto partitions of an image file.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Bytes per sector of every image we handle.
pub const SECTOR: u64 = 512;
/// Raspberry Pi OS aligns partitions to 8 MiB; growth keeps that.
pub const ALIGN: u64 = 8 << 20;

/// Kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// DOS/MBR.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// One partition of an image.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    /// 1-based partition number.
    pub number: u32,
    /// Byte offset in the image.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// MBR type byte as "0x0c" or GPT type GUID.
    pub type_id: String,
    /// PARTUUID as the kernel shows it (`<disk id>-02` on MBR).
    pub partuuid: String,
}

impl Partition {
    /// One byte past the partition's end.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// Whether the type says FAT (MBR 0x0b/0x0c/0x0e/0x06 or the GPT basic-data/ESP types).
    pub fn is_fat_type(&self) -> bool {
        matches!(
            self.type_id.as_str(),
            "0x0b" | "0x0c" | "0x0e" | "0x06" | "0xef"
        ) || self
            .type_id
            .eq_ignore_ascii_case("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
            || self
                .type_id
                .eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    }
}

/// The partition layout of an image.
#[derive(Debug, Clone, Serialize)]
pub struct DiskLayout {
    /// MBR or GPT.
    pub table: TableKind,
    /// MBR disk signature as 8 hex digits, or the GPT disk GUID.
    pub disk_id: String,
    /// Used partitions, by number.
    pub partitions: Vec<Partition>,
    /// Image file size in bytes.
    pub image_size: u64,
}

impl DiskLayout {
    /// Read the partition table of an image file.
    pub fn read(file: &mut File) -> Result<DiskLayout> {
        // Seeking to the end measures block devices too (their metadata length is 0).
        let image_size = file
            .seek(SeekFrom::End(0))
            .context("reading the image size")?;
        if image_size < 2 * SECTOR {
            bail!("the image is {image_size} bytes: too small to hold a partition table");
        }
        file.seek(SeekFrom::Start(0))?;
        let header = mbrman::MBRHeader::read_from(&mut *file)
            .context("reading the MBR: this is not a disk image with a partition table")?;
        if header.boot_signature != [0x55, 0xAA] {
            bail!("no partition table (the first sector lacks the 0x55AA signature): this is not a disk image");
        }
        let protective = header.iter().any(|(_, p)| p.sys == 0xEE);
        if protective {
            return Self::read_gpt(file, image_size);
        }
        let sig = header.disk_signature;
        let disk_id = format!("{:02x}{:02x}{:02x}{:02x}", sig[3], sig[2], sig[1], sig[0]);
        let partitions = header
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(i, p)| Partition {
                number: i as u32,
                start: p.starting_lba as u64 * SECTOR,
                size: p.sectors as u64 * SECTOR,
                type_id: format!("0x{:02x}", p.sys),
                partuuid: format!("{disk_id}-{i:02}"),
            })
            .collect();
        Ok(DiskLayout {
            table: TableKind::Mbr,
            disk_id,
            partitions,
            image_size,
        })
    }

    fn read_gpt(file: &mut File, image_size: u64) -> Result<DiskLayout> {
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(&mut *file)
            .context("reading the GPT partition table")?;
        let partitions = disk
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| Partition {
                number: *n,
                start: p.first_lba * SECTOR,
                size: (p.last_lba + 1 - p.first_lba) * SECTOR,
                type_id: p.part_type_guid.guid.to_string().to_uppercase(),
                partuuid: p.part_guid.to_string(),
            })
            .collect();
        Ok(DiskLayout {
            table: TableKind::Gpt,
            disk_id: disk.guid().to_string(),
            partitions,
            image_size,
        })
    }

    /// Partition number `n`.
    pub fn partition(&self, n: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == n)
    }

    /// Grow partition 2 (the last one) to end at `new_end` bytes, growing the image file to match.
    pub fn grow_last_partition(&mut self, file: &mut File, new_end: u64) -> Result<()> {
        if self.table != TableKind::Mbr {
            bail!("growing a GPT image is not supported yet; use an MBR base (all Raspberry Pi OS and Ubuntu for Pi images are MBR)");
        }
        let last = self
            .partitions
            .iter()
            .map(|p| p.number)
            .max()
            .context("the image has no partitions")?;
        if last != 2 {
            bail!("the root filesystem cannot grow: partition 2 is not the last partition (partition {last} follows it)");
        }
        let root = self
            .partitions
            .iter_mut()
            .find(|p| p.number == 2)
            .context("the image has no partition 2")?;
        if new_end <= root.end() {
            return Ok(());
        }
        let sectors = (new_end - root.start) / SECTOR;
        let sectors_u32 = u32::try_from(sectors)
            .ok()
            .filter(|_| new_end / SECTOR <= u32::MAX as u64)
            .context("the root filesystem cannot grow past 2 TiB on an MBR disk")?;
        if file.metadata()?.len() < new_end {
            file.set_len(new_end).context("growing the image file")?;
        }
        file.seek(SeekFrom::Start(0))?;
        let mut header = mbrman::MBRHeader::read_from(&mut *file).context("re-reading the MBR")?;
        let entry = header
            .get_mut(2)
            .context("the MBR has no partition 2 entry")?;
        entry.sectors = sectors_u32;
        // CHS values are meaningless on these sizes; the "beyond CHS" marker is what sfdisk writes.
        entry.last_chs = mbrman::CHS::new(1023, 254, 63);
        file.seek(SeekFrom::Start(0))?;
        header
            .write_into(&mut *file)
            .context("writing the partition table")?;
        root.size = sectors * SECTOR;
        self.image_size = file.metadata()?.len();
        Ok(())
    }
}

/// Read/Write/Seek over one partition of an image file, so filesystem crates see only it.
#[derive(Debug)]
pub struct PartitionWindow<'a> {
    file: &'a mut File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> PartitionWindow<'a> {
    /// A window of `len` bytes at `start`.
    pub fn new(file: &'a mut File, start: u64, len: u64) -> Self {
        PartitionWindow {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for PartitionWindow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionWindow<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PartitionWindow<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// Round `n` up to a multiple of `to`.
pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}
