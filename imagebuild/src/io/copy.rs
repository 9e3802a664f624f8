//! Copying byte ranges between files: a reflink where the filesystem offers one, else sparse-aware
//! copies that keep holes holes.

use crate::progress::Meter;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::copy_file_range;
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
    // Holes are skipped: the output was sized above, so they read as zeros there too.
    for stretch in super::extents::stretches(src, src_off, src_off + len)
        .into_iter()
        .filter(|s| s.data)
    {
        let mut off_in = stretch.offset as i64;
        let mut off_out = (stretch.offset - src_off + dst_off) as i64;
        let mut left = stretch.len as usize;
        while left > 0 {
            crate::interrupt::check()?;
            let chunk = left.min(64 << 20);
            let n = match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
                Ok(n) => n,
                // Across filesystems (older kernels) or where unsupported: copy by hand.
                Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                    let n = copy_by_hand(src, off_in as u64, dst, off_out as u64, chunk)?;
                    off_in += n as i64;
                    off_out += n as i64;
                    n
                }
                Err(e) => {
                    return Err(std::io::Error::from(e)).context("copying image data");
                }
            };
            if n == 0 {
                bail!("the source image ended early while copying");
            }
            left -= n;
            meter.add(n as u64);
        }
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
