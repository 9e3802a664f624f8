//! Machines: copies of the node image booted with `systemd-nspawn --boot` (systemd as PID 1) on
//! one test LAN, and the outcome read back from each (status, units, journal, files).
//!
//! Per machine: a copy of the node image (sparse), its ext4 root partition loop-mounted as the
//! container's root, its own network namespace (held by an anchor process) joined by a veth to
//! one bridge, address `198.18.1.<n>/24`, default route via the bridge's `198.18.1.254`.
//! The boot partition: the kernel here has no vfat module and fusefat corrupts FAT32 on rename,
//! so the FAT is copied out with mtools into a directory bound at `/boot/firmware` at every boot,
//! and written back into the machine's image (mtools) at power-off, teardown and
//! [`Machine::sync_boot_partition`]. Checks of the boot partition read the FAT with `mtype`.
//! A power-off is a power cut: SIGKILL to every process of the machine, nothing flushed.
//! Everything is torn down on drop, also when a test panics: no processes, namespaces or mounts
//! are left. `MACHINES_KEEP=1` keeps the machines' directory for a post-mortem.
//!
//! In a test: `use systests::machines::harness;`, then `Lan::new()`, `add_machine(cluster_toml)`
//! / `boot(i)` (or `boot_machines(&tomls)`), `wait_for(what, timeout, |lan| ..)`, `power_off(i)`
//! and `boot(i)` again; read `lan.machines[i]`: `status()`, `state()`, `phase()`, `role()`,
//! `unit_active(u)`, `journal(unit)`, `config_yaml()`, `hostname()`, `boot_file(name)`,
//! `exec(program, args)`.

pub use super::{base, image};

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The tools the harness drives; a missing one skips the test with a reason.
const TOOLS: &[&str] = &[
    "systemd-nspawn",
    "unshare",
    "nsenter",
    "ip",
    "mount",
    "umount",
    "mcopy",
    "mtype",
    "mdir",
    "mdel",
    "mdeltree",
    "sfdisk",
    "mke2fs",
    "mkfs.vfat",
    "fsck.vfat",
    "debootstrap",
    "journalctl",
    // The K3s double's servers run Debian's etcd (package etcd-server), bound into each machine.
    "etcd",
];
/// The LAN's prefix (inside the test's own namespaces only).
pub const SUBNET: &str = "198.18.1";
/// The bridge's own address, every machine's default route.
pub const GATEWAY: &str = "198.18.1.254";

/// Returns why the machine tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    crate::root_and_tools_missing(
        "systemd-nspawn, network namespaces, loop mounts",
        TOOLS,
        &["/usr/sbin", "/sbin"],
    )
}

/// True (after printing why) when the machine tests cannot run here.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            crate::skip(test, &why);
            true
        }
        None => false,
    }
}

/// A random cluster token that is easy to search for in files and logs.
pub fn random_token() -> String {
    let mut bytes = [0u8; 12];
    let mut urandom = fs::File::open("/dev/urandom").expect("opening /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("reading /dev/urandom");
    format!("machines-token-{}", hex::encode(bytes))
}

/// A cluster.toml for the machines: `servers`, `nodes`, and a short NTP wait (the containers
/// cannot run systemd-timesyncd: it refuses to run in a container, and they share the host's clock).
pub fn cluster_toml(name: &str, token: &str, servers: u32, nodes: u32) -> String {
    format!(
        "[cluster]\nname = \"{name}\"\ntoken = \"{token}\"\nservers = {servers}\nnodes = {nodes}\n\n\
         [timeouts]\ntime_sync = \"5s\"\n"
    )
}

/// Makes a spawned process die with the test thread that spawned it.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        })
    }
}

/// Runs `cmd` to completion and panics with its output if it fails.
fn check(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mtools(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("MTOOLS_SKIP_CHECK", "1");
    cmd
}

/// Every process whose network namespace is `ns` (a `/proc/PID/ns/net` link text).
fn processes_in_netns(ns: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_link(entry.path().join("ns/net")).ok().as_deref() == Some(ns) {
            pids.push(pid);
        }
    }
    pids
}

/// A `sleep` holding a fresh network namespace alive.
struct Anchor {
    child: Child,
    ns: PathBuf,
}

impl Anchor {
    fn spawn() -> Self {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "sleep", "infinity"]);
        let mut child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning unshare");
        let ours = fs::read_link("/proc/self/ns/net").expect("reading our netns");
        for _ in 0..500 {
            if let Ok(theirs) = fs::read_link(format!("/proc/{}/ns/net", child.id())) {
                if theirs != ours {
                    return Self { child, ns: theirs };
                }
            }
            sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("unshare did not create a network namespace");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid().to_string()).arg("-n");
        cmd
    }

    fn sh(&self, script: &str, what: &str) {
        check(self.enter().args(["sh", "-e", "-c", script]), what);
    }

    /// SIGKILLs every process in the namespace but the anchor itself. Only while the anchor
    /// lives: once the namespace is gone its inode number may name another test's namespace.
    fn kill_others(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SIGKILL takes effect asynchronously: wait (bounded) until they are gone, so whoever
        // unmounts or checks next finds nothing of the machine running.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let others: Vec<i32> = processes_in_netns(&self.ns)
                .into_iter()
                .filter(|&pid| pid as u32 != self.pid())
                .collect();
            if others.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in others {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_others();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Byte offsets and sizes of partitions 1 and 2 of a disk image, from `sfdisk --json`.
fn partitions(image: &Path) -> [(u64, u64); 2] {
    let out = check(
        Command::new("sfdisk").arg("--json").arg(image),
        "reading the partition table",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk --json");
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions");
    let get = |i: usize| {
        let p = &parts[i];
        (
            p["start"].as_u64().expect("start") * 512,
            p["size"].as_u64().expect("size") * 512,
        )
    };
    [get(0), get(1)]
}

/// One machine: its disk image, mounted root, boot directory, network namespace and container.
pub struct Machine {
    /// 1-based number; its address is `198.18.1.<number>`.
    pub number: usize,
    /// Machine name given to systemd-nspawn (the container's hostname until firstboot sets one).
    pub name: String,
    /// Directory holding its disk image, mounts and logs.
    pub dir: PathBuf,
    /// Its disk image (a copy of the node image, stamped with its cluster.toml).
    pub image: PathBuf,
    /// Where its ext4 root partition is mounted (the container's `/`).
    pub root: PathBuf,
    /// The directory bound at `/boot/firmware` while it runs (copied from and back to the FAT).
    pub boot: PathBuf,
    boot_offset: u64,
    boot_size: u64,
    anchor: Anchor,
    nspawn: Option<Child>,
    /// How many times it was booted.
    pub boots: usize,
}

impl Machine {
    /// Its address on the LAN.
    pub fn address(&self) -> String {
        format!("{SUBNET}.{}", self.number)
    }

    /// True while its container runs.
    pub fn is_running(&mut self) -> bool {
        match self.nspawn.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The host pid of its PID 1 (systemd), while it runs.
    pub fn pid1(&self) -> Option<u32> {
        self.nspawn.as_ref()?;
        self.container_pid1()
    }

    fn container_pid1(&self) -> Option<u32> {
        processes_in_netns(&self.anchor.ns)
            .into_iter()
            .find_map(|pid| {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
                let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
                (fields.len() >= 2 && fields.last() == Some(&"1")).then_some(pid as u32)
            })
    }

    /// Host pids of every process of the machine (its container, systemd-nspawn and the
    /// process holding its network namespace).
    pub fn pids(&self) -> Vec<u32> {
        processes_in_netns(&self.anchor.ns)
            .into_iter()
            .map(|p| p as u32)
            .collect()
    }

    /// A command run inside the machine (all of PID 1's namespaces), or None when it is off.
    pub fn command(&self, program: &str) -> Option<Command> {
        let pid = self.pid1()?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(pid.to_string()).arg("-a").arg(program);
        cmd.stdin(Stdio::null());
        Some(cmd)
    }

    /// Runs `program args` inside the machine and returns its output (None when it is off).
    pub fn exec(&self, program: &str, args: &[&str]) -> Option<Output> {
        self.command(program)?.args(args).output().ok()
    }

    /// `firstboot status --json`: inside the machine while it runs (the image's own binary),
    /// else the host build with `--root` on its root filesystem. None before firstboot wrote
    /// any state.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = match self.exec("/usr/local/bin/firstboot", &["status", "--json"]) {
            Some(out) => out,
            None => Command::new(image::firstboot_bin().ok()?)
                .arg("--root")
                .arg(&self.root)
                .args(["status", "--json"])
                .output()
                .ok()?,
        };
        // A blocked or failed node exits 1 after printing its state: the JSON still counts.
        match serde_json::from_slice(&out.stdout).ok()? {
            serde_json::Value::Null => None,
            v => Some(v),
        }
    }

    /// firstboot's state file (`/var/lib/firstboot/state.json`, what `status --json` prints),
    /// read straight from the root filesystem: cheap enough to poll every few milliseconds.
    pub fn state(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.root_file("var/lib/firstboot/state.json")?).ok()
    }

    /// The lifecycle phase firstboot reports ("ready", "joining", ...).
    pub fn phase(&self) -> Option<String> {
        self.status()?["phase"].as_str().map(String::from)
    }

    /// The K3s role firstboot decided ("init", "server", "agent").
    pub fn role(&self) -> Option<String> {
        self.status()?["role"].as_str().map(String::from)
    }

    /// `systemctl is-active UNIT` inside the machine ("inactive" when it is off).
    pub fn unit_state(&self, unit: &str) -> String {
        self.exec("systemctl", &["is-active", unit])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "inactive".into())
    }

    /// True when UNIT is active inside the running machine.
    pub fn unit_active(&self, unit: &str) -> bool {
        self.unit_state(unit) == "active"
    }

    /// The journal of every boot (of one unit, or all), from inside when it runs, else from
    /// its root filesystem's persistent journal.
    pub fn journal(&self, unit: Option<&str>) -> String {
        let mut args = vec!["--no-pager", "-q", "-o", "short-precise"];
        if let Some(u) = unit {
            args.extend(["-u", u]);
        }
        let out = match self.command("journalctl") {
            Some(mut cmd) => cmd.args(&args).output(),
            None => Command::new("journalctl")
                .arg("-D")
                .arg(self.root.join("var/log/journal"))
                .args(&args)
                .output(),
        };
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Every journal entry of every boot as JSON objects (`journalctl -o json`), oldest first;
    /// from inside when it runs, else from its root filesystem's persistent journal.
    pub fn journal_entries(&self) -> Vec<serde_json::Value> {
        let args = ["--no-pager", "-q", "-o", "json"];
        let out = match self.command("journalctl") {
            Some(mut cmd) => cmd.args(args).output(),
            None => Command::new("journalctl")
                .arg("-D")
                .arg(self.root.join("var/log/journal"))
                .args(args)
                .output(),
        };
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
    }

    /// A file of its root filesystem (`etc/hostname`), if present.
    pub fn root_file(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.root.join(rel.trim_start_matches('/'))).ok()
    }

    /// `/etc/rancher/k3s/config.yaml` as firstboot wrote it.
    pub fn config_yaml(&self) -> Option<String> {
        self.root_file("etc/rancher/k3s/config.yaml")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The static hostname (`/etc/hostname`).
    pub fn hostname(&self) -> String {
        self.root_file("etc/hostname")
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    }

    fn fat(&self) -> String {
        format!("{}@@{}", self.image.display(), self.boot_offset)
    }

    /// Names in the FAT's root directory.
    fn fat_names(&self) -> Vec<String> {
        let out = check(
            mtools("mdir").args(["-b", "-i", &self.fat(), "::"]),
            "listing the boot partition",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("::/").map(String::from))
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Writes the boot directory back into the FAT boot partition of its image: files gone
    /// from the directory are deleted, the others copied over.
    pub fn sync_boot_partition(&self) {
        if !self.boot.exists() {
            // Never booted: the FAT is all there is.
            return;
        }
        let present: Vec<String> = fs::read_dir(&self.boot)
            .expect("reading the boot directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for name in self.fat_names() {
            if present.iter().any(|p| p.eq_ignore_ascii_case(&name)) {
                continue;
            }
            let target = format!("::/{name}");
            // mdel removes files; a directory needs mdeltree.
            let deleted = mtools("mdel")
                .args(["-i", &self.fat(), &target])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !deleted {
                check(
                    mtools("mdeltree").args(["-i", &self.fat(), &target]),
                    "deleting from the boot partition",
                );
            }
        }
        if present.is_empty() {
            return;
        }
        let mut cmd = mtools("mcopy");
        cmd.args(["-s", "-o", "-m", "-i", &self.fat()]);
        for name in &present {
            cmd.arg(self.boot.join(name));
        }
        cmd.arg("::");
        check(&mut cmd, "writing the boot partition back");
    }

    /// Every file of the FAT boot partition's root directory with its bytes (after writing the
    /// boot directory back).
    pub fn boot_files(&self) -> Vec<(String, Vec<u8>)> {
        self.sync_boot_partition();
        self.fat_names()
            .into_iter()
            .filter_map(|n| {
                let out = mtools("mtype")
                    .args(["-i", &self.fat(), &format!("::/{n}")])
                    .output()
                    .ok()?;
                out.status.success().then_some((n, out.stdout))
            })
            .collect()
    }

    /// A file of the FAT boot partition (after writing the boot directory back), read with `mtype`.
    pub fn boot_file(&self, name: &str) -> Option<Vec<u8>> {
        self.sync_boot_partition();
        if !self
            .fat_names()
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return None;
        }
        let out = check(
            mtools("mtype").args(["-i", &self.fat(), &format!("::/{name}")]),
            "reading from the boot partition",
        );
        Some(out.stdout)
    }

    /// Checks the FAT boot partition with `fsck.vfat -n` (on a sparse copy of the partition:
    /// fsck.vfat takes no offset) after writing the boot directory back; panics on damage.
    pub fn check_boot_partition(&self) {
        self.sync_boot_partition();
        let copy = self.dir.join("boot-partition.fat");
        let mib = 1 << 20;
        assert!(
            self.boot_offset.is_multiple_of(mib) && self.boot_size.is_multiple_of(mib),
            "boot partition not MiB-aligned"
        );
        check(
            Command::new("dd")
                .arg(format!("if={}", self.image.display()))
                .arg(format!("of={}", copy.display()))
                .args(["bs=1M", "conv=sparse", "status=none"])
                .arg(format!("skip={}", self.boot_offset / mib))
                .arg(format!("count={}", self.boot_size / mib)),
            "copying the boot partition out",
        );
        let out = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&copy)
            .output()
            .expect("running fsck.vfat");
        let _ = fs::remove_file(&copy);
        assert!(
            out.status.success(),
            "{}: fsck.vfat -n found damage in the boot partition: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Copies the FAT boot partition into the boot directory, as the OS would see it mounted.
    fn load_boot_partition(&self) {
        if self.boot.exists() {
            fs::remove_dir_all(&self.boot).expect("clearing the boot directory");
        }
        fs::create_dir_all(&self.boot).expect("creating the boot directory");
        if self.fat_names().is_empty() {
            return;
        }
        check(
            mtools("mcopy")
                .args(["-s", "-n", "-m", "-i", &self.fat(), "::/*"])
                .arg(&self.boot),
            "copying the boot partition out",
        );
    }

    fn start(&mut self) {
        assert!(!self.is_running(), "machine {} is already on", self.name);
        self.load_boot_partition();
        self.boots += 1;
        let log = fs::File::create(self.dir.join(format!("nspawn-{}.log", self.boots)))
            .expect("creating the nspawn log");
        // systemd-nspawn runs inside the machine's network namespace (rather than being given
        // it with --network-namespace-path) so the container's /sys is mounted there: with the
        // option, /sys/class/net shows the host's interfaces and every machine takes the host's
        // MAC as its node id.
        let mut cmd = self.anchor.enter();
        cmd.arg("systemd-nspawn")
            .arg("-D")
            .arg(&self.root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            .args(["--link-journal=no", "-M", &self.name])
            // A Pi's root has CAP_NET_ADMIN (firstboot adds its dummy default route on a LAN
            // without one); nspawn drops it unless told. It acts on the machine's own namespace.
            .arg("--capability=CAP_NET_ADMIN")
            .arg(format!("--bind={}:/boot/firmware", self.boot.display()))
            // The K3s double runs Debian's etcd as K3s embeds its own: the host's binary, bound
            // read-only (it needs only libc; a Pi has no etcd of its own, K3s carries it, so it
            // is the double's part, not the OS image's, and the image cache key stays the same).
            .arg("--bind-ro=/usr/bin/etcd");
        let child = die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning systemd-nspawn");
        self.nspawn = Some(child);
    }

    /// Pulls the plug: SIGKILL to every process of the container, then writes the boot
    /// directory back into the FAT.
    fn stop(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let pid1 = self.container_pid1();
        if let Some(pid) = pid1 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // systemd-nspawn reaps its PID 1 and exits by itself; killing it first would leave the
        // dying PID 1 to the host's init as a zombie.
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.anchor.kill_others();
        // A PID 1 orphaned anyway lives on until the kernel reaped its whole PID namespace.
        while pid1.is_some_and(alive) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        self.sync_boot_partition();
    }

    fn teardown(&mut self) {
        self.stop();
        self.anchor.stop();
        // The root is unmounted last: a busy mount (a process still exiting) gets a few tries,
        // then a lazy unmount so nothing stays visible.
        for attempt in 0..20 {
            let ok = Command::new("umount")
                .arg(&self.root)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok || !is_mounted(&self.root) {
                return;
            }
            if attempt == 19 {
                let _ = Command::new("umount").arg("-l").arg(&self.root).status();
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Runs `script` with `sh -e` in the machine's network namespace (e.g. before it boots).
    pub fn netns_sh(&self, script: &str, what: &str) {
        self.anchor.sh(script, what);
    }

    /// `ip` run in the machine's network namespace, its output (from outside the machine: works
    /// whether or not the machine's image has iproute2).
    pub fn ip(&self, args: &[&str]) -> String {
        let out = check(self.anchor.enter().arg("ip").args(args), "running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A one-paragraph account of the machine for failure messages.
    pub fn report(&self) -> String {
        let status = self
            .status()
            .map(|mut s| {
                // A retried failure repeats its error: show each once.
                if let Some(errors) = s.get_mut("errors").and_then(|e| e.as_array_mut()) {
                    let mut seen = Vec::new();
                    errors.retain(|e| {
                        let new = !seen.contains(e);
                        seen.push(e.clone());
                        new
                    });
                }
                s.to_string()
            })
            .unwrap_or_else(|| "no status".into());
        let journal = self.journal(None);
        let tail: Vec<&str> = journal.lines().rev().take(40).collect();
        format!(
            "=== {} ({}) boots={} status: {status}\n--- journal tail:\n{}\n",
            self.name,
            self.address(),
            self.boots,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// "pid start-time" of a process, or "" when it does not exist.
fn process_identity(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let start = stat[stat.rfind(')')? + 2..]
                .split_whitespace()
                .nth(19)?
                .to_string();
            Some(format!("{pid} {start}"))
        })
        .unwrap_or_default()
}

/// Cleans up after test processes that died without unwinding (SIGKILL, a CI timeout):
/// containers still running on their machines, mounts and directories. A LAN directory whose
/// owner process is gone is stale; one kept with `MACHINES_KEEP` is left alone.
fn reap_stale_lans(cache: &Path) {
    let our_mnt = fs::read_link("/proc/self/ns/mnt").ok();
    for entry in fs::read_dir(cache).into_iter().flatten().flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("machines-") || dir.join("kept").exists() {
            continue;
        }
        let owner = fs::read_to_string(dir.join("owner")).unwrap_or_default();
        let pid = owner
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| process_identity(p) == owner) {
            continue;
        }
        let needle = dir.display().to_string();
        // A machine's processes live in a mount namespace whose /boot/firmware is bound from
        // this directory (other namespaces may merely have received our mounts elsewhere by
        // propagation: those are not ours and are left alone).
        let ours = |mountinfo: &str| {
            mountinfo.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 4 && f[4] == "/boot/firmware" && f[3].starts_with(&needle)
            })
        };
        for _ in 0..50 {
            let mut found = false;
            for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if fs::read_link(p.path().join("ns/mnt")).ok() == our_mnt {
                    continue;
                }
                if fs::read_to_string(p.path().join("mountinfo")).is_ok_and(|m| ours(&m)) {
                    found = true;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            if !found {
                break;
            }
            sleep(Duration::from_millis(100));
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for mount_point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if mount_point.starts_with(&needle) {
                let _ = Command::new("umount").arg("-l").arg(mount_point).status();
            }
        }
        eprintln!("machines: removed the stale LAN {needle}");
        let _ = fs::remove_dir_all(&dir);
    }
}

fn is_mounted(path: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    text.lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

/// The LAN: a bridge in its own network namespace and the machines on it.
pub struct Lan {
    /// Holds every machine's image, mounts and logs.
    pub dir: tempfile::TempDir,
    /// The machines, index 0 is machine 1.
    pub machines: Vec<Machine>,
    bridge: Anchor,
    node_image: PathBuf,
    partitions: [(u64, u64); 2],
    /// The Raspberry Pi OS release its machines' base imitates.
    pub release: base::Release,
}

impl Lan {
    /// An empty LAN of machines on the base `MACHINES_BASE` names (trixie when unset); builds
    /// (or takes from the cache) the base and node images first.
    pub fn new() -> Self {
        Self::on(base::Release::from_env())
    }

    /// An empty LAN of machines on the base of `release`.
    pub fn on(release: base::Release) -> Self {
        let node_image = image::node_image(release)
            .unwrap_or_else(|e| panic!("building the {release:?} node image: {e:#}"));
        let partitions = partitions(&node_image);
        reap_stale_lans(&base::cache_dir());
        let dir = tempfile::Builder::new()
            .prefix("machines-")
            .tempdir_in(base::cache_dir())
            .expect("creating the machines dir");
        fs::write(
            dir.path().join("owner"),
            process_identity(std::process::id()),
        )
        .expect("writing the owner file");
        let bridge = Anchor::spawn();
        bridge.sh(
            &format!(
                "ip link set lo up; ip link add br0 type bridge mcast_snooping 0; \
                 ip addr add {GATEWAY}/24 dev br0; ip link set br0 up"
            ),
            "setting up the bridge",
        );
        Self {
            dir,
            machines: Vec::new(),
            bridge,
            node_image,
            partitions,
            release,
        }
    }

    /// The node image every machine is a copy of.
    pub fn node_image(&self) -> &Path {
        &self.node_image
    }

    /// Adds a machine (powered off) whose boot partition holds `cluster_toml`, stamped with
    /// `imagebuild stamp`'s library; returns its index in [`Lan::machines`].
    pub fn add_machine(&mut self, cluster_toml: &str) -> usize {
        let number = self.machines.len() + 1;
        assert!(number < 250, "the LAN is a /24");
        let name = format!("machine{number}");
        let dir = self.dir.path().join(&name);
        fs::create_dir_all(&dir).expect("creating the machine dir");
        let image = dir.join("disk.img");
        check(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&self.node_image)
                .arg(&image),
            "copying the node image",
        );
        let toml_path = dir.join("cluster.toml");
        fs::write(&toml_path, cluster_toml).expect("writing cluster.toml");
        imagebuild::stamp::stamp(&image, &toml_path, &Default::default())
            .expect("stamping cluster.toml into the machine's image");
        fs::remove_file(&toml_path).expect("removing the host copy of cluster.toml");

        let anchor = Anchor::spawn();
        check(
            self.bridge.enter().args([
                "ip",
                "link",
                "add",
                &format!("v{number}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &anchor.pid().to_string(),
            ]),
            "creating the veth pair",
        );
        self.bridge.sh(
            &format!("ip link set v{number} master br0 up"),
            "attaching the veth",
        );
        anchor.sh(
            &format!(
                "ip link set lo up; ip addr add {SUBNET}.{number}/24 dev eth0; ip link set eth0 up; \
                 ip route add default via {GATEWAY}"
            ),
            "addressing the machine",
        );
        // Mounted last: nothing between the mount and the push can fail and leak it.
        let root = dir.join("root");
        fs::create_dir_all(&root).expect("creating the root mount point");
        let [(boot_offset, boot_size), (root_offset, root_size)] = self.partitions;
        check(
            Command::new("mount")
                .arg("-o")
                .arg(format!(
                    "loop,offset={root_offset},sizelimit={root_size},noatime"
                ))
                .arg(&image)
                .arg(&root),
            "loop-mounting the machine's root partition",
        );

        self.machines.push(Machine {
            number,
            name,
            boot: dir.join("boot"),
            dir,
            image,
            root,
            boot_offset,
            boot_size,
            anchor,
            nspawn: None,
            boots: 0,
        });
        number - 1
    }

    /// Gives machine `i` (before it boots) a second interface `name`, a veth whose other end
    /// sits in the bridge's namespace but on no bridge: its own link `<prefix>.1/24` with the
    /// gateway `<prefix>.254`, which is not forwarded anywhere. The machine's default route moves
    /// onto it, like a Pi on the cluster switch by `eth0` whose router is reached over `wlan0`.
    pub fn add_uplink(&mut self, i: usize, name: &str, prefix: &str) {
        let number = self.machines[i].number;
        let outer = format!("u{number}");
        check(
            self.bridge.enter().args([
                "ip",
                "link",
                "add",
                &outer,
                "type",
                "veth",
                "peer",
                "name",
                name,
                "netns",
                &self.machines[i].anchor.pid().to_string(),
            ]),
            "creating the uplink veth pair",
        );
        self.bridge.sh(
            &format!("ip addr add {prefix}.254/24 dev {outer}; ip link set {outer} up"),
            "addressing the uplink's outer end",
        );
        self.machines[i].netns_sh(
            &format!(
                "ip addr add {prefix}.1/24 dev {name}; ip link set {name} up; \
                 ip route replace default via {prefix}.254 dev {name}"
            ),
            "moving the default route to the uplink",
        );
    }

    /// Adds one machine per cluster.toml and boots them all.
    pub fn boot_machines(&mut self, cluster_tomls: &[String]) {
        let first = self.machines.len();
        for t in cluster_tomls {
            self.add_machine(t);
        }
        for i in first..self.machines.len() {
            self.boot(i);
        }
    }

    /// Powers machine `i` on (systemd boots as PID 1 in the container).
    pub fn boot(&mut self, i: usize) {
        self.cable(i, true);
        self.machines[i].start();
    }

    /// Powers machine `i` off the hard way (SIGKILL to all its processes, as a power cut). Its
    /// network interface goes dark too: the namespace that held the machine's processes outlives
    /// them, and its kernel would otherwise still answer ARP for the machine's addresses and
    /// reset connections to them, which a Pi without power never does.
    pub fn power_off(&mut self, i: usize) {
        self.machines[i].stop();
        self.cable(i, false);
    }

    /// Re-flashes machine `i`'s card: powers it off, writes the node image over its disk image
    /// again and stamps `cluster_toml` into it (as [`Lan::add_machine`] did), leaving it powered
    /// off. The machine keeps its name, its network namespace and its `eth0` (so its MAC, which
    /// is its node id on these boards, and its address): the same Pi with a fresh card.
    pub fn reflash(&mut self, i: usize, cluster_toml: &str) {
        self.power_off(i);
        let m = &mut self.machines[i];
        for attempt in 0..50 {
            let ok = Command::new("umount")
                .arg(&m.root)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok || !is_mounted(&m.root) {
                break;
            }
            assert!(
                attempt < 49,
                "{}: the old card's root stays mounted",
                m.name
            );
            sleep(Duration::from_millis(100));
        }
        fs::remove_file(&m.image).expect("removing the old card's image");
        check(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&self.node_image)
                .arg(&m.image),
            "copying the node image onto the re-flashed card",
        );
        let toml_path = m.dir.join("cluster.toml");
        fs::write(&toml_path, cluster_toml).expect("writing cluster.toml");
        imagebuild::stamp::stamp(&m.image, &toml_path, &Default::default())
            .expect("stamping cluster.toml into the re-flashed card");
        fs::remove_file(&toml_path).expect("removing the host copy of cluster.toml");
        let [_, (root_offset, root_size)] = self.partitions;
        check(
            Command::new("mount")
                .arg("-o")
                .arg(format!(
                    "loop,offset={root_offset},sizelimit={root_size},noatime"
                ))
                .arg(&m.image)
                .arg(&m.root),
            "loop-mounting the re-flashed card's root partition",
        );
    }

    /// Machine `i`'s link on the bridge (the switch port) up or down.
    fn cable(&self, i: usize, up: bool) {
        let number = self.machines[i].number;
        self.bridge.sh(
            &format!("ip link set v{number} {}", if up { "up" } else { "down" }),
            "switching the machine's link",
        );
    }

    /// The PID of a process in the bridge's network namespace: the LAN's gateway host
    /// (`198.18.1.254` on `br0`), from which a test can watch the LAN as another host on it.
    pub fn bridge_pid(&self) -> u32 {
        self.bridge.pid()
    }

    /// Cuts machine `i` off the LAN: its veth leaves the bridge (its link stays up, as behind a
    /// switch port that drops everything), so it hears nobody and nobody hears it until
    /// [`Lan::heal`].
    pub fn partition(&self, i: usize) {
        let number = self.machines[i].number;
        self.bridge.sh(
            &format!("ip link set v{number} nomaster"),
            "taking the machine's veth off the bridge",
        );
    }

    /// Puts machine `i` back on the LAN after [`Lan::partition`].
    pub fn heal(&self, i: usize) {
        let number = self.machines[i].number;
        self.bridge.sh(
            &format!("ip link set v{number} master br0 up"),
            "putting the machine's veth back on the bridge",
        );
    }

    /// Polls `done` every 250 ms until it holds; panics after `timeout` with every machine's
    /// status and journal tail. Returns the time it took.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&Lan) -> bool,
    ) -> Duration {
        self.wait_for_polling(what, timeout, Duration::from_millis(250), done)
    }

    /// [`Lan::wait_for`] with another polling interval (short ones for fleeting states).
    pub fn wait_for_polling(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        mut done: impl FnMut(&Lan) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if done(self) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.report()
                );
            }
            sleep(poll);
        }
    }

    /// True when every machine's firstboot says "ready".
    pub fn all_ready(&self) -> bool {
        self.machines
            .iter()
            .all(|m| m.phase().as_deref() == Some("ready"))
    }

    /// Every machine's status and journal tail, for failure messages.
    pub fn report(&self) -> String {
        self.machines.iter().map(Machine::report).collect()
    }
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for m in self.machines.iter_mut().rev() {
            m.teardown();
        }
        self.bridge.stop();
        if std::env::var_os("MACHINES_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("creating placeholder dir"),
            );
            eprintln!("MACHINES_KEEP: keeping {}", dir.path().display());
            let _ = fs::write(dir.path().join("kept"), "");
            let _ = dir.keep();
        }
    }
}

/// True if `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
