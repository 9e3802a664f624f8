//! `machine-base`: builds (or finds in the cache) the test base images and prints their paths.
//!
//! CI runs it once before the machine tests; `cargo run -p systests --bin machine-base` by hand
//! (both bases), or `... -- trixie` / `... -- bookworm` for one.

use systests::machines::base;

fn main() -> anyhow::Result<()> {
    if !systests::is_root() {
        anyhow::bail!("machine-base needs root (debootstrap)");
    }
    let releases = std::env::args()
        .skip(1)
        .map(|a| base::Release::parse(&a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let releases = if releases.is_empty() {
        base::Release::ALL.to_vec()
    } else {
        releases
    };
    for release in releases {
        println!("{}", base::image(release)?.display());
    }
    Ok(())
}
