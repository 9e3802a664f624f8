//! The mount table as the kernel shows it in `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted filesystem (anonymous for btrfs, overlay, tmpfs).
    pub dev: super::sysfs::DevNo,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `ext4`.
    pub fs_type: String,
    /// Mount source, e.g. `/dev/mmcblk0p2`.
    pub source: String,
    /// Per-mount options, e.g. `rw,noatime`.
    pub options: String,
}

/// Parse `/proc/self/mountinfo` text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = l.get(2)?.split_once(':')?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                options: l.get(5)?.to_string(),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// Read and parse this process's mount table.
pub fn mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Undoes mountinfo's (and /proc/swaps') escapes: space, tab, newline and backslash as three
/// octal digits.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount whose mount point is the longest prefix of `path` (which should be canonical).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "29 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw\n\
                    40 29 8:1 / /mnt/usb\\040disk rw,relatime shared:7 - ext4 /dev/sda1 rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, (179, 2));
        assert_eq!(m[0].source, "/dev/mmcblk0p2");
        assert_eq!(m[1].mount_point, PathBuf::from("/mnt/usb disk"));
        assert_eq!(
            mount_of(&m, Path::new("/mnt/usb disk/x")).map(|m| m.dev),
            Some((8, 1))
        );
        assert_eq!(
            mount_of(&m, Path::new("/var")).map(|m| m.dev),
            Some((179, 2))
        );
    }

    #[test]
    fn optional_fields_before_the_separator_are_skipped() {
        let text = "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 shared:3 - ext3 /dev/root rw,errors=continue\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].dev, (98, 0));
        assert_eq!(m[0].mount_point, Path::new("/mnt x"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
    }

    #[test]
    fn unescapes_octal_and_leaves_the_rest() {
        assert_eq!(unescape("/mnt/a\\040b\\011c"), "/mnt/a b\tc");
        assert_eq!(unescape("/no\\9escape\\"), "/no\\9escape\\");
    }
}
