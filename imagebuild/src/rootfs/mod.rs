//! The ext4 root filesystem, edited rootless through e2fsprogs on `image?offset=N`.

pub mod overlay;
pub mod payload;
pub mod superblock;
pub mod user;

use anyhow::{bail, Context, Result};
use payload::{Entry, EntryKind, Payload};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
pub use superblock::Superblock;

/// One entry of a directory listing (`debugfs ls -p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// Full inode mode, type bits included.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl Listed {
    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

/// The ext4 filesystem of partition 2 of an image file.
#[derive(Debug, Clone)]
pub struct Rootfs {
    image: PathBuf,
    offset: u64,
    epoch: i64,
}

impl Rootfs {
    /// The filesystem at byte `offset` of `image`; every write is stamped with `epoch`.
    pub fn new(image: &Path, offset: u64, epoch: i64) -> Rootfs {
        Rootfs {
            image: image.into(),
            offset,
            epoch,
        }
    }

    /// `image?offset=N`, the device name e2fsprogs understands.
    pub fn device(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.offset)
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(system_tool(program));
        // e2fsprogs take their clock from here: inode times and superblock write times are
        // then the build epoch, which makes the image reproducible.
        c.env("E2FSPROGS_FAKE_TIME", self.epoch.to_string());
        c.env("LC_ALL", "C");
        c
    }

    /// The superblock, read directly from the image.
    pub fn superblock(&self) -> Result<Superblock> {
        Superblock::read(&self.image, self.offset)
    }

    /// Run one debugfs request read-only and return its standard output.
    fn query(&self, request: &str) -> Result<(Vec<u8>, String)> {
        let out = self
            .tool("debugfs")
            .arg("-R")
            .arg(request)
            .arg(self.device())
            .stdin(Stdio::null())
            .output()
            .context("running debugfs (is e2fsprogs installed?)")?;
        Ok((
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The contents of a file, or None when it does not exist. Symbolic links are followed inside
    /// the image (`/etc/os-release` is one on Debian and Raspberry Pi OS), at most 8 deep.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut path = path.to_string();
        for _ in 0..MAX_SYMLINKS {
            payload::check_dest(&path)?;
            let (stat_out, stat_err) = self.query(&format!("stat \"{path}\""))?;
            if error_lines(&stat_err).next().is_some() || stat_out.is_empty() {
                return Ok(None);
            }
            let stat = String::from_utf8_lossy(&stat_out);
            let is_link = stat
                .lines()
                .next()
                .is_some_and(|l| l.contains("Type: symlink"));
            let (out, err) = if is_link {
                match fast_link_dest(&stat) {
                    // A fast link keeps its target in the inode; debugfs cannot `cat` it.
                    Some(dest) => (dest.into_bytes(), String::new()),
                    // A slow link's data block is its target.
                    None => self.query(&format!("cat \"{path}\""))?,
                }
            } else {
                self.query(&format!("cat \"{path}\""))?
            };
            if let Some(e) = error_lines(&err).next() {
                bail!("reading {path} from the root filesystem: {e}");
            }
            if !is_link {
                return Ok(Some(out));
            }
            let target = String::from_utf8_lossy(&out)
                .trim_end_matches('\0')
                .to_string();
            path = resolve_link(&path, &target);
        }
        bail!("reading {path} from the root filesystem: more than {MAX_SYMLINKS} symbolic links")
    }

    /// Listings of several directories in one debugfs run; missing directories are left out.
    pub fn list_dirs(
        &self,
        dirs: &BTreeSet<String>,
    ) -> Result<HashMap<String, HashMap<String, Listed>>> {
        let mut script = String::new();
        for d in dirs {
            script.push_str(&format!("ls -p \"{d}\"\n"));
        }
        let out = self.batch_output(&script, false)?;
        let mut result: HashMap<String, HashMap<String, Listed>> = HashMap::new();
        let mut current: Option<String> = None;
        for line in out.lines() {
            if let Some(cmd) = line.strip_prefix("debugfs: ls -p ") {
                current = Some(cmd.trim().trim_matches('"').to_string());
                continue;
            }
            // Format: /inode/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            if f.len() < 7 || !f[0].is_empty() {
                continue;
            }
            let (Some(dir), Ok(mode), Ok(uid), Ok(gid)) = (
                current.as_ref(),
                u32::from_str_radix(f[2], 8),
                f[3].parse(),
                f[4].parse(),
            ) else {
                continue;
            };
            let name = f[5..f.len() - 2].join("/");
            if name == "." || name == ".." || f[1] == "0" {
                continue;
            }
            result
                .entry(dir.clone())
                .or_default()
                .insert(name, Listed { mode, uid, gid });
        }
        Ok(result)
    }

    /// Run a debugfs command script (`-f`); fail with debugfs's own words on any error line.
    pub fn run_batch(&self, script: &str) -> Result<()> {
        self.batch_output(script, true).map(|_| ())
    }

    fn batch_output(&self, script: &str, writable: bool) -> Result<String> {
        let mut cmd = self.tool("debugfs");
        if writable {
            cmd.arg("-w");
        }
        let mut child = cmd
            .arg("-f")
            .arg("-")
            .arg(self.device())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running debugfs (is e2fsprogs installed?)")?;
        let mut stdin = child.stdin.take().context("opening debugfs input")?;
        let script_owned = script.to_string();
        // Feed the script from a thread so a large script cannot deadlock against full pipes.
        let feeder = std::thread::spawn(move || stdin.write_all(script_owned.as_bytes()));
        let out = child.wait_with_output().context("waiting for debugfs")?;
        let _ = feeder.join();
        crate::interrupt::check()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if writable {
            let errors: Vec<&str> = error_lines(&stderr).collect();
            if !errors.is_empty() {
                bail!(
                    "debugfs failed while editing the root filesystem: {}",
                    errors.join("; ")
                );
            }
        }
        if !out.status.success() {
            bail!("debugfs exited with {}: {}", out.status, stderr.trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Grow the filesystem to exactly `new_size` bytes (resize2fs with an explicit size).
    pub fn resize(&self, new_size: u64) -> Result<()> {
        let out = self
            .tool("resize2fs")
            // -f: the image is a private temporary copy, never mounted; skip the fsck-first rule.
            .arg("-f")
            .arg(self.device())
            .arg(format!("{}K", new_size / 1024))
            .stdin(Stdio::null())
            .output()
            .context("running resize2fs (is e2fsprogs installed?)")?;
        crate::interrupt::check()?;
        if !out.status.success() {
            bail!(
                "resize2fs could not grow the root filesystem to {} bytes: {}",
                new_size,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `e2fsck -fn` on the filesystem: Ok(()) when clean, the tool's report otherwise.
    pub fn fsck(&self) -> Result<()> {
        let out = self
            .tool("e2fsck")
            .arg("-fn")
            .arg(self.device())
            .stdin(Stdio::null())
            .output()
            .context("running e2fsck (is e2fsprogs installed?)")?;
        if !out.status.success() {
            bail!(
                "e2fsck found problems in the root filesystem:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Write every entry of `payload` with its declared owner, mode and time, in one debugfs run.
    pub fn apply(&self, payload: &Payload, staging: &Path) -> Result<()> {
        payload.check()?;
        // A later declaration for the same path wins (overlays in order, payload last).
        let mut last: BTreeMap<String, &Entry> = BTreeMap::new();
        for e in &payload.entries {
            last.insert(e.dest.clone(), e);
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut parents: BTreeSet<String> = BTreeSet::new();
        for dest in last.keys() {
            let mut p = parent(dest);
            while let Some(d) = p {
                parents.insert(d.to_string());
                p = parent(d);
            }
        }
        parents.insert("/".into());
        let listings = self.list_dirs(&parents)?;
        let existing = |path: &str| -> Option<Listed> {
            let (dir, name) = split(path);
            listings.get(dir).and_then(|l| l.get(name)).copied()
        };
        // Every path to create, sorted so parents come before their children.
        let mut all: BTreeSet<String> = parents.clone();
        all.remove("/");
        all.extend(last.keys().cloned());
        let mut script = String::new();
        let mut staged = 0usize;
        for path in &all {
            let found = existing(path);
            match last.get(path) {
                None => {
                    // An implicit parent directory: create it only when missing.
                    match found {
                        Some(l) if l.is_dir() => {}
                        Some(_) => {
                            bail!("cannot create directory {path}: the base image has a file there")
                        }
                        None => {
                            script.push_str(&format!("mkdir \"{path}\"\n"));
                            self.set_inode(&mut script, path, 0o040755, 0, 0, self.epoch);
                        }
                    }
                }
                Some(e) => {
                    let mtime = e.mtime.unwrap_or(self.epoch);
                    match &e.kind {
                        EntryKind::Dir => match found {
                            Some(l) if l.is_dir() => {}
                            Some(_) => bail!(
                                "cannot create directory {path}: the base image has a file there"
                            ),
                            None => script.push_str(&format!("mkdir \"{path}\"\n")),
                        },
                        kind => {
                            if let Some(l) = found {
                                if l.is_dir() {
                                    bail!(
                                        "cannot write {path}: the base image has a directory there"
                                    );
                                }
                                script.push_str(&format!("rm \"{path}\"\n"));
                            }
                            match kind {
                                EntryKind::File(src) => {
                                    script.push_str(&format!(
                                        "write \"{}\" \"{path}\"\n",
                                        src.display()
                                    ));
                                }
                                EntryKind::Bytes(b) => {
                                    let src = staging.join(format!("entry-{staged}"));
                                    staged += 1;
                                    std::fs::write(&src, b)
                                        .with_context(|| format!("staging {path}"))?;
                                    script.push_str(&format!(
                                        "write \"{}\" \"{path}\"\n",
                                        src.display()
                                    ));
                                }
                                EntryKind::Symlink(target) => {
                                    script.push_str(&format!("symlink \"{path}\" \"{target}\"\n"));
                                }
                                EntryKind::Dir => {}
                            }
                        }
                    }
                    self.set_inode(&mut script, path, e.inode_mode(), e.uid, e.gid, mtime);
                }
            }
        }
        self.run_batch(&script)
    }

    fn set_inode(
        &self,
        script: &mut String,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
    ) {
        script.push_str(&format!("sif \"{path}\" mode 0{mode:o}\n"));
        script.push_str(&format!("sif \"{path}\" uid {uid}\n"));
        script.push_str(&format!("sif \"{path}\" gid {gid}\n"));
        script.push_str(&format!("sif \"{path}\" mtime @{mtime}\n"));
        script.push_str(&format!("sif \"{path}\" atime @{mtime}\n"));
    }
}

fn error_lines(stderr: &str) -> impl Iterator<Item = &str> {
    // debugfs prints its version banner to stderr; everything else there is an error.
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
}

fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// How many symbolic links `read_file` follows before giving up (a loop).
const MAX_SYMLINKS: usize = 8;

/// The target of a fast symlink from `debugfs stat` output (`Fast link dest: "..."`).
fn fast_link_dest(stat: &str) -> Option<String> {
    let line = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))?;
    Some(line.trim().trim_matches('"').to_string())
}

/// The absolute path a link at `link` pointing to `target` names, `..` and `.` folded.
fn resolve_link(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link.split('/').filter(|p| !p.is_empty()).collect()
    };
    if !target.starts_with('/') {
        parts.pop(); // the link's own name
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Where a system tool such as `debugfs`, `e2fsck` or `fsck.vfat` is: on PATH, else in the
/// sbin directories Debian installs them to, which a normal user's PATH often lacks.
pub fn system_tool(program: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin"]
                .into_iter()
                .map(std::path::PathBuf::from),
        )
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| program.into())
}

#[cfg(test)]
mod symlink_tests {
    use super::*;

    #[test]
    fn link_targets_resolve_inside_the_image() {
        assert_eq!(
            resolve_link("/etc/os-release", "../usr/lib/os-release"),
            "/usr/lib/os-release"
        );
        assert_eq!(resolve_link("/etc/a", "/usr/lib/b"), "/usr/lib/b");
        assert_eq!(resolve_link("/a", "../../b"), "/b");
        assert_eq!(resolve_link("/etc/a", "./b"), "/etc/b");
    }

    #[test]
    fn read_file_follows_fast_and_slow_symlinks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
        std::fs::create_dir_all(tree.join("usr/lib")).expect("mkdir");
        std::fs::write(tree.join("usr/lib/os-release"), "ID=debian\n").expect("write");
        let long = format!("usr/lib/{}", "x".repeat(70));
        std::fs::write(tree.join(&long), "long\n").expect("write");
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, tree.join(at)).expect("symlink")
        };
        link("../usr/lib/os-release", "etc/os-release");
        link(&format!("/{long}"), "etc/slow");
        link("loop-b", "etc/loop-a");
        link("loop-a", "etc/loop-b");
        let image = dir.path().join("fs.img");
        let made = Command::new(system_tool("mke2fs"))
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg("8M")
            .status();
        let Ok(status) = made else {
            eprintln!("skipping: mke2fs (e2fsprogs) is not installed");
            return;
        };
        assert!(status.success(), "mke2fs failed");
        let fs = Rootfs::new(&image, 0, 0);
        let read = |p: &str| fs.read_file(p).expect("read");
        assert_eq!(
            read("/etc/os-release").as_deref(),
            Some(&b"ID=debian\n"[..])
        );
        assert_eq!(read("/etc/slow").as_deref(), Some(&b"long\n"[..]));
        assert_eq!(read("/etc/missing"), None);
        let err = fs.read_file("/etc/loop-a").expect_err("a link loop fails");
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }
}
