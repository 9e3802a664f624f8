//! System tests of `imagebuild build`, `inspect` and `verify` on generated fixture images.

use systests::image::{fixture, http, support};
use systests::payload::release;

use fixture::{Flavor, Spec};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const EPOCH: &str = "1735689600"; // 2025-01-01T00:00:00Z
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixtureKeyForTestsOnly test@example";

/// A fixture base image in `dir`, readable by everyone.
fn base(dir: &Path, flavor: Flavor) -> PathBuf {
    let p = dir.join(format!("{flavor:?}.img").to_lowercase());
    fixture::make(&Spec::small(flavor), &p).expect("making fixture");
    share(&p);
    p
}

/// A recipe with every disk-side feature turned on.
fn recipe(dir: &Path, base: &str, board: &str, extra_image: &str) -> PathBuf {
    let overlay = dir.join("my-overlay");
    std::fs::create_dir_all(overlay.join("usr/local/sbin")).unwrap();
    std::fs::write(
        overlay.join("usr/local/sbin/hello"),
        "#!/bin/sh\necho hello\n",
    )
    .unwrap();
    std::fs::set_permissions(
        overlay.join("usr/local/sbin/hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::create_dir_all(overlay.join("etc")).unwrap();
    std::fs::write(overlay.join("etc/motd"), "built by imagebuild\n").unwrap();
    // K3s comes from a generated release in a local mirror directory beside the recipe.
    release::make(&dir.join("release"));
    release::fake_firstboot(dir);
    let text = format!(
        r#"[image]
board = "{board}"
media = "ssd"
base = "{base}"
output = "out/node.img"
free_space = "300MiB"
{extra_image}

[k3s]
version = "v1.31.10+k3s1"
mirror = "release"

[os]
user = "pi"
ssh_authorized_keys = ["{KEY}"]
timezone = "Europe/Berlin"
wifi = {{ country = "de", ssid = "homelab", psk = "correct horse battery" }}
overlays = ["overlays/sd-tuning", "my-overlay"]

[cluster.cluster]
name = "homelab"
token = "fixture-token-0123456789"
servers = 3
nodes = 5
"#
    );
    let p = dir.join("image.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::set_permissions(
        dir.join("out"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    share(&p);
    p
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

fn check_built_image(flavor: Flavor, dir: &Path, base: &Path) {
    let img = dir.join("out/node.img");
    assert!(img.is_file(), "no output image");
    let (b_start, b_size) = sfdisk_partition(base, 2);
    let (start, size) = sfdisk_partition(&img, 2);
    assert_eq!(start, b_start, "partition 2 moved");
    assert!(
        size > b_size,
        "partition 2 did not grow: {b_size} -> {size} sectors"
    );
    assert_eq!(
        (start * 512) % (8 << 20),
        if flavor == Flavor::Ubuntu {
            (513 << 20) % (8 << 20)
        } else {
            0
        }
    );
    let (p1_start, p1_size) = sfdisk_partition(&img, 1);
    let root_off = start * 512;
    e2fsck_clean(&img, root_off);
    fsck_vfat_clean(&img, p1_start * 512, p1_size * 512);

    // Boot partition.
    let cmdline =
        String::from_utf8(fat_read(&img, p1_start * 512, "cmdline.txt").unwrap()).unwrap();
    assert_eq!(
        cmdline.lines().count(),
        1,
        "cmdline.txt must stay one line: {cmdline:?}"
    );
    // Only cgroup_enable=memory: cgroup_memory=1 is obsolete (the kernel logs it as unknown).
    for flag in ["cgroup_enable=memory", "cfg80211.ieee80211_regdom=DE"] {
        assert_eq!(
            cmdline.split_whitespace().filter(|w| *w == flag).count(),
            1,
            "{flag} in {cmdline}"
        );
    }
    assert!(
        !cmdline.contains("cgroup_memory"),
        "obsolete cgroup_memory=1 written: {cmdline}"
    );
    if let Some(hook) = flavor.hook() {
        assert!(
            cmdline.split_whitespace().any(|w| w == hook),
            "hook {hook} lost: {cmdline}"
        );
    }
    let config = String::from_utf8(fat_read(&img, p1_start * 512, "config.txt").unwrap()).unwrap();
    // The board's lines go under its own filter, and [all] follows so later lines apply to all.
    assert!(
        config.ends_with("[pi5]\ndtparam=pciex1\n[all]\n"),
        "{config}"
    );
    assert!(fat_read(&img, p1_start * 512, "ssh").is_some());
    let cluster =
        String::from_utf8(fat_read(&img, p1_start * 512, "cluster.toml").unwrap()).unwrap();
    assert!(cluster.contains("name = \"homelab\""), "{cluster}");
    match flavor {
        Flavor::Ubuntu => {
            assert!(fat_read(&img, p1_start * 512, "userconf.txt").is_none());
            let ud =
                String::from_utf8(fat_read(&img, p1_start * 512, "user-data").unwrap()).unwrap();
            assert!(ud.starts_with("#cloud-config") && ud.contains(KEY), "{ud}");
        }
        _ => assert_eq!(
            fat_read(&img, p1_start * 512, "userconf.txt").unwrap(),
            b"pi:*\n"
        ),
    }
    if flavor == Flavor::Ubuntu {
        // No NetworkManager on Ubuntu Server: Wi-Fi goes to cloud-init's netplan network-config.
        let nc =
            String::from_utf8(fat_read(&img, p1_start * 512, "network-config").unwrap()).unwrap();
        for want in [
            "network:\n  version: 2\n",
            "  wifis:\n    wlan0:\n",
            "regulatory-domain: \"DE\"",
            "\"homelab\":\n          password: \"correct horse battery\"\n",
        ] {
            assert!(nc.contains(want), "network-config lacks {want:?}:\n{nc}");
        }
    }

    // Root filesystem: owners and modes exactly as declared.
    if flavor != Flavor::Ubuntu {
        check_wifi_and_login(&img, root_off);
    }
    let expect = [
        ("/home/pi/.ssh", "0700", 1000, 1000),
        ("/home/pi/.ssh/authorized_keys", "0600", 1000, 1000),
        ("/usr/local/sbin/hello", "0755", 0, 0),
        ("/etc/motd", "0644", 0, 0),
        (
            "/etc/systemd/journald.conf.d/50-sd-tuning.conf",
            "0644",
            0,
            0,
        ),
        ("/etc/sysctl.d/90-k3s.conf", "0644", 0, 0),
        ("/etc/firstboot/image.json", "0644", 0, 0),
        ("/etc/timezone", "0644", 0, 0),
    ];
    for (path, mode, uid, gid) in expect {
        let (m, u, g, _) = debugfs_stat(&img, root_off, path);
        assert_eq!((m.as_str(), u, g), (mode, uid, gid), "{path}");
    }
    let (_, _, _, kind) = debugfs_stat(&img, root_off, "/etc/localtime");
    assert_eq!(kind, "symlink");
    assert_eq!(
        debugfs_cat(&img, root_off, "/home/pi/.ssh/authorized_keys"),
        format!("{KEY}\n").into_bytes()
    );
    // The base's first-boot conventions are intact.
    assert_eq!(
        debugfs_cat(&img, root_off, "/etc/machine-id"),
        flavor.machine_id()
    );
    assert_eq!(
        debugfs_cat(&img, root_off, "/etc/timezone"),
        b"Europe/Berlin\n"
    );

    // inspect --json reports the same.
    let out = run(imagebuild(dir).arg("inspect").arg("--json").arg(&img));
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    assert_eq!(
        j["machine_id"].as_str().unwrap().as_bytes(),
        flavor.machine_id()
    );
    for f in j["cgroup_flags"].as_array().unwrap() {
        assert_eq!(f[1], 1, "{f}");
    }
    if let Some(hook) = flavor.hook() {
        assert!(j["first_boot_hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == hook));
    }
    assert_eq!(j["cluster_toml"], true);
    assert_eq!(j["ssh_enabled"], true);
    assert_eq!(j["layout"]["root"]["size"].as_u64().unwrap(), size * 512);
    assert!(
        j["rootfs_free"].as_u64().unwrap() >= 300 << 20,
        "free_space not honoured"
    );
    assert_eq!(j["config_lines"][0], "dtparam=pciex1");
    let declared = j["declared_files"].as_array().unwrap();
    let keys = declared
        .iter()
        .find(|d| d["path"] == "/home/pi/.ssh/authorized_keys")
        .expect("keys declared");
    assert_eq!(
        (keys["found_mode"].as_str(), keys["found_uid"].as_u64()),
        (Some("0600"), Some(1000))
    );
    assert!(
        declared.iter().all(|d| d["matches"] == true),
        "{declared:?}"
    );

    // verify agrees, and the checksum file matches the image.
    let out = run(imagebuild(dir).arg("verify").arg(&img));
    assert!(out.status.success(), "verify failed");
    let sums = Command::new("sha256sum")
        .arg("-c")
        .arg("node.img.sha256")
        .current_dir(dir.join("out"))
        .output()
        .unwrap();
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
}

/// Wi-Fi on at first boot and a first user who can log in and sudo (Raspberry Pi OS bases): the
/// files as NetworkManager, systemd-rfkill, sshd/login and sudo read them.
fn check_wifi_and_login(img: &Path, root_off: u64) {
    let keyfile = "/etc/NetworkManager/system-connections/wifi-homelab.nmconnection";
    let (m, u, g, _) = debugfs_stat(img, root_off, keyfile);
    assert_eq!((m.as_str(), u, g), ("0600", 0, 0), "{keyfile}");
    let text = String::from_utf8(debugfs_cat(img, root_off, keyfile)).unwrap();
    for want in [
        "type=wifi",
        "ssid=homelab",
        "key-mgmt=wpa-psk",
        "psk=correct horse battery",
    ] {
        assert!(text.contains(want), "keyfile lacks {want}:\n{text}");
    }
    // The fixture ships WirelessEnabled=false, as Raspberry Pi OS does; the build turns it on.
    let state = String::from_utf8(debugfs_cat(
        img,
        root_off,
        "/var/lib/NetworkManager/NetworkManager.state",
    ))
    .unwrap();
    assert!(
        state.contains("[main]") && state.contains("WirelessEnabled=true"),
        "{state}"
    );
    assert!(!state.contains("WirelessEnabled=false"), "{state}");
    for f in [
        "platform-3f300000.mmcnr:wlan",
        "platform-fe300000.mmcnr:wlan",
        "platform-1001100000.mmc:wlan",
    ] {
        let p = format!("/var/lib/systemd/rfkill/{f}");
        assert_eq!(debugfs_cat(img, root_off, &p), b"0\n", "{p}");
    }
    // pi-gen's Bluetooth state is left alone.
    assert_eq!(
        debugfs_cat(
            img,
            root_off,
            "/var/lib/systemd/rfkill/platform-107d50c000.serial:bluetooth"
        ),
        b"0\n"
    );
    // Login: a real shell (the trixie fixture ships nologin) and sudo without a password.
    let passwd = String::from_utf8(debugfs_cat(img, root_off, "/etc/passwd")).unwrap();
    assert!(
        passwd.contains("\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"),
        "{passwd}"
    );
    assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n"));
    let sudoers = "/etc/sudoers.d/010_pi-nopasswd";
    let (m, u, g, _) = debugfs_stat(img, root_off, sudoers);
    assert_eq!((m.as_str(), u, g), ("0440", 0, 0), "{sudoers}");
    let rule = String::from_utf8(debugfs_cat(img, root_off, sudoers)).unwrap();
    assert!(rule.contains("\npi ALL=(ALL) NOPASSWD: ALL\n"), "{rule}");
    visudo_accepts(&rule);
}

/// `visudo -c` on a sudoers fragment, when sudo is installed (it is in tests/debian-packages.txt).
fn visudo_accepts(rule: &str) {
    let Ok(visudo) = which("visudo") else {
        eprintln!("visudo not installed: sudoers syntax not checked by sudo itself");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rule");
    std::fs::write(&f, rule).unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
    let out = Command::new(visudo)
        .args(["-c", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "visudo refuses the drop-in:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(())
}

/// A cluster section for Ubuntu bases, whose kernel lacks vxlan: flannel's host-gw backend.
const UBUNTU_FLANNEL: &str = "\n[cluster.k3s]\nextra = { flannel-backend = \"host-gw\" }\n";

#[test]
fn builds_each_layout_rootless_and_clean() {
    for flavor in Flavor::ALL {
        let dir = scratch();
        let b = base(dir.path(), flavor);
        let r = recipe(dir.path(), &b.display().to_string(), "rpi5", "");
        if flavor == Flavor::Ubuntu {
            append(&r, UBUNTU_FLANNEL);
        }
        let out = build(dir.path(), &r, &["--json"]);
        assert!(out.status.success(), "{flavor:?} build failed");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(report["rootfs_size_after"].as_u64() > report["rootfs_size_before"].as_u64());
        check_built_image(flavor, dir.path(), &b);
    }
}

/// The SHA-256 in `out/<name>.sha256` (written by the build).
fn published_sha256(dir: &Path, name: &str) -> String {
    let line = std::fs::read_to_string(dir.join(format!("out/{name}.sha256"))).unwrap();
    line.split_whitespace().next().unwrap().to_string()
}

/// The SHA-256 of `out/<name>.zst` decompressed by the zstd tool.
fn zst_sha256(dir: &Path, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc out/{name}.zst | sha256sum"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "zstd -dc out/{name}.zst failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn same_epoch_gives_the_same_image() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(
        dir.path(),
        &b.display().to_string(),
        "rpi4",
        "compress = \"zstd\"",
    );
    let mut sums = Vec::new();
    for name in ["a.img", "b.img"] {
        let out = dir.path().join("out").join(name);
        assert!(build(dir.path(), &r, &["-o", out.to_str().unwrap()])
            .status
            .success());
        let sum = published_sha256(dir.path(), name);
        assert_eq!(
            zst_sha256(dir.path(), name),
            sum,
            "the .zst does not hold the image"
        );
        sums.push(sum);
        assert!(dir.path().join(format!("out/{name}.json")).is_file());
    }
    assert_eq!(
        sums[0], sums[1],
        "two builds with one SOURCE_DATE_EPOCH differ"
    );
}

#[test]
fn compress_level_sets_the_zstd_level_and_a_bad_one_is_refused() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let mut sizes = Vec::new();
    for level in [1, 19] {
        let r = recipe(
            dir.path(),
            &b.display().to_string(),
            "rpi4",
            &format!("compress = \"zstd\"\ncompress_level = {level}"),
        );
        let name = format!("l{level}.img");
        let out = dir.path().join("out").join(&name);
        assert!(build(dir.path(), &r, &["-o", out.to_str().unwrap()])
            .status
            .success());
        assert_eq!(
            zst_sha256(dir.path(), &name),
            published_sha256(dir.path(), &name),
            "the level-{level} .zst does not hold the image"
        );
        sizes.push(
            std::fs::metadata(format!("{}.zst", out.display()))
                .unwrap()
                .len(),
        );
    }
    assert!(
        sizes[1] < sizes[0],
        "level 19 ({} bytes) is not smaller than level 1 ({} bytes)",
        sizes[1],
        sizes[0]
    );
    for e in std::fs::read_dir(dir.path().join("out")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let r = recipe(
        dir.path(),
        &b.display().to_string(),
        "rpi4",
        "compress = \"zstd\"\ncompress_level = 22",
    );
    let out = dir.path().join("out/bad.img");
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &["-o", out.to_str().unwrap()]),
        &["compress_level = 22 is out of range for zstd: use 1 (fastest) to 19"],
    );
}

#[test]
fn an_unchanged_local_base_is_hashed_once() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    // A base written in the last 2 s is not remembered (kernel timestamps are coarse).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let remembered = "unchanged since it was hashed";
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let first = build(dir.path(), &r, &[]);
    assert!(first.status.success());
    assert!(!stderr(&first).contains(remembered), "{}", stderr(&first));
    let second = build(dir.path(), &r, &[]);
    assert!(second.status.success());
    assert!(stderr(&second).contains(remembered), "{}", stderr(&second));
    // Touched (same bytes, new mtime and ctime): hashed again.
    let st = Command::new("touch").arg(&b).status().unwrap();
    assert!(st.success());
    let third = build(dir.path(), &r, &[]);
    assert!(third.status.success());
    assert!(!stderr(&third).contains(remembered), "{}", stderr(&third));
}

fn append(path: &Path, text: &str) {
    let mut t = std::fs::read_to_string(path).unwrap();
    t.push_str(text);
    std::fs::write(path, t).unwrap();
}

fn xz(path: &Path) -> PathBuf {
    let st = Command::new("xz")
        .args(["-k", "-T0", "-1", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    let p = PathBuf::from(format!("{}.xz", path.display()));
    share(&p);
    p
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn no_output(dir: &Path) {
    let left = names(&dir.join("out"));
    assert!(
        left.is_empty(),
        "files left in the output directory: {left:?}"
    );
}

#[test]
fn second_build_neither_downloads_nor_decompresses() {
    let dir = scratch();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let b = base(&served, Flavor::Bookworm);
    let packed = xz(&b);
    std::fs::remove_file(&b).unwrap();
    let server = http::FileServer::start(served.clone(), None);
    let url = format!("{}/bookworm.img.xz", server.url);
    let r = recipe(
        dir.path(),
        &url,
        "rpi3",
        &format!("base_sha256 = \"{}\"", sha256(&packed)),
    );
    let out = build(dir.path(), &r, &["--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base_from_cache"], false);
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    std::fs::remove_file(dir.path().join("out/node.img")).unwrap();

    // Make the source unreachable and leave nothing to decompress: only the raw cache can help.
    drop(server);
    std::fs::remove_dir_all(&served).unwrap();
    for f in names(&dir.path().join("cache/downloads")) {
        std::fs::remove_file(dir.path().join("cache/downloads").join(f)).unwrap();
    }
    let out = build(dir.path(), &r, &["--json"]);
    assert!(
        out.status.success(),
        "second build needed the network or the archive"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["base_from_cache"], true);
    assert!(String::from_utf8_lossy(&out.stderr).contains("using cached raw image"));
}

fn fails_cleanly(dir: &Path, out: std::process::Output, words: &[&str]) {
    assert!(!out.status.success(), "build should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    for w in words {
        assert!(err.contains(w), "error lacks {w:?}:\n{err}");
    }
    no_output(dir);
}

#[test]
fn sha256_mismatch_fails_cleanly() {
    let dir = scratch();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let packed = xz(&base(&served, Flavor::Trixie));
    let server = http::FileServer::start(served, None);
    let wrong = "0".repeat(64);
    let r = recipe(
        dir.path(),
        &format!("{}/trixie.img.xz", server.url),
        "rpi4",
        &format!("base_sha256 = \"{wrong}\""),
    );
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &["sha256 mismatch", &sha256(&packed), &wrong],
    );
    assert!(
        names(&dir.path().join("cache/downloads")).is_empty(),
        "a bad download stayed in the cache"
    );
}

#[test]
fn truncated_xz_fails_cleanly() {
    let dir = scratch();
    let packed = xz(&base(dir.path(), Flavor::Bookworm));
    let len = std::fs::metadata(&packed).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&packed)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = recipe(dir.path(), &packed.display().to_string(), "rpi4", "");
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &["truncated or corrupt"],
    );
    assert!(
        names(&dir.path().join("cache/raw")).is_empty(),
        "a partial raw image stayed in the cache"
    );
}

#[test]
fn non_pi_layout_fails_cleanly() {
    let dir = scratch();
    let p = dir.path().join("plain.img");
    fixture::make_not_pi(&p).unwrap();
    share(&p);
    let r = recipe(dir.path(), &p.display().to_string(), "rpi4", "");
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &["is not a Raspberry Pi OS layout", "partition 1"],
    );
}

#[test]
fn unknown_board_fails_cleanly() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi6", "");
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &[
            "unknown board `rpi6`",
            "Did you mean",
            "cm4, cm5, rpi3, rpi4, rpi5, zero2w",
        ],
    );
}

#[test]
fn recipe_typo_fails_cleanly() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(
        dir.path(),
        &b.display().to_string(),
        "rpi4",
        "compres = \"zstd\"",
    );
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &[
            "image.toml:7:1",
            "unknown key `compres`",
            "Did you mean `compress`?",
        ],
    );
}

#[test]
fn no_room_for_the_output_fails_cleanly() {
    if !systests::is_root() {
        eprintln!(
            "skipping no_room_for_the_output_fails_cleanly: mounting a small tmpfs needs root"
        );
        return;
    }
    let dir = scratch();
    let b = base(dir.path(), Flavor::Bookworm);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let small = dir.path().join("out");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0777", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success(), "mounting tmpfs");
    let out = build(dir.path(), &r, &[]);
    let left = names(&small);
    let _ = Command::new("umount").arg(&small).status();
    assert!(left.is_empty(), "files left on the full disk: {left:?}");
    fails_cleanly(dir.path(), out, &["no room to write the output"]);
}

#[test]
fn sigint_mid_build_leaves_nothing() {
    let dir = scratch();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let packed = xz(&base(&served, Flavor::Trixie));
    // A slow server keeps the build busy long enough to interrupt it for sure.
    let server = http::FileServer::start(served, Some(std::time::Duration::from_millis(40)));
    let r = recipe(
        dir.path(),
        &format!("{}/trixie.img.xz", server.url),
        "rpi4",
        &format!("base_sha256 = \"{}\"", sha256(&packed)),
    );
    let downloads = dir.path().join("cache/downloads");
    let out = interrupt_build(dir.path(), &r, &downloads, ".partial", 60);
    fails_cleanly(dir.path(), out, &["interrupted"]);
    assert!(
        names(&downloads).is_empty(),
        "partial download left: {:?}",
        names(&downloads)
    );
}

#[test]
fn invalid_cluster_is_never_written() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("servers = 3", "servers = 4");
    std::fs::write(&r, text).unwrap();
    let out = build(dir.path(), &r, &[]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("fixture-token-0123456789"),
        "token leaked"
    );
    fails_cleanly(dir.path(), out, &["servers"]);
}

#[test]
fn payload_entries_are_written_as_declared() {
    use imagebuild::rootfs::payload::Payload;
    let dir = scratch();
    let b = base(dir.path(), Flavor::Bookworm);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let bin = dir.path().join("k3s");
    std::fs::write(&bin, vec![0x7f; 3 << 20]).unwrap();
    let mut p = Payload::new();
    p.file(&bin, "/usr/local/bin/k3s", 0o755);
    p.symlink("/usr/local/bin/kubectl", "k3s");
    p.dir("/var/lib/rancher/k3s/agent/images", 0o750)
        .owner(0, 27);
    p.bytes("/etc/rancher/k3s/k3s.env", "K3S_X=1\n", 0o600)
        .mtime(1_234_567_890);
    p.bytes("/etc/motd", "payload wins\n", 0o644);
    std::env::set_var("SOURCE_DATE_EPOCH", EPOCH);
    let options = imagebuild::build::BuildOptions {
        cache_dir: Some(dir.path().join("cache")),
        data_dir: Some(systests::repo_root()),
        payload: p,
        ..Default::default()
    };
    let report = imagebuild::build::run(&r, options).expect("build with payload");
    let img = &report.output;
    let off = report.layout.partitions[1].start;
    let check = |path: &str, mode: &str, uid: u32, gid: u32, kind: &str| {
        let (m, u, g, k) = debugfs_stat(img, off, path);
        assert_eq!(
            (m.as_str(), u, g, k.as_str()),
            (mode, uid, gid, kind),
            "{path}"
        );
    };
    check("/usr/local/bin/k3s", "0755", 0, 0, "regular");
    check("/usr/local/bin/kubectl", "0777", 0, 0, "symlink");
    check(
        "/var/lib/rancher/k3s/agent/images",
        "0750",
        0,
        27,
        "directory",
    );
    check("/etc/rancher/k3s/k3s.env", "0600", 0, 0, "regular");
    let stat = Command::new("debugfs")
        .arg("-R")
        .arg("stat /etc/rancher/k3s/k3s.env")
        .arg(format!("{}?offset={off}", img.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("mtime: 0x499602d2"),
        "declared mtime not set"
    );
    let link = Command::new("debugfs")
        .arg("-R")
        .arg("stat /usr/local/bin/kubectl")
        .arg(format!("{}?offset={off}", img.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("Fast link dest: \"k3s\""));
    // The payload's /etc/motd replaces the overlay's; the manifest lists the payload's hash.
    assert_eq!(debugfs_cat(img, off, "/etc/motd"), b"payload wins\n");
    assert_eq!(debugfs_cat(img, off, "/usr/local/bin/k3s").len(), 3 << 20);
    e2fsck_clean(img, off);
    let out = run(imagebuild(dir.path()).arg("verify").arg(img));
    assert!(out.status.success(), "verify after payload");
    assert!(String::from_utf8_lossy(&out.stdout).contains("payload files match"));
}

#[test]
fn boards_and_help_teach() {
    let dir = scratch();
    let out = run(imagebuild(dir.path()).arg("boards"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for b in [
        "rpi3",
        "rpi4",
        "rpi5",
        "cm4",
        "cm5",
        "zero2w",
        "raspios-lite-arm64-bookworm",
        "raspios-lite-arm64-trixie",
        "ubuntu-server-24.04-raspi",
    ] {
        assert!(
            text.contains(b),
            "{b} missing from `imagebuild boards`:\n{text}"
        );
    }
    assert!(text.contains("agent only"));
    let out = run(imagebuild(dir.path()).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("image.toml") && help.contains("SOURCE_DATE_EPOCH"),
        "{help}"
    );
}

#[test]
fn gpt_layouts_are_read() {
    let dir = scratch();
    let img = dir.path().join("gpt.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\nstart=34816, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut f = std::fs::File::open(&img).unwrap();
    let layout = imagebuild::disk::DiskLayout::read(&mut f).unwrap();
    assert_eq!(layout.table, imagebuild::disk::TableKind::Gpt);
    assert_eq!(layout.partitions.len(), 2);
    assert_eq!(layout.partitions[0].start, 2048 * 512);
    assert!(layout.partitions[0].is_fat_type());
    assert_eq!(layout.partitions[1].start, 34816 * 512);
    // Growing GPT is refused with a clear message rather than corrupting the backup header.
    let mut w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut l = layout.clone();
    let err = l
        .grow_last_partition(&mut w, 128 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("GPT"), "{err}");
}

#[test]
fn sigint_while_writing_the_image_leaves_nothing() {
    let dir = scratch();
    // Big enough that copying and writing the root filesystem take a noticeable moment.
    let b = dir.path().join("big.img");
    let spec = Spec {
        flavor: Flavor::Trixie,
        root_mib: 900,
        filler_bytes: 500 << 20,
    };
    fixture::make(&spec, &b).expect("making fixture");
    share(&b);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let out_dir = dir.path().join("out");
    let out = interrupt_build(dir.path(), &r, &out_dir, ".partial-", 120);
    fails_cleanly(dir.path(), out, &["interrupted"]);
}

/// Start `imagebuild build recipe`, wait (up to `limit_secs`) until a file whose name contains
/// `marker` appears in `watch` (the build is mid-way), send SIGINT and return its output.
fn interrupt_build(
    dir: &Path,
    recipe: &Path,
    watch: &Path,
    marker: &str,
    limit_secs: u64,
) -> std::process::Output {
    let child = imagebuild(dir)
        .arg("build")
        .arg(recipe)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--firstboot-bin")
        .arg(dir.join("firstboot-fake"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit_secs);
    while !names(watch).iter().any(|n| n.contains(marker)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker} file appeared in {} within {limit_secs} s",
            watch.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let st = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn clear_out(dir: &Path) {
    for f in names(&dir.join("out")) {
        std::fs::remove_file(dir.join("out").join(f)).unwrap();
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let t = std::fs::read_to_string(path).unwrap();
    assert!(t.contains(from), "{from:?} not in the recipe");
    std::fs::write(path, t.replace(from, to)).unwrap();
}

#[test]
fn recipe_errors_name_the_fix_and_write_nothing() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "country = \"de\"",
            "country = \"XY\"",
            &[
                "wifi.country = \"XY\" is not an ISO 3166-1 alpha-2",
                "\"DE\"",
            ],
        ),
        (
            "psk = \"correct horse battery\"",
            "psk = \"tiny\"",
            &["wifi.psk has 4 characters", "8 to 63"],
        ),
        (
            "user = \"pi\"",
            "user = \"pi\"\npassword = \"hunter22\"",
            &["plain-text password is not accepted", "openssl passwd -6"],
        ),
        (
            "user = \"pi\"",
            "user = \"pi\"\npassword_hash = \"hunter22\"",
            &["not a crypt(3) hash", "openssl passwd -6"],
        ),
        (
            "user = \"pi\"",
            "user = \"web_admin\"",
            &["user = \"web_admin\"", "userconf-pi would refuse it"],
        ),
        (
            "timezone = \"Europe/Berlin\"",
            "timezone = \"Mars/Olympus_Mons\"",
            &[
                "timezone = \"Mars/Olympus_Mons\" is not a timezone the base image knows",
                "timedatectl list-timezones",
            ],
        ),
    ];
    for (from, to, words) in cases {
        let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
        edit(&r, from, to);
        let out = build(dir.path(), &r, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("hunter22"), "secret echoed: {err}");
        fails_cleanly(dir.path(), out, words);
    }
}

#[test]
fn build_warns_when_nobody_could_log_in() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    edit(&r, &format!("ssh_authorized_keys = [\"{KEY}\"]\n"), "");
    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success(), "a key-less build is allowed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: nobody could log in") && err.contains("openssl passwd -6"),
        "{err}"
    );
    // With a key the warning is gone.
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    clear_out(dir.path());
    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("nobody could log in"));
}

#[test]
fn password_user_gets_sudo_with_its_password() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    // Shaped like `openssl passwd -6` output; the build checks the form, not the password.
    let hash = "$6$fixture$Hz1y2QZl1.gW1o0Gx0bX8fWQ2Vdp0JwQ2E9m1.nU1z0c8lq3GJ2sF2d8n1t3N4x5r0cQ9bJm3y6mX4kT1lR5i.";
    edit(
        &r,
        "user = \"pi\"",
        &format!("user = \"ops\"\npassword_hash = \"{hash}\""),
    );
    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success());
    let img = dir.path().join("out/node.img");
    let (p1, _) = sfdisk_partition(&img, 1);
    let (p2, _) = sfdisk_partition(&img, 2);
    assert_eq!(
        fat_read(&img, p1 * 512, "userconf.txt").unwrap(),
        format!("ops:{hash}\n").into_bytes()
    );
    let root_off = p2 * 512;
    let sudoers = "/etc/sudoers.d/010_ops-passwd";
    let (m, u, g, _) = debugfs_stat(&img, root_off, sudoers);
    assert_eq!((m.as_str(), u, g), ("0440", 0, 0));
    let rule = String::from_utf8(debugfs_cat(&img, root_off, sudoers)).unwrap();
    assert!(rule.contains("\nops ALL=(ALL:ALL) ALL\n"), "{rule}");
    assert!(!rule.contains("NOPASSWD"), "{rule}");
    visudo_accepts(&rule);
    // userconf-pi renames pi (uid 1000) to ops at first boot; the shell it keeps is a real one.
    let passwd = String::from_utf8(debugfs_cat(&img, root_off, "/etc/passwd")).unwrap();
    assert!(
        passwd.contains("\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"),
        "{passwd}"
    );
}

/// Put a kernel module file into the image's root filesystem, as linux-modules-extra-raspi would.
fn add_vxlan_module(img: &Path, root_off: u64) {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("vxlan.ko.zst");
    std::fs::write(&module, b"\x28\xb5\x2f\xfd fixture module").unwrap();
    let mut script = String::new();
    let mut path = String::new();
    for part in "usr/lib/modules/6.8.0-1010-raspi/kernel/drivers/net/vxlan".split('/') {
        path.push('/');
        path.push_str(part);
        script.push_str(&format!("mkdir {path}\n"));
    }
    script.push_str(&format!("write {} {path}/vxlan.ko.zst\n", module.display()));
    let f = dir.path().join("script");
    std::fs::write(&f, script).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&f)
        .arg(format!("{}?offset={root_off}", img.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn ubuntu_without_vxlan_is_refused_with_the_way_out() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Ubuntu);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &[
            "linux-modules-extra-raspi",
            "flannel vxlan",
            "flannel-backend = \"host-gw\"",
            "raspios-lite-arm64",
        ],
    );
    // An explicit vxlan backend is refused the same way.
    append(
        &r,
        "\n[cluster.k3s]\nextra = { flannel-backend = \"vxlan\" }\n",
    );
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &["linux-modules-extra-raspi"],
    );
    // A base that has the module (linux-modules-extra-raspi installed) builds.
    let (p2, _) = sfdisk_partition(&b, 2);
    add_vxlan_module(&b, p2 * 512);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let out = build(dir.path(), &r, &[]);
    assert!(out.status.success(), "Ubuntu base with vxlan.ko refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("linux-modules-extra-raspi"), "{err}");
}

#[test]
fn config_txt_board_sections_and_4k_kernel() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let config_of = |board: &str, extra: &str| -> String {
        let r = recipe(dir.path(), &b.display().to_string(), board, extra);
        clear_out(dir.path());
        let out = build(dir.path(), &r, &[]);
        assert!(out.status.success(), "{board} {extra}");
        let img = dir.path().join("out/node.img");
        let (p1, _) = sfdisk_partition(&img, 1);
        String::from_utf8(fat_read(&img, p1 * 512, "config.txt").unwrap()).unwrap()
    };
    let base_config = "[cm4]\notg_mode=1\n\n[all]\n";
    // Pi 5 with the 4 KiB-page kernel: both lines under [pi5] (media is ssd in the recipe).
    let c = config_of("rpi5", "kernel_page_size = \"4k\"");
    assert!(c.contains(base_config), "{c}");
    assert!(
        c.ends_with("[pi5]\ndtparam=pciex1\nkernel=kernel8.img\n[all]\n"),
        "{c}"
    );
    let c = config_of("cm5", "kernel_page_size = \"4k\"");
    assert!(
        c.ends_with("[cm5]\ndtparam=pciex1\nkernel=kernel8.img\n[all]\n"),
        "{c}"
    );
    // Without the option the Pi 5 keeps its default (16 KiB) kernel.
    let c = config_of("rpi5", "");
    assert!(!c.contains("kernel="), "{c}");
    // gpu_mem only for the boards it belongs to, under their own filters.
    let c = config_of("rpi3", "");
    assert!(c.ends_with("[pi3]\ngpu_mem=16\n[all]\n"), "{c}");
    let c = config_of("zero2w", "");
    assert!(c.ends_with("[pi02]\ngpu_mem=16\n[all]\n"), "{c}");
    for board in ["rpi4", "rpi5", "cm4", "cm5"] {
        assert!(!config_of(board, "").contains("gpu_mem"), "{board}");
    }
    // A Pi 4 has no 16 KiB kernel to ask for.
    let r = recipe(
        dir.path(),
        &b.display().to_string(),
        "rpi4",
        "kernel_page_size = \"16k\"",
    );
    clear_out(dir.path());
    fails_cleanly(
        dir.path(),
        build(dir.path(), &r, &[]),
        &["board rpi4 has no kernel with 16 KiB pages"],
    );
}

/// Build with a given `--firstboot-bin` (instead of the fixture's fake one).
fn build_with_firstboot(dir: &Path, recipe: &Path, firstboot: &Path) -> std::process::Output {
    run(imagebuild(dir)
        .arg("build")
        .arg(recipe)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--firstboot-bin")
        .arg(firstboot)
        .env("SOURCE_DATE_EPOCH", EPOCH))
}

#[test]
fn firstboot_bin_must_be_a_static_elf_for_the_board_that_answers_version() {
    use release::{tiny_elf, ElfArch};
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (
            write("script", b"#!/bin/sh\necho firstboot 1.0.0\n"),
            &[
                "is not a program (not an ELF file",
                "--target aarch64-unknown-linux-musl",
            ],
        ),
        (
            write(
                "amd64",
                &tiny_elf(ElfArch::X86_64, "firstboot 1.0.0\n", None),
            ),
            &["is a x86-64 program, but the board runs aarch64"],
        ),
        (
            write(
                "dynamic",
                &tiny_elf(
                    ElfArch::Aarch64,
                    "firstboot 1.0.0\n",
                    Some("/lib/ld-linux-aarch64.so.1"),
                ),
            ),
            &[
                "is dynamically linked (it needs /lib/ld-linux-aarch64.so.1)",
                "must be static",
            ],
        ),
        (
            write(
                "impostor",
                &tiny_elf(ElfArch::Aarch64, "hello world\n", None),
            ),
            &[
                "does not answer `--version` as firstboot does",
                "hello world",
            ],
        ),
    ];
    let qemu = ["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"]
        .iter()
        .any(|q| Path::new(q).exists());
    for (bin, words) in cases {
        if bin.ends_with("impostor") && !qemu {
            eprintln!("skipping the --version case: qemu-aarch64-static is not installed");
            continue;
        }
        let out = build_with_firstboot(dir.path(), &r, &bin);
        fails_cleanly(dir.path(), out, words);
    }
    // The fixtures' fake is a static aarch64 ELF that answers --version: accepted, and its
    // version lands in the build report (parsed from --json).
    let out = run(imagebuild(dir.path())
        .arg("build")
        .arg(&r)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--firstboot-bin")
        .arg(dir.path().join("firstboot-fake"))
        .arg("--json")
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json is JSON");
    assert_eq!(j["versions"]["firstboot"], "0.0.0-fake");
    assert_eq!(j["versions"]["k3s"], "v1.31.10+k3s1");
    for k in ["image", "sha256", "bmap", "report"] {
        let p = j["artifacts"][k].as_str().unwrap();
        assert!(Path::new(p).is_file(), "artifact {k} {p} is missing");
    }
    let warnings = j["warnings"].as_array().expect("warnings is a list");
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("placeholder")),
        "{warnings:?}"
    );
}

#[test]
fn build_json_lists_the_warnings_and_the_example_token_is_one() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    edit(
        &r,
        "token = \"fixture-token-0123456789\"",
        "token = \"example-token-replace-me\"",
    );
    edit(&r, &format!("ssh_authorized_keys = [\"{KEY}\"]\n"), "");
    let out = build(dir.path(), &r, &["--json"]);
    assert!(out.status.success(), "warnings do not stop a build");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("build --json is JSON");
    let warnings: Vec<String> = j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("placeholder from the examples")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("nobody could log in")),
        "{warnings:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the token is the placeholder"),
        "{err}"
    );
    // inspect says it too, about the card this image would make.
    let img = dir.path().join("out/node.img");
    let out = run(imagebuild(dir.path()).arg("inspect").arg(&img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: the token in the stamped cluster.toml is the placeholder"),
        "{text}"
    );
    // inspect's text speaks the user's words, not Rust's.
    assert!(text.contains("partition table: MBR (DOS)"), "{text}");
    assert!(
        text.contains("operating system: Raspberry Pi OS 13 (trixie)"),
        "{text}"
    );
    for rust in ["Mbr", "RaspiosTrixie", "Some("] {
        assert!(!text.contains(rust), "inspect printed {rust:?}:\n{text}");
    }
}

#[test]
fn first_run_errors_say_what_to_do() {
    let dir = scratch();
    let b = base(dir.path(), Flavor::Trixie);
    // A read-only output folder is not "no room".
    let r = recipe(dir.path(), &b.display().to_string(), "rpi4", "");
    let out_dir = dir.path().join("out");
    std::fs::set_permissions(
        &out_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let out = build(dir.path(), &r, &[]);
    std::fs::set_permissions(
        &out_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("cannot write to the output directory"),
        "{err}"
    );
    assert!(
        !err.contains("no room"),
        "a read-only folder reported as full: {err}"
    );

    // e2fsprogs are found in /usr/sbin and /sbin with a PATH that has neither.
    let out = run(imagebuild(dir.path())
        .arg("build")
        .arg(&r)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--firstboot-bin")
        .arg(dir.path().join("firstboot-fake"))
        .env("PATH", "/usr/bin:/bin")
        .env("SOURCE_DATE_EPOCH", EPOCH));
    assert!(out.status.success(), "build without sbin on PATH failed");
    let out = run(imagebuild(dir.path())
        .arg("verify")
        .arg(dir.path().join("out/node.img"))
        .env("PATH", "/usr/bin:/bin"));
    assert!(out.status.success(), "verify without sbin on PATH failed");
    clear_out(dir.path());

    // A local K3s mirror has version folders like a URL mirror; a missing asset names the
    // expected path and the layout.
    let mirror = dir.path().join("mirror");
    release::make(&mirror.join("v1.31.10+k3s1"));
    edit(&r, "mirror = \"release\"", "mirror = \"mirror\"");
    let out = build(dir.path(), &r, &[]);
    assert!(
        out.status.success(),
        "build from a versioned local mirror failed"
    );
    clear_out(dir.path());
    std::fs::remove_file(mirror.join("v1.31.10+k3s1/k3s-arm64")).unwrap();
    let out = build(dir.path(), &r, &[]);
    let expected = format!("{}/v1.31.10+k3s1/k3s-arm64", mirror.display());
    fails_cleanly(dir.path(), out, &[&expected, "one folder per version"]);

    // A base that cannot be downloaded: how to build offline.
    let r = recipe(
        dir.path(),
        "http://127.0.0.1:9/raspios.img.xz",
        "rpi4",
        &format!("base_sha256 = \"{}\"", "ab".repeat(32)),
    );
    let out = build(dir.path(), &r, &[]);
    fails_cleanly(
        dir.path(),
        out,
        &[
            "could not be downloaded",
            "--base PATH/raspios.img.xz",
            "--offline",
        ],
    );
}
