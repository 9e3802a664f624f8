//! A slow disk that works without dm-delay, nbd or cgroup v2: one image file on a FUSE filesystem
//! whose writes and fsyncs wait a fixed time before they complete.
//!
//! A loop device over that image turns every block write into a FUSE write and every cache flush
//! (which each fdatasync on ext4 issues) into a FUSE fsync, so an ext4 filesystem on it behaves
//! like an SD card with a slow controller: the delays are the device, the rest is the real kernel.
//! Used by `probe-bench` and the slow-device test.

use anyhow::Context;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Name of the one file in the filesystem.
pub const IMAGE_NAME: &str = "disk.img";
const IMAGE_INO: INodeNo = INodeNo(2);
/// Attributes never change (fixed size), so the kernel may cache them for the whole run.
const TTL: Duration = Duration::from_secs(3600);

/// How slow the disk is.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    /// Added to every write request (each carries up to one block I/O of the loop device).
    pub write: Duration,
    /// Added to every fsync request (one per cache flush of the loop device).
    pub fsync: Duration,
}

/// Requests the filesystem served, for checking that the delays were really in the path.
#[derive(Debug, Default)]
pub struct Counters {
    /// Write requests.
    pub writes: AtomicU64,
    /// Fsync requests.
    pub fsyncs: AtomicU64,
}

/// The FUSE filesystem: a root directory holding `disk.img`, stored in a backing file.
struct DelayedImage {
    backing: File,
    size: u64,
    delays: Delays,
    counters: Arc<Counters>,
    uid: u32,
    gid: u32,
}

impl DelayedImage {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o755, 0, 2),
            IMAGE_INO => (FileType::RegularFile, 0o600, self.size, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }
}

impl Filesystem for DelayedImage {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(IMAGE_INO) {
            Some(attr) if parent == INodeNo::ROOT && name == IMAGE_NAME => {
                reply.entry(&TTL, &attr, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == IMAGE_INO {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = u64::from(size).min(self.size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        match self.backing.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.delays.write);
        if offset.saturating_add(data.len() as u64) > self.size {
            return reply.error(Errno::ENOSPC);
        }
        match self.backing.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): writes were already stored (FUSE writes through without a writeback cache).
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.delays.fsync);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (IMAGE_INO, FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted delayed-image filesystem; unmounted on drop (detach loop devices over it first).
pub struct DelayedDisk {
    /// The image file inside the mount, to attach a loop device to.
    pub image: PathBuf,
    /// What the filesystem served so far.
    pub counters: Arc<Counters>,
    session: Option<fuser::BackgroundSession>,
}

impl DelayedDisk {
    /// Mount at `mountpoint` an image of `size` bytes stored (sparse) in `backing`.
    pub fn mount(
        mountpoint: &Path,
        backing: &Path,
        size: u64,
        delays: Delays,
    ) -> anyhow::Result<DelayedDisk> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(backing)
            .with_context(|| format!("creating {}", backing.display()))?;
        file.set_len(size).context("sizing the backing file")?;
        std::fs::create_dir_all(mountpoint)?;
        let counters = Arc::new(Counters::default());
        // The image belongs to whoever runs the test (the kernel checks it against the opener).
        let owner = std::fs::metadata("/proc/self").context("reading our own uid")?;
        let fs = DelayedImage {
            backing: file,
            size,
            delays,
            counters: Arc::clone(&counters),
            uid: owner.uid(),
            gid: owner.gid(),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("delayed-disk".into())];
        // One request at a time, like a card's single command queue: delays add up, never overlap.
        config.n_threads = Some(1);
        let session = fuser::spawn_mount(fs, mountpoint, &config)
            .with_context(|| format!("mounting the delayed disk at {}", mountpoint.display()))?;
        Ok(DelayedDisk {
            image: mountpoint.join(IMAGE_NAME),
            counters,
            session: Some(session),
        })
    }
}

impl Drop for DelayedDisk {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // A detached loop device lets go of the image asynchronously, so the unmount can be
        // refused as busy for a moment: retry, then detach lazily rather than leave a mount.
        let mountpoint = self.image.parent().map(Path::to_path_buf);
        if let Some(mnt) = mountpoint {
            let umount = |lazy: bool| {
                let mut cmd = std::process::Command::new("umount");
                if lazy {
                    cmd.arg("-l");
                }
                cmd.arg(&mnt)
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let unmounted = (0..50).any(|_| {
                umount(false) || {
                    std::thread::sleep(Duration::from_millis(100));
                    false
                }
            });
            if !unmounted {
                umount(true);
            }
        }
        // Unmounted, the session's thread sees the device end and returns.
        let _ = session.umount_and_join();
    }
}

/// Why a delayed disk cannot be used here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root for FUSE mounts and loop devices".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist (FUSE module not loaded)".into());
    }
    None
}
