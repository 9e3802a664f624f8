//! `firstboot-held`: `firstboot run` with a hold on the elected node, for the LAN tests only.
//!
//! It is the firstboot library's own `run` with one [`PersistHook`] installed: once this node
//! durably learns that it was elected in the first epoch (`Init(self)` decided in epoch 0, fate
//! open), it stalls for `FIRSTBOOT_TEST_HOLD_ELECTED_MS` before it announces that or asks for Go.
//! From outside the node simply stalls at the worst moment, so a test can kill it there or
//! restart avahi-daemon while the vote is open. A test sets the variable on every node, so
//! whichever wins the first election is held; only epoch 0 holds, so the election that replaces
//! a killed node runs unheld. The hook lives here, so the shipped `firstboot` has no trace of it.

use clap::Parser;
use firstboot::election::{EpochState, NodeId, PersistHook, PersistedState};
use firstboot::lifecycle::RunArgs;
use firstboot::paths::Paths;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use systests::HOLD_ELECTED_ENV;

/// `firstboot [--root R] [--boot-dir B] run [RUN ARGS]`, as the real binary takes them.
#[derive(Parser)]
struct Cli {
    /// Prefix for every system path.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    /// The boot partition directory.
    #[arg(long, global = true)]
    boot_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// `firstboot run`, with the hold installed.
    Run(RunArgs),
}

/// Holds the node once, the first time its own election in epoch 0 is durable.
struct HoldElected {
    hold: Option<Duration>,
    held: bool,
}

impl PersistHook for HoldElected {
    fn persisted(&mut self, me: NodeId, state: &PersistedState) -> Option<Duration> {
        if self.held || state.epoch != 0 || state.epoch_state != EpochState::Elected(me) {
            return None;
        }
        self.held = true;
        let hold = self.hold?;
        tracing::warn!(
            hold_ms = hold.as_millis() as u64,
            epoch = state.epoch,
            "test hook: elected; holding before asking for Go"
        );
        Some(hold)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let hold = std::env::var(HOLD_ELECTED_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let hook = HoldElected { hold, held: false };
    let paths = Paths::new(&cli.root, cli.boot_dir.as_deref());
    let Command::Run(args) = cli.command;
    match firstboot::lifecycle::run_with_hook(&args, &paths, Some(Box::new(hook))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
