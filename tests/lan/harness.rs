//! A virtual LAN of namespaced nodes: one bridge, and per node a network, mount and UTS namespace
//! with a private `/run` (its own dbus-daemon and avahi-daemon), a private overlay on `/etc`
//! (systemd-hostnamed, activated by that dbus-daemon, writes `/etc/hostname` there) and an address
//! from 198.18.0.0/15. Everything is torn down on drop, also when a test panics.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The tools the harness drives; a missing one skips the test with a reason.
const TOOLS: &[&str] = &[
    "unshare",
    "nsenter",
    "ip",
    "dbus-daemon",
    "avahi-daemon",
    "tcpdump",
];
/// systemd-hostnamed as shipped by Debian.
const HOSTNAMED: &str = "/lib/systemd/systemd-hostnamed";

/// Returns why the LAN tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if let Some(why) =
        crate::root_and_tools_missing("network, mount and UTS namespaces", TOOLS, &[])
    {
        return Some(why);
    }
    if !Path::new(HOSTNAMED).exists() {
        return Some(format!("{HOSTNAMED} is not installed"));
    }
    None
}

/// Skips (printing why) unless the LAN can be built here; builds firstboot.
pub fn can_run(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            println!("skipping {test}: {reason}");
            false
        }
        None => {
            build_firstboot();
            true
        }
    }
}

/// Builds the `firstboot` binary the tests run (cargo only builds the tested package's own
/// binaries); a no-op when it is current. Serialized so parallel tests do not race on it.
/// Built as shipped, without features (the hold some tests need is in `firstboot-held`).
pub fn build_firstboot() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "firstboot", "--bin", "firstboot"]);
        let profile_dir = firstboot_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = cmd
            .current_dir(crate::repo_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building firstboot failed");
    });
    assert!(
        firstboot_bin().exists(),
        "{} missing",
        firstboot_bin().display()
    );
}

/// The `firstboot` binary next to this test's profile directory.
pub fn firstboot_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/firstboot
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("firstboot"))
        .unwrap_or_default()
}

/// A random token that is easy to search for in captures and logs.
pub fn random_token() -> String {
    let mut bytes = [0u8; 12];
    let mut urandom = fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("reading /dev/urandom");
    format!("lan-test-token-{}", hex::encode(bytes))
}

/// Makes a spawned process die with the test thread that spawned it, so that even a killed test
/// leaves no daemons or namespaces behind.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        })
    }
}

/// A process started inside namespaces, stopped on drop.
struct Process {
    child: Child,
    label: String,
}

impl Process {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            for _ in 0..50 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `sleep` that holds a set of fresh namespaces alive.
struct Anchor {
    process: Process,
}

impl Anchor {
    fn spawn(flags: &[&str]) -> Self {
        let mut cmd = Command::new("unshare");
        cmd.args(flags).args(["sleep", "infinity"]);
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning unshare");
        let anchor = Self {
            process: Process {
                child,
                label: "anchor".into(),
            },
        };
        // unshare execs sleep once the namespaces exist: wait for the network namespace to differ.
        let ours = fs::read_link("/proc/self/ns/net").expect("reading our netns");
        for _ in 0..500 {
            if let Ok(theirs) = fs::read_link(format!("/proc/{}/ns/net", anchor.pid())) {
                if theirs != ours {
                    return anchor;
                }
            }
            sleep(Duration::from_millis(10));
        }
        panic!("unshare did not create a network namespace");
    }

    fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// `nsenter` into this anchor's namespaces (`-n`, or `-m -u -n` for nodes).
    fn enter(&self, namespaces: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid().to_string()).args(namespaces);
        cmd
    }

    /// Kills every process in this anchor's network namespace, then the anchor.
    fn stop(&mut self) {
        if let Ok(ns) = fs::read_link(format!("/proc/{}/ns/net", self.pid())) {
            for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pid as u32 == self.pid() {
                    continue;
                }
                if fs::read_link(entry.path().join("ns/net")).ok().as_ref() == Some(&ns) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        self.process.stop();
    }
}

/// Runs `cmd` to completion and panics with its stderr if it fails.
fn check(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One node: namespaces, daemons, the programs it runs, its files.
pub struct Node {
    /// Node number (1-based); its address is `198.18.0.<index>`.
    pub index: usize,
    /// Directory holding its root prefix, configs and logs.
    pub dir: PathBuf,
    /// Its `--root` prefix.
    pub root: PathBuf,
    anchor: Anchor,
    dbus: Option<Process>,
    avahi: Option<Process>,
    programs: Vec<Process>,
    avahi_starts: usize,
}

impl Node {
    /// Process id of the `sleep` holding its namespaces (for `nsenter -t PID -m -u -n`).
    pub fn anchor_pid(&self) -> u32 {
        self.anchor.pid()
    }

    /// Its address on the LAN.
    pub fn address(&self) -> String {
        format!("198.18.0.{}", self.index)
    }

    /// A command that runs inside this node's namespaces.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = self.anchor.enter(&["-m", "-u", "-n"]);
        cmd.arg(program);
        cmd
    }

    /// Starts a long-running program in the node, logging to `<dir>/<label>.log`.
    pub fn spawn(&mut self, label: &str, program: &Path, args: &[&str]) {
        self.spawn_with_env(label, program, args, &[]);
    }

    /// Like [`Node::spawn`], with extra environment variables (e.g. `RUST_LOG`).
    pub fn spawn_with_env(
        &mut self,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = fs::File::create(self.dir.join(format!("{label}.log"))).expect("creating log");
        let mut cmd = self.command(program);
        cmd.envs(env.iter().copied());
        let child = die_with_parent(&mut cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
        self.programs.push(Process {
            child,
            label: label.into(),
        });
    }

    /// Runs `firstboot peers --json` in the node (browsing `wait` seconds) and parses the answer.
    pub fn peers(&self, wait: u64) -> serde_json::Value {
        let mut cmd = self.command(&firstboot_bin());
        cmd.args(["--root"])
            .arg(&self.root)
            .args(["peers", "--json", "--wait", &wait.to_string()]);
        // Nodes that ran `firstboot run` have intake's cluster.toml; bare discovery nodes only
        // have their token file (and the default 3/3 cluster shape).
        if !self.root.join("etc/firstboot/cluster.toml").exists() {
            cmd.arg("--token-file")
                .arg(self.root.join("etc/firstboot/token"));
        }
        let out = cmd.output().expect("running firstboot peers");
        let log = self.dir.join("peers.log");
        let mut text = fs::read(&log).unwrap_or_default();
        text.extend_from_slice(&out.stdout);
        text.extend_from_slice(&out.stderr);
        fs::write(&log, text).expect("appending peers log");
        assert!(
            out.status.success(),
            "firstboot peers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("peers --json output is JSON")
    }

    /// The kernel hostname inside the node's UTS namespace.
    pub fn kernel_hostname(&self) -> String {
        let mut cmd = self.anchor.enter(&["-u"]);
        cmd.arg("hostname");
        let out = check(cmd, "reading hostname");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The node's `/etc/hostname` as systemd-hostnamed wrote it (in the node's /etc overlay).
    pub fn static_hostname(&self) -> String {
        fs::read_to_string(self.dir.join("etc-upper/hostname"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Stops avahi-daemon (SIGTERM: it says goodbye on the LAN).
    pub fn stop_avahi(&mut self) {
        if let Some(mut avahi) = self.avahi.take() {
            avahi.stop();
        }
    }

    /// Kills avahi-daemon (SIGKILL, as a power cut would: no goodbye on the LAN).
    pub fn kill_avahi(&mut self) {
        if let Some(mut avahi) = self.avahi.take() {
            let _ = avahi.child.kill();
            let _ = avahi.child.wait();
        }
    }

    /// Starts avahi-daemon with this node's configuration.
    pub fn start_avahi(&mut self) {
        self.avahi_starts += 1;
        let log = fs::File::create(self.dir.join(format!("avahi-{}.log", self.avahi_starts)))
            .expect("creating avahi log");
        let mut cmd = self.command(Path::new("avahi-daemon"));
        let child = die_with_parent(&mut cmd)
            .arg("-f")
            .arg(self.dir.join("avahi.conf"))
            .args(["--no-chroot", "--no-drop-root", "--no-rlimits"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning avahi-daemon");
        self.avahi = Some(Process {
            child,
            label: "avahi-daemon".into(),
        });
    }

    /// Kills (SIGKILL, as a power cut would) every program started under `label` and reaps it.
    pub fn kill(&mut self, label: &str) {
        for process in self.programs.iter_mut().filter(|p| p.label == label) {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// True while the program started under `label` has not exited.
    pub fn running(&mut self, label: &str) -> bool {
        self.programs
            .iter_mut()
            .any(|p| p.label == label && matches!(p.child.try_wait(), Ok(None)))
    }

    /// Process ids of everything the harness started for this node (anchor first).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.anchor.pid()];
        pids.extend(self.dbus.iter().map(|p| p.child.id()));
        pids.extend(self.avahi.iter().map(|p| p.child.id()));
        pids.extend(self.programs.iter().map(|p| p.child.id()));
        pids
    }

    /// Path of the node's view of `path` (through its mount namespace).
    fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.anchor.pid()))
    }

    fn teardown(&mut self) {
        for process in self.programs.iter_mut().rev() {
            process.stop();
        }
        self.stop_avahi();
        if let Some(mut dbus) = self.dbus.take() {
            dbus.stop();
        }
        self.anchor.stop();
    }
}

/// The LAN: a bridge in its own network namespace, the nodes, and an optional capture.
pub struct Lan {
    /// Holds every node's files; kept when `LAN_KEEP` is set, for debugging.
    pub dir: tempfile::TempDir,
    bridge: Anchor,
    /// The nodes, index 0 is node 1.
    pub nodes: Vec<Node>,
    capture: Option<Process>,
}

impl Lan {
    /// A LAN with no nodes yet.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("firstboot-lan-")
            .tempdir()
            .expect("creating LAN dir");
        let bridge = Anchor::spawn(&["--net"]);
        for args in [
            &["ip", "link", "set", "lo", "up"][..],
            &[
                "ip",
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
            &["ip", "link", "set", "br0", "up"],
        ] {
            let mut cmd = bridge.enter(&["-n"]);
            cmd.args(args);
            check(cmd, "setting up the bridge");
        }
        Self {
            dir,
            bridge,
            nodes: Vec::new(),
            capture: None,
        }
    }

    /// Adds node `nodes.len() + 1` with `token` (written 0600 under its root) and a board serial.
    pub fn add_node(&mut self, token: &str) -> &mut Node {
        let index = self.nodes.len() + 1;
        assert!(index < 250, "the LAN is a /24 of 198.18.0.0/15");
        let dir = self.dir.path().join(format!("node{index}"));
        let root = dir.join("root");
        for sub in [
            "etc-upper",
            "etc-work",
            "services",
            "root/etc/firstboot",
            "root/proc/device-tree",
        ] {
            fs::create_dir_all(dir.join(sub)).expect("creating node dirs");
        }
        let token_path = root.join("etc/firstboot/token");
        fs::write(&token_path, format!("{token}\n")).expect("writing token");
        fs::set_permissions(&token_path, fs::Permissions::from_mode(0o600)).expect("chmod token");
        // A Raspberry Pi style serial, so the node id comes from the "board".
        fs::write(
            root.join("proc/device-tree/serial-number"),
            format!("10000000{:08x}\0", 0x5eed_0000 + index),
        )
        .expect("writing serial");
        fs::write(dir.join("bus.conf"), bus_config(&dir)).expect("writing bus config");
        fs::write(
            dir.join("services/org.freedesktop.hostname1.service"),
            format!(
                "[D-BUS Service]\nName=org.freedesktop.hostname1\nExec={HOSTNAMED}\nUser=root\n"
            ),
        )
        .expect("writing hostnamed activation file");
        fs::write(dir.join("avahi.conf"), avahi_config(index)).expect("writing avahi config");

        let anchor = Anchor::spawn(&["--net", "--mount", "--uts", "--propagation", "private"]);
        let mut setup = anchor.enter(&["-m", "-u", "-n"]);
        setup.args(["sh", "-e", "-c"]).arg(format!(
            "mount -t tmpfs tmpfs /run; mkdir -p /run/dbus /run/avahi-daemon; \
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work /etc; \
             ip link set lo up; hostname node{index}",
            d = dir.display()
        ));
        check(setup, "setting up the node namespaces");
        let mut veth = self.bridge.enter(&["-n"]);
        veth.args([
            "ip",
            "link",
            "add",
            &format!("veth{index}"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
        ])
        .arg(anchor.pid().to_string());
        check(veth, "creating the veth pair");
        let mut enslave = self.bridge.enter(&["-n"]);
        enslave.args([
            "ip",
            "link",
            "set",
            &format!("veth{index}"),
            "master",
            "br0",
            "up",
        ]);
        check(enslave, "attaching the veth to the bridge");
        let mut addr = anchor.enter(&["-n"]);
        addr.args(["sh", "-e", "-c"]).arg(format!(
            "ip addr add 198.18.0.{index}/24 dev eth0; ip link set eth0 up"
        ));
        check(addr, "addressing the node");

        let mut node = Node {
            index,
            dir,
            root,
            anchor,
            dbus: None,
            avahi: None,
            programs: Vec::new(),
            avahi_starts: 0,
        };
        let log = fs::File::create(node.dir.join("dbus.log")).expect("creating dbus log");
        let mut cmd = node.command(Path::new("dbus-daemon"));
        let child = die_with_parent(&mut cmd)
            .arg(format!(
                "--config-file={}",
                node.dir.join("bus.conf").display()
            ))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning dbus-daemon");
        node.dbus = Some(Process {
            child,
            label: "dbus-daemon".into(),
        });
        let socket = node.inside("/run/dbus/system_bus_socket");
        for _ in 0..500 {
            if socket.exists() {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        assert!(socket.exists(), "dbus-daemon did not create its socket");
        node.start_avahi();
        self.nodes.push(node);
        self.nodes.last_mut().expect("just pushed")
    }

    /// Cuts the LAN in two: the nodes in `cut` (indexes into `nodes`) move to a second bridge.
    ///
    /// Like a failed link between two switches: every node keeps its carrier and its address
    /// (the veth pairs stay up, only the bridge-side port changes bridge), so neither avahi-daemon
    /// nor firstboot is told anything; they only stop hearing each other.
    pub fn partition(&mut self, cut: &[usize]) {
        let mut make = self.bridge.enter(&["-n"]);
        make.args(["sh", "-e", "-c"]).arg(
            "ip link show br1 >/dev/null 2>&1 || \
             { ip link add br1 type bridge mcast_snooping 0; ip link set br1 up; }",
        );
        check(make, "creating the second bridge");
        for &i in cut {
            self.move_port(self.nodes[i].index, "br1");
        }
    }

    /// Joins the two halves of a [`Lan::partition`] again.
    pub fn heal(&mut self) {
        for index in self.nodes.iter().map(|n| n.index).collect::<Vec<_>>() {
            self.move_port(index, "br0");
        }
    }

    fn move_port(&self, index: usize, bridge: &str) {
        let mut cmd = self.bridge.enter(&["-n"]);
        cmd.args([
            "ip",
            "link",
            "set",
            &format!("veth{index}"),
            "master",
            bridge,
        ]);
        check(cmd, "moving a node to another bridge");
    }

    /// Starts tcpdump on the bridge (every frame of the LAN) and waits until it listens.
    pub fn start_capture(&mut self) {
        let mut cmd = self.bridge.enter(&["-n"]);
        cmd.args([
            "tcpdump", "-i", "br0", "-U", "-n", "-s", "0", "-Z", "root", "-w",
        ])
        .arg(self.capture_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawning tcpdump");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let listening = lines.any(|l| l.map(|l| l.contains("listening on")).unwrap_or(false));
        assert!(listening, "tcpdump did not start listening");
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        self.capture = Some(Process {
            child,
            label: "tcpdump".into(),
        });
    }

    /// Stops the capture and returns the pcap bytes.
    pub fn stop_capture(&mut self) -> Vec<u8> {
        if let Some(mut capture) = self.capture.take() {
            capture.stop();
        }
        fs::read(self.capture_path()).expect("reading the capture")
    }

    fn capture_path(&self) -> PathBuf {
        self.dir.path().join("lan.pcap")
    }

    /// Every log file of every node, concatenated.
    pub fn all_logs(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut logs = Vec::new();
        for node in &self.nodes {
            for entry in fs::read_dir(&node.dir).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    logs.push((entry.path(), fs::read(entry.path()).unwrap_or_default()));
                }
            }
        }
        logs
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(mut capture) = self.capture.take() {
            capture.stop();
        }
        for node in self.nodes.iter_mut().rev() {
            node.teardown();
        }
        self.bridge.stop();
        if std::env::var_os("LAN_KEEP").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("LAN_KEEP: keeping {}", kept.display());
            // Leak the TempDir on purpose so its files survive for inspection.
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("creating placeholder dir"),
            );
            let _ = dir.keep();
        }
    }
}

/// True if `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A system bus for one node: Debian's avahi and hostname1 policies on a private socket, with
/// hostnamed activated directly by this dbus-daemon (no systemd in the node).
fn bus_config(dir: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/avahi-dbus.conf</include>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.hostname1.conf</include>
</busconfig>
"#,
        services = dir.join("services").display()
    )
}

/// avahi-daemon for one node: only its veth, IPv4 only, no wide-area, its own host name.
fn avahi_config(index: usize) -> String {
    format!(
        "[server]\nhost-name=lan-node{index}\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\n\
         enable-dbus=yes\nratelimit-interval-usec=1000000\nratelimit-burst=1000\n\
         [wide-area]\nenable-wide-area=no\n\
         [publish]\npublish-hinfo=no\npublish-workstation=no\npublish-addresses=yes\n\
         [reflector]\nenable-reflector=no\n[rlimits]\n"
    )
}
