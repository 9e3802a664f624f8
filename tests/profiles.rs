//! The benchmarks compare the release build with the debug build in one run (issue 20: "the
//! release build is never slower than the debug build on any benchmark"): the running bench
//! program builds itself in the other profile and runs both builds' timed parts as children,
//! side by side on the same inputs.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The running program's profile: "release" or "debug".
pub fn this_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The running program built in both profiles, release first: `[("release", path), ("debug",
/// path)]`. The other profile's build is made with `cargo build -p systests --bin NAME
/// [--release]` (a no-op when it is up to date) into the same target directory.
pub fn both() -> Result<Vec<(&'static str, PathBuf)>> {
    let exe = std::env::current_exe().context("finding the running program")?;
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .context("the running program has no name")?
        .to_string();
    // <target>/<profile>/<name>
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("the running program is not in <target>/<profile>/")?;
    let other = if this_profile() == "release" {
        "debug"
    } else {
        "release"
    };
    let mut args = vec!["build", "-q", "-p", "systests", "--bin", &name];
    if other == "release" {
        args.push("--release");
    }
    eprintln!(
        "building the {other} build of {name} to compare it with this {} build...",
        this_profile()
    );
    let st = crate::node_image::cargo(&args)
        .current_dir(crate::repo_root())
        .env("CARGO_TARGET_DIR", target)
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("cargo build of the {other} {name} failed");
    }
    let path = |p: &str| target.join(p).join(&name);
    Ok(vec![("release", path("release")), ("debug", path("debug"))])
}
