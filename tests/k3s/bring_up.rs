//! Lifecycle step 7 end to end on one host: `bring_up` renders config.yaml and starts K3s
//! through a systemd1 double on each node's own private dbus-daemon; the "unit" runs the K3s
//! test double and turns active when it sends READY=1 (Type=notify), failed when it exits.
//! Covers: init becomes active and yields the CA hash to announce; a joiner with that hash
//! becomes active; a joiner given a forged CA hash refuses and its unit fails.

mod private_bus;

use firstboot::config::ClusterConfig;
use firstboot::k3s::{bring_up, CaHash, K3sRole, NodeFacts};
use firstboot::systemd::{ActiveState, Systemd};
use private_bus::PrivateBus;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "bringup-secret-Hy62pLm0";

/// systemd's manager for one node: StartUnit runs k3s-double for k3s.service / k3s-agent.service.
struct ManagerDouble {
    root: PathBuf,
    port: u16,
    state: Arc<Mutex<String>>,
    children: Arc<Mutex<Vec<Child>>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl ManagerDouble {
    fn start_unit(&self, name: &str, _mode: &str) -> zbus::zvariant::OwnedObjectPath {
        let mode = if name == "k3s-agent.service" {
            "agent"
        } else {
            "server"
        };
        let mut state = self.state.lock().unwrap();
        if state.as_str() == "inactive" || state.as_str() == "failed" {
            *state = "activating".into();
            let (root, port, shared, children) = (
                self.root.clone(),
                self.port,
                self.state.clone(),
                self.children.clone(),
            );
            std::thread::spawn(move || run_unit(mode, &root, port, &shared, &children));
        }
        zbus::zvariant::OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap()
    }

    fn load_unit(&self, _name: &str) -> zbus::zvariant::OwnedObjectPath {
        zbus::zvariant::OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/k3s").unwrap()
    }
}

/// Runs the double like a Type=notify unit: active on READY=1, failed when it exits.
fn run_unit(
    mode: &str,
    root: &Path,
    port: u16,
    state: &Mutex<String>,
    children: &Mutex<Vec<Child>>,
) {
    let sock_path = root.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let child = Command::new(systests::bin_path("k3s-double"))
        .arg(mode)
        .env("K3S_DOUBLE_ROOT", root)
        .env("K3S_DOUBLE_PORT", port.to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The node owns the child so that dropping the node stops it by its handle.
    let index = {
        let mut all = children.lock().unwrap();
        all.push(child);
        all.len() - 1
    };
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            if buf[..n].starts_with(b"READY=1") {
                *state.lock().unwrap() = "active".into();
            }
        }
        let exited = matches!(children.lock().unwrap()[index].try_wait(), Ok(Some(_)));
        if exited {
            *state.lock().unwrap() = "failed".into();
            return;
        }
    }
}

struct UnitDouble(Arc<Mutex<String>>);

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitDouble {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// One node: its root, its private system bus with the systemd1 double, and its K3s port.
struct Node {
    root: PathBuf,
    bus: PrivateBus,
    _server: zbus::Connection,
    children: Arc<Mutex<Vec<Child>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn node(port: u16) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let bus = PrivateBus::start();
    let state = Arc::new(Mutex::new("inactive".to_string()));
    let children = Arc::new(Mutex::new(Vec::new()));
    let server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            ManagerDouble {
                root: root.clone(),
                port,
                state: state.clone(),
                children: children.clone(),
            },
        )
        .unwrap()
        .serve_at("/org/freedesktop/systemd1/unit/k3s", UnitDouble(state))
        .unwrap()
        .build()
        .await
        .unwrap();
    Node {
        root,
        bus,
        _server: server,
        children,
        _dir: dir,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn facts(name: &str) -> NodeFacts {
    NodeFacts {
        node_name: name.into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        hostname: name.into(),
        etcd_args: vec!["heartbeat-interval=500".into()],
        snapshot_dir: None,
    }
}

async fn up(n: &Node, role: &K3sRole, name: &str) -> firstboot::k3s::BroughtUp {
    let config = ClusterConfig::from_toml_str(
        &format!("[cluster]\nname = \"lab\"\ntoken = \"{SECRET}\"\nservers = 3\n"),
        Path::new("/nonexistent/cluster.toml"),
    )
    .unwrap();
    let conn = n.bus.connect().await;
    let systemd = Systemd::new(&conn).await.unwrap();
    // The limit only guards against a hung double.
    bring_up(
        &n.root,
        &config,
        role,
        &facts(name),
        &systemd,
        false,
        Duration::from_secs(120),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_join_and_a_forged_hash_is_refused() {
    let init_port = free_port();
    let init = node(init_port).await;
    let got = up(&init, &K3sRole::Init, "lab-000001").await;
    assert_eq!(got.state, ActiveState::Active);
    let ca_hash = got
        .ca_hash
        .expect("the init node yields its CA hash once active");
    let token =
        std::fs::read_to_string(init.root.join("var/lib/rancher/k3s/server/token")).unwrap();
    assert!(token.starts_with(&format!("K10{ca_hash}::server:")));
    // Repeating the step (a restart after a crash) changes nothing and stays active.
    let again = up(&init, &K3sRole::Init, "lab-000001").await;
    assert_eq!(again.state, ActiveState::Active);
    assert_eq!(again.ca_hash, Some(ca_hash));

    let server_url = format!("https://127.0.0.1:{init_port}");
    let joiner = node(free_port()).await;
    let role = K3sRole::JoinServer {
        server_url: server_url.clone(),
        ca_hash,
    };
    let joined = up(&joiner, &role, "lab-000002").await;
    assert_eq!(joined.state, ActiveState::Active);
    assert_eq!(joined.ca_hash, None);

    let agent = node(free_port()).await;
    let role = K3sRole::Agent {
        server_url: server_url.clone(),
        ca_hash,
    };
    assert_eq!(
        up(&agent, &role, "lab-000003").await.state,
        ActiveState::Active
    );

    let forged = node(free_port()).await;
    let role = K3sRole::JoinServer {
        server_url,
        ca_hash: CaHash::of_bundle(b"somebody else's CA"),
    };
    assert_eq!(
        up(&forged, &role, "lab-000004").await.state,
        ActiveState::Failed
    );
    assert!(!forged
        .root
        .join("var/lib/rancher/k3s/server/tls/server-ca.crt")
        .exists());
}
