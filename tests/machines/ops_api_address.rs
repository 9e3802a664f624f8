//! Issue 19 on machines (real systemd, the K3s double with real etcd): the fixed registration
//! address (`[cluster] api_address`). Three servers form with `api_address = "198.18.1.240"`.
//! A test host on the LAN (the bridge, the LAN's gateway) asks "who has 198.18.1.240" every
//! 100 ms throughout and records every ARP frame about it.
//! - Exactly one server holds the address, and the K3s API answers there with a certificate
//!   valid for it (`/cacerts` over TLS verified against the cluster CA).
//! - Powering the holder off moves the address to another server within 15 s, 5 times in a
//!   row (the powered-off server comes back between runs); the failover times are printed.
//! - Partitioning the holder from the other servers (the test host still reaches all of them):
//!   the holder, whose etcd lost its quorum, lets the address go before the majority takes it.
//! - The holder publishes `machines.local` (the cluster's name) over mDNS, pointing at the
//!   address; after the last failover it still answers with the address.
//! - The joined servers' config.yaml names the address as `server:` once it answers.
//! - `firstboot kubeconfig` on a server prints a kubeconfig with which curl on the test host
//!   lists the Nodes through the address (and without its client certificate gets 401).
//! - `firstboot snapshot` on a server saves an etcd snapshot that `firstboot status` shows.
//! - Never two MACs for the address in the same 100 ms, over the whole test.

use systests::k3s_double::wire;
use systests::machines::arp::{mac_text, ArpSampler, Mac};
use systests::machines::mdns;
use systests::machines::{
    day2::{cluster_toml_with, form, in_netns, member_alive, members},
    harness, k3s_support,
};

use harness::{Lan, Machine, GATEWAY};
use k3s_support::*;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How long formation and a reboot may take (no speed assertion).
const WAIT: Duration = Duration::from_secs(300);
/// The fixed address.
const ADDRESS: &str = "198.18.1.240";
/// The failover bound of issue 19.
const FAILOVER: Duration = Duration::from_secs(15);
/// Failover runs.
const RUNS: usize = 5;

/// The MAC of the machine's `eth0`.
fn mac_of(m: &Machine) -> Mac {
    let out = m.ip(&["-o", "link", "show", "eth0"]);
    let text = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in: {out}"));
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(p, 16).expect("a MAC byte");
    }
    mac
}

/// Whether the address is on the machine's `eth0`.
fn holds(m: &Machine) -> bool {
    m.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .contains(&format!("inet {ADDRESS}/32"))
}

/// `GET /api/v1/nodes` through the fixed address with curl from the test host (the bridge's
/// network namespace), trusting the kubeconfig's CA and, when `with_cert`, presenting its
/// client certificate and key, as kubectl would with that kubeconfig.
fn curl_nodes(bridge_pid: u32, kubeconfig: &str, with_cert: bool) -> serde_json::Value {
    let mut curl = std::process::Command::new("nsenter");
    curl.arg(format!("--net=/proc/{bridge_pid}/ns/net"))
        .arg("curl");
    systests::k3s_double::admin::curl_nodes(
        curl,
        kubeconfig,
        &format!("https://{ADDRESS}:6443"),
        with_cert,
    )
}

/// The machines holding the address now.
fn holders(lan: &Lan, up: &[bool]) -> Vec<usize> {
    (0..lan.machines.len())
        .filter(|i| up[*i] && holds(&lan.machines[*i]))
        .collect()
}

/// `/cacerts` from the fixed address, over TLS checked against `ca` (so the serving
/// certificate must name the address), asked from the test host on the LAN.
fn cacerts_via_address(bridge_pid: u32, ca: &[u8]) -> anyhow::Result<Vec<u8>> {
    let ca = ca.to_vec();
    in_netns(bridge_pid, move || {
        Box::pin(async move {
            let (status, body) = tokio::time::timeout(
                Duration::from_secs(5),
                wire::get(
                    &format!("https://{ADDRESS}:6443"),
                    "/cacerts",
                    wire::Trust::Ca(ca),
                    None,
                ),
            )
            .await??;
            anyhow::ensure!(status == 200, "/cacerts answered {status}");
            Ok(body)
        })
    })
}

/// Blackhole routes between machine `a` and every machine in `others` (both directions):
/// unicast between them is dropped; ARP and multicast still pass, the test host reaches all.
fn cut(lan: &Lan, a: usize, others: &[usize], add: bool) {
    let verb = if add { "add" } else { "del" };
    for &o in others {
        let (ma, mo) = (&lan.machines[a], &lan.machines[o]);
        ma.ip(&["route", verb, "blackhole", &format!("{}/32", mo.address())]);
        mo.ip(&["route", verb, "blackhole", &format!("{}/32", ma.address())]);
    }
}

#[test]
fn the_fixed_address_has_one_holder_moves_within_15_s_and_never_answers_from_two_macs() {
    if skip("the_fixed_address_has_one_holder_moves_within_15_s_and_never_answers_from_two_macs") {
        return;
    }
    let toml = cluster_toml_with(3, 3, &format!("api_address = \"{ADDRESS}\""));
    let mut lan = Lan::new();
    form(&mut lan, &toml, 3, WAIT);
    let mut up = vec![true; 3];
    let macs: Vec<Mac> = lan.machines.iter().map(mac_of).collect();
    let who = |mac: &Mac| {
        macs.iter().position(|m| m == mac).map_or_else(
            || format!("unknown {}", mac_text(mac)),
            |i| format!("machine{}", i + 1),
        )
    };
    let ca = init_machine(&lan)
        .root_file(SERVER_CA)
        .expect("the init's server CA");
    let address: Ipv4Addr = ADDRESS.parse().unwrap();
    let gateway: Ipv4Addr = GATEWAY.parse().unwrap();
    let bridge = lan.bridge_pid();
    let arp = ArpSampler::start(bridge, "br0", gateway, address);

    // One holder; the API answers on the address with a certificate valid for it.
    lan.wait_for("one server holds the address", WAIT, |lan| {
        holders(lan, &up).len() == 1
    });
    let holder = holders(&lan, &up)[0];
    lan.wait_for(
        "the test host sees the holder's MAC",
        Duration::from_secs(10),
        |_| arp.seen().last.is_some_and(|(_, mac)| mac == macs[holder]),
    );
    let body = cacerts_via_address(bridge, &ca).expect("/cacerts through the fixed address");
    assert_eq!(
        body, ca,
        "/cacerts through the fixed address is not the cluster CA"
    );
    // The holder publishes the cluster's name, pointing at the address.
    let mut names = Vec::new();
    lan.wait_for(
        "machines.local answers over mDNS",
        Duration::from_secs(20),
        |_| {
            names = mdns::resolve_on_lan(bridge, "machines.local");
            !names.is_empty()
        },
    );
    assert_eq!(names, vec![address], "machines.local over mDNS");
    // The joined servers' config.yaml names the fixed address as `server:` once it answers
    // (within seconds, not after the minute a gone server waits), and K3s was not restarted.
    let named = format!("server: \"https://{ADDRESS}:6443\"");
    let joined: Vec<usize> = (0..3)
        .filter(|i| lan.machines[*i].role().as_deref() == Some("server"))
        .collect();
    assert_eq!(joined.len(), 2, "joined servers\n{}", lan.report());
    lan.wait_for(
        "the joined servers' config.yaml names the fixed address",
        Duration::from_secs(30),
        |lan| {
            joined.iter().all(|i| {
                lan.machines[*i]
                    .config_yaml()
                    .is_some_and(|y| y.contains(&named))
            })
        },
    );
    for i in &joined {
        let journal = lan.machines[*i].journal(Some("firstboot.service"));
        assert!(
            !journal.lines().any(|l| l.contains("restarting it")),
            "machine{} restarted K3s (naming the fixed address must not):\n{journal}",
            i + 1
        );
    }
    // `firstboot kubeconfig` on a server that does not hold the address: curl on the test
    // host, with the kubeconfig's CA, client certificate and key, lists the Nodes through the
    // fixed address; without the certificate the API says 401.
    let other = (0..3).find(|i| *i != holder).unwrap();
    let kubeconfig = lan.machines[other]
        .exec("/usr/local/bin/firstboot", &["kubeconfig"])
        .expect("machine is on");
    assert!(
        kubeconfig.status.success(),
        "firstboot kubeconfig: {}",
        String::from_utf8_lossy(&kubeconfig.stderr)
    );
    let kubeconfig = String::from_utf8(kubeconfig.stdout).expect("utf-8");
    assert!(
        kubeconfig.contains(&format!("server: https://{ADDRESS}:6443"))
            && kubeconfig.contains("current-context: machines"),
        "the kubeconfig names the fixed address and the cluster:\n{}",
        kubeconfig
            .lines()
            .filter(|l| !l.contains("-data:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let nodes = curl_nodes(bridge, &kubeconfig, true);
    let mut listed: Vec<String> = nodes["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    listed.sort();
    let mut names: Vec<String> = lan.machines.iter().map(|m| m.hostname()).collect();
    names.sort();
    assert_eq!(listed, names, "Nodes through the fixed address: {nodes}");
    let anonymous = curl_nodes(bridge, &kubeconfig, false);
    assert_eq!(
        anonymous["code"], 401,
        "without the client certificate: {anonymous}"
    );

    // `firstboot snapshot` on a server: K3s (the double) writes the snapshot and status shows
    // it as the newest, not stale.
    let saved = lan.machines[other]
        .exec("/usr/local/bin/firstboot", &["snapshot", "--json"])
        .expect("machine is on");
    assert!(
        saved.status.success(),
        "firstboot snapshot: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let saved: serde_json::Value = serde_json::from_slice(&saved.stdout).expect("JSON");
    assert!(
        saved["bytes"].as_u64().unwrap_or_default() > 4096,
        "{saved}"
    );
    let snaps = lan.machines[other].status().expect("status")["snapshots"].clone();
    assert_eq!(snaps["newest"], saved["file"], "status: {snaps}");
    assert_eq!(snaps["stale"], false, "status: {snaps}");

    let status = lan.machines[holder].status().expect("status");
    assert_eq!(
        status["api_address"]["held_here"], true,
        "the holder's status: {}",
        status["api_address"]
    );

    // Failover, RUNS times: the holder loses power, another server takes over.
    let mut times = Vec::new();
    for run in 1..=RUNS {
        let old = holders(&lan, &up);
        assert_eq!(old.len(), 1, "run {run}: holders before {old:?}");
        let old = old[0];
        let off_at = arp.elapsed();
        lan.power_off(old);
        up[old] = false;
        let waited = lan.wait_for_polling(
            "another server answers for the address",
            FAILOVER + Duration::from_secs(15),
            Duration::from_millis(100),
            |_| {
                arp.seen()
                    .last
                    .is_some_and(|(at, mac)| at > off_at && mac != macs[old])
            },
        );
        let seen = arp.seen();
        let (_, mac) = seen.last.expect("an owner");
        // The first answer from the new holder after the power-off, by the sampler's clock.
        let answered = seen
            .owners
            .iter()
            .find(|(at, m)| *at > off_at && *m == Some(mac))
            .map(|(at, _)| *at - off_at)
            .unwrap_or(waited);
        eprintln!(
            "run {run}: machine{} powered off, {} answered {:.1} s later",
            old + 1,
            who(&mac),
            answered.as_secs_f64()
        );
        times.push(answered);
        assert!(
            answered <= FAILOVER,
            "run {run}: the address moved {answered:?} after the holder's power-off (at most {FAILOVER:?})\n{}",
            seen.history()
        );
        cacerts_via_address(bridge, &ca).unwrap_or_else(|e| {
            panic!("run {run}: /cacerts through the fixed address after the failover: {e:#}")
        });
        // The server comes back for the next run.
        lan.boot(old);
        up[old] = true;
        // Back as a voter: its state file says "ready" from before the power-off until the
        // new run writes, so the test waits for its etcd instead: all 3 members answer.
        lan.wait_for(
            "the powered-off server's etcd back, 3 members alive",
            WAIT,
            |lan| {
                let m = &lan.machines[old];
                m.unit_active("k3s.service")
                    && m.pid1().is_some_and(|pid| {
                        members(pid).is_ok_and(|l| {
                            l.len() == 3 && l.iter().all(|x| !x.is_learner && member_alive(pid, x))
                        })
                    })
            },
        );
        assert_eq!(holders(&lan, &up).len(), 1, "run {run}: holders after");
    }
    let secs: Vec<String> = times
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64()))
        .collect();
    eprintln!("failover times over {RUNS} runs (s): {}", secs.join(" "));

    // Partition the holder from the other servers (not from the test host).
    let holder = holders(&lan, &up)[0];
    let others: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    let cut_at = arp.elapsed();
    cut(&lan, holder, &others, true);
    lan.wait_for_polling(
        "the majority side answers for the address",
        FAILOVER + Duration::from_secs(15),
        Duration::from_millis(100),
        |_| {
            arp.seen()
                .last
                .is_some_and(|(at, mac)| at > cut_at && mac != macs[holder])
        },
    );
    let moved = arp.seen();
    eprintln!(
        "partition: machine{} cut off, {} answered {:.1} s later",
        holder + 1,
        who(&moved.last.unwrap().1),
        (moved.last.unwrap().0 - cut_at).as_secs_f64()
    );
    assert!(
        !holds(&lan.machines[holder]),
        "the cut-off holder still holds the address"
    );
    std::thread::sleep(Duration::from_secs(5));
    cut(&lan, holder, &others, false);
    // Healed: the old holder stays without it; still one holder.
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(
        holders(&lan, &up).len(),
        1,
        "holders after the partition healed: {:?}",
        holders(&lan, &up)
    );

    assert_eq!(
        mdns::resolve_on_lan(bridge, "machines.local"),
        vec![address],
        "machines.local over mDNS after the failovers and the partition"
    );
    let seen = arp.finish();
    eprintln!(
        "ARP: {} requests, {} periods answered; owners:\n{}",
        seen.asked,
        seen.answered,
        seen.history()
    );
    assert!(
        seen.conflicts.is_empty(),
        "two MACs answered for {ADDRESS} in the same 100 ms: {:?}\nowners:\n{}",
        seen.conflicts
            .iter()
            .map(|(at, m)| format!(
                "+{:.1}s {:?}",
                at.as_secs_f64(),
                m.iter().map(&who).collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>(),
        seen.history()
    );
}
