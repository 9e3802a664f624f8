//! The K3s test double against config.yaml files rendered by firstboot: init, joining server,
//! agent, and joiners that must refuse (forged CA hash, wrong token). All traffic on 127.0.0.1.

#[path = "../k3s_double/wire.rs"]
#[allow(dead_code)]
mod wire;

#[path = "../k3s_double/config.rs"]
#[allow(dead_code)]
mod double_config;

use firstboot::config::ClusterConfig;
use firstboot::k3s::flags::Subcommand;
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
        flannel_iface: Some("lo".into()),
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
    spawn_with(mode, yaml, port, &[])
}

/// Starts a double with config.yaml and `config.yaml.d/<name>` drop-ins.
fn spawn_with(mode: &str, yaml: &str, port: u16, drop_ins: &[(&str, &str)]) -> Double {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_config_yaml(&root, yaml).unwrap();
    for (name, text) in drop_ins {
        let d = root.join("etc/rancher/k3s/config.yaml.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), text).unwrap();
    }
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

/// Waits for READY=1; fails at once with the double's log if it exits first.
fn wait_ready(d: &mut Double) {
    let mut buf = [0u8; 512];
    d.notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(n) = d.notify.recv(&mut buf) {
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("READY=1"));
            return;
        }
        if let Some(status) = d.child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = d.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("the double exited ({status}) before READY=1: {err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the double never sent READY=1"
        );
    }
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
    let mut init = spawn(
        "server",
        &render(&cfg, &K3sRole::Init, &facts("lab-000001")),
        init_port,
    );
    wait_ready(&mut init);
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
    let mut joiner = spawn(
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
    wait_ready(&mut joiner);
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

    let mut agent = spawn(
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
    wait_ready(&mut agent);

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
    let mut first = spawn("server", &yaml, port);
    wait_ready(&mut first);
    let ca = std::fs::read(data(&first.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap();
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

/// A config.yaml (and drop-ins) that must make the double exit; returns its log.
fn refused(mode: &str, yaml: &str) -> String {
    expect_refusal(spawn(mode, yaml, free_port()))
}

fn init_yaml() -> String {
    render(&config(SECRET), &K3sRole::Init, &facts("lab-000001"))
}

fn agent_yaml(cfg: &ClusterConfig, url: &str) -> String {
    render(
        cfg,
        &K3sRole::Agent {
            server_url: url.into(),
            ca_hash: CaHash::of_bundle(b"any"),
        },
        &facts("lab-000009"),
    )
}

// Rule: `k3s agent` does not filter config.yaml keys (defaultparser.go:18 ValidFlags has no
// "agent"; parser.go:73), so a server-only key is urfave/cli's fatal "flag provided but not
// defined". Audit 1a.
#[test]
fn agent_exits_on_a_server_only_key() {
    let yaml = format!(
        "{}write-kubeconfig-mode: \"0640\"\n",
        agent_yaml(&config(SECRET), "https://127.0.0.1:1")
    );
    let err = refused("agent", &yaml);
    assert!(
        err.contains("flag provided but not defined: -write-kubeconfig-mode"),
        "{err}"
    );
}

// Rule: `k3s server` drops keys it does not define with a warning (parser.go:96).
#[test]
fn server_skips_an_unknown_key_with_a_warning() {
    let mut d = spawn(
        "server",
        &format!("{}no-such-flag: \"x\"\n", init_yaml()),
        free_port(),
    );
    wait_ready(&mut d);
    let log = stop_and_log(d);
    assert!(
        log.contains("Unknown flag --no-such-flag found in config.yaml, skipping"),
        "{log}"
    );
}

// Rule: an Int flag's value goes through Go's strconv.ParseInt (urfave/cli IntFlag); audit §10.2.
#[test]
fn non_integer_retention_fails() {
    let yaml = init_yaml().replace(
        "etcd-snapshot-retention: 7",
        "etcd-snapshot-retention: \"five\"",
    );
    assert!(yaml.contains("\"five\""), "{yaml}");
    let err = refused("server", &yaml);
    assert!(
        err.contains("invalid value \"five\" for flag -etcd-snapshot-retention"),
        "{err}"
    );
}

// Rule: a Bool flag's value goes through Go's strconv.ParseBool.
#[test]
fn non_boolean_cluster_init_fails() {
    let yaml = init_yaml().replace("cluster-init: true", "cluster-init: \"maybe\"");
    let err = refused("server", &yaml);
    assert!(
        err.contains("invalid boolean value \"maybe\" for -cluster-init"),
        "{err}"
    );
}

// Rule: the file must be a YAML mapping (yaml.Unmarshal into a MapSlice, parser.go:275).
#[test]
fn malformed_yaml_fails() {
    let yaml = format!("{}tls-san:\n  - \"a\"\n  b: c\n", init_yaml());
    let err = refused("server", &yaml);
    assert!(err.contains("yaml"), "{err}");
}

// Rule: config.yaml.d/*.yaml drop-ins are merged after config.yaml, in name order; a later file
// overrides a key, `key+` appends (parser.go:227-311); `*.txt` and directories are skipped.
#[test]
fn drop_ins_merge_as_k3s_does() {
    let file = tempfile::tempdir().unwrap();
    let base = file.path().join("config.yaml");
    std::fs::write(
        &base,
        "node-name: \"from-base\"\ntls-san:\n  - \"a\"\nnode-label: \"x=1\"\n",
    )
    .unwrap();
    let d = file.path().join("config.yaml.d");
    std::fs::create_dir_all(d.join("dir.yaml")).unwrap();
    std::fs::write(d.join("20-last.YML"), "node-name: \"from-20\"\n").unwrap();
    std::fs::write(
        d.join("10-first.yaml"),
        "node-name: \"from-10\"\ntls-san+:\n  - \"b\"\nnode-label: \"y=2\"\n",
    )
    .unwrap();
    std::fs::write(d.join("30-ignored.txt"), "node-name: \"from-txt\"\n").unwrap();
    let args = double_config::config_args(&base).unwrap().unwrap();
    assert_eq!(
        args,
        vec![
            "--node-name=from-20",
            "--tls-san=a",
            "--tls-san=b",
            "--node-label=y=2"
        ]
    );
    // Drop-ins alone are enough (parser.go:252-258).
    std::fs::remove_file(&base).unwrap();
    let args = double_config::config_args(&base).unwrap().unwrap();
    assert_eq!(args[0], "--node-name=from-20");
    // Neither: K3s runs without a config file.
    std::fs::remove_dir_all(&d).unwrap();
    assert!(double_config::config_args(&base).unwrap().is_none());
}

// The same with a real double: a drop-in's node-name wins over config.yaml's.
#[test]
fn a_drop_in_overrides_config_yaml_in_the_double() {
    let mut d = spawn_with(
        "server",
        &init_yaml(),
        free_port(),
        &[("50-name.yaml", "node-name: \"renamed-by-drop-in\"\n")],
    );
    wait_ready(&mut d);
    let log = stop_and_log(d);
    assert!(log.contains("as node renamed-by-drop-in"), "{log}");
}

// Rule: the agent accepts only agent flags; firstboot's rendering of every role passes the
// double's parser (the golden files included). Audit 1a: golden agent.yaml had a server-only key.
#[test]
fn golden_files_pass_the_k3s_flag_parser() {
    let dir = systests::repo_root().join("tests/k3s/golden");
    for (name, sub) in [
        ("init", Subcommand::Server),
        ("init-single-server", Subcommand::Server),
        ("join-server", Subcommand::Server),
        ("agent", Subcommand::Agent),
    ] {
        let args = double_config::config_args(&dir.join(format!("{name}.yaml")))
            .unwrap()
            .unwrap();
        let warnings = std::cell::RefCell::new(Vec::new());
        let r =
            double_config::parse_args(sub, &args, &|w| warnings.borrow_mut().push(w.to_string()));
        assert!(r.is_ok(), "{name}.yaml: {:#}", r.unwrap_err());
        assert!(
            warnings.borrow().is_empty(),
            "{name}.yaml: {:?}",
            warnings.borrow()
        );
    }
}

// firstboot routes [k3s] extra by the flag table: an agent with a server-only and a shared
// extra key starts (audit 1a, the blocker).
#[test]
fn agent_with_server_only_extra_joins() {
    let cfg = ClusterConfig::from_toml_str(
        &format!("[cluster]\nname = \"lab\"\ntoken = \"{SECRET}\"\nservers = 3\n[k3s]\nextra = {{ \"write-kubeconfig-mode\" = \"0644\", \"kube-apiserver-arg\" = [\"audit-log-maxage=30\"], \"node-label\" = [\"site=lab\"] }}\n"),
        Path::new("/nonexistent/cluster.toml"),
    )
    .unwrap();
    let port = free_port();
    let mut init = spawn(
        "server",
        &render(&cfg, &K3sRole::Init, &facts("lab-000001")),
        port,
    );
    wait_ready(&mut init);
    let url = format!("https://127.0.0.1:{port}");
    let ca_hash = CaHash::of_file(&data(&init.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap();
    let yaml = render(
        &cfg,
        &K3sRole::Agent {
            server_url: url,
            ca_hash,
        },
        &facts("lab-000002"),
    );
    assert!(yaml.contains("node-label"), "{yaml}");
    let mut agent = spawn("agent", &yaml, free_port());
    wait_ready(&mut agent);
}
