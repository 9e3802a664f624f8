//! Machines form a cluster: node images built by imagebuild, booted under systemd-nspawn on one
//! LAN, with nothing typed on any of them (issue 10).

use systests::machines::harness;

use harness::base::Release;
use harness::{cluster_toml, random_token, skip, Lan, Machine};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// The tests boot up to 5 machines each: one at a time keeps a 2-core CI runner responsive.
static ONE_LAN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long a formation may take before the test gives up (no speed assertion: see the bench).
/// Usually 10-20 s; up to ~160 s seen when every machine boots as "raspberrypi" at the same
/// instant and avahi-daemon walks raspberrypi-2, -3, ... in lockstep until its conflict rate
/// limit, with firstboot waiting for avahi before it publishes.
const FORMATION: Duration = Duration::from_secs(300);

/// The K3s unit a role runs.
fn k3s_unit(role: &str) -> &'static str {
    if role == "agent" {
        "k3s-agent.service"
    } else {
        "k3s.service"
    }
}

/// systemd's "Starting UNIT..." journal message (sd-messages.h `SD_MESSAGE_UNIT_STARTING`).
const UNIT_STARTING: &str = "7d4958e842da4a758f6c1cdc7b36dcc5";
/// systemd's "Started UNIT" / "Finished UNIT" journal message (`SD_MESSAGE_UNIT_STARTED`).
const UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";

/// A journal entry's wall-clock time in microseconds.
fn at(e: &Value) -> u64 {
    e["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn message(e: &Value) -> &str {
    e["MESSAGE"].as_str().unwrap_or("")
}

/// Entries that show `unit` starting or running: systemd's Starting/Started lines about it, and
/// anything its processes logged.
fn unit_activity<'a>(entries: &'a [Value], unit: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| {
            e["_SYSTEMD_UNIT"] == unit
                || (e["UNIT"] == unit
                    && (e["MESSAGE_ID"] == UNIT_STARTING || e["MESSAGE_ID"] == UNIT_STARTED))
        })
        .collect()
}

fn lines(entries: &[&Value]) -> String {
    entries
        .iter()
        .map(|e| format!("{} {}", at(e), message(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// From the journal: neither K3s unit started (or ran anything) before firstboot logged the
/// role it chose, and the other role's unit never started at all. On trixie, first-boot presets
/// would otherwise enable both units and start them at boot (research/raspios-fidelity.md, A).
fn assert_k3s_waited_for_the_role(m: &Machine, role: &str) {
    let entries = m.journal_entries();
    let chose = entries
        .iter()
        .filter(|e| e["_SYSTEMD_UNIT"] == "firstboot.service")
        .find(|e| {
            let t = message(e);
            t.contains(" is the cluster-init node")
                || (t.contains(" joins ")
                    && (t.contains(" as a server") || t.contains(" as an agent")))
        })
        .map(at)
        .unwrap_or_else(|| {
            panic!(
                "{}: firstboot never logged its role\n{}",
                m.name,
                m.report()
            )
        });
    let own = k3s_unit(role);
    for unit in ["k3s.service", "k3s-agent.service"] {
        let activity = unit_activity(&entries, unit);
        let early: Vec<&Value> = activity
            .iter()
            .copied()
            .filter(|e| at(e) <= chose)
            .collect();
        assert!(
            early.is_empty(),
            "{}: {unit} was starting or running before firstboot chose the role ({role} at {chose}):\n{}",
            m.name,
            lines(&early)
        );
        if unit == own {
            assert!(
                !activity.is_empty(),
                "{}: the journal shows no start of {unit}",
                m.name
            );
        } else {
            assert!(
                activity.is_empty(),
                "{}: {unit} started on a {role} node:\n{}",
                m.name,
                lines(&activity)
            );
        }
    }
}

/// The node's hostname was set before avahi-daemon started (journal order: firstboot-identity
/// finished and hostnamed changed the name before systemd started avahi-daemon), avahi-daemon
/// never announced or even tried `raspberrypi`, and `/etc/hosts` names the new hostname.
fn assert_named_before_mdns(m: &Machine) {
    let entries = m.journal_entries();
    let hostname = m.hostname();
    let first = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        entries
            .iter()
            .find(|e| pred(e))
            .map(at)
            .unwrap_or_else(|| panic!("{}: no journal entry: {what}\n{}", m.name, m.report()))
    };
    let avahi_starting = first("Starting avahi-daemon.service", &|e| {
        e["UNIT"] == "avahi-daemon.service" && e["MESSAGE_ID"] == UNIT_STARTING
    });
    let identity_done = first("Finished firstboot-identity.service", &|e| {
        e["UNIT"] == "firstboot-identity.service" && e["MESSAGE_ID"] == UNIT_STARTED
    });
    let renamed = first("systemd-hostnamed changing the hostname", &|e| {
        e["_SYSTEMD_UNIT"] == "systemd-hostnamed.service" && message(e).contains(&hostname)
    });
    assert!(
        identity_done < avahi_starting && renamed < avahi_starting,
        "{}: avahi-daemon started at {avahi_starting}, before the hostname was set \
         (identity finished at {identity_done}, hostnamed renamed at {renamed})",
        m.name
    );
    let avahi: Vec<&Value> = entries
        .iter()
        .filter(|e| e["_SYSTEMD_UNIT"] == "avahi-daemon.service")
        .collect();
    let announced = format!("Host name is {hostname}.local");
    assert!(
        avahi.iter().any(|e| message(e).contains(&announced)),
        "{}: avahi-daemon never said {announced:?}:\n{}",
        m.name,
        lines(&avahi)
    );
    let stale: Vec<&Value> = avahi
        .iter()
        .copied()
        .filter(|e| message(e).contains("raspberrypi"))
        .collect();
    assert!(
        stale.is_empty(),
        "{}: avahi-daemon used the image's hostname:\n{}",
        m.name,
        lines(&stale)
    );
    let hosts = String::from_utf8_lossy(&m.root_file("etc/hosts").unwrap_or_default()).into_owned();
    let named: Vec<Vec<&str>> = hosts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&"127.0.1.1"))
        .collect();
    assert_eq!(
        named,
        vec![vec!["127.0.1.1", hostname.as_str()]],
        "{}: /etc/hosts:\n{hosts}",
        m.name
    );
}

/// firstboot.service was not held back by a network wait that can only time out: on Raspberry
/// Pi OS trixie the first boot's `preset-all` enables `systemd-networkd-wait-online.service`
/// (Debian's 90-systemd.preset), systemd-networkd manages no link (NetworkManager does; in the
/// test base the harness configures `eth0`), and wait-online holds `network-online.target`,
/// which firstboot.service and the K3s units are ordered after, for its full 2-minute timeout.
/// The image's drop-in runs it only when systemd-networkd has a network to configure; this
/// checks that no boot of the machine waited for it.
fn assert_no_network_wait_timeout(m: &Machine) {
    let entries = m.journal_entries();
    let waited: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            (e["_SYSTEMD_UNIT"] == "systemd-networkd-wait-online.service"
                || e["UNIT"] == "systemd-networkd-wait-online.service")
                && !message(e).contains("skipped")
        })
        .collect();
    assert!(
        waited.is_empty(),
        "{}: systemd-networkd-wait-online ran and held network-online.target (firstboot.service \
         and K3s wait for it; it times out after 2 minutes when NetworkManager, not networkd, \
         manages the network):\n{}",
        m.name,
        lines(&waited)
    );
}

/// Everything issue 10 asks of a formed cluster, checked on every machine.
fn assert_formed(lan: &Lan, token: &str, servers: usize, agents: usize) {
    let mut roles = Vec::new();
    let mut hostnames = BTreeSet::new();
    for m in &lan.machines {
        let status = m
            .status()
            .unwrap_or_else(|| panic!("{}: no status\n{}", m.name, m.report()));
        assert_eq!(status["phase"], "ready", "{}: {}", m.name, m.report());
        let role = status["role"].as_str().unwrap_or_default().to_string();
        assert!(
            m.unit_active("firstboot.service"),
            "{}: firstboot.service not active\n{}",
            m.name,
            m.report()
        );
        assert!(
            m.unit_active(k3s_unit(&role)),
            "{}: {} not active\n{}",
            m.name,
            k3s_unit(&role),
            m.report()
        );
        let other = if role == "agent" {
            "k3s.service"
        } else {
            "k3s-agent.service"
        };
        assert!(!m.unit_active(other), "{}: {other} active too", m.name);
        let hostname = m.hostname();
        assert!(
            hostname.starts_with("machines-"),
            "{}: hostname {hostname:?}",
            m.name
        );
        assert_eq!(
            status["node_name"].as_str(),
            Some(hostname.as_str()),
            "{}: node name",
            m.name
        );
        let kernel_hostname = m
            .exec("hostname", &[])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            kernel_hostname.as_deref(),
            Some(hostname.as_str()),
            "{}: kernel hostname",
            m.name
        );
        assert_eq!(
            status["node_ip"].as_str(),
            Some(m.address().as_str()),
            "{}: node ip",
            m.name
        );
        hostnames.insert(hostname);
        assert_k3s_waited_for_the_role(m, &role);
        assert_named_before_mdns(m);
        assert_no_network_wait_timeout(m);
        m.check_boot_partition();
        let scrubbed = m
            .boot_file("cluster.toml")
            .unwrap_or_else(|| panic!("{}: cluster.toml gone from the boot partition", m.name));
        assert!(
            harness::contains(&scrubbed, b"name = \"machines\""),
            "{}: the scrubbed cluster.toml lost the cluster's settings: {}",
            m.name,
            String::from_utf8_lossy(&scrubbed)
        );
        let yaml = m
            .config_yaml()
            .unwrap_or_else(|| panic!("{}: no config.yaml", m.name));
        assert!(
            !status.to_string().contains(token),
            "{}: token in status",
            m.name
        );
        for (name, bytes) in m.boot_files() {
            assert!(
                !harness::contains(&bytes, token.as_bytes()),
                "{}: token still in boot partition file {name}",
                m.name
            );
        }
        assert!(
            !m.journal(None).contains(token),
            "{}: token in the journal",
            m.name
        );
        assert!(
            yaml.contains(&m.address()),
            "{}: config.yaml does not name the node's address",
            m.name
        );
        assert!(
            yaml.contains(token),
            "{}: config.yaml lacks the token (K3s needs it)",
            m.name
        );
        roles.push(role);
    }
    assert_eq!(
        hostnames.len(),
        lan.machines.len(),
        "hostnames not unique: {hostnames:?}"
    );
    let count = |r: &str| roles.iter().filter(|x| x.as_str() == r).count();
    assert_eq!(count("init"), 1, "exactly one init node: {roles:?}");
    assert_eq!(
        count("init") + count("server"),
        servers,
        "servers: {roles:?}"
    );
    assert_eq!(count("agent"), agents, "agents: {roles:?}");
    assert_k3s_sees_every_node(lan, &hostnames, servers);
}

/// The K3s side, through the double's `k3s kubectl` on the init node (backed by its real etcd):
/// every machine is a Ready Node, and exactly `servers` of them carry an etcd member (a server
/// is READY only once its member is a voter).
fn assert_k3s_sees_every_node(lan: &Lan, hostnames: &BTreeSet<String>, servers: usize) {
    let init = lan
        .machines
        .iter()
        .find(|m| m.role().as_deref() == Some("init"))
        .expect("an init machine");
    // A node turns Ready on its first heartbeat, shortly after its unit is active (K3s's kubelet
    // posts node status after the agent is up), so the last machine may need a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (v, items) = loop {
        let out = init
            .exec("k3s", &["kubectl", "get", "nodes", "-o", "json"])
            .expect("the init machine runs");
        assert!(
            out.status.success(),
            "k3s kubectl get nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("kubectl's JSON");
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let names: BTreeSet<String> = items
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        let ready = items
            .iter()
            .all(|n| n["status"]["conditions"][0]["status"] == "True");
        if (&names == hostnames && ready) || std::time::Instant::now() > deadline {
            assert_eq!(&names, hostnames, "K3s nodes");
            for n in &items {
                assert_eq!(
                    n["status"]["conditions"][0]["status"], "True",
                    "not Ready 30 s after every machine was ready: {n}"
                );
            }
            break (v, items);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let members = items
        .iter()
        .filter(|n| !n["metadata"]["annotations"]["etcd.k3s.cattle.io/node-name"].is_null())
        .count();
    assert_eq!(members, servers, "etcd members: {v}");
}

/// `[k3s] extra` of the formation tests: a server-only key (`k3s agent` exits with "flag
/// provided but not defined" on it, and so does the double) and a key both subcommands define.
const EXTRA: &str = "[k3s]\nextra = { \"write-kubeconfig-mode\" = \"0640\", \"node-label\" = [\"site=machines\"] }\n";

/// `n` machines flashed from one image (identical cards) on the base of `release` form a cluster
/// of `min(n, 3)` servers, with a `[k3s] extra` holding a server-only and a shared key (issue 14:
/// with agents, the server-only key must reach servers only).
fn identical_cards_form(release: Release, n: usize) {
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let servers = n.min(3);
    let toml = format!(
        "{}\n{EXTRA}",
        cluster_toml("machines", &token, servers as u32, n as u32)
    );
    let mut lan = Lan::on(release);
    lan.boot_machines(&vec![toml; n]);
    let took = lan.wait_for(&format!("{n} machines ready"), FORMATION, Lan::all_ready);
    eprintln!("{release:?}: {n} machines ready after {took:?}");
    assert_formed(&lan, &token, servers, n - servers);
    for m in &lan.machines {
        let yaml = m.config_yaml().unwrap_or_default();
        let agent = m.role().as_deref() == Some("agent");
        assert!(
            yaml.contains("node-label:\n  - \"site=machines\"\n"),
            "{}: the shared extra key is missing:\n{yaml}",
            m.name
        );
        assert_eq!(
            yaml.contains("write-kubeconfig-mode: \"0640\""),
            !agent,
            "{} ({}): the server-only extra key must reach servers only:\n{yaml}",
            m.name,
            if agent { "agent" } else { "server" }
        );
    }
}

#[test]
fn three_machines_form_a_cluster_on_trixie() {
    if skip("three_machines_form_a_cluster_on_trixie") {
        return;
    }
    identical_cards_form(Release::Trixie, 3);
}

#[test]
fn five_machines_make_three_servers_and_two_agents_on_trixie() {
    if skip("five_machines_make_three_servers_and_two_agents_on_trixie") {
        return;
    }
    identical_cards_form(Release::Trixie, 5);
}

#[test]
fn three_machines_form_a_cluster_on_bookworm() {
    if skip("three_machines_form_a_cluster_on_bookworm") {
        return;
    }
    identical_cards_form(Release::Bookworm, 3);
}

#[test]
fn five_machines_make_three_servers_and_two_agents_on_bookworm() {
    if skip("five_machines_make_three_servers_and_two_agents_on_bookworm") {
        return;
    }
    identical_cards_form(Release::Bookworm, 5);
}

/// A machine that has its role but is not ready yet: joining or starting K3s.
fn mid_join(m: &harness::Machine) -> bool {
    let Some(status) = m.state() else {
        return false;
    };
    let role = status["role"].as_str().unwrap_or_default();
    let phase = status["phase"].as_str().unwrap_or_default();
    matches!(role, "server" | "agent") && matches!(phase, "joining" | "starting-k3s")
}

#[test]
fn machine_powered_off_mid_join_joins_after_booting_again() {
    if skip("machine_powered_off_mid_join_joins_after_booting_again") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml; 3]);
    lan.wait_for_polling(
        "a machine in the middle of joining",
        FORMATION,
        Duration::from_millis(20),
        |lan| lan.machines.iter().any(mid_join),
    );
    let victim = lan
        .machines
        .iter()
        .position(mid_join)
        .expect("a machine was mid-join a moment ago");
    let caught = lan.machines[victim].status();
    eprintln!(
        "powering off {} mid-join: {caught:?}",
        lan.machines[victim].name
    );
    lan.power_off(victim);
    assert!(
        lan.machines[victim].pid1().is_none(),
        "the machine is still running"
    );
    let before = lan.machines[victim].phase();
    assert_ne!(
        before.as_deref(),
        Some("ready"),
        "it was not mid-join when it lost power"
    );
    lan.boot(victim);
    let took = lan.wait_for(
        "every machine ready after the power cut",
        FORMATION,
        Lan::all_ready,
    );
    eprintln!(
        "ready {took:?} after booting {} again",
        lan.machines[victim].name
    );
    assert_eq!(lan.machines[victim].boots, 2);
    assert_formed(&lan, &token, 3, 0);
}

#[test]
fn machine_booted_after_the_cluster_formed_joins_it() {
    if skip("machine_booted_after_the_cluster_formed_joins_it") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    lan.boot_machines(&vec![toml.clone(); 3]);
    lan.wait_for("3 machines ready", FORMATION, Lan::all_ready);
    let late = lan.add_machine(&toml);
    lan.boot(late);
    let took = lan.wait_for("the late machine ready", FORMATION, Lan::all_ready);
    eprintln!("late machine ready {took:?} after it booted");
    // Three server seats were taken: the fourth machine is an agent of the same cluster.
    assert_formed(&lan, &token, 3, 1);
    let init_url = lan.machines[late].status().expect("late status")["server_url"].clone();
    assert!(
        init_url
            .as_str()
            .is_some_and(|u| u.starts_with("https://198.18.1.")),
        "late machine joins a LAN server: {init_url}"
    );
}

/// When a process started: (pid, start time in clock ticks), to tell it from a reused pid.
fn started(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some((pid, after_name.split_whitespace().nth(19)?.to_string()))
}

#[test]
fn a_panicking_test_leaves_no_machine_behind() {
    if skip("a_panicking_test_leaves_no_machine_behind") {
        return;
    }
    let _serial = ONE_LAN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lan = Lan::new();
    let i = lan.add_machine(&cluster_toml("machines", &random_token(), 3, 3));
    lan.boot(i);
    lan.wait_for("the machine's systemd", FORMATION, |lan| {
        lan.machines[i].unit_state("dbus.service") == "active"
    });
    let processes: Vec<_> = lan.machines[i]
        .pids()
        .into_iter()
        .filter_map(started)
        .collect();
    assert!(
        processes.len() > 3,
        "a booted machine has processes: {processes:?}"
    );
    let dir = lan.dir.path().to_path_buf();
    let root = lan.machines[i].root.display().to_string();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _lan = lan;
        panic!("a test failing with a machine running");
    }));
    assert!(outcome.is_err());
    for (pid, start) in &processes {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert_ne!(
            started(*pid).as_ref(),
            Some(&(*pid, start.clone())),
            "process {pid} outlived the test: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading mounts");
    assert!(!mounts.contains(&root), "{root} is still mounted");
    assert!(!dir.exists(), "{} is left behind", dir.display());
    // The loop device detaches itself (autoclear) once the mount is gone.
    let dir_text = dir.display().to_string();
    let loops_left = || {
        std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("loop/backing_file"))
                    .is_ok_and(|b| b.contains(&dir_text))
            })
            .count()
    };
    let mut left = loops_left();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = loops_left();
    }
    assert_eq!(left, 0, "loop devices of the machine are still attached");
}
