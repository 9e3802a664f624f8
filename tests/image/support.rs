//! Helpers shared by the image tests: the imagebuild binary, unprivileged runs, and real-tool checks.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Path of the imagebuild binary, built once per test process.
pub fn imagebuild_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "imagebuild", "--bin", "imagebuild"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(crate::repo_root());
        if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for imagebuild");
        assert!(status.success(), "building imagebuild failed");
        profile_dir.join("imagebuild")
    })
    .clone()
}

/// A scratch directory every user may write (the build runs as `nobody` when we are root).
pub fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("imagebuild-test-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// The binary and its data (boards/, overlays/) where `nobody` can reach them: a checkout under
/// /root is closed to other users, so root-run tests copy both to a world-readable directory.
fn unprivileged_kit() -> (PathBuf, PathBuf) {
    static KIT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    KIT.get_or_init(|| {
        let bin = imagebuild_bin();
        if !crate::is_root() {
            return (bin, crate::repo_root());
        }
        // One place per build of imagebuild (worktrees and test binaries running at the same
        // time must not delete each other's kit), refreshed by every run.
        let tag = {
            use sha2::Digest;
            hex::encode(&sha2::Sha256::digest(bin.as_os_str().as_encoded_bytes())[..6])
        };
        let kit = std::env::temp_dir().join(format!(
            "imagebuild-test-kit-{tag}-{}",
            std::env::current_exe()
                .ok()
                .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&kit);
        std::fs::create_dir_all(&kit).expect("kit dir");
        std::fs::copy(&bin, kit.join("imagebuild")).expect("copying imagebuild");
        for d in ["boards", "overlays"] {
            let st = Command::new("cp")
                .arg("-r")
                .arg(crate::repo_root().join(d))
                .arg(&kit)
                .status()
                .expect("cp");
            assert!(st.success(), "copying {d}");
        }
        let st = Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(&kit)
            .status()
            .expect("chmod");
        assert!(st.success());
        (kit.join("imagebuild"), kit)
    })
    .clone()
}

/// An imagebuild command that runs unprivileged: as `nobody` when the test runs as root.
pub fn imagebuild(home: &Path) -> Command {
    let (bin, data) = unprivileged_kit();
    let mut cmd = if crate::is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env("IMAGEBUILD_DATA_DIR", data);
    cmd
}

/// Run and return the output, printing stderr for the test log.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawning command");
    eprintln!("--- {:?}\n{}", cmd, String::from_utf8_lossy(&out.stderr));
    out
}

/// Make a file world-readable (fixtures are made by root, read by nobody).
pub fn share(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// (start, size) in sectors of partition `n` from `sfdisk --dump`.
pub fn sfdisk_partition(image: &Path, n: u32) -> (u64, u64) {
    let out = Command::new("sfdisk")
        .arg("--dump")
        .arg(image)
        .output()
        .expect("sfdisk");
    assert!(out.status.success(), "sfdisk --dump failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let name = format!("{}{n} ", image.display());
    let line = text
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("no partition {n} in sfdisk dump:\n{text}"));
    let field = |key: &str| -> u64 {
        line.split(',')
            .find_map(|f| {
                f.split_once('=')
                    .filter(|(k, _)| k.trim().ends_with(key))
                    .map(|(_, v)| v.trim().parse().unwrap())
            })
            .unwrap()
    };
    (field("start"), field("size"))
}

/// `e2fsck -fn` on the filesystem at `offset`; panics with the report when not clean.
pub fn e2fsck_clean(image: &Path, offset: u64) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fsck.vfat -n` on partition bytes copied out of the image.
pub fn fsck_vfat_clean(image: &Path, start: u64, size: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let part = dir.path().join("boot.vfat");
    let status = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "iflag=skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}"))
        .status()
        .expect("dd");
    assert!(status.success());
    let out = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&part)
        .output()
        .expect("fsck.vfat");
    assert!(
        out.status.success(),
        "fsck.vfat -n not clean:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// (mode as octal text of the permission bits, uid, gid, type) from `debugfs stat`.
pub fn debugfs_stat(image: &Path, offset: u64, path: &str) -> (String, u32, u32, String) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let word_after = |key: &str| -> String {
        text.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .unwrap_or_else(|| {
                panic!(
                    "no {key} in debugfs stat of {path}:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string()
    };
    (
        word_after("Mode:"),
        word_after("User:").parse().unwrap(),
        word_after("Group:").parse().unwrap(),
        word_after("Type:"),
    )
}

/// File contents through `debugfs cat`.
pub fn debugfs_cat(image: &Path, offset: u64, path: &str) -> Vec<u8> {
    Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .expect("debugfs")
        .stdout
}

/// A file from the FAT partition via mtools.
pub fn fat_read(image: &Path, offset: u64, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::{name}"))
        .output()
        .expect("mtype");
    out.status.success().then_some(out.stdout)
}

/// Names in a directory, including hidden ones.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
