//! System tests of `imagebuild flash`, `stamp`, `token` and the bmap written with every build,
//! checked with the reference tools: bmaptool, fsck.vfat, mtools and `firstboot check-config`.

use systests::image::{fixture, support};
use systests::payload::release;

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
    imagebuild::io::sha256_file(path).unwrap()
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
    /// Attached with partition scanning, so `part(n)` exists after a flash.
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-fP", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup failed");
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    fn path(&self) -> &Path {
        Path::new(&self.0)
    }
    fn part(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.0))
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
    let out = run(ib().arg("flash").arg(img).arg(&to_file).arg("--to-file"));
    assert!(out.status.success());
    assert_eq!(sha(&to_file), sha(img), "a fresh file target is the image");
    same_mapped(&map, img, &to_file);

    // Streamed from the .zst (its bmap is node.img.bmap beside it), over an existing file.
    let zst = imagebuild::output::with_suffix(img, ".zst");
    let out = run(ib()
        .arg("flash")
        .arg(&zst)
        .arg(&to_file)
        .args(["--yes", "--to-file"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bmap"));
    assert_eq!(sha(&to_file), sha(img));

    // Without the bmap: the whole image, checked against node.img.sha256.
    let whole = dir.path().join("whole.img");
    let out = run(ib()
        .arg("flash")
        .arg(&zst)
        .arg(&whole)
        .args(["--no-bmap", "--to-file"]));
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

    let out = run(ib()
        .arg("flash")
        .arg(&bad)
        .arg(dir.path().join("t1.img"))
        .arg("--to-file"));
    assert!(!out.status.success(), "a corrupted image was flashed");
    assert!(
        !dir.path().join("t1.img").exists(),
        "a failed flash to a new file left the partial file"
    );
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
        .args(["--no-bmap", "--to-file"]));
    assert!(!out.status.success(), "the .sha256 beside it must catch it");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.img.sha256"));
    assert!(
        !dir.path().join("t2.img").exists(),
        "the partial file stayed"
    );
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

/// Paths under /dev that must never come into being (a mistyped card name).
const NO_SUCH_DEVICE: &str = "/dev/imagebuild-test-no-such-card";

#[test]
fn flash_writes_only_to_devices_or_explicit_files() {
    let img = built();
    let dir = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_file(NO_SUCH_DEVICE);
    for extra in [&["--yes"][..], &["--yes", "--to-file"][..]] {
        let out = run(ib().arg("flash").arg(img).arg(NO_SUCH_DEVICE).args(extra));
        let created = Path::new(NO_SUCH_DEVICE).exists();
        let _ = std::fs::remove_file(NO_SUCH_DEVICE);
        assert!(!created, "flash {extra:?} created a file under /dev");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not exist: no such device"), "{err}");
    }
    // A regular file needs --to-file; without it nothing changes.
    let existing = dir.path().join("old.img");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = run(ib().arg("flash").arg(img).arg(&existing).arg("--yes"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to-file"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let out = run(ib().arg("flash").arg(img).arg(dir.path().join("new.img")));
    assert!(!out.status.success());
    assert!(!dir.path().join("new.img").exists());
    // --yes never picks a drive by itself.
    let out = run(ib().arg("flash").arg(img).arg("--yes"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes needs a device"));
}

fn recipe_dir() -> PathBuf {
    built().parent().unwrap().parent().unwrap().to_path_buf()
}

fn build_to(output: &Path) -> Output {
    let dir = recipe_dir();
    run(ib()
        .arg("build")
        .arg(dir.join("image.toml"))
        .arg("-o")
        .arg(output)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--firstboot-bin")
        .arg(release::fake_firstboot(&dir))
        .env("SOURCE_DATE_EPOCH", "1735689600")
        .env("IMAGEBUILD_DATA_DIR", systests::repo_root()))
}

#[test]
fn build_output_is_a_file_in_a_directory_it_creates() {
    let dir = tempfile::tempdir().unwrap();
    // Under /dev, and a device node elsewhere: refused before anything is written.
    let _ = std::fs::remove_file(NO_SUCH_DEVICE);
    let out = build_to(Path::new(NO_SUCH_DEVICE));
    let created = Path::new(NO_SUCH_DEVICE).exists();
    let _ = std::fs::remove_file(NO_SUCH_DEVICE);
    assert!(!created && !out.status.success(), "build wrote under /dev");
    assert!(String::from_utf8_lossy(&out.stderr).contains("under /dev"));
    if systests::is_root() {
        let node = dir.path().join("card");
        // A block device node (loop major 7) in a scratch directory: it must survive.
        assert!(Command::new("mknod")
            .arg(&node)
            .args(["b", "7", "250"])
            .status()
            .unwrap()
            .success());
        let out = build_to(&node);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("is a device"));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&node)
            .unwrap()
            .file_type()
            .is_block_device());

        // A read-only output folder is named as such, not as "no room".
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(&ro)
            .status()
            .unwrap()
            .success());
        let out = build_to(&ro.join("x.img"));
        let _ = Command::new("umount").arg(&ro).status();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success());
        assert!(err.contains("read-only"), "{err}");
        assert!(!err.contains("no room"), "{err}");
    } else {
        systests::skip("build -o on a device node / read-only mount", "needs root");
    }
    // A missing output directory is created.
    let nested = dir.path().join("new/deeper/node.img");
    let out = build_to(&nested);
    assert!(out.status.success());
    assert!(nested.is_file());
    assert!(imagebuild::output::with_suffix(&nested, ".bmap").is_file());
}

#[test]
fn interrupting_a_flash_says_the_card_is_incomplete() {
    // 2 GiB of zeros, compressed: quick to make, slow enough to write that a signal lands
    // in the middle.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.img");
    sparse(&raw, 2 << 30);
    let zst = dir.path().join("big.img.zst");
    assert!(Command::new("zstd")
        .args(["-q", "-1", "-T0"])
        .arg(&raw)
        .arg("-o")
        .arg(&zst)
        .status()
        .unwrap()
        .success());
    std::fs::remove_file(&raw).unwrap();
    let target = dir.path().join("card.img");
    let child = ib()
        .arg("flash")
        .arg(&zst)
        .arg(&target)
        .args(["--to-file", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the target exists and holds some data, then interrupt.
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) < (64 << 20) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "flash never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe_kill(child.id(), 2);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        !out.status.success(),
        "an interrupted flash reported success"
    );
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("incomplete"), "{err}");
    assert!(!target.exists(), "the interrupted new file stayed");
}

fn unsafe_kill(pid: u32, sig: i32) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

/// The built image with its .bmap, .sha256 and .zst, copied to `dir` as node.img*.
fn copy_with_companions(dir: &Path) -> PathBuf {
    let img = dir.join("node.img");
    copy(built(), &img);
    for ext in [".bmap", ".sha256", ".zst"] {
        std::fs::copy(
            imagebuild::output::with_suffix(built(), ext),
            imagebuild::output::with_suffix(&img, ext),
        )
        .unwrap();
    }
    img
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn stamping_an_image_keeps_its_bmap_and_sha256_true() {
    let dir = tempfile::tempdir().unwrap();
    let img = copy_with_companions(dir.path());
    let zst = imagebuild::output::with_suffix(&img, ".zst");
    // The compressed copy is older than the stamp that follows.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let tf = dir.path().join("t.token");
    std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
    let cfg = cluster_toml(dir.path(), "token = \"placeholder-0000000000\"");
    let out = run(ib()
        .arg("stamp")
        .arg(&img)
        .arg(&cfg)
        .arg("--token-file")
        .arg(&tf));
    assert!(out.status.success());
    assert!(
        stderr_of(&out).contains("does not carry it"),
        "no warning about the stale .zst"
    );
    let bmap = imagebuild::output::with_suffix(&img, ".bmap");
    assert_eq!(
        Bmap::load(&bmap).unwrap(),
        Bmap::for_image(&img, None).unwrap(),
        "the rewritten bmap is not the stamped image's map"
    );
    let line = std::fs::read_to_string(imagebuild::output::with_suffix(&img, ".sha256")).unwrap();
    assert_eq!(line, format!("{}  node.img\n", sha(&img)));
    // bmaptool checks every range against the rewritten map.
    let copy_to = dir.path().join("copy.img");
    let out = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(&img)
        .arg(&copy_to));
    assert!(out.status.success(), "bmaptool refused the rewritten bmap");
    // The stamped .img flashes with its (true) bmap; the older .zst is not paired with it.
    let card = dir.path().join("card.img");
    let out = run(ib().arg("flash").arg(&img).arg(&card).arg("--to-file"));
    assert!(out.status.success());
    assert_eq!(sha(&card), sha(&img));
    let out = run(ib()
        .arg("flash")
        .arg(&zst)
        .arg(&card)
        .args(["--to-file", "--yes"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("is not used"),
        "paired a stale bmap"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("whole image"));
    assert_eq!(
        sha(&card),
        sha(built()),
        "the .zst holds the unstamped image"
    );
}

#[test]
fn restamping_removes_the_old_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    copy(built(), &img);
    let (off, _) = boot_offset(&img);
    std::fs::write(dir.path().join("cluster-token"), format!("{TOKEN}\n")).unwrap();
    let cfg = cluster_toml(dir.path(), "token_file = \"cluster-token\"");
    assert!(run(ib().arg("stamp").arg(&img).arg(&cfg)).status.success());
    let names = |img: &Path| {
        let out = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-i"])
            .arg(format!("{}@@{off}", img.display()))
            .arg("::")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    assert!(names(&img).contains("cluster-token"));
    let cfg = cluster_toml(dir.path(), "token = \"another-token-0123456789\"");
    assert!(run(ib().arg("stamp").arg(&img).arg(&cfg)).status.success());
    assert!(
        !names(&img).contains("cluster-token"),
        "the old token file stayed on the card"
    );
}

/// The ```sh block after the readme-flash-sequence marker in README.md.
fn readme_sequence() -> String {
    let text = std::fs::read_to_string(systests::repo_root().join("README.md")).unwrap();
    let at = text
        .find("<!-- readme-flash-sequence")
        .expect("README.md has no readme-flash-sequence marker");
    let rest = &text[at..];
    let start = rest
        .find("```sh\n")
        .expect("no ```sh block after the marker")
        + 6;
    let end = rest[start..].find("```").unwrap();
    rest[start..start + end].to_string()
}

/// Read a card back through its partitions: fsck both, return cluster.toml and a file's text.
fn read_card(card: &Loop, dir: &Path, also: &str) -> (toml::Table, String) {
    let p1 = card.part(1);
    let p2 = card.part(2);
    let t0 = std::time::Instant::now();
    while !(p1.exists() && p2.exists()) && t0.elapsed().as_secs() < 10 {
        let _ = Command::new("partx").arg("-u").arg(card.path()).status();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run(Command::new("fsck.vfat").arg("-n").arg(&p1));
    assert!(out.status.success(), "fsck.vfat found problems on {p1:?}");
    let out = run(Command::new("e2fsck").arg("-fn").arg(&p2));
    assert!(out.status.success(), "e2fsck found problems on {p2:?}");
    let got = dir.join(format!("got-{}", card.0.trim_start_matches("/dev/")));
    std::fs::create_dir_all(&got).unwrap();
    let mut text = String::new();
    for n in ["cluster.toml", also] {
        let out = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-n")
            .arg("-i")
            .arg(&p1)
            .arg(format!("::{n}"))
            .arg(got.join(n))
            .output()
            .unwrap();
        if n == "cluster.toml" {
            assert!(out.status.success(), "no cluster.toml on {}", card.0);
            check_config(&got.join(n));
            text = std::fs::read_to_string(got.join(n)).unwrap();
        }
    }
    let other = std::fs::read_to_string(got.join(also)).unwrap_or_default();
    (text.parse().unwrap(), other)
}

#[test]
fn the_readme_flash_sequence_makes_a_stamped_card() {
    let seq = readme_sequence();
    assert!(seq.contains("/dev/sdX"), "the sequence names no card");
    if !systests::is_root() {
        systests::skip(
            "the README's flash sequence",
            "needs root for a loop device",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    // The repository's examples, with the built image where the README's build puts it.
    assert!(Command::new("cp")
        .arg("-r")
        .arg(systests::repo_root().join("examples"))
        .arg(&work)
        .status()
        .unwrap()
        .success());
    let work = work.parent().unwrap().join("work");
    std::fs::rename(work.clone(), dir.path().join("examples")).unwrap();
    let out_dir = dir.path().join("examples/homelab/out");
    std::fs::create_dir_all(&out_dir).unwrap();
    for ext in [".zst", ".bmap", ".sha256"] {
        let name = if ext == ".zst" {
            "homelab.img.zst"
        } else if ext == ".bmap" {
            "homelab.img.bmap"
        } else {
            "homelab.img.sha256"
        };
        std::fs::copy(
            imagebuild::output::with_suffix(built(), ext),
            out_dir.join(name),
        )
        .unwrap();
    }
    let map = Bmap::load(&imagebuild::output::with_suffix(built(), ".bmap")).unwrap();
    let backing = dir.path().join("card.img");
    sparse(&backing, map.image_size + (32 << 20));
    let card = Loop::attach(&backing);
    let script = seq.replace("/dev/sdX", &card.0);
    std::fs::write(dir.path().join("sequence.sh"), &script).unwrap();
    // Run under a terminal (script(1)) so flash asks, and answer as a user would.
    let bin_dir = support::imagebuild_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("script")
        .args(["-qec", "sh -e sequence.sh", "/dev/null"])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("SOURCE_DATE_EPOCH", "1735689600")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let _ = std::io::Write::write_all(&mut stdin, b"yes\n");
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(stdin);
    });
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{shown}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the README sequence failed");
    assert!(shown.contains("can be removed"), "{shown}");
    // A loop device cannot be powered off: the card is flushed, said so, and left attached.
    assert!(
        shown.contains("not powered off: a loop device has nothing to power off"),
        "{shown}"
    );
    assert!(card.path().exists(), "the loop device went away");
    let token = std::fs::read_to_string(dir.path().join("homelab.token")).unwrap();
    assert!(
        !shown.contains(token.trim()),
        "the token was printed by the sequence"
    );
    same_mapped(
        &map,
        built(),
        &backing_without_boot(&map, &backing, dir.path()),
    );
    let (t, _) = read_card(&card, dir.path(), "cluster-token");
    assert_eq!(t["cluster"]["name"].as_str(), Some("homelab"));
    assert_eq!(t["cluster"]["token"].as_str(), Some(token.trim()));
}

/// A copy of the card whose boot partition is taken from the built image, so the rest can be
/// compared with the image range by range (the boot partition was stamped on purpose).
fn backing_without_boot(map: &Bmap, backing: &Path, dir: &Path) -> PathBuf {
    let (off, len) = boot_offset(built());
    let c = dir.join("compare.img");
    copy(backing, &c);
    let src = std::fs::File::open(built()).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).open(&c).unwrap();
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, off).unwrap();
    dst.write_all_at(&buf, off).unwrap();
    dst.set_len(map.image_size).unwrap();
    c
}

#[test]
fn four_cards_four_kits_in_one_command() {
    if !systests::is_root() {
        systests::skip("four cards at once", "needs root for loop devices");
        return;
    }
    let img = built();
    let map = Bmap::load(&imagebuild::output::with_suffix(img, ".bmap")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cards: Vec<Loop> = (0..4)
        .map(|i| {
            let b = dir.path().join(format!("card{i}.img"));
            sparse(&b, map.image_size + (16 << 20));
            Loop::attach(&b)
        })
        .collect();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nname = \"kit-00\"\ntoken = \"example-token-replace-me\"\nservers = 1\nnodes = 3\n",
    )
    .unwrap();
    // Kit 3 brings its own token; the others get fresh ones.
    std::fs::write(dir.path().join("own.token"), "kit-three-own-token-0123\n").unwrap();
    std::fs::write(
        dir.path().join("kits.toml"),
        "[[kit]]\nname = \"kit-01\"\n\n[[kit]]\nname = \"kit-02\"\nnodes = 1\n\n[[kit]]\nname = \"kit-03\"\ntoken_file = \"own.token\"\n\n[[kit]]\nname = \"kit-04\"\n",
    )
    .unwrap();
    let mut cmd = ib();
    cmd.arg("flash").arg(img);
    for c in &cards {
        cmd.arg(c.path());
    }
    cmd.arg("--cluster")
        .arg(&cfg)
        .arg("--kits")
        .arg(dir.path().join("kits.toml"))
        .arg("--yes");
    let out = run(&mut cmd);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("card") && shown.contains("verified"),
        "{shown}"
    );
    let mut tokens = std::collections::BTreeSet::new();
    for (i, c) in cards.iter().enumerate() {
        let kit = format!("kit-0{}", i + 1);
        let row = shown
            .lines()
            .find(|l| l.starts_with(&c.0) && l.contains(&kit))
            .unwrap_or_else(|| panic!("no summary row for {} / {kit}: {shown}", c.0));
        assert!(row.trim_end().ends_with("yes"), "{row}");
        let (t, _) = read_card(c, dir.path(), "none");
        assert_eq!(t["cluster"]["name"].as_str(), Some(kit.as_str()));
        let token = t["cluster"]["token"].as_str().unwrap().to_string();
        assert!(!shown.contains(&token), "a token was printed");
        assert_ne!(token, "example-token-replace-me");
        if i == 2 {
            assert_eq!(token, "kit-three-own-token-0123");
        } else {
            let saved = std::fs::read_to_string(dir.path().join(format!("{kit}.token"))).unwrap();
            assert_eq!(
                saved.trim(),
                token,
                "the kit's token file differs from its cards"
            );
        }
        if i == 1 {
            assert_eq!(t["cluster"]["nodes"].as_integer(), Some(1));
        }
        tokens.insert(token);
    }
    assert_eq!(tokens.len(), 4, "two kits share a token");

    // A card that fails (here: a read-only device) does not stop the others; `{n}` names kits.
    let ro = dir.path().join("ro.img");
    sparse(&ro, map.image_size + (16 << 20));
    let out = Command::new("losetup")
        .args(["-frP", "--show"])
        .arg(&ro)
        .output()
        .unwrap();
    let ro_card = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let mut cmd = ib();
    cmd.arg("flash")
        .arg(img)
        .arg(cards[0].path())
        .arg(ro_card.path())
        .arg(cards[1].path());
    cmd.args(["--cluster"]).arg(&cfg);
    cmd.args(["--set", "cluster.name=lab-{n}", "--yes"]);
    cmd.arg("--tokens-dir").arg(dir.path().join("t2"));
    let out = run(&mut cmd);
    assert!(!out.status.success(), "a failed card must fail the command");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let row = shown.lines().find(|l| l.starts_with(&ro_card.0)).unwrap();
    assert!(row.contains("FAILED"), "{row}");
    let a = read_card(&cards[0], dir.path(), "none").0;
    let b = read_card(&cards[1], dir.path(), "none").0;
    assert_eq!(a["cluster"]["name"].as_str(), Some("lab-1"));
    assert_eq!(b["cluster"]["name"].as_str(), Some("lab-3"));
    assert_ne!(
        a["cluster"]["token"].as_str(),
        b["cluster"]["token"].as_str()
    );
}

#[test]
fn compressed_inputs_are_refused_in_one_line_or_paired_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let img = copy_with_companions(dir.path());
    let zst = imagebuild::output::with_suffix(&img, ".zst");
    // bmap, inspect and verify say in one line that the file is compressed and what to run.
    for cmd in ["bmap", "inspect", "verify"] {
        let out = run(ib().arg(cmd).arg(&zst));
        assert_eq!(out.status.code(), Some(1), "{cmd} on a .zst");
        let err = stderr_of(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains("is compressed (zstd)"), "{err}");
        assert!(
            err.contains(&format!("zstd -d {}", zst.display()))
                && err.contains(&format!("imagebuild {cmd} {}", img.display())),
            "{err}"
        );
    }
    let xz = dir.path().join("node.img.xz");
    let st = Command::new("xz")
        .args(["-0", "-T1", "-k"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let out = run(ib().arg("inspect").arg(&xz));
    assert!(stderr_of(&out)
        .contains("is compressed (xz): `imagebuild inspect` reads the raw image; run `xz -dk"));

    // The bmap and the .zst both record the image's sha256 ...
    let whole = sha(&img);
    let map = Bmap::load(&imagebuild::output::with_suffix(&img, ".bmap")).unwrap();
    assert_eq!(map.image_sha256.as_deref(), Some(whole.as_str()));
    assert_eq!(
        imagebuild::source::packed_image_sha256(&zst).as_deref(),
        Some(whole.as_str())
    );
    // ... which zstd and bmaptool skip over: the .zst is a plain zstd file.
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | sha256sum", zst.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unpacked.stdout).starts_with(&whole));
    let copy_to = dir.path().join("bmaptool.img");
    let out = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(imagebuild::output::with_suffix(&img, ".bmap"))
        .arg(&zst)
        .arg(&copy_to));
    assert!(
        out.status.success(),
        "bmaptool refused the .zst with its bmap"
    );
    assert_eq!(sha(&copy_to), whole);
    // So flash pairs them: the .zst is written through its bmap.
    let card = dir.path().join("card.img");
    sparse(&card, map.image_size);
    let out = run(ib()
        .arg("flash")
        .arg(&zst)
        .arg(&card)
        .args(["--to-file", "--yes"]));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(bmap "),
        "not paired"
    );
    same_mapped(&map, &img, &card);

    // A bmap of another image (the raw image stamped after compression) given with --bmap is
    // refused before anything is written.
    let other = dir.path().join("other.img");
    copy(&img, &other);
    let cfg = cluster_toml(dir.path(), &format!("token = \"{TOKEN}\""));
    assert!(run(ib().arg("stamp").arg(&other).arg(&cfg))
        .status
        .success());
    let out = run(ib().arg("bmap").arg(&other));
    assert!(out.status.success());
    let card2 = dir.path().join("card2.img");
    sparse(&card2, map.image_size);
    let before = sha(&card2);
    let out = run(ib()
        .arg("flash")
        .arg(&zst)
        .arg(&card2)
        .arg("--bmap")
        .arg(imagebuild::output::with_suffix(&other, ".bmap"))
        .args(["--to-file", "--yes"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("describes another image than"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(sha(&card2), before, "the card was written");
}

#[test]
fn the_example_token_is_warned_about_by_stamp_flash_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    copy(built(), &img);
    let cfg = cluster_toml(dir.path(), "token = \"example-token-replace-me\"");
    let out = run(ib().arg("stamp").arg(&img).arg(&cfg));
    assert!(out.status.success());
    assert!(stderr_of(&out).contains("warning: the token is the placeholder from the examples"));
    let out = run(ib().arg("inspect").arg(&img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: the token in the stamped cluster.toml is the placeholder"),
        "{text}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&run(ib().arg("inspect").arg(&img).arg("--json")).stdout).unwrap();
    assert!(j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("placeholder")));
    let card = dir.path().join("card.img");
    sparse(&card, std::fs::metadata(built()).unwrap().len());
    let out = run(ib()
        .arg("flash")
        .arg(built())
        .arg(&card)
        .args(["--to-file", "--yes", "--cluster"])
        .arg(&cfg)
        .arg("--tokens-dir")
        .arg(dir.path()));
    assert!(out.status.success());
    // flash never lets a card carry it: the kit gets a fresh token, and says where it is kept.
    let err = stderr_of(&out);
    assert!(
        err.contains("is the placeholder from the examples, which no card may carry")
            && err.contains(&format!("{}", dir.path().join("site-a.token").display())),
        "{err}"
    );
    let kept = std::fs::read_to_string(dir.path().join("site-a.token")).unwrap();
    let (off, _) = boot_offset(&card);
    let files = dir.path().join("card-files");
    std::fs::create_dir_all(&files).unwrap();
    extract(&card, off, &["cluster.toml"], &files);
    let stamped: toml::Table = std::fs::read_to_string(files.join("cluster.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(stamped["cluster"]["token"].as_str(), Some(kept.trim()));
    assert_ne!(kept.trim(), "example-token-replace-me");
    // A good token: no such warning anywhere.
    let cfg = cluster_toml(dir.path(), &format!("token = \"{TOKEN}\""));
    let out = run(ib().arg("stamp").arg(&img).arg(&cfg));
    assert!(!stderr_of(&out).contains("placeholder"));
    let out = run(ib().arg("inspect").arg(&img));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("placeholder"));
}

#[test]
fn json_outputs_parse_and_exit_codes_match() {
    let dir = tempfile::tempdir().unwrap();
    // verify --json, found tools in sbin with a PATH that lacks it.
    let out = run(ib()
        .arg("verify")
        .arg(built())
        .arg("--json")
        .env("PATH", "/usr/bin:/bin"));
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(j["filesystems_clean"], true);
    assert!(j["files_checked"].as_u64().unwrap() > 0);
    // boards --json
    let out = run(ib()
        .arg("boards")
        .arg("--json")
        .env("IMAGEBUILD_DATA_DIR", systests::repo_root()));
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("boards --json");
    let rpi5 = j["boards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "rpi5")
        .expect("rpi5 listed");
    assert_eq!(rpi5["arch"], "arm64");
    assert!(j["bases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == "raspios-lite-arm64"));
    // firstboot check-config --json: ok and not ok, with the exit codes of the text mode.
    let good = cluster_toml(dir.path(), &format!("token = \"{TOKEN}\""));
    let out = run(Command::new(firstboot_bin())
        .arg("check-config")
        .arg(&good)
        .arg("--json"));
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check-config --json");
    assert_eq!(j["ok"], true);
    assert_eq!(j["name"], "site-a");
    assert_eq!(j["servers"], 3);
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[cluster]\nname = \"site-a\"\ntoken = \"{TOKEN}\"\nservers = 2\n"),
    )
    .unwrap();
    let out = run(Command::new(firstboot_bin())
        .arg("check-config")
        .arg(&bad)
        .arg("--json"));
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check-config --json");
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("servers"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));
}

#[test]
fn set_errors_name_the_set_argument() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    copy(built(), &img);
    let cfg = cluster_toml(dir.path(), &format!("token = \"{TOKEN}\""));
    let out = run(ib()
        .arg("stamp")
        .arg(&img)
        .arg(&cfg)
        .args(["--set", "cluster.servers=4"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("--set cluster.servers=...:"), "{err}");
    assert!(
        !err.contains("cluster.toml:"),
        "points at lines of the file: {err}"
    );
}

#[test]
fn docs_never_put_a_token_on_the_command_line() {
    // `stamp` warns against `--set cluster.token=VALUE` (visible in ps): no doc may show it.
    let root = systests::repo_root();
    let mut files = vec![root.join("README.md"), root.join("imagebuild/README.md")];
    for d in ["examples", "docs"] {
        let out = Command::new("find")
            .arg(root.join(d))
            .arg("-type")
            .arg("f")
            .output()
            .unwrap();
        files.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from),
        );
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            if let Some(at) = line.find("cluster.token=") {
                let rest = &line[at + "cluster.token=".len()..];
                assert!(
                    rest.starts_with('-') || rest.starts_with("SECRET`"),
                    "{}:{}: recommends a token on the command line: {line}",
                    f.display(),
                    i + 1
                );
            }
        }
    }
}
