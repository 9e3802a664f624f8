//! Copying byte ranges between files: a reflink where the filesystem offers one, else sparse-aware
//! copies that keep holes holes.

use crate::progress::Meter;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Copy `len` bytes at `src_off` of `src` to `dst_off` of `dst`, sparse-aware: holes stay holes.
/// Tries a reflink (FICLONERANGE) first. Returns true when it was a reflink.
pub fn copy_range(
    src: &File,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
    label: &str,
) -> Result<bool> {
    if dst.metadata()?.len() < dst_off + len {
        dst.set_len(dst_off + len)
            .context("sizing the output file")?;
    }
    #[repr(C)]
    struct FileCloneRange {
        src_fd: i64,
        src_offset: u64,
        src_length: u64,
        dest_offset: u64,
    }
    // FICLONERANGE = _IOW(0x94, 13, struct file_clone_range): shares blocks copy-on-write on
    // btrfs and xfs. It needs block-aligned ranges; anything else falls back to copying.
    const FICLONERANGE: libc::c_ulong = 0x4020_940d;
    let arg = FileCloneRange {
        src_fd: src.as_raw_fd() as i64,
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: `arg` is a valid file_clone_range for the duration of the call; fds are open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONERANGE as _, &arg) };
    if rc == 0 {
        return Ok(true);
    }
    let mut meter = Meter::new(label, Some(len));
    let in_fd = src.as_raw_fd();
    let out_fd = dst.as_raw_fd();
    let end = (src_off + len) as i64;
    let mut pos = src_off as i64;
    while pos < end {
        crate::interrupt::check()?;
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let data = unsafe { libc::lseek(in_fd, pos, libc::SEEK_DATA) };
        if data < 0 || data >= end {
            break; // the rest of the range is a hole
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(in_fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off_in = data as libc::loff_t;
        let mut off_out = (data - src_off as i64 + dst_off as i64) as libc::loff_t;
        let mut left = (hole - data) as usize;
        while left > 0 {
            crate::interrupt::check()?;
            let chunk = left.min(64 << 20);
            // SAFETY: the offsets point to live loff_t values; descriptors are open.
            let mut n = unsafe {
                libc::copy_file_range(in_fd, &mut off_in, out_fd, &mut off_out, chunk, 0)
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    // Across filesystems (older kernels) or where unsupported: copy by hand.
                    Some(libc::EXDEV)
                    | Some(libc::ENOSYS)
                    | Some(libc::EOPNOTSUPP)
                    | Some(libc::EINVAL) => {
                        n = copy_by_hand(src, off_in as u64, dst, off_out as u64, chunk)? as isize;
                        off_in += n as libc::loff_t;
                        off_out += n as libc::loff_t;
                    }
                    _ => return Err(err).context("copying image data"),
                }
            }
            if n == 0 {
                bail!("the source image ended early while copying");
            }
            left -= n as usize;
            meter.add(n as u64);
        }
        pos = hole;
    }
    meter.finish();
    Ok(false)
}

fn copy_by_hand(src: &File, at: u64, dst: &File, to: u64, len: usize) -> Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(4 << 20)];
    let n = src.read_at(&mut buf, at).context("reading image data")?;
    dst.write_all_at(&buf[..n], to)
        .context("writing image data")?;
    Ok(n)
}
