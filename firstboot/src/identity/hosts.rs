//! `/etc/hosts`: the `127.0.1.1` line names this host (Debian's convention, which Raspberry Pi OS
//! follows: pi-gen writes `127.0.1.1 raspberrypi`, and `raspi-config do_hostname` rewrites it).
//! Without it, nothing resolves the new hostname locally and `sudo` says "unable to resolve host".

use crate::durable::write_atomic;
use std::io;
use std::path::Path;

/// `text` with its `127.0.1.1` line(s) replaced by one naming `hostname` (appended if none).
pub fn with_hostname(text: &str, hostname: &str) -> String {
    let line = format!("127.0.1.1\t{hostname}");
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    let mut done = false;
    for l in text.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push_str(&line);
                out.push('\n');
                done = true;
            }
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !done {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Rewrites `<root>/etc/hosts` (atomically, mode 0644) when its `127.0.1.1` line does not name
/// `hostname` yet; returns true if it changed.
pub fn update_hosts(root: &Path, hostname: &str) -> io::Result<bool> {
    let path = root.join(crate::paths::HOSTS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n".to_string()
        }
        Err(e) => return Err(e),
    };
    let new = with_hostname(&text, hostname);
    if new == text {
        return Ok(false);
    }
    write_atomic(&path, new.as_bytes(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI_GEN: &str = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\
        ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t\traspberrypi\n";

    #[test]
    fn replaces_the_raspberrypi_line_and_keeps_the_rest() {
        let new = with_hostname(PI_GEN, "homelab-cdef12");
        assert!(new.ends_with("\n127.0.1.1\thomelab-cdef12\n"), "{new}");
        assert!(!new.contains("raspberrypi"), "{new}");
        assert!(new.starts_with("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost"));
        assert_eq!(with_hostname(&new, "homelab-cdef12"), new, "idempotent");
    }

    #[test]
    fn appends_when_missing_and_folds_duplicates() {
        assert_eq!(
            with_hostname("127.0.0.1 localhost\n", "a"),
            "127.0.0.1 localhost\n127.0.1.1\ta\n"
        );
        assert_eq!(
            with_hostname("127.0.1.1 x\n127.0.1.1 y\n", "a"),
            "127.0.1.1\ta\n"
        );
    }

    #[test]
    fn update_hosts_writes_once() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(root.path().join("etc/hosts"), PI_GEN).expect("write");
        assert!(update_hosts(root.path(), "lab-000001").expect("update"));
        assert!(!update_hosts(root.path(), "lab-000001").expect("again"));
        let text = std::fs::read_to_string(root.path().join("etc/hosts")).expect("read");
        assert!(text.contains("127.0.1.1\tlab-000001\n"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("etc/hosts"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
