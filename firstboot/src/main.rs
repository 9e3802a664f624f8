//! The `firstboot` command line: parse arguments and dispatch into the library.

use clap::{Parser, Subcommand};
use firstboot::config::ClusterConfig;
use firstboot::discovery::peers::{self, PeersArgs};
use firstboot::paths::Paths;
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
    after_help = "Examples:\n  firstboot check-config /boot/firmware/cluster.toml\n  firstboot status\n  firstboot peers --json"
)]
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

#[derive(Subcommand)]
enum Command {
    /// Check a cluster.toml and print a one-line summary (the token is never shown).
    ///
    /// Exits 0 when the file is valid. Otherwise prints every problem with its file, line,
    /// column and key, what is wrong and what to write instead, and exits 1.
    CheckConfig {
        /// The file to check [default: cluster.toml on the boot partition].
        path: Option<PathBuf>,
        /// Print the result as JSON on stdout (`ok`, `summary`, `warnings` or `error`); the
        /// exit code is the same as without it.
        #[arg(long)]
        json: bool,
    },
    /// Run the node's lifecycle: intake, identity, clock, storage, discovery, election, role.
    ///
    /// This is what firstboot.service runs. It reports progress through sd_notify, the state
    /// file (see `firstboot status`) and the LED, and resumes where it stopped after a restart.
    Run(firstboot::lifecycle::RunArgs),
    /// Set this node's hostname (and its `127.0.1.1` line in /etc/hosts) from cluster.toml.
    ///
    /// firstboot-identity.service runs it early in boot, before avahi-daemon announces the
    /// host, so cards flashed from one image never all announce `raspberrypi`. It derives the
    /// same name `firstboot run` does (`<cluster name>-<node id suffix>` or `node.hostname`) and
    /// moves nothing: taking in cluster.toml stays `firstboot run`'s step.
    Identity,
    /// Show what firstboot is doing on this node: state, role, peers, storage, errors.
    ///
    /// Reads the state file firstboot keeps in /var/lib/firstboot; the token is never shown.
    Status(firstboot::status::StatusArgs),
    /// Show the verified peers of this cluster and counts of foreign and unverified ones.
    Peers(PeersArgs),
    /// Measure fdatasync latency of the data directory's device and show the tuning plan.
    ProbeStorage(firstboot::storage::cli::ProbeStorageArgs),
    /// Print an admin kubeconfig for this cluster, to copy to a laptop (on a server, as root).
    ///
    /// It is K3s's own /etc/rancher/k3s/k3s.yaml with its server set to the fixed registration
    /// address (`[cluster] api_address`), or to this server's address when none is set, and its
    /// names set to the cluster's name. It is a cluster-admin credential: keep it private.
    #[command(
        after_help = "Examples:\n  sudo firstboot kubeconfig -o homelab.yaml\n  ssh pi@homelab-1a2b3c.local sudo firstboot kubeconfig > ~/.kube/homelab.yaml && chmod 600 ~/.kube/homelab.yaml"
    )]
    Kubeconfig(firstboot::kubeconfig::KubeconfigArgs),
    /// Take an etcd snapshot now (on a server with etcd, as root) and say where it went.
    ///
    /// Runs `k3s etcd-snapshot save`: K3s writes `<name>-<node>-<unix time>` into its snapshot
    /// directory (`[snapshots] dir` or the one storage chose, else K3s's default). Scheduled
    /// snapshots follow `[snapshots] schedule`; `firstboot status` shows the newest one's age.
    #[command(
        after_help = "Examples:\n  sudo firstboot snapshot\n  sudo firstboot snapshot --name before-upgrade --json"
    )]
    Snapshot(firstboot::k3s::snapshots::SnapshotArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a human at a terminal, never into the journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let paths = Paths::new(&cli.root, cli.boot_dir.as_deref());
    let result = match cli.command {
        Command::CheckConfig { path, json } => {
            let path = path.unwrap_or_else(|| paths.boot_cluster_toml());
            let loaded = ClusterConfig::load(&path);
            if json {
                // The error text never holds the token (the schema's errors redact it).
                let out = match &loaded {
                    Ok(c) => serde_json::json!({
                        "path": path,
                        "ok": true,
                        "name": c.name,
                        "servers": c.servers,
                        "nodes": c.nodes,
                        "summary": c.summary(),
                        "warnings": c.warnings(),
                    }),
                    Err(e) => serde_json::json!({
                        "path": path,
                        "ok": false,
                        "error": e.to_string(),
                    }),
                };
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                return if loaded.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            match loaded {
                Ok(config) => {
                    println!("{}: ok: {}", path.display(), config.summary());
                    for w in config.warnings() {
                        eprintln!("warning: {w}");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::Status(args) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            firstboot::status::command::run(&args, paths.root(), &mut std::io::stdout(), now)
        }
        Command::Run(args) => firstboot::lifecycle::run(&args, &paths),
        Command::Identity => firstboot::identity::early::run(&paths).map(|name| {
            println!("{name}");
        }),
        Command::Peers(args) => peers::run(&args, &paths),
        Command::ProbeStorage(args) => firstboot::storage::cli::run(&args),
        Command::Kubeconfig(args) => firstboot::kubeconfig::run(&args, &paths),
        Command::Snapshot(args) => firstboot::k3s::snapshots::run(&args, paths.root()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
