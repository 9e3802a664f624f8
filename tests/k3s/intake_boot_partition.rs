//! After intake, the token is gone from the raw bytes of the boot partition.
//!
//! The real check builds a FAT image with `mkfs.vfat`, puts `cluster.toml` and a token file in it
//! with mtools `mcopy`, loop-mounts it (root, kernel vfat) and runs intake on the mount, then
//! searches every byte of the image, free clusters included, and runs `fsck.vfat -n`. Where the
//! kernel cannot mount vfat, that part skips with the reason; the directory stand-in always runs.

use firstboot::intake::{intake, IntakeOutcome, SCRUB_MARKER};
use std::path::Path;
use std::process::Command;

const SECRET: &str = "boot-scrub-secret-J8vN3qRw";
const FILE_SECRET: &str = "boot-file-secret-T5mH2kYc";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn config_text(inline: bool) -> String {
    let token = if inline {
        format!("token = \"{SECRET}\"")
    } else {
        "token_file = \"cluster-token\"".to_string()
    };
    format!(
        "[cluster]\nname = \"lab\"\n{token}\nservers = 3\nnodes = 3\n\n[status]\nled_gpio = 17\n"
    )
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn directory_stand_in_holds_no_token_after_intake() {
    for inline in [true, false] {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        let root = t.path().join("root");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("cluster.toml"), config_text(inline)).unwrap();
        std::fs::write(boot.join("cluster-token"), format!("{FILE_SECRET}\n")).unwrap();
        let secret = if inline { SECRET } else { FILE_SECRET };
        let got = intake(&boot, &root, false).unwrap();
        assert_eq!(got.outcome, IntakeOutcome::Taken);
        assert_eq!(got.config.token.expose(), secret);
        for entry in std::fs::read_dir(&boot).unwrap() {
            let p = entry.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !contains(&bytes, secret),
                "{} still holds the token",
                p.display()
            );
        }
    }
}

#[test]
fn fat_image_holds_no_token_after_intake() {
    if !systests::is_root() {
        systests::skip(
            "fat_image_holds_no_token_after_intake",
            "needs root to loop-mount a FAT image",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("boot.img");
    let mnt = t.path().join("mnt");
    let root = t.path().join("root");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("truncate").arg("-s").arg("16M").arg(&img));
    run(Command::new("mkfs.vfat").args(["-n", "BOOTFS"]).arg(&img));
    let src = t.path().join("cluster.toml");
    std::fs::write(&src, config_text(false)).unwrap();
    let tok = t.path().join("cluster-token");
    std::fs::write(&tok, format!("{FILE_SECRET}\n")).unwrap();
    let img_arg = format!("-i{}", img.display());
    run(Command::new("mcopy")
        .arg(&img_arg)
        .arg(&src)
        .arg(&tok)
        .arg("::/"));
    // The search must be able to see the token before intake, or its "gone" proves nothing.
    assert!(contains(&std::fs::read(&img).unwrap(), FILE_SECRET));

    let mount = Command::new("mount")
        .args(["-t", "vfat", "-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .output()
        .unwrap();
    if !mount.status.success() {
        systests::skip(
            "fat_image_holds_no_token_after_intake",
            &format!(
                "cannot loop-mount vfat here ({}); the directory stand-in test covers intake",
                String::from_utf8_lossy(&mount.stderr).trim()
            ),
        );
        return;
    }
    let result = intake(&mnt, &root, false);
    run(Command::new("umount").arg(&mnt));
    let got = result.unwrap();
    assert_eq!(got.config.token.expose(), FILE_SECRET);

    let raw = std::fs::read(&img).unwrap();
    assert!(
        !contains(&raw, FILE_SECRET),
        "token bytes remain in the FAT image"
    );
    run(Command::new("fsck.vfat").arg("-n").arg(&img));
    let shown = run(Command::new("mtype").arg(&img_arg).arg("::/cluster.toml"));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.starts_with(SCRUB_MARKER), "{text}");
    assert!(text.contains("led_gpio = 17"), "{text}");
    assert_root_copy(&root);
}

fn assert_root_copy(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let p = firstboot::intake::root_config_path(root);
    assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
}
