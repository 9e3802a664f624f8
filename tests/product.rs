//! Test code stays out of the product: no workspace build turns on a test feature of firstboot,
//! and the aarch64 binary imagebuild puts on images contains none of the test hooks' names.

use std::process::Command;

/// Names that exist only in the test crate's hooks and flaws; none may appear in a shipped binary.
const TEST_ONLY_NAMES: [&str; 6] = [
    systests::HOLD_ELECTED_ENV,
    "test hook",
    "HoldElected",
    "HalfQuorum",
    "ReplyBeforePersist",
    "InitWithoutGo",
];

#[test]
fn workspace_build_enables_no_firstboot_feature() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The feature graph of exactly what `cargo build --workspace` resolves, inverted on firstboot:
    // every feature any workspace member turns on for it shows up as `firstboot feature "…"`.
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--workspace",
            "-e",
            "features",
            "-i",
            "firstboot",
            "--prefix",
            "none",
        ])
        .current_dir(systests::repo_root())
        .output()
        .expect("running cargo tree");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("firstboot v"),
        "firstboot not in the tree:\n{text}"
    );
    let features: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("firstboot feature"))
        .filter(|line| !line.starts_with("firstboot feature \"default\""))
        .collect();
    assert!(
        features.is_empty(),
        "a workspace build compiles firstboot with {features:?}:\n{text}"
    );
}

#[test]
fn shipped_aarch64_firstboot_has_no_test_hook_names() {
    let bin = systests::shipped_aarch64_firstboot();
    let elf = std::fs::read(&bin).expect("reading the aarch64 firstboot");
    let contains = |needle: &str| elf.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The search is real: a string the daemon does log is found.
    assert!(
        contains("electing the cluster-init node"),
        "{}: the search found not even a known status string",
        bin.display()
    );
    let found: Vec<&str> = TEST_ONLY_NAMES
        .into_iter()
        .filter(|name| contains(name))
        .collect();
    assert!(
        found.is_empty(),
        "{} contains test-only names {found:?}",
        bin.display()
    );
}
