//! `lan-node`: one test node on the namespaced LAN, built from the firstboot library's discovery parts.
//!
//! It sets its identity (node id, hostname through systemd-hostnamed), publishes its signed record,
//! browses, and greets every verified peer once over the frame transport, printing what happens.
//! It stands in for the daemon until the election driver lands; the token only comes from a file.

use anyhow::Context;
use firstboot::discovery::peers::read_token;
use firstboot::discovery::record::{cluster_id_from_hex, ClusterKeys};
use firstboot::discovery::{
    Advert, Browser, FrameTransport, PeerTable, Publisher, RolePin, UdpTransport, FRAME_PORT,
};
use firstboot::identity::{hostname_for, node_id, set_hostname};
use firstboot::paths::Paths;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Command line of a test node.
#[derive(clap::Parser, Debug)]
struct Args {
    /// Root prefix of this node.
    #[arg(long)]
    root: PathBuf,
    /// Cluster name (hostname prefix).
    #[arg(long)]
    name: String,
    /// cluster.nodes
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// cluster.servers
    #[arg(long, default_value_t = 3)]
    servers: u8,
    /// Service instance name to publish [default: the hostname].
    #[arg(long)]
    service_name: Option<String>,
    /// Publish this cluster id instead of ours (a forger who knows the id but not the token).
    #[arg(long)]
    claim_cluster: Option<String>,
    /// Once this many peers are verified, re-publish with state `greeted` (0: never).
    #[arg(long, default_value_t = 0)]
    expect_peers: usize,
    /// Withdraw the record once greeted, but keep running (and browsing).
    #[arg(long)]
    withdraw_when_greeted: bool,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let paths = Paths::new(&args.root, None);
    let token = read_token(&paths.config_dir().join("token"))?;
    let keys = ClusterKeys::from_secret(&token, args.nodes, args.servers);
    drop(token);
    let (id, source) = node_id(&paths).context("finding the node id")?;
    let hostname = hostname_for(&args.name, id, None);
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system bus")?;
    set_hostname(&conn, &hostname)
        .await
        .context("setting the hostname")?;
    println!("identity node={id} source={source:?} hostname={hostname}");

    let mut transport = UdpTransport::bind(FRAME_PORT)
        .await
        .context("binding the frame transport")?;
    let cluster = match &args.claim_cluster {
        Some(hex) => cluster_id_from_hex(hex).context("parsing --claim-cluster")?,
        None => keys.cluster,
    };
    let advert = Advert {
        cluster,
        node: id,
        state: "discovering".into(),
        role: RolePin::Auto,
        storage: 10,
        ram_mib: 1024,
        port: FRAME_PORT,
    };
    let mut publisher = Some(Publisher::spawn(
        conn.clone(),
        args.service_name
            .clone()
            .unwrap_or_else(|| hostname.clone()),
        advert.clone(),
        keys.record.clone(),
    ));
    let mut state_updated = false;
    let mut registered = publisher
        .as_ref()
        .map(Publisher::registered)
        .context("publisher just created")?;
    let mut browser = Browser::spawn(conn.clone(), keys.cluster, keys.record.clone());
    let mut table = PeerTable::default();
    let mut greeted = BTreeSet::new();
    loop {
        tokio::select! {
            changed = registered.changed(), if publisher.is_some() => {
                changed.context("publisher stopped")?;
                let name = registered.borrow_and_update().clone();
                match name {
                    Some(name) => println!("published service={name}"),
                    None => println!("unpublished"),
                }
            }
            event = browser.next() => {
                let event = event.context("browser stopped")?;
                println!("event {event:?}");
                table.apply(event);
                let verified = table.summary().verified;
                for peer in &verified {
                    if greeted.insert(peer.advert.node) {
                        let hello = format!("hello from {id}");
                        transport.send(peer.addr, hello.as_bytes()).await.context("sending a frame")?;
                    }
                }
                if args.expect_peers > 0 && verified.len() >= args.expect_peers && !state_updated {
                    state_updated = true;
                    if let Some(publisher) = &publisher {
                        publisher.update(Advert { state: "greeted".into(), ..advert.clone() });
                        println!("state greeted");
                    }
                    if args.withdraw_when_greeted {
                        if let Some(publisher) = publisher.take() {
                            publisher.withdraw().await;
                            println!("withdrawn");
                        }
                    }
                }
            }
            frame = transport.recv() => {
                let (from, frame) = frame.context("receiving a frame")?;
                println!("frame from={from} text={}", String::from_utf8_lossy(&frame));
            }
        }
    }
}
