//! System tests of `imagebuild flash`, `stamp`, `token` and the bmap written with every build,
//! checked with the reference tools: bmaptool, fsck.vfat, mtools and `firstboot check-config`.

#[path = "../image/fixture.rs"]
mod fixture;
#[path = "../payload/release.rs"]
mod release;
#[path = "../image/support.rs"]
mod support;

use fixture::{Flavor, Spec};
use imagebuild::bmap::Bmap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const TOKEN: &str = "flash-test-token-0123456789";

/// A built image (OUT.img, .bmap, .sha256, .zst), made once per test process from a fixture.
fn built() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        // Leftovers of earlier runs (whose process is gone) are removed; this run's stays until
        // the next one, since statics are never dropped.
        for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("flash-test-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("flash-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let base = dir.join("base.img");
        fixture::make(&Spec::small(Flavor::Trixie), &base).expect("making fixture");
        // K3s from a generated release in a local directory and a stand-in firstboot: this test
        // is about the image file, and must never reach for the network.
        release::make(&dir.join("release"));
        let firstboot = release::fake_firstboot(&dir);
        std::fs::write(
            dir.join("image.toml"),
            format!(
                "[image]\nboard = \"rpi5\"\nbase = \"{}\"\noutput = \"out/node.img\"\nfree_space = \"64MiB\"\ncompress = \"zstd\"\n\n[k3s]\nversion = \"v1.31.10+k3s1\"\nmirror = \"release\"\n",
                base.display()
            ),
        )
        .unwrap();
        let out = ib()
            .arg("build")
            .arg(dir.join("image.toml"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--firstboot-bin")
            .arg(&firstboot)
            .env("SOURCE_DATE_EPOCH", "1735689600")
            .env("IMAGEBUILD_DATA_DIR", systests::repo_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("out/node.img")
    })
}

fn ib() -> Command {
    Command::new(support::imagebuild_bin())
}

fn firstboot_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let ib = support::imagebuild_bin();
        let profile = ib.parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "firstboot", "--bin", "firstboot"])
            .env("CARGO_TARGET_DIR", profile.parent().unwrap())
            .current_dir(systests::repo_root());
        if profile.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building firstboot failed");
        profile.join("firstboot")
    })
    .clone()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawning");
    eprintln!(
        "--- {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha(path: &Path) -> String {
    imagebuild::source::sha256_file(path).unwrap()
}

fn copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Every mapped range of `map` reads the same from `a` and `b`.
fn same_mapped(map: &Bmap, a: &Path, b: &Path) {
    let fa = std::fs::File::open(a).unwrap();
    let fb = std::fs::File::open(b).unwrap();
    for r in &map.ranges {
        let (s, e) = map.span(r);
        let mut x = vec![0u8; (e - s) as usize];
        let mut y = vec![0u8; (e - s) as usize];
        fa.read_exact_at(&mut x, s).unwrap();
        fb.read_exact_at(&mut y, s).unwrap();
        assert!(
            x == y,
            "{} and {} differ in bytes {s}..{e}",
            a.display(),
            b.display()
        );
    }
}

struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup failed");
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn bmaptool_accepts_the_bmap_written_with_a_build() {
    let img = built();
    let bmap = imagebuild::output::with_suffix(img, ".bmap");
    assert!(bmap.is_file(), "the build wrote no .bmap");
    let map = Bmap::load(&bmap).unwrap();
    assert!(
        map.mapped_blocks() < map.blocks_count(),
        "nothing was left out"
    );
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("copy.img");
    let out = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(img)
        .arg(&target));
    assert!(out.status.success(), "bmaptool copy refused our bmap");
    assert_eq!(sha(&target), sha(img), "bmaptool's copy differs");
    // bmaptool checks the per-range sha256 while copying: a damaged range must make it fail.
    let bad = dir.path().join("bad.img");
    copy(img, &bad);
    let (s, _) = map.span(&map.ranges[map.ranges.len() / 2]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .unwrap()
        .write_all_at(b"\xff\x00\xff", s + 1)
        .unwrap();
    let out = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(&bad)
        .arg(dir.path().join("copy2.img")));
    assert!(!out.status.success(), "bmaptool accepted a damaged image");
}

#[test]
fn flash_to_a_file_and_a_loop_device_gives_the_mapped_content() {
    let img = built();
    let map = Bmap::load(&imagebuild::output::with_suffix(img, ".bmap")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to_file = dir.path().join("card.img");
    let out = run(ib().arg("flash").arg(img).arg(&to_file));
    assert!(out.status.success());
    assert_eq!(sha(&to_file), sha(img), "a fresh file target is the image");
    same_mapped(&map, img, &to_file);

    // Streamed from the .zst (its bmap is node.img.bmap beside it), over an existing file.
    let zst = imagebuild::output::with_suffix(img, ".zst");
    let out = run(ib().arg("flash").arg(&zst).arg(&to_file).arg("--yes"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bmap"));
    assert_eq!(sha(&to_file), sha(img));

    // Without the bmap: the whole image, checked against node.img.sha256.
    let whole = dir.path().join("whole.img");
    let out = run(ib().arg("flash").arg(&zst).arg(&whole).arg("--no-bmap"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("whole image"));
    assert_eq!(sha(&whole), sha(img));

    if !systests::is_root() {
        systests::skip("flash to a loop device", "needs root for losetup");
        return;
    }
    let backing = dir.path().join("loop-backing.img");
    // A bigger "card" holding stale data where the image has holes: only mapped data counts.
    sparse(&backing, map.image_size + (64 << 20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .write_all_at(&[0xee; 1 << 20], map.image_size / 2)
        .unwrap();
    let dev = Loop::attach(&backing);
    let out = run(ib().arg("flash").arg(img).arg(dev.path()));
    assert!(
        !out.status.success(),
        "no terminal and no --yes must refuse"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = run(ib().arg("flash").arg(img).arg(dev.path()).arg("--yes"));
    assert!(out.status.success(), "flash to {} failed", dev.0);
    same_mapped(&map, img, dev.path());
    same_mapped(&map, &to_file, dev.path());
}

#[test]
fn a_corrupted_image_fails_naming_the_offset() {
    let img = built();
    let map = Bmap::load(&imagebuild::output::with_suffix(img, ".bmap")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.img");
    copy(img, &bad);
    std::fs::copy(
        imagebuild::output::with_suffix(img, ".bmap"),
        dir.path().join("bad.img.bmap"),
    )
    .unwrap();
    std::fs::copy(
        imagebuild::output::with_suffix(img, ".sha256"),
        dir.path().join("bad.img.sha256"),
    )
    .unwrap();
    // One byte inside a mapped range in the root filesystem's part of the image.
    let r = map
        .ranges
        .iter()
        .rev()
        .find(|r| map.span(r).1 - map.span(r).0 > 4096)
        .unwrap();
    let (s, e) = map.span(r);
    let off = s + (e - s) / 2;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x55], off).unwrap();
    drop(f);

    let out = run(ib().arg("flash").arg(&bad).arg(dir.path().join("t1.img")));
    assert!(!out.status.success(), "a corrupted image was flashed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match its bmap"), "{err}");
    let named = format!("bytes {s}..{e}");
    assert!(
        err.contains(&named),
        "the error must name {named} (byte {off}): {err}"
    );

    let out = run(ib()
        .arg("flash")
        .arg(&bad)
        .arg(dir.path().join("t2.img"))
        .arg("--no-bmap"));
    assert!(!out.status.success(), "the .sha256 beside it must catch it");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.img.sha256"));
}

#[test]
fn flash_refuses_small_mounted_and_system_disks() {
    let img = built();
    // The disk holding `/`: checked through the library only, so a bug can never write to it.
    let root = std::fs::metadata("/").unwrap();
    let sys = format!(
        "/sys/dev/block/{}:{}",
        libc_major(std::os::unix::fs::MetadataExt::dev(&root)),
        libc_minor(std::os::unix::fs::MetadataExt::dev(&root))
    );
    if let Ok(p) = std::fs::canonicalize(&sys) {
        let disk = if p.join("partition").exists() {
            p.parent().unwrap().to_path_buf()
        } else {
            p
        };
        let dev = Path::new("/dev").join(disk.file_name().unwrap());
        if dev.exists() {
            let err = format!(
                "{:#}",
                imagebuild::device::Target::inspect(&dev).unwrap_err()
            );
            assert!(err.contains("root filesystem"), "{err}");
        }
    }
    if !systests::is_root() {
        systests::skip(
            "flash refuses small and mounted disks",
            "needs root for losetup and mount",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.img");
    sparse(&small, 64 << 20);
    let dev = Loop::attach(&small);
    let out = run(ib().arg("flash").arg(img).arg(dev.path()).arg("--yes"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too small"));
    assert_eq!(
        std::fs::metadata(&small)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
            .unwrap(),
        0,
        "something was written to the small disk"
    );

    // A disk that is itself a mounted filesystem (ext4: every kernel here has it).
    let fat = dir.path().join("fs.img");
    sparse(&fat, 800 << 20);
    assert!(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&fat)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    let dev = Loop::attach(&fat);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(dev.path())
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let out = run(ib().arg("flash").arg(img).arg(dev.path()).arg("--yes"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(!out.status.success(), "flashed a mounted disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is mounted at"), "{err}");
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

fn boot_offset(img: &Path) -> (u64, u64) {
    let (s, n) = support::sfdisk_partition(img, 1);
    (s * 512, n * 512)
}

/// cluster.toml (and any other named files) copied out of the FAT partition with mtools.
fn extract(img: &Path, offset: u64, names: &[&str], to: &Path) {
    for n in names {
        let out = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{offset}", img.display()))
            .arg(format!("::{n}"))
            .arg(to.join(n))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mcopy {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn check_config(path: &Path) {
    let out = run(Command::new(firstboot_bin()).arg("check-config").arg(path));
    assert!(
        out.status.success(),
        "firstboot check-config refused the stamped file"
    );
}

fn cluster_toml(dir: &Path, token_line: &str) -> PathBuf {
    let p = dir.join("cluster.toml");
    std::fs::write(
        &p,
        format!("# site A\n[cluster]\nname = \"site-a\"\n{token_line}\nservers = 3\n"),
    )
    .unwrap();
    p
}

#[test]
fn stamping_an_image_is_clean_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    copy(built(), &img);
    let cfg = cluster_toml(dir.path(), "token = \"placeholder-0000000000\"");
    let (off, len) = boot_offset(&img);

    // The token from standard input, keys typed by the schema.
    let mut child = ib()
        .arg("stamp")
        .arg(&img)
        .arg(&cfg)
        .args(["--set", "node.role=server", "--set", "cluster.servers=5"])
        .args(["--set", "cluster.nodes=5", "--set", "cluster.token=-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{TOKEN}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{shown}");
    assert!(out.status.success());
    assert!(!shown.contains(TOKEN), "the token was printed");
    support::fsck_vfat_clean(&img, off, len);
    let got = dir.path().join("got");
    std::fs::create_dir(&got).unwrap();
    extract(&img, off, &["cluster.toml"], &got);
    check_config(&got.join("cluster.toml"));
    let text = std::fs::read_to_string(got.join("cluster.toml")).unwrap();
    let t: toml::Table = text.parse().unwrap();
    assert_eq!(t["cluster"]["servers"].as_integer(), Some(5));
    assert_eq!(t["cluster"]["token"].as_str(), Some(TOKEN));
    assert_eq!(t["node"]["role"].as_str(), Some("server"));
    assert!(text.starts_with("# site A"), "comments are kept");

    // A token_file is stamped beside cluster.toml; the new token comes from `imagebuild token`.
    let token = run(ib().arg("token"));
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    assert!(token.trim().len() >= 32);
    std::fs::write(dir.path().join("cluster-token"), &token).unwrap();
    let cfg = cluster_toml(dir.path(), "token_file = \"cluster-token\"");
    let out = run(ib().arg("stamp").arg(&img).arg(&cfg));
    assert!(out.status.success());
    support::fsck_vfat_clean(&img, off, len);
    let got2 = dir.path().join("got2");
    std::fs::create_dir(&got2).unwrap();
    extract(&img, off, &["cluster.toml", "cluster-token"], &got2);
    check_config(&got2.join("cluster.toml"));
    assert_eq!(
        std::fs::read_to_string(got2.join("cluster-token")).unwrap(),
        token
    );
}

#[test]
fn an_invalid_stamp_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    copy(built(), &img);
    let before = sha(&img);
    let cfg = cluster_toml(dir.path(), &format!("token = \"{TOKEN}\""));
    for sets in [
        vec!["cluster.servers=2"],
        vec!["cluster.servers=three"],
        vec!["node.rol=server"],
        vec!["cluster.token=short"],
    ] {
        let mut cmd = ib();
        cmd.arg("stamp").arg(&img).arg(&cfg);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let out = run(&mut cmd);
        assert!(!out.status.success(), "{sets:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(TOKEN), "the token was printed: {err}");
        assert_eq!(sha(&img), before, "{sets:?} changed the image");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[cluster]\nname = \"x\"\ntoken = \"{TOKEN}\"\nservers = 4\n"),
    )
    .unwrap();
    let out = run(ib().arg("stamp").arg(&img).arg(&bad));
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(TOKEN));
    assert_eq!(sha(&img), before);
}

#[test]
fn stamping_a_loop_device_card_works_the_same() {
    if !systests::is_root() {
        systests::skip("stamping a loop-device card", "needs root for losetup");
        return;
    }
    let img = built();
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("card.img");
    sparse(&backing, 1 << 30);
    let card = Loop::attach(&backing);
    let out = run(ib().arg("flash").arg(img).arg(card.path()).arg("--yes"));
    assert!(out.status.success());
    let tf = dir.path().join("token.txt");
    std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
    let cfg = cluster_toml(dir.path(), "token = \"placeholder-0000000000\"");
    let out = run(ib()
        .arg("stamp")
        .arg(card.path())
        .arg(&cfg)
        .arg("--token-file")
        .arg(&tf)
        .args(["--set", "node.role=agent"]));
    assert!(out.status.success());
    // Check the card's bytes as they are on the device.
    let (off, len) = boot_offset(img);
    let copy_out = dir.path().join("from-card.img");
    let st = Command::new("dd")
        .arg(format!("if={}", card.0))
        .arg(format!("of={}", copy_out.display()))
        .args(["bs=1M", "iflag=count_bytes", "status=none", "conv=sparse"])
        .arg(format!("count={}", off + len))
        .status()
        .unwrap();
    assert!(st.success());
    support::fsck_vfat_clean(&copy_out, off, len);
    let got = dir.path().join("got");
    std::fs::create_dir(&got).unwrap();
    extract(&copy_out, off, &["cluster.toml"], &got);
    check_config(&got.join("cluster.toml"));
    let t: toml::Table = std::fs::read_to_string(got.join("cluster.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(t["node"]["role"].as_str(), Some("agent"));
    assert_eq!(t["cluster"]["token"].as_str(), Some(TOKEN));
}
