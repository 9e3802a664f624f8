//! The `firstboot` command line: parse arguments and dispatch into the library.

use clap::{Parser, Subcommand};

/// First-boot daemon: turns a stack of Raspberry Pis into one highly available K3s cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure fdatasync latency of the data directory's device and show the tuning plan.
    ProbeStorage(firstboot::storage::cli::ProbeStorageArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Some(Command::ProbeStorage(args)) => firstboot::storage::cli::run(&args),
        None => {
            println!("firstboot {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
