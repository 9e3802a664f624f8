//! Shared helpers for the workspace-level tests: paths to built binaries and the repository.

use std::path::PathBuf;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// True when running as root; root-only tests print why they skip otherwise.
pub fn is_root() -> bool {
    // SAFETY-free: geteuid has no preconditions; read through /proc to avoid a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The deterministic election simulator (shared by the `election_sim` test and `election-bench`).
#[path = "election/sim.rs"]
pub mod election_sim;
