//! The K3s test double against config.yaml files rendered by firstboot: init, joining server,
//! agent, and joiners that must refuse (forged CA hash, wrong token). All traffic on 127.0.0.1.

#[path = "../k3s_double/wire.rs"]
#[allow(dead_code)]
mod wire;

use firstboot::config::ClusterConfig;
use firstboot::k3s::{render, write_config_yaml, CaHash, K3sRole, NodeFacts, SecureToken};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET: &str = "double-secret-Vw83nRq1zz";

/// A running double, killed when dropped.
struct Double {
    child: Child,
    root: PathBuf,
    notify: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(token: &str) -> ClusterConfig {
    ClusterConfig::from_toml_str(
        &format!("[cluster]\nname = \"lab\"\ntoken = \"{token}\"\nservers = 3\n"),
        Path::new("/nonexistent/cluster.toml"),
    )
    .unwrap()
}

fn facts(name: &str) -> NodeFacts {
    NodeFacts {
        node_name: name.into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        hostname: name.into(),
        etcd_args: vec![],
        snapshot_dir: None,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(mode: &str, yaml: &str, port: u16) -> Double {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_config_yaml(&root, yaml).unwrap();
    let sock_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    // A guard against a hung double, not a speed goal.
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let child = Command::new(systests::bin_path("k3s-double"))
        .arg(mode)
        .env("K3S_DOUBLE_ROOT", &root)
        .env("K3S_DOUBLE_PORT", port.to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Double {
        child,
        root,
        notify,
        _dir: dir,
    }
}

fn wait_ready(d: &Double) {
    let mut buf = [0u8; 512];
    let n = d.notify.recv(&mut buf).expect("the double sent READY=1");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("READY=1"));
}

/// Stops a running double and returns its log (stderr).
fn stop_and_log(d: Double) -> String {
    let mut d = d;
    let _ = d.child.kill();
    let child = std::mem::replace(&mut d.child, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for a double that must fail; returns its stderr.
fn expect_refusal(d: Double) -> String {
    let mut d = d;
    let child = std::mem::replace(&mut d.child, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the double should have refused");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains(SECRET), "token in the log: {err}");
    err
}

fn data(root: &Path) -> PathBuf {
    root.join(firstboot::k3s::DATA_DIR)
}

fn get(url: &str, path: &str) -> (u16, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(wire::get(url, path, wire::Trust::Nothing, None))
        .unwrap()
}

#[test]
fn init_join_agent_and_refusals() {
    let cfg = config(SECRET);
    let init_port = free_port();
    let init = spawn(
        "server",
        &render(&cfg, &K3sRole::Init, &facts("lab-000001")),
        init_port,
    );
    wait_ready(&init);
    let url = format!("https://127.0.0.1:{init_port}");

    // Files as K3s lays them out; firstboot computes the CA hash from the file alone.
    let ca_file = data(&init.root).join(firstboot::k3s::SERVER_CA_FILE);
    let ca_hash = CaHash::of_file(&ca_file).unwrap();
    let token_file = data(&init.root).join(firstboot::k3s::SERVER_TOKEN_FILE);
    let token_text = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().mode() & 0o777,
        0o600
    );
    let parsed = SecureToken::parse(&token_text).expect("server/token is a secure token");
    assert_eq!(parsed.ca_hash(), ca_hash);
    assert_eq!(parsed.expose_password(), SECRET);
    assert_eq!(
        token_text.trim_end(),
        format!("K10{ca_hash}::server:{SECRET}")
    );

    // /ping and /cacerts are unauthenticated; /cacerts is the file, byte for byte.
    assert_eq!(get(&url, "/ping"), (200, b"pong".to_vec()));
    let (status, served) = get(&url, "/cacerts");
    assert_eq!(status, 200);
    assert_eq!(served, std::fs::read(&ca_file).unwrap());
    assert_eq!(get(&url, "/v1-k3s/server-bootstrap").0, 401);

    // A server joins with the secure token and ends up with the same CA and token.
    let join_port = free_port();
    let joiner = spawn(
        "server",
        &render(
            &cfg,
            &K3sRole::JoinServer {
                server_url: url.clone(),
                ca_hash,
            },
            &facts("lab-000002"),
        ),
        join_port,
    );
    wait_ready(&joiner);
    assert_eq!(
        std::fs::read(data(&joiner.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap(),
        std::fs::read(&ca_file).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(data(&joiner.root).join(firstboot::k3s::SERVER_TOKEN_FILE))
            .unwrap(),
        token_text
    );
    // The joined server serves the cluster CA too (agents may join through any server).
    let (_, served2) = get(&format!("https://127.0.0.1:{join_port}"), "/cacerts");
    assert_eq!(CaHash::of_bundle(&served2), ca_hash);

    let agent = spawn(
        "agent",
        &render(
            &cfg,
            &K3sRole::Agent {
                server_url: format!("https://127.0.0.1:{join_port}"),
                ca_hash,
            },
            &facts("lab-000003"),
        ),
        free_port(),
    );
    wait_ready(&agent);

    // A joiner whose token carries a different CA hash refuses before sending credentials.
    let forged = CaHash::of_bundle(b"a CA the attacker controls");
    let bad = spawn(
        "server",
        &render(
            &cfg,
            &K3sRole::JoinServer {
                server_url: url.clone(),
                ca_hash: forged,
            },
            &facts("lab-000004"),
        ),
        free_port(),
    );
    let err = expect_refusal(bad);
    assert!(err.contains("does not match"), "{err}");

    // The right CA hash but the wrong password: the server refuses the agent.
    let wrong = spawn(
        "agent",
        &render(
            &config("some-other-secret-123"),
            &K3sRole::Agent {
                server_url: url.clone(),
                ca_hash,
            },
            &facts("lab-000005"),
        ),
        free_port(),
    );
    let err = expect_refusal(wrong);
    assert!(err.contains("rejected the token"), "{err}");

    // Nobody logged the token, not even on success.
    for (what, d) in [("init", init), ("joiner", joiner), ("agent", agent)] {
        let log = stop_and_log(d);
        assert!(log.contains("k3s-double:"), "{what}: {log}");
        assert!(!log.contains(SECRET), "{what} logged the token: {log}");
    }
}

#[test]
fn restarted_init_keeps_its_ca() {
    let cfg = config(SECRET);
    let port = free_port();
    let yaml = render(&cfg, &K3sRole::Init, &facts("lab-000001"));
    let first = spawn("server", &yaml, port);
    wait_ready(&first);
    let ca = std::fs::read(data(&first.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap();
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let child = Command::new(systests::bin_path("k3s-double"))
        .arg("server")
        .env("K3S_DOUBLE_ROOT", &first.root)
        .env("K3S_DOUBLE_PORT", port.to_string())
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let restarted = std::mem::replace(&mut first.child, child);
    drop(restarted);
    // Once it answers /cacerts, compare (retry only while the listener comes up).
    let url = format!("https://127.0.0.1:{port}");
    let mut tries = 0;
    let served = loop {
        tries += 1;
        assert!(tries < 600, "the restarted double never served /cacerts");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(wire::get(&url, "/cacerts", wire::Trust::Nothing, None));
        if let Ok((200, body)) = r {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(served, ca);
}
