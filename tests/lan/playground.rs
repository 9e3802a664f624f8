//! `lan-playground`: starts a namespaced LAN of nodes for manual poking and prints how to reach them.
//!
//! Run as root: `cargo build -p firstboot -p systests --bins && target/debug/lan-playground
//! [--nodes N] [--secs S] [--bare]`. Each node runs `firstboot run --until role` of one cluster
//! (which stays resident after its role), or with `--bare` only its dbus-daemon and avahi-daemon.
//! The LAN lives until Enter, Ctrl-C (SIGINT or SIGTERM) or `--secs`; set `LAN_KEEP=1` to keep its files afterwards.

use systests::lan::{formation_support, harness};

use formation_support::{add_cluster_nodes, firstboot_path, role_of, start_node, ClusterSpec};
use harness::{skip_reason, Lan};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long to wait for the nodes' roles before handing the LAN over anyway.
const ROLE_WAIT: Duration = Duration::from_secs(60);

/// Set by SIGINT or SIGTERM: tear the LAN down and exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Command line of the playground.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Number of nodes (cluster.nodes; servers = min(3, nodes)).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    nodes: u8,
    /// Tear the LAN down after this many seconds (default: only on Enter or Ctrl-C).
    #[arg(long)]
    secs: Option<u64>,
    /// Start no firstboot daemons: only each node's dbus-daemon and avahi-daemon.
    #[arg(long)]
    bare: bool,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    if let Some(reason) = skip_reason() {
        eprintln!("lan-playground cannot run here: {reason}");
        std::process::exit(2);
    }
    let firstboot = firstboot_path();
    if !firstboot.exists() {
        eprintln!(
            "{} is missing: run `cargo build -p firstboot -p systests --bins` first",
            firstboot.display()
        );
        std::process::exit(2);
    }
    let stop = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; exec resets
        // handled signals to their default, so the daemons the LAN starts are unaffected.
        if let Err(e) = unsafe { sigaction(signal, &stop) } {
            eprintln!("installing the {signal} handler: {e}");
            std::process::exit(1);
        }
    }

    let count = usize::from(args.nodes);
    let spec = ClusterSpec::new("playground", args.nodes, args.nodes.min(3));
    let mut lan = Lan::new();
    add_cluster_nodes(&mut lan, &spec, count);
    if !args.bare {
        for node in lan.nodes.iter_mut() {
            start_node(node);
        }
        wait_for_roles(&lan);
    }
    print_directions(&lan, &firstboot.display().to_string(), args.bare);

    // Enter on stdin also stops the playground (an empty or closed stdin does not).
    let (entered, enter) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(_)) = std::io::stdin().lock().lines().next() {
            let _ = entered.send(());
        }
    });
    let deadline = args.secs.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        if STOP.load(Ordering::SeqCst) || enter.try_recv().is_ok() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("tearing the LAN down");
    drop(lan);
}

/// Prints each node's role line as it appears, for up to [`ROLE_WAIT`].
fn wait_for_roles(lan: &Lan) {
    let start = Instant::now();
    let mut shown = vec![false; lan.nodes.len()];
    while start.elapsed() < ROLE_WAIT && !STOP.load(Ordering::SeqCst) {
        for (node, shown) in lan.nodes.iter().zip(shown.iter_mut()) {
            if !*shown {
                if let Some(role) = role_of(node) {
                    println!("node{} {role}", node.index);
                    *shown = true;
                }
            }
        }
        if shown.iter().all(|s| *s) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("not every node knew its role within {ROLE_WAIT:?}; see the logs below");
}

/// How to reach each node and what to try there.
fn print_directions(lan: &Lan, firstboot: &str, bare: bool) {
    println!("LAN directory: {}", lan.dir.path().display());
    for node in &lan.nodes {
        let enter = format!("nsenter -t {} -m -u -n", node.anchor_pid());
        println!("node{} at {}:", node.index, node.address());
        println!("  shell:  {enter} bash");
        // Bare nodes never took in a cluster.toml: name their token file.
        let token = if bare {
            format!(
                " --token-file {}",
                node.root.join("etc/firstboot/token").display()
            )
        } else {
            String::new()
        };
        println!(
            "  peers:  {enter} {firstboot} --root {} peers{token}",
            node.root.display()
        );
        if !bare {
            println!(
                "  status: {enter} {firstboot} --root {} status",
                node.root.display()
            );
            println!("  log:    {}", node.dir.join("firstboot.log").display());
        }
        println!("  mDNS:   {enter} avahi-browse -rt _k3s-firstboot._tcp");
    }
    println!("press Enter or Ctrl-C to tear the LAN down");
}
