//! The sha256 of a local base remembered by the file's identity, so an unchanged multi-GiB base
//! is hashed once, not on every build.
//!
//! The identity is what the kernel changes on any write: device, inode, size, mtime and ctime.
//! ctime cannot be set from user space (`touch -d` sets mtime and bumps ctime to now), so a file
//! whose identity matches the record has not been written since it was hashed; a replaced file
//! (new download, `cp`, `mv`) has another inode or ctime. Kernel timestamps are coarse (one clock
//! tick), so a write landing in the same tick as the last one would leave ctime unchanged: a hash
//! is remembered only when the file's ctime is older than the start of hashing by [`SETTLED`],
//! and the identity is read before and after hashing and must not have moved.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long before hashing a file must have last changed for its hash to be remembered.
pub const SETTLED: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since 1970.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since 1970.
    pub ctime_ns: i128,
}

impl Identity {
    /// The identity of `path` now.
    pub fn of(path: &Path) -> Result<Identity> {
        let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

/// A remembered hash: the identity the file had while it was hashed, and the hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    path: PathBuf,
    identity: Identity,
    sha256: String,
}

/// The remembered hashes, one small file per base path under `<cache>/identity/`.
#[derive(Debug, Clone)]
pub struct HashMemo {
    dir: PathBuf,
}

impl HashMemo {
    /// The memo kept in `cache_root`.
    pub fn new(cache_root: &Path) -> HashMemo {
        HashMemo {
            dir: cache_root.join("identity"),
        }
    }

    fn record_path(&self, path: &Path) -> PathBuf {
        let key = crate::io::sha256_bytes(path.as_os_str().as_encoded_bytes());
        self.dir.join(format!("{}.json", &key[..32]))
    }

    /// The remembered sha256 of `path`, when its identity still matches the record.
    pub fn recall(&self, path: &Path) -> Option<String> {
        let path = std::fs::canonicalize(path).ok()?;
        let text = std::fs::read_to_string(self.record_path(&path)).ok()?;
        let rec: Record = serde_json::from_str(&text).ok()?;
        (rec.path == path && rec.identity == Identity::of(&path).ok()?).then_some(rec.sha256)
    }

    /// Hash `path` with `hash` and remember the result when the file held still (see the module
    /// doc). A failure to remember is not an error: the next build hashes again.
    pub fn hash(&self, path: &Path, hash: impl FnOnce(&Path) -> Result<String>) -> Result<String> {
        let started = SystemTime::now();
        let before = Identity::of(path)?;
        let sha = hash(path)?;
        let after = Identity::of(path)?;
        if before == after && settled(&before, started) {
            let _ = self.remember(path, &after, &sha);
        }
        Ok(sha)
    }

    fn remember(&self, path: &Path, identity: &Identity, sha: &str) -> Result<()> {
        let path = std::fs::canonicalize(path)?;
        std::fs::create_dir_all(&self.dir)?;
        let rec = Record {
            path: path.clone(),
            identity: identity.clone(),
            sha256: sha.to_string(),
        };
        let dst = self.record_path(&path);
        let tmp = dst.with_extension(format!("partial-{}", std::process::id()));
        crate::io::write_synced(&tmp, serde_json::to_string(&rec)?.as_bytes())?;
        std::fs::rename(&tmp, &dst)?;
        Ok(())
    }
}

/// Whether the file last changed at least [`SETTLED`] before `started`.
fn settled(id: &Identity, started: SystemTime) -> bool {
    let started_ns = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    id.ctime_ns + SETTLED.as_nanos() as i128 <= started_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file written more than SETTLED ago (its ctime cannot be set back, so wait it out).
    fn settled_file(dir: &Path) -> PathBuf {
        let p = dir.join("base.img");
        std::fs::write(&p, b"base image bytes").unwrap();
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        p
    }

    #[test]
    fn an_unchanged_file_is_hashed_once_and_a_changed_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let memo = HashMemo::new(&dir.path().join("cache"));
        let p = settled_file(dir.path());
        let sha = memo.hash(&p, crate::io::sha256_file_quiet).unwrap();
        assert_eq!(memo.recall(&p).as_deref(), Some(sha.as_str()));
        // The same content written again in place: the identity changed (ctime), so no recall.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"!").unwrap();
        drop(f);
        assert_eq!(memo.recall(&p), None);
        // Replaced by a copy with the same bytes and mtime: another inode, hashed again.
        let q = dir.path().join("other.img");
        std::fs::write(&q, b"base image bytes").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_eq!(memo.recall(&p), None);
    }

    #[test]
    fn a_file_changed_just_before_hashing_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let memo = HashMemo::new(&dir.path().join("cache"));
        let p = dir.path().join("fresh.img");
        std::fs::write(&p, b"just written").unwrap();
        memo.hash(&p, crate::io::sha256_file_quiet).unwrap();
        assert_eq!(
            memo.recall(&p),
            None,
            "a write in the same clock tick could go unseen"
        );
    }
}
