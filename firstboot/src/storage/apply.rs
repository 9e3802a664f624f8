//! Apply a TuningPlan under a root prefix: fstab, journald, swap, sysctl, udev and K3s drop-ins.
//!
//! Every file is compared before it is written, so applying the same plan twice changes nothing
//! and reports nothing. Files we own carry a `firstboot` name and are removed when a later plan
//! no longer wants them; edits to files we do not own (fstab, `/etc/dphys-swapfile`) are minimal
//! and in place. The changes take effect at the next boot (or when the daemon reloads the
//! services); this module never touches the running system outside `root`.

use super::plan::{JournalPolicy, TuningPlan};
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// journald drop-in owned by firstboot.
pub const JOURNALD_DROPIN: &str = crate::paths::JOURNALD_DROPIN;
/// sysctl drop-in owned by firstboot.
pub const SYSCTL_DROPIN: &str = crate::paths::SYSCTL_DROPIN;
/// udev rule owned by firstboot.
pub const UDEV_RULE: &str = crate::paths::UDEV_RULE;
/// K3s unit drop-ins owned by firstboot (server and agent).
pub const K3S_DROPINS: [&str; 2] = crate::paths::K3S_IO_DROPINS;
/// Swap generators found on Raspberry Pi OS (trixie's rpi-swap) and Debian (zram-generator).
const SWAP_GENERATORS: [&str; 2] = ["rpi-swap-generator", "zram-generator"];

/// What one `apply` changed, relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppliedTuning {
    /// Files written, edited, linked or removed (root-relative, e.g. `etc/fstab`).
    pub changed: Vec<PathBuf>,
    /// Things skipped and why (no fstab entry for the data directory, ...).
    pub notes: Vec<String>,
    /// The mount point whose fstab options changed (remount it to apply them now).
    pub remount: Option<PathBuf>,
}

/// Apply `plan` under `root` for the data directory `data_dir` (absolute, as seen on the node).
pub fn apply(plan: &TuningPlan, root: &Path, data_dir: &Path) -> anyhow::Result<AppliedTuning> {
    let mut out = AppliedTuning::default();
    tune_fstab(plan, root, data_dir, &mut out).context("tuning /etc/fstab")?;
    let journal = plan.journal.map(render_journald);
    put(root, JOURNALD_DROPIN, journal.as_deref(), &mut out)?;
    if plan.swap_off {
        swap_off(root, &mut out).context("turning swap off")?;
    }
    let sysctl = plan.writeback.map(|w| {
        format!(
            "# Written by firstboot for {}: bounded writeback keeps etcd's fdatasync short.\n\
             vm.dirty_background_bytes = {}\nvm.dirty_bytes = {}\nvm.dirty_expire_centisecs = {}\n",
            plan.class, w.background_bytes, w.dirty_bytes, w.expire_centisecs
        )
    });
    put(root, SYSCTL_DROPIN, sysctl.as_deref(), &mut out)?;
    let udev = plan.io_scheduler.as_ref().map(|s| {
        format!(
            "# Written by firstboot for {}.\n\
             ACTION==\"add|change\", SUBSYSTEM==\"block\", KERNEL==\"{}\", ATTR{{queue/scheduler}}=\"{}\"\n",
            plan.class, s.disk, s.scheduler
        )
    });
    put(root, UDEV_RULE, udev.as_deref(), &mut out)?;
    let k3s = plan.k3s_io_priority.then_some(
        "# Written by firstboot: etcd guidance is ionice -c2 -n0 (best-effort, highest).\n\
         [Service]\nIOSchedulingClass=best-effort\nIOSchedulingPriority=0\n",
    );
    for dropin in K3S_DROPINS {
        put(root, dropin, k3s, &mut out)?;
    }
    if let Some(dir) = &plan.snapshot_dir {
        let target = under(root, dir);
        if !target.is_dir() {
            std::fs::create_dir_all(&target)
                .with_context(|| format!("creating snapshot directory {}", target.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", target.display()))?;
            out.changed.push(relative(dir));
        }
    }
    Ok(out)
}

/// Commands that make what `apply` changed take effect on the running system without a reboot
/// (only meaningful when the root prefix is `/`). Pure, so the daemon and tests can inspect it.
pub fn activation_commands(plan: &TuningPlan, applied: &AppliedTuning) -> Vec<Vec<String>> {
    let changed = |rel: &str| applied.changed.iter().any(|c| c == Path::new(rel));
    let cmd = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    let mut cmds = Vec::new();
    let units_changed = applied.changed.iter().any(|c| {
        c.starts_with("etc/systemd/system") || c.starts_with("etc/systemd/system-generators")
    });
    if units_changed {
        cmds.push(cmd(&["systemctl", "daemon-reload"]));
    }
    if let Some(mp) = &applied.remount {
        cmds.push(cmd(&["mount", "-o", "remount", &mp.to_string_lossy()]));
    }
    if changed(JOURNALD_DROPIN) {
        cmds.push(cmd(&["systemctl", "restart", "systemd-journald"]));
    }
    if plan.swap_off && units_changed {
        cmds.push(cmd(&["systemctl", "stop", "dphys-swapfile.service"]));
        cmds.push(cmd(&["swapoff", "-a"]));
    }
    if changed(SYSCTL_DROPIN) && plan.writeback.is_some() {
        cmds.push(cmd(&["sysctl", "-p", &format!("/{SYSCTL_DROPIN}")]));
    }
    if let (true, Some(s)) = (changed(UDEV_RULE), &plan.io_scheduler) {
        cmds.push(cmd(&["udevadm", "control", "--reload"]));
        cmds.push(cmd(&[
            "udevadm",
            "trigger",
            "--action=change",
            "--subsystem-match=block",
            &format!("--sysname-match={}", s.disk),
        ]));
    }
    cmds
}

/// Run activation commands; failures are returned as warnings for status, never fatal (the
/// files are in place and take effect at the next boot anyway).
pub fn activate(commands: &[Vec<String>]) -> Vec<String> {
    let mut warnings = Vec::new();
    for c in commands {
        let Some((program, args)) = c.split_first() else {
            continue;
        };
        match std::process::Command::new(program).args(args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => warnings.push(format!(
                "{} failed ({}): {}",
                c.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => warnings.push(format!("{}: {e}", c.join(" "))),
        }
    }
    warnings
}

fn render_journald(policy: JournalPolicy) -> String {
    let body = match policy {
        JournalPolicy::Volatile { runtime_max_mib } => {
            format!("Storage=volatile\nRuntimeMaxUse={runtime_max_mib}M\n")
        }
        JournalPolicy::Limited {
            system_max_mib,
            max_file_mib,
        } => format!(
            "Storage=persistent\nSystemMaxUse={system_max_mib}M\nSystemMaxFileSize={max_file_mib}M\n"
        ),
    };
    format!("# Written by firstboot: spare the data device's write budget.\n[Journal]\n{body}")
}

/// `root` joined with an absolute node path.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(relative(path))
}

fn relative(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_path_buf()
}

/// Make `root/rel` hold exactly `content`, or not exist when `content` is None.
fn put(
    root: &Path,
    rel: &str,
    content: Option<&str>,
    out: &mut AppliedTuning,
) -> anyhow::Result<()> {
    let path = root.join(rel);
    match content {
        Some(c) => {
            if write_if_changed(&path, c.as_bytes(), 0o644)? {
                out.changed.push(PathBuf::from(rel));
            }
        }
        None => {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                out.changed.push(PathBuf::from(rel));
            }
        }
    }
    Ok(())
}

/// Atomically replace `path` with `content` unless it already holds it; true when written.
pub fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<bool> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.firstboot-tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    // Keep an existing file's mode (fstab may be 0644 or stricter).
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())
            .with_context(|| format!("copying mode onto {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(true)
}

fn tune_fstab(
    plan: &TuningPlan,
    root: &Path,
    data_dir: &Path,
    out: &mut AppliedTuning,
) -> anyhow::Result<()> {
    let path = root.join(crate::paths::FSTAB);
    let Ok(text) = std::fs::read_to_string(&path) else {
        out.notes
            .push("no /etc/fstab: mount options left alone".into());
        return Ok(());
    };
    let (tuned, mount_point) = tune_fstab_text(&text, plan, data_dir);
    if mount_point.is_none() {
        out.notes.push(format!(
            "no fstab entry holds {}: mount options left alone",
            data_dir.display()
        ));
    }
    if write_if_changed(&path, tuned.as_bytes(), 0o644)? {
        out.changed.push(PathBuf::from(crate::paths::FSTAB));
        out.remount = mount_point;
    }
    Ok(())
}

/// Byte spans of the whitespace-separated fields of a line.
fn field_spans(line: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, ch) in line.char_indices() {
        match (ch.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    spans
}

/// Retune fstab text: options of the entry holding `data_dir`, and swap lines commented out when
/// the plan turns swap off. Returns the new text and the mount point of the entry that holds
/// `data_dir`, if any.
pub fn tune_fstab_text(
    text: &str,
    plan: &TuningPlan,
    data_dir: &Path,
) -> (String, Option<PathBuf>) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let fields = |l: &str| -> Vec<(usize, usize)> {
        if l.trim_start().starts_with('#') {
            Vec::new()
        } else {
            field_spans(l)
        }
    };
    // The entry whose mount point is the longest prefix of data_dir.
    let target = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let f = fields(l);
            let mp = Path::new(&l[f.get(1)?.0..f.get(1)?.1]);
            data_dir.starts_with(mp).then_some((i, mp))
        })
        .max_by_key(|&(_, mp)| mp.as_os_str().len());
    let mount_point = target.map(|(_, mp)| mp.to_path_buf());
    let target = target.map(|(i, _)| i);
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in lines.iter().enumerate() {
        let f = fields(line);
        let fs_type = f.get(2).map(|&(a, b)| &line[a..b]);
        if plan.swap_off && fs_type == Some("swap") {
            out.push_str("# firstboot: swap off for this storage class: ");
            out.push_str(line);
            continue;
        }
        match (Some(i) == target, f.get(3)) {
            (true, Some(&(a, b))) => {
                let options = tune_options(&line[a..b], plan, fs_type == Some("ext4"));
                out.push_str(&line[..a]);
                out.push_str(&options);
                out.push_str(&line[b..]);
            }
            _ => out.push_str(line),
        }
    }
    (out, mount_point)
}

fn tune_options(options: &str, plan: &TuningPlan, ext4: bool) -> String {
    let commit = plan.mount.commit_secs.filter(|_| ext4);
    let mut opts: Vec<String> = options
        .split(',')
        .filter(|o| {
            let atime = ["atime", "noatime", "relatime", "strictatime"].contains(o);
            let replaced_atime = plan.mount.noatime && atime;
            let replaced_commit = commit.is_some() && o.starts_with("commit=");
            !(replaced_atime || replaced_commit)
        })
        .map(str::to_string)
        .collect();
    if plan.mount.noatime {
        opts.push("noatime".into());
    }
    if let Some(c) = commit {
        opts.push(format!("commit={c}"));
    }
    opts.join(",")
}

fn swap_off(root: &Path, out: &mut AppliedTuning) -> anyhow::Result<()> {
    // Bookworm: dphys-swapfile sizes the file from CONF_SWAPSIZE; 0 plus a mask stops it.
    let conf = root.join(crate::paths::DPHYS_SWAPFILE);
    if let Ok(text) = std::fs::read_to_string(&conf) {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("CONF_SWAPSIZE="))
            .map(str::to_string)
            .collect();
        lines.push("CONF_SWAPSIZE=0".into());
        let new = lines.join("\n") + "\n";
        if write_if_changed(&conf, new.as_bytes(), 0o644)? {
            out.changed.push(crate::paths::DPHYS_SWAPFILE.into());
        }
        mask(root, "etc/systemd/system/dphys-swapfile.service", out)?;
    }
    // Trixie: rpi-swap (and Debian's zram-generator) are generators; a /dev/null link in /etc
    // disables a generator of the same name (systemd.generator(7)).
    for generator in SWAP_GENERATORS {
        let installed = [
            "usr/lib/systemd/system-generators",
            "lib/systemd/system-generators",
        ]
        .iter()
        .any(|d| root.join(d).join(generator).exists());
        if installed {
            mask(
                root,
                &format!("etc/systemd/system-generators/{generator}"),
                out,
            )?;
        }
    }
    Ok(())
}

/// Point `root/rel` at /dev/null (systemd's mask) unless it already does.
fn mask(root: &Path, rel: &str, out: &mut AppliedTuning) -> anyhow::Result<()> {
    let link = root.join(rel);
    if std::fs::read_link(&link).ok().as_deref() == Some(Path::new("/dev/null")) {
        return Ok(());
    }
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink("/dev/null", &link)
        .with_context(|| format!("masking {}", link.display()))?;
    out.changed.push(PathBuf::from(rel));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::class::{DeviceKind, Speed, StorageClass};

    fn sd_plan() -> TuningPlan {
        TuningPlan::for_class(
            StorageClass {
                kind: DeviceKind::Sd,
                speed: Speed::Slow,
            },
            Some("mmcblk0"),
            &[],
        )
    }

    #[test]
    fn fstab_options_are_tuned_in_place() {
        let text = "proc            /proc           proc    defaults          0       0\n\
                    PARTUUID=abc-01  /boot/firmware  vfat    defaults          0       2\n\
                    PARTUUID=abc-02  /               ext4    defaults,relatime,commit=5  0       1\n\
                    /swap none swap sw 0 0\n";
        let (out, mp) = tune_fstab_text(text, &sd_plan(), Path::new("/var/lib/rancher"));
        assert_eq!(mp, Some(PathBuf::from("/")));
        assert!(out.contains(
            "PARTUUID=abc-02  /               ext4    defaults,noatime,commit=60  0       1\n"
        ));
        assert!(
            out.contains("PARTUUID=abc-01  /boot/firmware  vfat    defaults          0       2\n")
        );
        assert!(out.contains("# firstboot: swap off for this storage class: /swap none swap"));
        let (again, _) = tune_fstab_text(&out, &sd_plan(), Path::new("/var/lib/rancher"));
        assert_eq!(again, out);
    }

    #[test]
    fn activation_follows_what_changed() {
        let plan = sd_plan();
        let applied = AppliedTuning {
            changed: vec![
                "etc/fstab".into(),
                JOURNALD_DROPIN.into(),
                SYSCTL_DROPIN.into(),
                UDEV_RULE.into(),
                K3S_DROPINS[0].into(),
            ],
            notes: vec![],
            remount: Some("/".into()),
        };
        let cmds: Vec<String> = activation_commands(&plan, &applied)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            [
                "systemctl daemon-reload",
                "mount -o remount /",
                "systemctl restart systemd-journald",
                "systemctl stop dphys-swapfile.service",
                "swapoff -a",
                "sysctl -p /etc/sysctl.d/60-firstboot-writeback.conf",
                "udevadm control --reload",
                "udevadm trigger --action=change --subsystem-match=block --sysname-match=mmcblk0",
            ]
        );
        assert!(activation_commands(&plan, &AppliedTuning::default()).is_empty());
    }

    #[test]
    fn activation_failures_are_warnings() {
        let w = activate(&[vec!["false".into()], vec!["/nonexistent/cmd".into()]]);
        assert_eq!(w.len(), 2);
        assert!(activate(&[vec!["true".into()]]).is_empty());
    }

    #[test]
    fn commit_is_only_for_ext4_and_longest_mount_wins() {
        let text = "/dev/root / ext4 defaults 0 1\n/dev/sda1 /var/lib/rancher xfs defaults 0 2\n";
        let (out, _) = tune_fstab_text(text, &sd_plan(), Path::new("/var/lib/rancher"));
        assert_eq!(
            out,
            "/dev/root / ext4 defaults 0 1\n/dev/sda1 /var/lib/rancher xfs defaults,noatime 0 2\n"
        );
    }
}
