//! The FAT boot partition: cmdline.txt, config.txt, ssh, userconf.txt and cluster.toml.

use crate::disk::{Partition, PartitionWindow};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicI64, Ordering};

/// Kernel arguments K3s needs for memory cgroups (SPEC 3.3): the Pi firmware passes
/// `cgroup_disable=memory` ahead of cmdline.txt, and the Raspberry Pi kernel's
/// `cgroup_enable=memory` turns the controller back on.
pub const CGROUP_FLAGS: [&str; 1] = ["cgroup_enable=memory"];

/// Words imagebuild once added that current kernels reject as unknown: removed when found.
/// (`cgroup_memory=1`: current Pi kernels log it as unknown, raspberrypi/linux#6980.)
pub const OBSOLETE_WORDS: [&str; 1] = ["cgroup_memory=1"];

/// Marker comment above the config.txt lines imagebuild adds.
const CONFIG_MARK: &str = "# Added by imagebuild";

static FAT_CLOCK: BuildClock = BuildClock {
    secs: AtomicI64::new(315_532_800),
};

/// The FAT timestamp source: always the build epoch, so FAT entries are reproducible.
#[derive(Debug)]
struct BuildClock {
    secs: AtomicI64,
}

impl BuildClock {
    fn now(&self) -> fatfs::DateTime {
        let (y, mo, d, h, mi, s) = crate::epoch::civil(self.secs.load(Ordering::SeqCst));
        fatfs::DateTime {
            date: fatfs::Date {
                year: y.clamp(1980, 2107) as u16,
                month: mo as u16,
                day: d as u16,
            },
            time: fatfs::Time {
                hour: h as u16,
                min: mi as u16,
                sec: s as u16,
                millis: 0,
            },
        }
    }
}

impl fatfs::TimeProvider for BuildClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.now().date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.now()
    }
}

/// An open FAT boot partition inside an image file.
pub struct BootPartition<'a> {
    fs: fatfs::FileSystem<PartitionWindow<'a>>,
}

impl<'a> BootPartition<'a> {
    /// Open the FAT filesystem of `part`; writes get the timestamp `epoch`.
    pub fn open(file: &'a mut File, part: &Partition, epoch: i64) -> Result<BootPartition<'a>> {
        FAT_CLOCK.secs.store(epoch, Ordering::SeqCst);
        let window = PartitionWindow::new(file, part.start, part.size);
        let options = fatfs::FsOptions::new()
            .update_accessed_date(false)
            .time_provider(&FAT_CLOCK);
        let fs = fatfs::FileSystem::new(window, options).with_context(|| {
            format!(
                "opening the FAT boot partition (partition {} at byte {}): it is not a FAT filesystem",
                part.number, part.start
            )
        })?;
        Ok(BootPartition { fs })
    }

    /// The volume label (e.g. `bootfs`, `system-boot`).
    pub fn label(&self) -> String {
        match self.fs.read_volume_label_from_root_dir() {
            Ok(Some(l)) => l.trim().to_string(),
            _ => self.fs.volume_label().trim().to_string(),
        }
    }

    /// The FAT volume serial number.
    pub fn serial(&self) -> u32 {
        self.fs.volume_id()
    }

    /// Free bytes on the partition.
    pub fn free_bytes(&self) -> Result<u64> {
        let s = self.fs.stats().context("reading FAT statistics")?;
        Ok(s.free_clusters() as u64 * s.cluster_size() as u64)
    }

    /// The contents of a file at the root, or None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut f = match self.fs.root_dir().open_file(name) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("opening {name} on the boot partition"))
            }
        };
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .with_context(|| format!("reading {name} from the boot partition"))?;
        Ok(Some(out))
    }

    /// Create or replace a file at the root.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<()> {
        let mut f = self
            .fs
            .root_dir()
            .create_file(name)
            .with_context(|| format!("creating {name} on the boot partition"))?;
        f.seek(SeekFrom::Start(0))?;
        f.truncate()
            .with_context(|| format!("truncating {name} on the boot partition"))?;
        f.write_all(contents)
            .with_context(|| format!("writing {name} to the boot partition (is it full?)"))?;
        f.flush()
            .with_context(|| format!("flushing {name} on the boot partition"))?;
        Ok(())
    }

    /// Write cluster.toml and the token file it names, if any.
    pub fn write_cluster(&self, cluster: &crate::cluster::ClusterFile) -> Result<()> {
        self.write(firstboot::config::FILE_NAME, cluster.text.as_bytes())?;
        if let Some((name, bytes)) = &cluster.token_file {
            self.write(name, bytes)?;
        }
        Ok(())
    }

    /// Remove a file at the root; a file that is not there is fine.
    pub fn remove(&self, name: &str) -> Result<()> {
        match self.fs.root_dir().remove(name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {name} from the boot partition")),
        }
    }

    /// Names of the files at the root.
    pub fn root_names(&self) -> Vec<String> {
        self.fs
            .root_dir()
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect()
    }

    /// Flush and close; errors here are real write errors, so never rely on Drop.
    pub fn close(self) -> Result<()> {
        self.fs.unmount().context("closing the FAT boot partition")
    }
}

/// cmdline.txt with `words` added once each, on its one line, keeping everything already there.
pub fn edit_cmdline(cmdline: &str, words: &[String]) -> String {
    // cmdline.txt must stay one line: join any stray lines the base might have.
    let mut out: Vec<String> = cmdline
        .split_whitespace()
        .filter(|w| !OBSOLETE_WORDS.contains(w))
        .map(String::from)
        .collect();
    for w in words {
        if !out.iter().any(|o| o == w) {
            out.push(w.clone());
        }
    }
    let mut line = out.join(" ");
    line.push('\n');
    line
}

/// config.txt with `lines` appended under the board's conditional `filter` (`pi5`, `pi02`, ...),
/// skipping lines already present, and `[all]` after them so later lines apply to every board.
pub fn edit_config(config: &str, lines: &[String], filter: &str, why: &str) -> String {
    let have: Vec<&str> = config.lines().map(str::trim).collect();
    let missing: Vec<&String> = lines.iter().filter(|l| !have.contains(&l.trim())).collect();
    if missing.is_empty() {
        return config.to_string();
    }
    let mut out = config.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("\n{CONFIG_MARK} ({why})\n[{filter}]\n"));
    for l in missing {
        out.push_str(l.trim());
        out.push('\n');
    }
    out.push_str("[all]\n");
    out
}

/// The lines imagebuild added earlier (under its marker, section headers left out), for `inspect`.
pub fn added_config_lines(config: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for l in config.lines() {
        if l.starts_with(CONFIG_MARK) {
            inside = true;
            continue;
        }
        let l = l.trim();
        if inside && !l.is_empty() && !l.starts_with('[') && !l.starts_with('#') {
            lines.push(l.to_string());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cmdline_flags_once_hooks_kept() {
        let base = "console=serial0,115200 root=PARTUUID=1234-02 rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n";
        let once = edit_cmdline(base, &words(&CGROUP_FLAGS));
        let twice = edit_cmdline(&once, &words(&CGROUP_FLAGS));
        assert_eq!(once, twice);
        assert_eq!(once.lines().count(), 1);
        assert_eq!(once.matches("cgroup_enable=memory").count(), 1);
        assert!(once.contains("init=/usr/lib/raspberrypi-sys-mods/firstboot"));
    }

    #[test]
    fn obsolete_cgroup_memory_word_is_dropped() {
        let base = "root=PARTUUID=1234-02 rootwait cgroup_memory=1 cgroup_enable=memory resize\n";
        let out = edit_cmdline(base, &words(&CGROUP_FLAGS));
        assert_eq!(
            out,
            "root=PARTUUID=1234-02 rootwait cgroup_enable=memory resize\n"
        );
    }

    #[test]
    fn config_lines_added_once_under_the_board_filter() {
        let base = "[pi4]\narm_boost=1\n";
        let lines = words(&["dtparam=pciex1"]);
        let once = edit_config(base, &lines, "pi5", "board rpi5, media ssd");
        assert!(once.ends_with("[pi5]\ndtparam=pciex1\n[all]\n"), "{once}");
        assert_eq!(edit_config(&once, &lines, "pi5", "x"), once);
        assert_eq!(added_config_lines(&once), lines);
    }
}
