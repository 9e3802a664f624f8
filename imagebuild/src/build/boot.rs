//! Stage 5, the boot partition: cmdline.txt (cgroup flags once, the board's words, the Wi-Fi
//! country), config.txt lines, `ssh`, the first user (userconf.txt, or cloud-init on Ubuntu) and
//! cluster.toml, written through the `fatfs` crate.

use super::base::Base;
use super::disk::GrownDisk;
use super::plan::BuildPlan;
use crate::boards::OsFamily;
use crate::boot::{self, BootPartition};
use crate::interrupt;
use crate::recipe::Recipe;
use crate::rootfs::user;
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;

/// What the boot stage wrote, for the report.
pub struct BootEdits {
    /// cmdline.txt as written (one line).
    pub cmdline: String,
    /// Lines added to config.txt.
    pub config_lines: Vec<String>,
}

/// Edit the boot partition of `disk`.
pub fn stamp(
    recipe: &Recipe,
    plan: &BuildPlan,
    base: &Base,
    disk: &GrownDisk,
) -> Result<BootEdits> {
    let board = &plan.board;
    let mut words: Vec<String> = boot::CGROUP_FLAGS.iter().map(|s| s.to_string()).collect();
    words.extend(board.cmdline.iter().cloned());
    if recipe.os.wifi.wanted() {
        words.push(format!(
            "cfg80211.ieee80211_regdom={}",
            recipe.os.wifi.country_code()
        ));
    }
    let config_lines = board.config_lines(recipe.image.media, recipe.image.kernel_page_size)?;
    let why = format!("board {}, media {:?}", board.name, recipe.image.media).to_lowercase();

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.path)
        .with_context(|| format!("opening {}", disk.path.display()))?;
    let layout = &base.layout;
    let fat = BootPartition::open(&mut file, &layout.boot, plan.epoch)?;
    let old = fat
        .read("cmdline.txt")?
        .context("the boot partition has no cmdline.txt")?;
    let cmdline = boot::edit_cmdline(&String::from_utf8_lossy(&old), &words);
    fat.write("cmdline.txt", cmdline.as_bytes())?;
    let config = fat.read("config.txt")?.unwrap_or_default();
    let new_config = boot::edit_config(
        &String::from_utf8_lossy(&config),
        &config_lines,
        &board.config_filter,
        &why,
    );
    if new_config.as_bytes() != config.as_slice() {
        fat.write("config.txt", new_config.as_bytes())?;
    }
    if fat.read("ssh")?.is_none() && fat.read("ssh.txt")?.is_none() {
        fat.write("ssh", b"")?;
    }
    if layout.family != OsFamily::Ubuntu {
        // An empty hash means key-only login: `*` matches no password and, unlike `!`, does not
        // make sshd treat the account as locked.
        let hash = if recipe.os.password_hash.is_empty() {
            "*"
        } else {
            recipe.os.password_hash.as_str()
        };
        if hash.contains([':', '\n']) {
            bail!("[os] password_hash must be a crypt(3) hash on one line without ':' (make one with `openssl passwd -6`)");
        }
        fat.write(
            "userconf.txt",
            format!("{}:{hash}\n", recipe.os.user).as_bytes(),
        )?;
    }
    if layout.family == OsFamily::Ubuntu {
        fat.write(
            "user-data",
            user::cloud_init_user_data(&recipe.os).as_bytes(),
        )?;
        if recipe.os.wifi.wanted() {
            fat.write(
                "network-config",
                user::cloud_init_network_config(&recipe.os.wifi).as_bytes(),
            )?;
        }
    }
    if let Some(c) = &plan.cluster_file {
        fat.write_cluster(c)?;
    }
    fat.close()?;
    file.sync_all().context("flushing the boot partition")?;
    interrupt::check()?;
    Ok(BootEdits {
        cmdline: cmdline.trim_end().to_string(),
        config_lines,
    })
}
