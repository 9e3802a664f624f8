//! The K3s test double against config.yaml files rendered by firstboot: init, joining server,
//! agent, and joiners that must refuse (forged CA hash, wrong token). All traffic on 127.0.0.1.

use firstboot::config::ClusterConfig;
use firstboot::k3s::flags::Subcommand;
use firstboot::k3s::{render, write_config_yaml, CaHash, K3sRole, NodeFacts, SecureToken};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use systests::k3s_double::config as double_config;
use systests::k3s_double::{etcd, wire};

const SECRET: &str = "double-secret-Vw83nRq1zz";

/// A running double, killed when dropped.
struct Double {
    child: Child,
    root: PathBuf,
    notify: UnixDatagram,
    /// Its etcd's client port (on 127.0.0.1).
    etcd_port: u16,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Double {
    fn etcd(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// `k3s kubectl ARGS` against this server; (exit success, stdout, stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(systests::bin_path("k3s-double"))
            .arg("kubectl")
            .args(args)
            .env("K3S_DOUBLE_ROOT", &self.root)
            .env("K3S_DOUBLE_ETCD_CLIENT_PORT", self.etcd_port.to_string())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the double again on the same root, ports and environment.
    fn restart(&mut self, mode: &str, port: u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut cmd = Command::new(systests::bin_path("k3s-double"));
        cmd.arg(mode)
            .env("K3S_DOUBLE_ROOT", &self.root)
            .env("K3S_DOUBLE_PORT", port.to_string())
            .env("NOTIFY_SOCKET", self._dir.path().join("notify"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    }
}

/// The etcd members a server's etcd lists.
fn members(d: &Double) -> Vec<etcd::Member> {
    rt().block_on(etcd::member_list(&d.etcd())).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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

/// Starts a double with config.yaml and `config.yaml.d/<name>` drop-ins; READY at once and a
/// 1 s learner tick unless `extra_env` says otherwise.
fn spawn_with(mode: &str, yaml: &str, port: u16, drop_ins: &[(&str, &str)]) -> Double {
    spawn_env(mode, yaml, port, drop_ins, &[])
}

fn spawn_env(
    mode: &str,
    yaml: &str,
    port: u16,
    drop_ins: &[(&str, &str)],
    extra_env: &[(&str, &str)],
) -> Double {
    spawn_prepared(mode, yaml, port, drop_ins, extra_env, &|_| {})
}

/// [`spawn_env`] after `prepare` put files under the double's root.
fn spawn_prepared(
    mode: &str,
    yaml: &str,
    port: u16,
    drop_ins: &[(&str, &str)],
    extra_env: &[(&str, &str)],
    prepare: &dyn Fn(&Path),
) -> Double {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    prepare(&root);
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
    let etcd_port = free_port();
    let mut env: Vec<(String, String)> = vec![
        ("K3S_DOUBLE_ETCD_CLIENT_PORT".into(), etcd_port.to_string()),
        ("K3S_DOUBLE_ETCD_PEER_PORT".into(), free_port().to_string()),
        ("K3S_DOUBLE_READY_DELAY".into(), "0".into()),
        ("K3S_DOUBLE_LEARNER_TICK".into(), "1".into()),
        // Several doubles share the host's network namespace here: no kubelet port.
        ("K3S_DOUBLE_KUBELET_PORT".into(), "0".into()),
    ];
    for (k, v) in extra_env {
        env.retain(|(e, _)| e != k);
        if !v.is_empty() {
            env.push((k.to_string(), v.to_string()));
        }
    }
    let mut cmd = Command::new(systests::bin_path("k3s-double"));
    cmd.arg(mode)
        .env("K3S_DOUBLE_ROOT", &root)
        .env("K3S_DOUBLE_PORT", port.to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("K3S_DOUBLE_READY_DELAY");
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Double {
        child,
        root,
        notify,
        etcd_port,
        env,
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

/// An agent that must keep retrying every 2 s without READY and without exiting (K3s
/// pkg/agent/run.go:354-363); returns its log after about 5 s.
fn expect_retrying(d: Double) -> String {
    let mut d = d;
    d.notify
        .set_read_timeout(Some(Duration::from_millis(5500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(d.notify.recv(&mut buf).is_err(), "the agent sent READY");
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the agent exited instead of retrying"
    );
    let log = stop_and_log(d);
    assert!(
        log.matches("Failed to validate connection to cluster at")
            .count()
            >= 2,
        "no retries: {log}"
    );
    assert!(!log.contains(SECRET), "token in the log: {log}");
    log
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

    // The right CA hash but the wrong password: the server refuses the agent, which retries.
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
    let err = expect_retrying(wrong);
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
        .env("K3S_DOUBLE_KUBELET_PORT", "0")
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

fn init_with(facts_name: &str) -> (Double, String, CaHash) {
    let port = free_port();
    let mut d = spawn(
        "server",
        &render(&config(SECRET), &K3sRole::Init, &facts(facts_name)),
        port,
    );
    wait_ready(&mut d);
    let ca_hash = CaHash::of_file(&data(&d.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap();
    (d, format!("https://127.0.0.1:{port}"), ca_hash)
}

fn join_yaml(url: &str, ca_hash: CaHash, name: &str) -> String {
    render(
        &config(SECRET),
        &K3sRole::JoinServer {
            server_url: url.into(),
            ca_hash,
        },
        &facts(name),
    )
}

fn agent_of(url: &str, ca_hash: CaHash, name: &str) -> String {
    render(
        &config(SECRET),
        &K3sRole::Agent {
            server_url: url.into(),
            ca_hash,
        },
        &facts(name),
    )
}

// Rule: an agent with a wrong CA hash logs and retries every 2 s forever, the unit stays
// activating (pkg/agent/run.go:354-363).
#[test]
fn agent_with_a_wrong_ca_hash_retries_every_2_s() {
    let (_init, url, _) = init_with("lab-000001");
    let forged = CaHash::of_bundle(b"a CA the attacker controls");
    let log = expect_retrying(spawn(
        "agent",
        &agent_of(&url, forged, "lab-000002"),
        free_port(),
    ));
    assert!(log.contains("token CA hash does not match"), "{log}");
}

// Rule: the CA's NotBefore is the clock of the double that created it, leaves copy it
// (dynamiclistener cert.go:75-100, :136): a node whose clock is before it fails the TLS check.
// The init's CA is made "in the future" (an init node whose clock was ahead), the agent's clock
// is the host's: it must refuse and retry, as a real K3s agent behind the init's clock does.
#[test]
fn a_node_whose_clock_is_before_the_ca_fails_the_tls_check() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(ahead).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(ahead + 86_400).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = params.self_signed(&key).unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = render(&config(SECRET), &K3sRole::Init, &facts("lab-000001"));
    let mut init = spawn("server", &yaml, port);
    // Replace the CA before the double reads it: restart it on the same root with ours.
    let _ = init.child.kill();
    let _ = init.child.wait();
    let tls = data(&init.root).join("server/tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("server-ca.crt"), ca.pem()).unwrap();
    std::fs::write(tls.join("server-ca.key"), key.serialize_pem()).unwrap();
    let _ = std::fs::remove_dir_all(data(&init.root).join("server/db"));
    init.restart("server", port);
    wait_ready(&mut init);
    drop(dir);
    let url = format!("https://127.0.0.1:{port}");
    let ca_hash = CaHash::of_bundle(ca.pem().as_bytes());
    let log = expect_retrying(spawn(
        "agent",
        &agent_of(&url, ca_hash, "lab-000002"),
        free_port(),
    ));
    assert!(log.contains("certificate not valid yet"), "{log}");
    // And the double's own CA: valid from its creation, not from 1975.
    let (init2, _, _) = init_with("lab-000003");
    let pem =
        std::fs::read_to_string(data(&init2.root).join(firstboot::k3s::SERVER_CA_FILE)).unwrap();
    let p = CertificateParams::from_ca_cert_pem(&pem).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let nb = p.not_before.unix_timestamp();
    assert!((now - 120..=now).contains(&nb), "NotBefore {nb}, now {now}");
    let years = (p.not_after.unix_timestamp() - nb) / (365 * 86_400);
    assert_eq!(years, 10);
}

// Rule: READY comes after K3S_DOUBLE_READY_DELAY seconds (default 5), not at once.
#[test]
fn ready_comes_after_the_configured_delay() {
    for (delay, min) in [("2.5", 2.5), ("", 5.0)] {
        let start = std::time::Instant::now();
        let mut d = spawn_env(
            "server",
            &init_yaml(),
            free_port(),
            &[],
            &[("K3S_DOUBLE_READY_DELAY", delay)],
        );
        wait_ready(&mut d);
        let took = start.elapsed().as_secs_f64();
        assert!(took >= min, "READY after {took} s with delay {delay:?}");
    }
}

// Rule: cluster-init starts a one-member etcd as K3s embeds it: data under server/db/etcd, the
// member named <node-name>-<8 hex> (etcd.go:694-712), peer URL on node-ip.
#[test]
fn cluster_init_starts_a_one_member_etcd() {
    let (init, _, _) = init_with("lab-000001");
    let m = members(&init);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(!m[0].is_learner);
    let name = std::fs::read_to_string(data(&init.root).join("server/db/etcd/name")).unwrap();
    assert_eq!(m[0].name, name);
    let suffix = name.strip_prefix("lab-000001-").expect("member name");
    assert!(
        suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    assert!(m[0].peer_urls[0].starts_with("http://127.0.0.1:"), "{m:?}");
    assert!(data(&init.root).join("server/db/etcd/member/wal").is_dir());
}

// Rule: a joining server is added as a learner and promoted by the leader's tick
// (etcd.go:622, :1177-1199); it sends READY only once it is a voter (Test, :210-223).
#[test]
fn a_joining_server_is_a_learner_until_promoted_and_ready_after() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let mut j = spawn_env(
        "server",
        &join_yaml(&url, ca_hash, "lab-000002"),
        free_port(),
        &[],
        &[("K3S_DOUBLE_LEARNER_TICK", "3")],
    );
    let mut saw_learner = false;
    j.notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = members(&init);
        if m.iter().any(|m| m.is_learner) {
            saw_learner = true;
        }
        if j.notify.recv(&mut buf).is_ok() {
            // READY: by now the joiner is a voter.
            let m = members(&init);
            assert_eq!(m.len(), 2, "{m:?}");
            assert!(
                m.iter().all(|m| !m.is_learner),
                "READY before promotion: {m:?}"
            );
            break;
        }
        assert!(j.child.try_wait().unwrap().is_none(), "the joiner exited");
        assert!(std::time::Instant::now() < deadline, "no READY");
    }
    assert!(saw_learner, "the joiner was never a learner");
    assert!(stop_and_log(init).contains("Promoted learner lab-000002-"));
}

// Rule: etcd allows one learner at a time; K3s joiners retry every second on "too many learner
// members" (etcd.go:498-520). Two servers joining together: never two learners, both end voters.
#[test]
fn two_servers_joining_together_are_learners_one_at_a_time() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let slow = [("K3S_DOUBLE_LEARNER_TICK", "4")];
    let ports = [free_port(), free_port()];
    let mut joiners = [
        spawn_env(
            "server",
            &join_yaml(&url, ca_hash, "lab-000002"),
            ports[0],
            &[],
            &slow,
        ),
        spawn_env(
            "server",
            &join_yaml(&url, ca_hash, "lab-000003"),
            ports[1],
            &[],
            &slow,
        ),
    ];
    let mut buf = [0u8; 64];
    for j in &joiners {
        j.notify
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
    }
    let mut ready = [false, false];
    let mut restarts = Vec::new();
    let mut earlier_logs = String::new();
    // A guard against a hang, not a speed goal: CI runs this beside 26 other doubles.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !(ready[0] && ready[1]) {
        let m = members(&init);
        assert!(m.iter().filter(|m| m.is_learner).count() <= 1, "{m:?}");
        for (i, j) in joiners.iter_mut().enumerate() {
            ready[i] |= j.notify.recv(&mut buf).is_ok();
            // K3s exits when its join fails for another reason than a pending learner (e.g. etcd
            // slow to answer MemberAdd on a loaded machine, pkg/etcd/etcd.go:515-517); systemd
            // starts it again (k3s.service Restart=always), and so does this test, at most twice.
            if !ready[i] && j.child.try_wait().unwrap().is_some() && restarts.len() < 2 {
                let mut err = String::new();
                if let Some(mut e) = j.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                eprintln!("joiner {i} exited; restarting it as systemd would:\n{err}");
                earlier_logs.push_str(&err);
                restarts.push(i);
                j.restart("server", ports[i]);
            }
        }
        if std::time::Instant::now() > deadline {
            let [a, b] = joiners;
            panic!(
                "not both READY (a {}, b {}, restarted {restarts:?}); members {m:?}\n--- a:\n{}\n--- b:\n{}\n--- init:\n{}",
                ready[0],
                ready[1],
                stop_and_log(a),
                stop_and_log(b),
                stop_and_log(init)
            );
        }
    }
    let m = members(&init);
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|m| !m.is_learner), "{m:?}");
    let [a, b] = joiners;
    let logs = earlier_logs + &stop_and_log(a) + &stop_and_log(b);
    assert!(
        logs.contains("Waiting for other members to finish joining etcd cluster: etcdserver: too many learner members"),
        "{logs}"
    );
}

// Rule: `server:` together with `cluster-init` joins (pkg/cluster/managed.go:125).
#[test]
fn server_with_cluster_init_joins() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let yaml = format!(
        "{}cluster-init: true\n",
        join_yaml(&url, ca_hash, "lab-000002")
    );
    let mut j = spawn("server", &yaml, free_port());
    wait_ready(&mut j);
    assert_eq!(members(&init).len(), 2);
}

// Rule: a second server with a node name already in etcd is refused (etcd.go:606-617).
#[test]
fn a_server_with_a_duplicate_node_name_is_refused() {
    let (_init, url, ca_hash) = init_with("lab-000001");
    let err = expect_refusal(spawn(
        "server",
        &join_yaml(&url, ca_hash, "lab-000001"),
        free_port(),
    ));
    assert!(err.contains("duplicate node name found"), "{err}");
}

// Rule (issue 18, an agent promoted in place): a node that ran as an agent starts as a server
// under the same node name. K3s needs nothing cleared for it: the node password in
// /etc/rancher/node/password is kept and matches the `<name>.node-password.k3s` secret the
// agent registered (pkg/server/router.go:401-403, 421, 437-468), and an agent never had an etcd
// member, so the duplicate-name check passes (pkg/etcd/etcd.go:603-617). But the agent must be
// stopped first: a server started beside it cannot bind the kubelet's port and exits as K3s
// does when its embedded kubelet fails (pkg/daemons/executor/embed.go:95-98).
#[test]
fn an_agent_promoted_in_place_joins_as_a_server_once_its_agent_is_stopped() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let kubelet = free_port().to_string();
    let env = [("K3S_DOUBLE_KUBELET_PORT", kubelet.as_str())];
    let mut agent = spawn_env(
        "agent",
        &agent_of(&url, ca_hash, "lab-000002"),
        free_port(),
        &[],
        &env,
    );
    wait_ready(&mut agent);
    let password = std::fs::read(agent.root.join("etc/rancher/node/password")).unwrap();
    // The server's config on the agent's root, the agent still running: refused.
    write_config_yaml(&agent.root, &join_yaml(&url, ca_hash, "lab-000002")).unwrap();
    let mut beside = Command::new(systests::bin_path("k3s-double"));
    beside
        .arg("server")
        .env("K3S_DOUBLE_ROOT", &agent.root)
        .env("K3S_DOUBLE_PORT", free_port().to_string())
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in &agent.env {
        beside.env(k, v);
    }
    let out = beside.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a server started beside the agent: {err}"
    );
    assert!(err.contains("kubelet exited"), "{err}");
    // The agent stopped, the same root starts as a server: READY, a voter, the same password.
    let port = free_port();
    agent.restart("server", port);
    wait_ready(&mut agent);
    let voters: Vec<String> = members(&init)
        .into_iter()
        .filter(|m| !m.is_learner)
        .map(|m| etcd::node_of_member(&m.name).to_string())
        .collect();
    assert!(voters.contains(&"lab-000002".to_string()), "{voters:?}");
    assert_eq!(
        std::fs::read(agent.root.join("etc/rancher/node/password")).unwrap(),
        password
    );
    let (found, out, _) = init.kubectl(&["get", "node", "lab-000002", "-o", "json"]);
    assert!(found, "{out}");
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        node["metadata"]["labels"]["node-role.kubernetes.io/etcd"], "true",
        "{node}"
    );
}

// Rule: an agent whose node name is registered with another node password is refused and
// retries (pkg/nodepassword Ensure; pkg/agent/config/config.go:57-74, :180-182).
#[test]
fn an_agent_with_a_duplicate_node_name_is_rejected() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let d = spawn("agent", &agent_of(&url, ca_hash, "lab-000001"), free_port());
    d.notify
        .set_read_timeout(Some(Duration::from_secs(7)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        d.notify.recv(&mut buf).is_err(),
        "READY with a duplicate name"
    );
    let log = stop_and_log(d);
    assert!(log.contains("Node password rejected"), "{log}");
    // A fresh name is fine, and the agent appears as a Ready node.
    let mut ok = spawn("agent", &agent_of(&url, ca_hash, "lab-000002"), free_port());
    wait_ready(&mut ok);
    // READY is the agent being up, not its first node status (K3s's kubelet posts that after
    // the unit is active), so the node turns Ready shortly after, on its first heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Before its first heartbeat the Node does not exist yet: kubectl says NotFound.
        let (found, out, err) = init.kubectl(&["get", "node", "lab-000002", "-o", "json"]);
        if found {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v["status"]["conditions"][0]["status"] == "True" {
                break;
            }
        } else {
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "{err}"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not Ready 20 s after READY: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// Rule: deleting a Node drops its node-password secret, an agent's too (K3s's node controller
// puts its finalizer on every Node, pkg/node/controller.go:31, and its onRemove deletes the
// secret, :49-51, :71-75, :191-192): a re-flashed agent (same name, new node password) retrying
// "Node password rejected" is accepted once its old Node is deleted.
#[test]
fn a_reflashed_agent_is_accepted_once_its_old_node_is_deleted() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let mut old = spawn("agent", &agent_of(&url, ca_hash, "lab-000002"), free_port());
    wait_ready(&mut old);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !init.kubectl(&["get", "node", "lab-000002", "-o", "json"]).0 {
        assert!(std::time::Instant::now() < deadline, "no Node lab-000002");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stop_and_log(old));
    // The same name with a fresh root (a new node password): refused while the Node is there.
    let fresh = spawn("agent", &agent_of(&url, ca_hash, "lab-000002"), free_port());
    fresh
        .notify
        .set_read_timeout(Some(Duration::from_secs(7)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        fresh.notify.recv(&mut buf).is_err(),
        "READY under the name of a Node registered with another password"
    );
    let (deleted, out, err) = init.kubectl(&["delete", "node", "lab-000002", "--wait=false"]);
    assert!(deleted, "{out}{err}");
    // It retries every 5 s and is accepted now.
    fresh
        .notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let ready = fresh.notify.recv(&mut buf);
    let log = stop_and_log(fresh);
    assert!(
        ready.is_ok(),
        "not READY 30 s after its old Node was deleted:\n{log}"
    );
    assert!(log.contains("Node password rejected"), "{log}");
}

// Rule: servers compare K3s v1.31's critical arguments (pkg/daemons/config/types.go:169-189,
// pkg/cluster/bootstrap.go:477-528) and refuse a mismatch.
#[test]
fn a_server_with_another_critical_argument_is_refused() {
    let (_init, url, ca_hash) = init_with("lab-000001");
    let yaml = format!(
        "{}cluster-cidr: \"10.99.0.0/16\"\n",
        join_yaml(&url, ca_hash, "lab-000002")
    );
    let err = expect_refusal(spawn("server", &yaml, free_port()));
    assert!(
        err.contains("critical configuration mismatched: cluster-cidr"),
        "{err}"
    );
    assert!(
        err.contains("critical configuration value mismatch between servers"),
        "{err}"
    );
    // etcd-arg and tls-san are not critical.
    let yaml = format!(
        "{}etcd-arg:\n  - \"heartbeat-interval=600\"\n",
        join_yaml(&url, ca_hash, "lab-000003")
    );
    let mut ok = spawn("server", &yaml, free_port());
    wait_ready(&mut ok);
}

// Rule: `kubectl delete node` (not forced) removes the server's etcd member through the
// finalizer (member_controller.go:112-134); etcd reports the removal, and K3s writes
// `server/db/etcd/tombstone`, closes etcd and keeps running without a datastore
// (pkg/daemons/executor/etcd.go:36-45); restarted, it moves `server/db/etcd` to
// `etcd-backup-<unix>` and joins again as a new member through `server` (pkg/etcd/etcd.go:656-664).
#[test]
fn a_deleted_server_loses_its_member_and_a_restart_rejoins_with_its_old_data_backed_up() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let port = free_port();
    let mut j = spawn("server", &join_yaml(&url, ca_hash, "lab-000002"), port);
    wait_ready(&mut j);
    assert_eq!(members(&init).len(), 2);
    let db = data(&j.root).join("server/db");
    let old_name = std::fs::read_to_string(db.join("etcd/name")).unwrap();
    let (ok, out, err) = init.kubectl(&["delete", "node", "lab-000002"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, "node \"lab-000002\" deleted\n");
    assert_eq!(members(&init).len(), 1);
    let (ok, _, err) = init.kubectl(&["get", "node", "lab-000002", "-o", "json"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    // etcd reports the removal: the tombstone is written and the server keeps running.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !db.join("etcd/tombstone").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no tombstone after the removal"
        );
        assert!(
            j.child.try_wait().unwrap().is_none(),
            "the removed server exited"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        j.child.try_wait().unwrap().is_none(),
        "the removed server exited"
    );
    assert_eq!(members(&init).len(), 1);
    // Restarted: the old data is moved aside (not deleted) and it joins as a new member.
    j.restart("server", port);
    wait_ready(&mut j);
    let m = members(&init);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(
        m.iter().all(|m| !m.is_learner && m.name != old_name.trim()),
        "{m:?}"
    );
    assert!(!db.join("etcd/tombstone").exists());
    let backups: Vec<PathBuf> = std::fs::read_dir(&db)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("etcd-backup-")
        })
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(backups[0].join("member/wal").is_dir() && backups[0].join("tombstone").exists());
}

// Rule: `kubectl get nodes` shows Ready from the node's heartbeat: a Lease older than the 40 s
// grace period is Ready=Unknown (node lifecycle controller).
#[test]
fn kubectl_get_nodes_ready_follows_the_heartbeat() {
    let (init, _, _) = init_with("lab-000001");
    let (ok, out, err) = init.kubectl(&["get", "nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"][0]["metadata"]["name"], "lab-000001");
    assert_eq!(v["items"][0]["status"]["conditions"][0]["status"], "True");
    // A stale heartbeat for another node.
    let ep = init.etcd();
    let old = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 60;
    let renew = rfc3339(time::OffsetDateTime::from_unix_timestamp(old).unwrap());
    rt().block_on(async {
        let node =
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gone"}});
        etcd::put_if(
            &ep,
            "/registry/minions/gone",
            node.to_string().as_bytes(),
            0,
        )
        .await
        .unwrap();
        let lease = serde_json::json!({"spec": {"renewTime": renew}});
        etcd::put_if(
            &ep,
            "/registry/leases/kube-node-lease/gone",
            lease.to_string().as_bytes(),
            0,
        )
        .await
        .unwrap();
    });
    let (_, out, _) = init.kubectl(&["get", "node", "gone", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["conditions"][0]["status"], "Unknown", "{v}");
    assert_eq!(
        v["status"]["conditions"][0]["lastHeartbeatTime"],
        renew.as_str()
    );
}

// Rule: ConfigMaps and Leases with resourceVersion compare-and-swap (the apiserver's
// GuaranteedUpdate on etcd's mod revision): a stale resourceVersion is a Conflict.
#[test]
fn kubectl_configmap_and_lease_compare_and_swap() {
    let (init, _, _) = init_with("lab-000001");
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ConfigMap", "Lease"] {
        let f = dir.path().join(format!("{kind}.json"));
        let f = f.to_str().unwrap();
        let body = |rv: Option<&str>, holder: &str| {
            let mut v = serde_json::json!({"kind": kind, "metadata": {"name": "seats", "namespace": "kube-system"}});
            if kind == "ConfigMap" {
                v["data"] = serde_json::json!({"holder": holder});
            } else {
                v["spec"] = serde_json::json!({"holderIdentity": holder});
            }
            if let Some(rv) = rv {
                v["metadata"]["resourceVersion"] = serde_json::json!(rv);
            }
            v.to_string()
        };
        std::fs::write(f, body(None, "a")).unwrap();
        let (ok, out, err) = init.kubectl(&["create", "-f", f, "-o", "json"]);
        assert!(ok, "{err}");
        let rv1 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["metadata"]
            ["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let (ok, _, err) = init.kubectl(&["create", "-f", f, "-o", "json"]);
        assert!(!ok && err.contains("(AlreadyExists)"), "{err}");
        let lower = kind.to_lowercase();
        let (ok, out, _) =
            init.kubectl(&["get", &lower, "seats", "-n", "kube-system", "-o", "json"]);
        assert!(ok);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["metadata"]["resourceVersion"],
            rv1.as_str()
        );
        std::fs::write(f, body(Some(&rv1), "b")).unwrap();
        let (ok, out, err) = init.kubectl(&["replace", "-f", f, "-o", "json"]);
        assert!(ok, "{err}");
        let rv2 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["metadata"]
            ["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(rv1, rv2);
        // The same stale version again: Conflict.
        std::fs::write(f, body(Some(&rv1), "c")).unwrap();
        let (ok, _, err) = init.kubectl(&["replace", "-f", f, "-o", "json"]);
        assert!(!ok && err.contains("Error from server (Conflict)"), "{err}");
        let (_, out, _) =
            init.kubectl(&["get", &lower, "seats", "-n", "kube-system", "-o", "json"]);
        assert!(out.contains("\"b\""), "{out}");
    }
}

/// A CA pair in a joiner's `server/tls` (a standalone K3s that ran there), with its mtime.
fn stale_ca(root: &Path, mtime: std::time::SystemTime) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let tls = data(root).join("server/tls");
    std::fs::create_dir_all(&tls).unwrap();
    for (name, text) in [
        ("server-ca.crt", cert.pem()),
        ("server-ca.key", key.serialize_pem()),
    ] {
        std::fs::write(tls.join(name), text).unwrap();
        std::fs::File::options()
            .write(true)
            .open(tls.join(name))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

// Rule: a joiner whose server/tls holds other CA files than the cluster's, newer on disk than the
// datastore's copy by 3 s or more, exits; older ones are replaced from the datastore (K3s
// ReconcileBootstrapData, pkg/cluster/bootstrap.go:307-345, isNewerFile :357-391,
// systemTimeSkew :203). A standalone K3s's files are "newer" when it ran after the init node
// made its CA or on a clock ahead of the init node's (firstboot never steps a clock back):
// firstboot must set them aside (k3s/stale_data.rs), K3s will not.
#[test]
fn a_joiner_with_a_newer_stale_ca_on_disk_is_refused_and_an_older_one_replaced() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let hour = Duration::from_secs(3600);
    let newer = std::time::SystemTime::now() + hour;
    let err = expect_refusal(spawn_prepared(
        "server",
        &join_yaml(&url, ca_hash, "lab-000002"),
        free_port(),
        &[],
        &[],
        &|root| stale_ca(root, newer),
    ));
    assert!(
        err.contains("server-ca.crt")
            && err.contains(
                "newer than datastore and could cause a cluster outage. Remove the file(s) from disk and restart to be recreated from datastore."
            ),
        "{err}"
    );

    let older = std::time::SystemTime::now() - hour;
    let mut j = spawn_prepared(
        "server",
        &join_yaml(&url, ca_hash, "lab-000003"),
        free_port(),
        &[],
        &[],
        &|root| stale_ca(root, older),
    );
    wait_ready(&mut j);
    let ca_file = firstboot::k3s::SERVER_CA_FILE;
    assert_eq!(
        std::fs::read(data(&j.root).join(ca_file)).unwrap(),
        std::fs::read(data(&init.root).join(ca_file)).unwrap(),
        "the older stale CA was not replaced by the cluster's"
    );
    let log = stop_and_log(j);
    assert!(log.contains("will be updated from the datastore"), "{log}");
}

/// firstboot's seat store on this double's `k3s kubectl` (the ConfigMap CAS it relies on).
fn seat_store(d: &Double) -> firstboot::seat_book::SeatStore {
    firstboot::seat_book::SeatStore::new(kubectl_of(d))
}

/// firstboot's `k3s kubectl` runner aimed at this double's root and etcd.
fn kubectl_of(d: &Double) -> firstboot::seat_book::Kubectl {
    firstboot::seat_book::Kubectl::with_program(
        systests::bin_path("k3s-double"),
        vec![
            (
                "K3S_DOUBLE_ROOT".into(),
                d.root.to_string_lossy().into_owned(),
            ),
            (
                "K3S_DOUBLE_ETCD_CLIENT_PORT".into(),
                d.etcd_port.to_string(),
            ),
        ],
    )
}

// Rule (SPEC 4.4, issue 18): seats after formation are granted by resourceVersion
// compare-and-swap on a ConfigMap: writers racing for seats are serialized by the apiserver's
// Conflict, so at most one join is in progress and never more than `servers` seats are held,
// however many servers grant at once.
#[test]
fn concurrent_seat_grants_never_exceed_servers_and_grant_one_join_at_a_time() {
    use firstboot::election::NodeId;
    use firstboot::seat_book::{GrantRefused, SeatBook, SeatHolder};
    use std::sync::Barrier;
    const SERVERS: usize = 3;
    const WRITERS: u64 = 6;
    let (init, _, _) = init_with("lab-000001");
    let store = seat_store(&init);
    let formed = || {
        SeatBook::formed(vec![SeatHolder {
            node: NodeId(1),
            name: "lab-000001".into(),
            granted_at: 0,
        }])
    };
    let mut conflicts = 0;
    let mut granted = Vec::new();
    // Each round: WRITERS servers each try to grant a seat to their own candidate at once.
    for round in 0..3u64 {
        let barrier = Barrier::new(WRITERS as usize);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let (store, barrier) = (&store, &barrier);
                    let candidate = NodeId(100 + round * 10 + w);
                    s.spawn(move || {
                        barrier.wait();
                        let updated = store
                            .update(formed, |book| {
                                match book.grant(candidate, "cand", 1, SERVERS) {
                                    Ok(next) => (Ok(candidate), Some(next)),
                                    Err(why) => (Err(why), None),
                                }
                            })
                            .expect("the store answers");
                        (updated.outcome, updated.conflicts)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        conflicts += results.iter().map(|(_, c)| c).sum::<usize>();
        let winners: Vec<NodeId> = results.iter().filter_map(|(o, _)| o.clone().ok()).collect();
        let (book, _) = store.read().unwrap().expect("written");
        eprintln!("round {round}: winners {winners:?}, book {book:?}");
        assert!(book.holders.len() <= SERVERS, "{book:?}");
        if round < 2 {
            assert_eq!(winners.len(), 1, "one join at a time: {results:?}");
            assert_eq!(book.pending.as_ref().map(|p| p.node), Some(winners[0]));
            for (outcome, _) in &results {
                if let Err(why) = outcome {
                    assert_eq!(*why, GrantRefused::JoinInProgress(winners[0]));
                }
            }
            granted.push(winners[0]);
            // The winner's join completes: the next seat may be granted.
            store
                .update(formed, |book| ((), book.joined(winners[0])))
                .unwrap();
        } else {
            assert!(winners.is_empty(), "all seats held: {results:?}");
            assert!(results
                .iter()
                .all(|(o, _)| *o == Err(GrantRefused::Full { servers: SERVERS })));
        }
    }
    let (book, _) = store.read().unwrap().unwrap();
    let holders: Vec<NodeId> = book.holders.iter().map(|h| h.node).collect();
    assert_eq!(holders, [vec![NodeId(1)], granted].concat());
    // The race was real: writers lost compare-and-swaps and decided again on the newer book.
    eprintln!("{conflicts} conflicting writes redone");
    assert!(
        conflicts > 0,
        "no writer ever lost a race: nothing was tested"
    );
}

// Rule: a write carrying the resourceVersion of a book that changed since is refused (409),
// never applied; the store then decides on the current book.
#[test]
fn a_stale_seat_book_write_is_a_conflict() {
    use firstboot::election::NodeId;
    use firstboot::seat_book::{KubectlError, SeatBook, StoreError};
    let (init, _, _) = init_with("lab-000001");
    let store = seat_store(&init);
    assert!(store.read().unwrap().is_none());
    store.write(&SeatBook::default(), None).unwrap();
    let (book, v1) = store.read().unwrap().unwrap();
    let a = book.grant(NodeId(2), "lab-2", 1, 3).unwrap();
    let b = book.grant(NodeId(3), "lab-3", 1, 3).unwrap();
    store.write(&a, Some(&v1)).unwrap();
    let e = store.write(&b, Some(&v1)).unwrap_err();
    assert!(
        matches!(e, StoreError::Kubectl(KubectlError::Conflict(_))),
        "{e}"
    );
    let e = store.write(&b, None).unwrap_err();
    assert!(
        matches!(e, StoreError::Kubectl(KubectlError::AlreadyExists(_))),
        "{e}"
    );
    assert_eq!(store.read().unwrap().unwrap().0, a);
}

// Rule (SPEC 4.4, issue 18): after a seat is released, serving servers' seat keepers racing
// for it (each seeing a different new card ask) grant it exactly once: one keeper's round
// grants, every other round reads the winner's book and waits for that join. A server other
// than the init never creates the book.
#[test]
fn racing_seat_keepers_grant_a_freed_seat_exactly_once() {
    use firstboot::election::{NodeId, Rank, RolePin};
    use firstboot::seat_book::{Asker, Decision, SeatKeeper};
    use std::sync::Barrier;
    const KEEPERS: u64 = 4;
    let (init, _, _) = init_with("lab-000001");
    let store = seat_store(&init);
    let server = SeatKeeper::new(store.clone(), NodeId(2), "lab-000002", false, 3);
    assert_eq!(server.round(&[], &[], 1).unwrap(), None);
    assert!(store.read().unwrap().is_none(), "a server created the book");
    // The init creates the book holding its own seat, then grants nodes 2 and 3 in turn.
    let first = SeatKeeper::new(store.clone(), NodeId(1), "lab-000001", true, 3);
    let ask = |node: u64| Asker {
        rank: Rank {
            pin: RolePin::Auto,
            storage: 50,
            ram_mib: 1024,
            node: NodeId(node),
        },
        name: format!("lab-{node:06}"),
    };
    let (d, _) = first.round(&[ask(2)], &[], 2).unwrap().unwrap();
    assert_eq!(d, Decision::Grant(NodeId(2)));
    let (d, _) = first.round(&[ask(3)], &[NodeId(2)], 3).unwrap().unwrap();
    assert_eq!(d, Decision::Joined(NodeId(2)));
    let (d, _) = first.round(&[ask(3)], &[NodeId(2)], 4).unwrap().unwrap();
    assert_eq!(d, Decision::Grant(NodeId(3)));
    let serving = [NodeId(2), NodeId(3)];
    let (d, book) = server.round(&[], &serving, 5).unwrap().unwrap();
    assert_eq!(d, Decision::Joined(NodeId(3)));
    assert_eq!(book.holders.len(), 3);
    // The init is removed (its seat released), as the healer will do.
    let (book, version) = store.read().unwrap().unwrap();
    store
        .write(&book.release(NodeId(1), 6).unwrap(), Some(&version))
        .unwrap();
    let barrier = Barrier::new(KEEPERS as usize);
    let decisions: Vec<Decision> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..KEEPERS)
            .map(|k| {
                let keeper = SeatKeeper::new(store.clone(), NodeId(2 + k % 2), "srv", false, 3);
                let (barrier, asker) = (&barrier, ask(100 + k));
                s.spawn(move || {
                    barrier.wait();
                    keeper.round(&[asker], &serving, 7).unwrap().unwrap().0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("decisions: {decisions:?}");
    let grants: Vec<NodeId> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Grant(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 1, "{decisions:?}");
    assert!(decisions
        .iter()
        .all(|d| matches!(d, Decision::Grant(_)) || *d == Decision::Wait(grants[0])));
    let (book, _) = store.read().unwrap().unwrap();
    let holders: Vec<NodeId> = book.holders.iter().map(|h| h.node).collect();
    assert_eq!(holders, vec![NodeId(2), NodeId(3), grants[0]]);
    assert_eq!(book.pending.map(|p| p.node), Some(grants[0]));
}

// Rule (SPEC 4.4, issue 18): only one server heals at a time: the firstboot-healer Lease is
// taken by compare-and-swap, so of servers trying at once exactly one holds it; the holder
// renews it, the others cannot take it until it expires.
#[test]
fn the_healer_lease_has_one_holder() {
    use firstboot::healer::lease::acquire;
    use std::sync::Barrier;
    let (init, _, _) = init_with("lab-000001");
    let kubectl = kubectl_of(&init);
    let barrier = Barrier::new(4);
    let won: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let (kubectl, barrier) = (&kubectl, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    acquire(kubectl, &format!("server-{k}"), 1_000, 30).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("won: {won:?}");
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let holder = format!("server-{}", won.iter().position(|w| *w).unwrap());
    let other = if holder == "server-0" {
        "server-1"
    } else {
        "server-0"
    };
    assert!(acquire(&kubectl, &holder, 1_010, 30).unwrap(), "renewal");
    assert!(
        !acquire(&kubectl, other, 1_020, 30).unwrap(),
        "taken while held"
    );
    assert!(
        acquire(&kubectl, other, 1_040, 30).unwrap(),
        "expired, taken"
    );
}

/// A time as the double writes times (RFC 3339, UTC, seconds), so they compare as strings.
fn rfc3339(stamp: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second()
    )
}

// Rule: an agent's load balancer learns the live apiservers from its server
// (pkg/agent/config/config.go:95-123, pkg/server/router.go:310-324), keeps them in
// agent/etc/k3s-agent-load-balancer.json (loadbalancer/config.go), fails over when its server's
// connection fails (loadbalancer/servers.go:280-313), and a restarted agent whose configured
// server is dead reaches a saved one. firstboot's agents join one server and rely on this when
// that server's card dies (issue 18: agents keep working through the init's death).
#[test]
fn an_agent_moves_to_a_live_server_when_its_server_dies() {
    let (init, url, ca_hash) = init_with("lab-000001");
    let mut b = spawn(
        "server",
        &join_yaml(&url, ca_hash, "lab-000002"),
        free_port(),
    );
    wait_ready(&mut b);
    let mut c = spawn(
        "server",
        &join_yaml(&url, ca_hash, "lab-000003"),
        free_port(),
    );
    wait_ready(&mut c);
    let agent_port = free_port();
    let mut agent = spawn("agent", &agent_of(&url, ca_hash, "lab-000004"), agent_port);
    wait_ready(&mut agent);
    let lb_file = data(&agent.root).join("agent/etc/k3s-agent-load-balancer.json");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&lb_file).expect("the load balancer's file"))
            .unwrap();
    assert_eq!(saved["ServerURL"], url.as_str(), "{saved}");
    assert_eq!(
        saved["ServerAddresses"].as_array().map(Vec::len),
        Some(3),
        "all three apiservers learned: {saved}"
    );
    let init_log = stop_and_log(init);
    let killed = rfc3339(time::OffsetDateTime::now_utc());
    // A guard against a hang, not a speed goal: heartbeats come every 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let beat = loop {
        let (ok, out, _) = b.kubectl(&["get", "node", "lab-000004", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let beat = v["status"]["conditions"][0]["lastHeartbeatTime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if ok && beat > killed {
            break beat;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "no agent heartbeat after its server died at {killed} (last {beat:?})\n--- agent:\n{}\n--- init:\n{init_log}",
                stop_and_log(agent)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("agent heartbeat at {beat}, its server died at {killed}");
    // Restarted while its configured server is still dead: it reaches a saved one.
    agent.restart("agent", agent_port);
    wait_ready(&mut agent);
    let log = stop_and_log(agent);
    assert!(
        log.contains("the load balancer moved"),
        "no failover in the agent's log: {log}"
    );
    assert!(!log.contains(SECRET), "token in the log: {log}");
}

// Rule: a server writes the admin kubeconfig as K3s v1.31.4 does (pkg/server/server.go:401-444,
// pkg/clientaccess/kubeconfig.go:12-46) and its API answers that kubeconfig's client
// certificate (system:masters), refusing anonymous requests with 401.
#[test]
fn the_admin_kubeconfig_reaches_the_api_and_anonymous_requests_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (init, url, _) = init_with("lab-000001");
    let path = init.root.join("etc/rancher/k3s/k3s.yaml");
    let text = std::fs::read_to_string(&path).expect("k3s.yaml");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "k3s.yaml mode (write-kubeconfig-mode)");
    let port = url.rsplit(':').next().unwrap();
    assert!(
        text.contains(&format!("    server: https://127.0.0.1:{port}\n"))
            && text.contains("current-context: default\n"),
        "{text}"
    );
    // firstboot kubeconfig takes K3s's layout as it is.
    let out = firstboot::kubeconfig::rewrite(&text, "https://198.18.0.240:6443", "lab").unwrap();
    assert!(out.contains("server: https://198.18.0.240:6443") && out.contains("name: lab"));

    let curl = |with_cert: bool| {
        systests::k3s_double::admin::curl_nodes(Command::new("curl"), &text, &url, with_cert)
    };
    let nodes = curl(true);
    assert_eq!(nodes["kind"], "NodeList", "{nodes}");
    assert_eq!(
        nodes["items"][0]["metadata"]["name"], "lab-000001",
        "{nodes}"
    );
    assert_eq!(curl(false)["code"], 401);
}

// Rule: `k3s etcd-snapshot save` asks the running server (POST /db/snapshot as `server`), which
// writes `<name>-<node>-<unix>` (mode 0600) into its snapshot directory, default
// `${data-dir}/server/db/snapshots` (K3s v1.31.4 pkg/cli/etcdsnapshot/etcd_snapshot.go:106-140,
// pkg/etcd/snapshot.go:193-300); firstboot's status reads it back.
#[test]
fn etcd_snapshot_save_writes_a_named_snapshot_the_status_finds() {
    use std::os::unix::fs::PermissionsExt;
    let (init, url, _) = init_with("lab-000001");
    let port = url.rsplit(':').next().unwrap().to_string();
    let before = pki_now();
    let out = Command::new(systests::bin_path("k3s-double"))
        .args(["etcd-snapshot", "save", "--name", "before-upgrade"])
        .env("K3S_DOUBLE_ROOT", &init.root)
        .env("K3S_DOUBLE_PORT", &port)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let dir = data(&init.root).join("server/db/snapshots");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let unix: u64 = files[0]
        .strip_prefix("before-upgrade-lab-000001-")
        .unwrap_or_else(|| panic!("{files:?}"))
        .parse()
        .unwrap();
    assert!(unix >= before, "{unix} < {before}");
    assert!(
        log.contains(&format!("Snapshot {} saved.", files[0])),
        "{log}"
    );
    let meta = std::fs::metadata(dir.join(&files[0])).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // An etcd snapshot is a bbolt file: its first page carries bbolt's magic 0xED0CDAED.
    let bytes = std::fs::read(dir.join(&files[0])).unwrap();
    assert!(
        bytes.len() > 4096 && bytes[16..20] == 0xED0CDAEDu32.to_le_bytes(),
        "{} bytes",
        bytes.len()
    );
    let view = firstboot::k3s::snapshots::SnapshotView::read(&init.root).expect("a server's view");
    assert_eq!(view.newest.as_deref(), Some(files[0].as_str()));
    assert_eq!(view.newest_unix, Some(unix));
}

fn pki_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
