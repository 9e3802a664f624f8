//! Shared helpers for the workspace-level tests: where the repository and the built binaries are.

use std::path::PathBuf;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a workspace binary (`firstboot`, `imagebuild`, ...) built for the host in the same
/// profile as the running test. The test command builds them first
/// (`cargo build --workspace --bins`); a missing one is a setup error with the fix in the message.
pub fn bin_path(name: &str) -> PathBuf {
    // Test executables live in <target>/<profile>/deps/; binaries one level up.
    let exe = std::env::current_exe().expect("the running test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable sits in <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (tests/run-all does)",
        path.display()
    );
    path
}

/// The aarch64 firstboot exactly as imagebuild builds it for an image payload (`-p firstboot
/// --target aarch64-unknown-linux-musl --release`), in one target dir shared by every test that
/// needs it, so CI compiles it once.
pub fn shipped_aarch64_firstboot() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let target_dir = std::env::current_exe()
        .expect("the running test knows its own path")
        .ancestors()
        .nth(3)
        .expect("test executable sits in <target>/<profile>/deps")
        .join("imagebuild-firstboot");
    imagebuild::payload::firstboot::build("arm64", Some(&target_dir))
        .expect("aarch64 build of firstboot")
}

/// True when running as root; root-only tests print why they skip otherwise.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is on PATH or in one of the directories `also`.
pub fn has_tool(tool: &str, also: &[&str]) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
        || also
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists())
}

/// Why a root test that runs `tools` cannot run here, if it cannot: not root (`needs_root_for`
/// says what for), or a tool found neither on PATH nor in `also`.
pub fn root_and_tools_missing(
    needs_root_for: &str,
    tools: &[&str],
    also: &[&str],
) -> Option<String> {
    if !is_root() {
        return Some(format!("needs root ({needs_root_for})"));
    }
    tools
        .iter()
        .find(|t| !has_tool(t, also))
        .map(|t| format!("{t} is not installed"))
}

/// Prints why a test is skipped, in a form that stands out in CI logs.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Milliseconds the `firstboot-held` test binary stalls a node that was just elected in the first
/// epoch, before it announces that or asks for Go (see `tests/lan/held_firstboot.rs`).
pub const HOLD_ELECTED_ENV: &str = "FIRSTBOOT_TEST_HOLD_ELECTED_MS";

/// The deterministic election simulator (shared by the `election_sim` test and `election-bench`).
#[path = "election/sim.rs"]
pub mod election_sim;

/// The Raspberry Pi OS disk layout of the test bases (machines and VMs).
pub mod raspios_disk;

/// The K3s test double's parts that its tests drive directly (the `k3s-double` program uses them
/// from here).
pub mod k3s_double {
    pub mod admin;
    pub mod config;
    pub mod etcd;
    pub mod wire;
}

/// The virtual LAN of namespaced nodes and the formation tests' helpers on it.
pub mod lan {
    pub mod formation_support;
    pub mod harness;
}

/// Building and caching the node image of the machine and VM tests.
pub mod node_image;

/// The nspawn machines: their base images, the node image, the harness, the K3s tests' helpers.
pub mod machines {
    pub mod arp;
    pub mod base;
    pub mod day2;
    pub mod harness;
    pub mod image;
    pub mod k3s_support;
    pub mod mdns;
}

/// The emulated arm64 machine: its base image, the node image and the harness.
pub mod vm {
    pub mod base;
    pub mod harness;
    pub mod image;
}

/// The image tests' fixtures: base images, a file server, the imagebuild binary and checks.
pub mod image {
    pub mod fixture;
    pub mod http;
    pub mod support;
}

/// The payload tests' generated K3s release.
pub mod payload {
    pub mod release;
}

/// The storage tests' devices: loop devices, throttled cgroups, a slow FUSE disk.
pub mod storage {
    pub mod delayed_disk;
    pub mod devices;
}

/// The benchmarks' release-against-debug comparison in one run.
pub mod profiles;
