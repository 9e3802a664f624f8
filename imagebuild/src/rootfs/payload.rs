//! Declared files for the root filesystem: what goes where, with which owner, mode and time.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// What an entry puts at its destination.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// Copy a host file.
    File(PathBuf),
    /// Write these bytes.
    Bytes(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(String),
}

/// One declared entry of the root filesystem.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path inside the image.
    pub dest: String,
    /// What to put there.
    pub kind: EntryKind,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (e.g. 0o755); the file type is implied by `kind`.
    pub mode: u32,
    /// Modification time; None = the build epoch.
    pub mtime: Option<i64>,
}

impl Entry {
    /// Set the owner.
    pub fn owner(&mut self, uid: u32, gid: u32) -> &mut Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Set the modification time (seconds since 1970).
    pub fn mtime(&mut self, secs: i64) -> &mut Entry {
        self.mtime = Some(secs);
        self
    }

    /// The full inode mode, type bits included, as debugfs `sif ... mode` wants it.
    pub fn inode_mode(&self) -> u32 {
        let kind = match self.kind {
            EntryKind::File(_) | EntryKind::Bytes(_) => 0o100000,
            EntryKind::Dir => 0o040000,
            EntryKind::Symlink(_) => 0o120000,
        };
        kind | (self.mode & 0o7777)
    }

    /// Bytes this entry will occupy, rounded to 4 KiB blocks plus one block of metadata.
    pub fn size_estimate(&self) -> u64 {
        let data = match &self.kind {
            EntryKind::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            EntryKind::Bytes(b) => b.len() as u64,
            EntryKind::Dir => 4096,
            EntryKind::Symlink(t) => t.len() as u64,
        };
        data.div_ceil(4096) * 4096 + 4096
    }
}

/// An ordered list of declared entries; a later entry for the same path replaces an earlier one.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// The entries in declaration order.
    pub entries: Vec<Entry>,
}

impl Payload {
    /// An empty payload.
    pub fn new() -> Payload {
        Payload::default()
    }

    fn push(&mut self, dest: &str, kind: EntryKind, mode: u32) -> &mut Entry {
        self.entries.push(Entry {
            dest: dest.to_string(),
            kind,
            uid: 0,
            gid: 0,
            mode,
            mtime: None,
        });
        let last = self.entries.len() - 1;
        &mut self.entries[last]
    }

    /// Copy host file `source` to `dest` with `mode` (root-owned unless `.owner()` says otherwise).
    pub fn file(&mut self, source: impl Into<PathBuf>, dest: &str, mode: u32) -> &mut Entry {
        self.push(dest, EntryKind::File(source.into()), mode)
    }

    /// Write `contents` to `dest` with `mode`.
    pub fn bytes(&mut self, dest: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Entry {
        self.push(dest, EntryKind::Bytes(contents.into()), mode)
    }

    /// Create (or set owner and mode of) directory `dest`.
    pub fn dir(&mut self, dest: &str, mode: u32) -> &mut Entry {
        self.push(dest, EntryKind::Dir, mode)
    }

    /// Create symlink `dest` pointing at `target`.
    pub fn symlink(&mut self, dest: &str, target: &str) -> &mut Entry {
        self.push(dest, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// Append another payload's entries after this one's.
    pub fn extend(&mut self, other: Payload) {
        self.entries.extend(other.entries);
    }

    /// Bytes the payload needs in the root filesystem (an upper estimate).
    pub fn size_estimate(&self) -> u64 {
        self.entries.iter().map(Entry::size_estimate).sum()
    }

    /// Check every destination is an absolute, plain path debugfs can take.
    pub fn check(&self) -> Result<()> {
        for e in &self.entries {
            check_dest(&e.dest)?;
            if let EntryKind::File(p) = &e.kind {
                if !p.is_file() {
                    bail!(
                        "payload source {} (for {}) is not a readable file",
                        p.display(),
                        e.dest
                    );
                }
                if p.to_string_lossy().contains(['"', '\n']) {
                    bail!(
                        "payload source path {} contains a quote or newline",
                        p.display()
                    );
                }
            }
            if let EntryKind::Symlink(t) = &e.kind {
                if t.is_empty() || t.contains(['"', '\n', ' ']) {
                    bail!("symlink {} has an unusable target {t:?}", e.dest);
                }
            }
        }
        Ok(())
    }
}

/// Reject destinations debugfs would misread or that escape the root.
pub fn check_dest(dest: &str) -> Result<()> {
    if !dest.starts_with('/') || dest == "/" {
        bail!("payload destination {dest:?} must be an absolute path below /");
    }
    if dest.ends_with('/') || dest.contains("//") {
        bail!("payload destination {dest:?} has an empty path component");
    }
    if dest.split('/').any(|c| c == ".." || c == ".") {
        bail!("payload destination {dest:?} contains . or ..");
    }
    if dest
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c.is_control())
    {
        bail!(
            "payload destination {dest:?} contains whitespace or quotes, which debugfs cannot take"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_include_type_bits() {
        let mut p = Payload::new();
        p.bytes("/etc/x", "x", 0o600).owner(1000, 1000);
        p.dir("/etc/d", 0o755);
        p.symlink("/usr/local/bin/kubectl", "k3s");
        assert_eq!(p.entries[0].inode_mode(), 0o100600);
        assert_eq!(p.entries[1].inode_mode(), 0o040755);
        assert_eq!(p.entries[2].inode_mode(), 0o120777);
        assert_eq!(p.entries[0].uid, 1000);
        p.check().unwrap();
    }

    #[test]
    fn rejects_bad_destinations() {
        for bad in ["etc/x", "/etc/../x", "/etc/a b", "/", "/etc/"] {
            assert!(check_dest(bad).is_err(), "{bad}");
        }
    }
}
