//! `image-fixture FLAVOR OUT [ROOT_MIB [FILLER_MIB]]`: write a fixture base image (no root needed).

use systests::image::fixture;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: image-fixture bookworm|trixie|ubuntu OUT.img [ROOT_MIB [FILLER_MIB]]");
    }
    let flavor =
        fixture::Flavor::parse(&args[0]).context("flavor must be bookworm, trixie or ubuntu")?;
    let mut spec = fixture::Spec::small(flavor);
    if let Some(m) = args.get(2) {
        spec.root_mib = m.parse().context("ROOT_MIB must be a number")?;
    }
    if let Some(m) = args.get(3) {
        spec.filler_bytes = m.parse::<u64>().context("FILLER_MIB must be a number")? << 20;
    }
    fixture::make(&spec, std::path::Path::new(&args[1]))
}
