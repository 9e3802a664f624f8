//! `vm-base`: builds (or finds in the cache) the arm64 test base of the VM tier and prints its path.
//!
//! `cargo run -p systests --bin vm-base` (as root; the first run debootstraps and finishes the
//! tree under qemu-system-aarch64, many minutes under TCG).

#[path = "base.rs"]
mod base;

fn main() -> anyhow::Result<()> {
    if let Some(why) = base::skip_reason() {
        anyhow::bail!("vm-base cannot run here: {why}");
    }
    println!("{}", base::image()?.display());
    Ok(())
}
