//! System tests of the K3s and firstboot payload of `imagebuild build`: a generated release served
//! on 127.0.0.1, checksum refusal, offline builds, the firstboot binary, units and their enablement.

use systests::image::{fixture, http, support};
use systests::payload::release::{self, sha256};

use fixture::{Flavor, Spec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use support::*;

const EPOCH: &str = "1735689600"; // 2025-01-01T00:00:00Z

/// A trixie fixture base and a recipe whose [k3s] mirror is `mirror`.
fn setup(dir: &Path, mirror: &str, airgap: bool) -> PathBuf {
    let base = dir.join("trixie.img");
    fixture::make(&Spec::small(Flavor::Trixie), &base).expect("making fixture");
    share(&base);
    release::fake_firstboot(dir);
    let text = format!(
        r#"[image]
board = "rpi5"
base = "trixie.img"
output = "out/node.img"
free_space = "64MiB"

[k3s]
version = "{}"
mirror = "{mirror}"
airgap = {airgap}
"#,
        release::VERSION
    );
    let r = dir.join("image.toml");
    std::fs::write(&r, text).unwrap();
    share(&r);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    r
}

fn build(dir: &Path, recipe: &Path, extra: &[&str]) -> std::process::Output {
    run(imagebuild(dir)
        .arg("build")
        .arg(recipe)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--firstboot-bin")
        .arg(dir.join("firstboot-fake"))
        .args(extra)
        .env("SOURCE_DATE_EPOCH", EPOCH))
}

/// The build failed with all of `words` in its error and left nothing at the output.
fn refused(dir: &Path, out: std::process::Output, words: &[&str]) -> String {
    assert!(!out.status.success(), "build should have failed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for w in words {
        assert!(err.contains(w), "error lacks {w:?}:\n{err}");
    }
    let left = names(&dir.join("out"));
    assert!(left.is_empty(), "output left behind: {left:?}");
    err
}

fn root_offset(img: &Path) -> u64 {
    sfdisk_partition(img, 2).0 * 512
}

/// True when `path` exists in the image (debugfs prints an inode for it).
fn exists(img: &Path, off: u64, path: &str) -> bool {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(format!("{}?offset={off}", img.display()))
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).contains("Inode:")
}

fn link_target(img: &Path, off: u64, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(format!("{}?offset={off}", img.display()))
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("link dest: \"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("{path} is not a symlink:\n{text}"))
        .to_string()
}

#[test]
fn release_from_http_mirror_is_verified_installed_and_reused_offline() {
    let dir = scratch();
    let rel = release::make(&dir.path().join("release"));
    let served = release::serve_layout(&rel, &dir.path().join("served"));
    let server = http::FileServer::start(served, None);
    let r = setup(dir.path(), &server.url, true);

    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success(), "build from the HTTP mirror failed");
    // sha256sum file, binary, air-gap archive: one request each.
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
    let img = dir.path().join("out/node.img");
    let off = root_offset(&img);
    e2fsck_clean(&img, off);

    // The installed binary is the release's, byte for byte.
    let k3s = debugfs_cat(&img, off, "/usr/local/bin/k3s");
    assert_eq!(sha256(&k3s), rel.binary_sha256);
    assert_eq!(
        debugfs_stat(&img, off, "/usr/local/bin/k3s"),
        ("0755".into(), 0, 0, "regular".into())
    );
    for l in ["kubectl", "crictl", "ctr"] {
        assert_eq!(
            link_target(&img, off, &format!("/usr/local/bin/{l}")),
            "k3s"
        );
    }
    let airgap = debugfs_cat(
        &img,
        off,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst",
    );
    assert_eq!(sha256(&airgap), rel.airgap_sha256);
    // K3s (>= v1.31.9) skips re-importing an unchanged archive only when this file exists; it
    // never creates it, and it accepts it empty.
    let cache = "/var/lib/rancher/k3s/agent/images/.cache.json";
    assert!(exists(&img, off, cache), "{cache} missing");
    assert!(
        debugfs_cat(&img, off, cache).is_empty(),
        "{cache} not empty"
    );
    assert_eq!(
        debugfs_stat(&img, off, cache),
        ("0644".into(), 0, 0, "regular".into())
    );
    for s in ["k3s-killall.sh", "k3s-uninstall.sh"] {
        let (mode, ..) = debugfs_stat(&img, off, &format!("/usr/local/bin/{s}"));
        assert_eq!(mode, "0755", "{s}");
    }

    // firstboot is enabled; the K3s units are installed but not enabled.
    let wants = "/etc/systemd/system/multi-user.target.wants";
    assert_eq!(
        link_target(&img, off, &format!("{wants}/firstboot.service")),
        "/etc/systemd/system/firstboot.service"
    );
    assert!(exists(&img, off, "/etc/systemd/system/firstboot.service"));
    for unit in ["k3s.service", "k3s-agent.service"] {
        assert!(exists(&img, off, &format!("/etc/systemd/system/{unit}")));
        assert!(
            !exists(&img, off, &format!("{wants}/{unit}")),
            "{unit} enabled"
        );
    }
    let unit =
        String::from_utf8(debugfs_cat(&img, off, "/etc/systemd/system/k3s.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/k3s server"),
        "{unit}"
    );

    // The manifest: integer build time (firstboot's clock floor), versions, payload hashes.
    let manifest = read_manifest(&img, off);
    assert_eq!(manifest.build_time, EPOCH.parse::<u64>().unwrap());
    assert_eq!(manifest.versions.k3s, release::VERSION);
    assert_eq!(manifest.versions.firstboot, "0.0.0-fake");
    assert_eq!(manifest.versions.base, "trixie.img");
    let file_sha = |p: &str| {
        manifest
            .files
            .iter()
            .find(|f| f.path == p)
            .unwrap_or_else(|| panic!("{p} not in the manifest"))
            .sha256
            .clone()
            .unwrap()
    };
    assert_eq!(file_sha("/usr/local/bin/k3s"), rel.binary_sha256);
    assert_eq!(
        file_sha("/usr/local/bin/firstboot"),
        sha256(&std::fs::read(dir.path().join("firstboot-fake")).unwrap())
    );
    // firstboot's own reader agrees on the floor.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/firstboot")).unwrap();
    std::fs::write(
        root.path().join("etc/firstboot/image.json"),
        debugfs_cat(&img, off, "/etc/firstboot/image.json"),
    )
    .unwrap();
    assert_eq!(
        firstboot::clock::image_build_time(root.path()).unwrap(),
        Some(EPOCH.parse().unwrap())
    );

    // inspect shows the versions and flags nothing missing; verify checks the hashes.
    let out = run(imagebuild(dir.path()).arg("inspect").arg(&img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("payload: k3s v1.31.10+k3s1 firstboot 0.0.0-fake airgap images yes firstboot.service enabled"),
        "{text}"
    );
    assert!(!text.contains("is missing"), "{text}");
    let out = run(imagebuild(dir.path()).arg("verify").arg(&img));
    assert!(out.status.success(), "verify failed");

    // Warm cache, server stopped: an offline build needs no connection at all.
    let hits = server.hits.load(Ordering::SeqCst);
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let first = std::fs::read(&img).unwrap();
    for f in names(&dir.path().join("out")) {
        std::fs::remove_file(dir.path().join("out").join(f)).unwrap();
    }
    let out = build(dir.path(), &r, &["--offline"]);
    assert!(
        out.status.success(),
        "offline build with a warm cache failed"
    );
    assert_eq!(hits, 3);
    // Same inputs, same epoch: the same image.
    assert_eq!(sha256(&std::fs::read(&img).unwrap()), sha256(&first));
}

#[test]
fn wrong_checksum_is_refused_and_nothing_is_written() {
    let dir = scratch();
    let rel = release::make(&dir.path().join("release"));
    // The release says one thing, the served binary is another.
    std::fs::write(rel.dir.join("k3s-arm64"), b"tampered binary").unwrap();
    let served = release::serve_layout(&rel, &dir.path().join("served"));
    let server = http::FileServer::start(served, None);
    let r = setup(dir.path(), &server.url, true);
    let out = build(dir.path(), &r, &[]);
    let err = refused(
        dir.path(),
        out,
        &[
            "sha256 mismatch",
            &format!("{}/v1.31.10%2Bk3s1/k3s-arm64", server.url),
        ],
    );
    assert!(err.contains(&rel.binary_sha256), "{err}");
    // Nothing unverified reached the cache either.
    let cached = names(&dir.path().join("cache/downloads"));
    assert!(cached.is_empty(), "cache holds {cached:?}");
}

#[test]
fn missing_asset_names_the_url() {
    let dir = scratch();
    let rel = release::make(&dir.path().join("release"));
    let served = release::serve_layout(&rel, &dir.path().join("served"));
    let asset = served
        .join("v1.31.10%2Bk3s1")
        .join("k3s-airgap-images-arm64.tar.zst");
    std::fs::remove_file(asset).unwrap();
    let server = http::FileServer::start(served, None);
    let r = setup(dir.path(), &server.url, true);
    let out = build(dir.path(), &r, &[]);
    refused(
        dir.path(),
        out,
        &[
            &format!(
                "{}/v1.31.10%2Bk3s1/k3s-airgap-images-arm64.tar.zst",
                server.url
            ),
            "404",
        ],
    );
}

#[test]
fn offline_with_a_cold_cache_says_what_is_missing() {
    let dir = scratch();
    // A mirror that is never contacted: nothing listens on the port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = setup(dir.path(), &format!("http://127.0.0.1:{port}"), true);
    let out = build(dir.path(), &r, &["--offline"]);
    refused(
        dir.path(),
        out,
        &[
            "--offline",
            "K3s v1.31.10+k3s1",
            "not in the cache",
            "k3s-arm64",
            "k3s-airgap-images-arm64.tar.zst",
        ],
    );
}

#[test]
fn local_mirror_without_airgap_flags_nothing() {
    let dir = scratch();
    release::make(&dir.path().join("release"));
    let r = setup(dir.path(), "release", false);
    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success());
    let img = dir.path().join("out/node.img");
    let off = root_offset(&img);
    assert!(!exists(
        &img,
        off,
        "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"
    ));
    assert!(!exists(
        &img,
        off,
        "/var/lib/rancher/k3s/agent/images/.cache.json"
    ));
    let out = run(imagebuild(dir.path())
        .arg("inspect")
        .arg("--json")
        .arg(&img));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["payload"]["missing"], serde_json::json!([]));
    assert_eq!(j["payload"]["airgap_expected"], false);
    assert_eq!(j["payload"]["firstboot_enabled"], true);
}

#[test]
fn inspect_flags_a_missing_payload() {
    // An image built through the library without the node payload lacks everything.
    let dir = scratch();
    let r = setup(dir.path(), "release", false);
    std::env::set_var("SOURCE_DATE_EPOCH", EPOCH);
    let report = imagebuild::build::run(
        &r,
        imagebuild::build::BuildOptions {
            cache_dir: Some(dir.path().join("cache")),
            data_dir: Some(systests::repo_root()),
            ..Default::default()
        },
    )
    .expect("build without payload");
    let i = imagebuild::inspect::inspect(&report.output).unwrap();
    for p in [
        "/usr/local/bin/k3s",
        "/usr/local/bin/firstboot",
        "/etc/systemd/system/k3s.service",
        "/etc/systemd/system/firstboot.service",
    ] {
        assert!(i.payload.missing.iter().any(|m| m == p), "{p} not flagged");
        assert!(
            i.warnings.iter().any(|w| w.contains(p)),
            "{p} not in warnings"
        );
    }
}

/// Parse an ELF64 header: (machine, has PT_INTERP).
fn elf_facts(bin: &[u8]) -> (u16, bool) {
    assert_eq!(&bin[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bin[4], 2, "not ELF64");
    assert_eq!(bin[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(bin[o..o + 8].try_into().unwrap());
    let machine = u16_at(18);
    let phoff = u64_at(32) as usize;
    let phentsize = u16_at(54) as usize;
    let phnum = u16_at(56) as usize;
    let interp = (0..phnum).any(|i| {
        let t = u32::from_le_bytes(bin[phoff + i * phentsize..][..4].try_into().unwrap());
        t == 3 // PT_INTERP: a dynamic loader would be needed
    });
    (machine, interp)
}

#[test]
fn firstboot_built_from_the_workspace_is_static_aarch64_and_runs() {
    let dir = scratch();
    release::make(&dir.path().join("release"));
    let r = setup(dir.path(), "release", false);
    // Next to this test's own target dir, so repeated runs reuse the build.
    let exe = std::env::current_exe().unwrap();
    let target_root = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("imagebuild-firstboot");
    std::env::set_var("SOURCE_DATE_EPOCH", EPOCH);
    let report = imagebuild::build::run(
        &r,
        imagebuild::build::BuildOptions {
            cache_dir: Some(dir.path().join("cache")),
            data_dir: Some(systests::repo_root()),
            node: Some(imagebuild::payload::NodeOptions {
                firstboot_bin: None,
                firstboot_target_dir: Some(target_root),
            }),
            ..Default::default()
        },
    )
    .expect("build with firstboot from the workspace");
    let img = &report.output;
    let off = report.layout.partitions[1].start;
    let bin = debugfs_cat(img, off, "/usr/local/bin/firstboot");
    let (machine, interp) = elf_facts(&bin);
    assert_eq!(machine, 183, "not aarch64 (EM_AARCH64 = 183)");
    assert!(!interp, "firstboot is dynamically linked");
    let extracted = dir.path().join("firstboot.extracted");
    std::fs::write(&extracted, &bin).unwrap();
    std::fs::set_permissions(
        &extracted,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("qemu-aarch64-static")
        .arg(&extracted)
        .arg("--version")
        .output()
        .expect("qemu-aarch64-static");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!("firstboot {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(report_manifest_version(img, off), env!("CARGO_PKG_VERSION"));
}

fn report_manifest_version(img: &Path, off: u64) -> String {
    read_manifest(img, off).versions.firstboot
}

/// The image's `/etc/firstboot/image.json`, parsed by firstboot's own reader.
fn read_manifest(img: &Path, off: u64) -> firstboot::manifest::ImageManifest {
    firstboot::manifest::ImageManifest::from_slice(
        &debugfs_cat(img, off, firstboot::manifest::ABSOLUTE_PATH),
        Path::new(firstboot::manifest::ABSOLUTE_PATH),
    )
    .unwrap()
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let root = tempfile::tempdir().unwrap();
    let repo = systests::repo_root();
    for o in ["overlays/k3s", "overlays/firstboot"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", repo.join(o).display()))
            .arg(root.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    // systemd's own units (sysinit.target, dbus.service, ...) as on the image.
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(root.path().join("usr/lib/systemd"))
        .status()
        .unwrap();
    assert!(st.success());
    // The binaries the units start, as real executable files.
    for b in ["k3s", "firstboot"] {
        let p = root.path().join("usr/local/bin").join(b);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let units = [
        "/etc/systemd/system/k3s.service",
        "/etc/systemd/system/k3s-agent.service",
        "/etc/systemd/system/firstboot.service",
    ];
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(units)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    // Parse problems are only warnings to systemd: any output at all is a finding.
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify warns:\n{err}"
    );

    // The check has teeth: without the k3s binary it fails.
    std::fs::remove_file(root.path().join("usr/local/bin/k3s")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(units[0])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // The scripts are valid POSIX sh.
    for s in ["k3s-killall.sh", "k3s-uninstall.sh"] {
        let st = Command::new("sh")
            .arg("-n")
            .arg(repo.join("overlays/k3s/usr/local/bin").join(s))
            .status()
            .unwrap();
        assert!(st.success(), "{s}");
    }
}

#[test]
fn example_recipes_parse() {
    let repo = systests::repo_root();
    let data = imagebuild::boards::DataDir::locate(Some(&repo));
    let catalog = imagebuild::boards::Catalog::load(&data).unwrap();
    for ex in ["homelab", "fleet", "classroom"] {
        let path = repo.join("examples").join(ex).join("image.toml");
        let recipe = imagebuild::recipe::Recipe::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let board = catalog.board(&recipe.image.board).unwrap();
        imagebuild::payload::release::AssetNames::for_arch(&board.arch).unwrap();
        assert!(!recipe.k3s.version.is_empty(), "{ex}: no K3s version");
        let cluster = imagebuild::cluster::from_recipe(&recipe)
            .unwrap_or_else(|e| panic!("{ex}: cluster: {e:#}"));
        assert!(cluster.is_some(), "{ex}: no cluster.toml stamped");
    }
}

/// k3s-killall.sh behaves like upstream's: a disk mounted below the data dir stays mounted with
/// its files (the old script unmounted and `rm -rf`ed it), mounts below /run/k3s and the kubelet's
/// pods dir go, and the iptables cleanup runs K3s's bundled iptables-save/-restore from
/// <data dir>/data/<hash>/bin/aux on a host whose PATH has no iptables. The script runs in
/// private mount, network and PID namespaces with tmpfs over /run, /var/lib and
/// /etc/systemd/system, so the host's mounts, links, units and processes are untouched.
#[test]
fn killall_keeps_data_dir_mounts_and_uses_bundled_iptables() {
    if !systests::is_root() {
        eprintln!("skipping killall_keeps_data_dir_mounts_and_uses_bundled_iptables: needs root (mount namespaces)");
        return;
    }
    let killall = systests::repo_root().join("overlays/k3s/usr/local/bin/k3s-killall.sh");
    let script = r#"
set -e
mount -t tmpfs run /run
mount -t tmpfs varlib /var/lib
mount -t tmpfs units /etc/systemd/system
D=/var/lib/rancher/k3s
mkdir -p $D/storage $D/agent/containerd/sandboxes/x/shm /run/k3s/containerd/task /var/lib/kubelet/pods/p1/volumes/v
mount -t tmpfs disk $D/storage
echo precious > $D/storage/keep
mount -t tmpfs shm $D/agent/containerd/sandboxes/x/shm
mount -t tmpfs task /run/k3s/containerd/task
mount -t tmpfs vol /var/lib/kubelet/pods/p1/volumes/v
aux=$D/data/0123abcd/bin/aux
mkdir -p $aux
cat > $aux/iptables-save <<'SAVE'
#!/bin/sh
printf '*filter\n-A INPUT -j KUBE-FIREWALL\n-A INPUT -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD -m comment --comment "flannel forward" -j ACCEPT\n-A FORWARD -j CNI-FORWARD\nCOMMIT\n'
SAVE
printf '#!/bin/sh\ncat > /run/restored\n' > $aux/iptables-restore
chmod +x $aux/iptables-save $aux/iptables-restore
# The host's tools, without any iptables.
mkdir /run/hostbin
for t in sh awk sort xargs umount rm ps pgrep ip sed grep id basename systemctl cat; do
    p=$(command -v $t) && ln -s "$p" /run/hostbin/$t
done
PATH=/run/hostbin sh "$KILLALL" >/run/killall.log 2>&1 || { cat /run/killall.log; echo "FAIL: killall exited non-zero"; exit 1; }
set +e
fail=0
grep -q " $D/storage " /proc/self/mounts || { echo "FAIL: the disk mounted at $D/storage was unmounted"; fail=1; }
[ "$(cat $D/storage/keep 2>/dev/null)" = precious ] || { echo "FAIL: files on the disk mounted below the data dir are gone"; fail=1; }
grep -q " $D/agent/containerd/sandboxes/x/shm " /proc/self/mounts || { echo "FAIL: a mount below the data dir was unmounted"; fail=1; }
grep -q " /run/k3s/containerd/task " /proc/self/mounts && { echo "FAIL: /run/k3s mount left"; fail=1; }
[ -e /run/k3s/containerd/task ] && { echo "FAIL: /run/k3s mount point left"; fail=1; }
grep -q " /var/lib/kubelet/pods/p1/volumes/v " /proc/self/mounts && { echo "FAIL: kubelet pod volume left mounted"; fail=1; }
[ -e /var/lib/kubelet/pods/p1/volumes/v ] && { echo "FAIL: kubelet pod volume mount point left"; fail=1; }
if [ -f /run/restored ]; then
    grep -q -- "-A INPUT -s 10.0.0.0/8 -j ACCEPT" /run/restored || { echo "FAIL: restore lost a host rule"; fail=1; }
    grep -q -i "KUBE-\|CNI-\|flannel" /run/restored && { echo "FAIL: K3s rules were restored"; fail=1; }
else
    echo "FAIL: the bundled iptables-restore never ran"; fail=1
fi
[ $fail = 0 ] || { echo "--- killall output"; cat /run/killall.log; }
exit $fail
"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .env("KILLALL", &killall)
        .output()
        .expect("running unshare");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
