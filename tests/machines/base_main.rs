//! `machine-base`: builds (or finds in the cache) the test base image and prints its path.
//!
//! CI runs it once before the machine tests; `cargo run -p systests --bin machine-base` by hand.

#[path = "base.rs"]
mod base;

fn main() -> anyhow::Result<()> {
    if !systests::is_root() {
        anyhow::bail!("machine-base needs root (debootstrap)");
    }
    println!("{}", base::image()?.display());
    Ok(())
}
