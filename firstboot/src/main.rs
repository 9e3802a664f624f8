//! The `firstboot` command line: parse arguments and dispatch into the library.

use clap::{Parser, Subcommand};
use firstboot::config::ClusterConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Turns a stack of Raspberry Pis into one highly available K3s cluster, with nobody at a keyboard.
///
/// On every node, firstboot reads cluster.toml from the boot partition, finds the other nodes of
/// the same cluster over mDNS, elects exactly one node to run K3s cluster-init (a majority vote
/// that cannot split-brain), tunes storage for SD-card latency, and joins the others as servers
/// (one at a time, up to the odd count asked for) or agents.
///
/// It normally runs as firstboot.service. The subcommands below help humans check and watch it.
#[derive(Parser)]
#[command(
    name = "firstboot",
    version,
    about,
    long_about,
    propagate_version = true
)]
#[command(
    after_help = "Examples:\n  firstboot check-config /boot/firmware/cluster.toml\n  firstboot check-config examples/homelab/cluster.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a cluster.toml and print a one-line summary (the token is never shown).
    ///
    /// Exits 0 when the file is valid. Otherwise prints every problem with its file, line,
    /// column and key, what is wrong and what to write instead, and exits 1.
    CheckConfig {
        /// The file to check.
        #[arg(default_value = "/boot/firmware/cluster.toml")]
        path: PathBuf,
    },
    /// Show what firstboot is doing on this node: state, role, peers, storage, errors.
    ///
    /// Reads the state file firstboot keeps in /var/lib/firstboot; the token is never shown.
    Status(firstboot::status::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => match ClusterConfig::load(&path) {
            Ok(config) => {
                println!("{}: ok: {}", path.display(), config.summary());
                for w in config.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status(args) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match firstboot::status::command::run(&args, &mut std::io::stdout(), now) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
