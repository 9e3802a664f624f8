//! Where a file holds data and where it has holes (SEEK_DATA / SEEK_HOLE).

use nix::unistd::{lseek, Whence};
use std::fs::File;
use std::os::unix::io::AsRawFd;

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
        // ENXIO: no data after `pos`; any other error reads as a hole too (zeros are safe).
        let data = lseek(fd, pos as i64, Whence::SeekData).map_or(end, |d| (d as u64).min(end));
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
        let hole = lseek(fd, data as i64, Whence::SeekHole).map_or(end, |h| (h as u64).min(end));
        out.push(Stretch {
            offset: data,
            len: hole - data,
            data: true,
        });
        pos = hole;
    }
    out
}
