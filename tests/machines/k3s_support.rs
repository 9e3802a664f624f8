//! Shared by the K3s machine tests (`k3s_*.rs`): finding the init machine, the CA on disk, a
//! per-machine fake wall clock, and killing firstboot inside a machine.

use super::harness::{Lan, Machine};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

/// The server CA bundle K3s (and its double) serve as `/cacerts`, under a machine's root.
pub const SERVER_CA: &str = "var/lib/rancher/k3s/server/tls/server-ca.crt";
/// The offset file of the fake clock (see `k3s_fake_clock.c`).
pub const FAKE_CLOCK_OFFSET: &str = "etc/fake-clock-offset-ns";

pub use super::harness::skip;

/// The machine whose firstboot reports the init role.
pub fn init_machine(lan: &Lan) -> &Machine {
    lan.machines
        .iter()
        .find(|m| m.role().as_deref() == Some("init"))
        .unwrap_or_else(|| panic!("no init machine\n{}", lan.report()))
}

/// sha256 (hex) of the machine's server CA bundle, when it has one.
pub fn ca_file_hash(m: &Machine) -> Option<String> {
    m.root_file(SERVER_CA)
        .map(|pem| hex::encode(Sha256::digest(pem)))
}

/// A status field as a string.
pub fn status_str(m: &Machine, key: &str) -> Option<String> {
    m.status()?[key].as_str().map(String::from)
}

/// The phase in the machine's state file, read from its root directly (fast enough to catch
/// short steps; `Machine::phase` runs a process inside the machine).
pub fn phase_on_disk(m: &Machine) -> Option<String> {
    let bytes = m.root_file("var/lib/firstboot/state.json")?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["phase"].as_str().map(String::from)
}

/// Gives machine `m` (before it boots) its own wall clock, `behind_secs` behind the host's:
/// builds `k3s_fake_clock.c` and preloads it into every process of the machine.
pub fn install_fake_clock(m: &Machine, behind_secs: i64) {
    let source = crate::repo_root().join("tests/machines/k3s_fake_clock.c");
    let lib = m.root.join("usr/local/lib/libfakeclock.so");
    let out = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source)
        .output()
        .expect("running cc");
    assert!(
        out.status.success(),
        "building the fake clock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        m.root.join(FAKE_CLOCK_OFFSET),
        format!("{}\n", -behind_secs * 1_000_000_000),
    )
    .expect("writing the clock offset");
    std::fs::write(
        m.root.join("etc/ld.so.preload"),
        "/usr/local/lib/libfakeclock.so\n",
    )
    .expect("writing ld.so.preload");
}

/// Sets the image build time in the machine's `etc/firstboot/image.json` (firstboot never
/// lets the clock fall below it) to `unix`: the test image is built minutes before the test,
/// a real one days or weeks before the cards boot.
pub fn set_build_time(m: &Machine, unix: i64) {
    use firstboot::manifest::{ImageManifest, PATH};
    let mut manifest = ImageManifest::load(&m.root)
        .expect("reading image.json")
        .expect("the machine's image has an image.json");
    manifest.build_time = u64::try_from(unix).expect("a build time after 1970");
    std::fs::write(m.root.join(PATH), manifest.to_vec()).expect("writing image.json");
}

/// The machine's clock minus the host's, in nanoseconds (its fake clock's offset).
pub fn fake_clock_offset_ns(m: &Machine) -> i64 {
    let text = m
        .root_file(FAKE_CLOCK_OFFSET)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    text.parse()
        .unwrap_or_else(|_| panic!("offset file holds {text:?}"))
}

/// Host pids of the firstboot daemon inside the running machine.
pub fn firstboot_pids(m: &Machine) -> Vec<i32> {
    let Some(pid1) = m.pid1() else {
        return Vec::new();
    };
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid1}/ns/net")) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let dir = PathBuf::from("/proc").join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "firstboot"
            && std::fs::read_link(dir.join("ns/net")).ok() == Some(ns.clone())
        {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs firstboot inside the machine (systemd restarts it: `Restart=on-failure`); returns
/// how many processes were killed.
pub fn kill_firstboot(m: &Machine) -> usize {
    let pids = firstboot_pids(m);
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pids.len()
}

/// `systemctl show -p MainPID --value UNIT` inside the machine.
pub fn main_pid(m: &Machine, unit: &str) -> Option<u32> {
    let out = m.exec("systemctl", &["show", "-p", "MainPID", "--value", unit])?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

/// Unix seconds on the host.
pub fn host_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
