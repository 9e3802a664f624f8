//! Where a file holds data and where it has holes (SEEK_DATA / SEEK_HOLE).

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
