//! The `firstboot` command line: parse arguments and dispatch into the library.

use clap::{Parser, Subcommand};
use firstboot::discovery::peers::{self, PeersArgs};
use firstboot::paths::Paths;
use std::path::PathBuf;

/// First-boot daemon: turns a stack of Raspberry Pis into one highly available K3s cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Prefix for every system path (tests run a node without touching the real `/`).
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// The boot partition directory [default: <root>/boot/firmware].
    #[arg(long, global = true)]
    boot_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the verified peers of this cluster and counts of foreign and unverified ones.
    Peers(PeersArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let paths = Paths::new(&cli.root, cli.boot_dir.as_deref());
    match &cli.command {
        Command::Peers(args) => peers::run(args, &paths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
