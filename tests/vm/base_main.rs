//! `vm-base`: builds (or finds in the cache) the arm64 test base of the VM tier and prints its path.
//!
//! `cargo run -p systests --bin vm-base` (as root; the first run debootstraps and finishes the
//! tree under qemu-system-aarch64, many minutes under TCG); `... -- --host-stage` runs only the
//! host's part (debootstrap --foreign, the disk layout), which needs no emulated machine.

use systests::vm::base;

fn main() -> anyhow::Result<()> {
    if let Some(why) = base::skip_reason() {
        anyhow::bail!("vm-base cannot run here: {why}");
    }
    if std::env::args().nth(1).as_deref() == Some("--host-stage") {
        // The host's part only (no emulated machine): debootstrap --foreign and the disk layout.
        println!("{}", base::host_stage()?.display());
    } else {
        println!("{}", base::image()?.display());
    }
    Ok(())
}
