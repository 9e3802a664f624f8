//! First-user setup in the root filesystem: SSH keys, Wi-Fi profile and timezone.

use super::payload::Payload;
use crate::recipe::OsSection;
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// An account from the image's /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Find the recipe's user in /etc/passwd, else the image's first regular user (uid 1000), which
/// Raspberry Pi OS renames to the userconf.txt name on first boot, moving its home.
pub fn find_account(passwd: &str, user: &str) -> Option<Account> {
    let accounts: Vec<Account> = passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| Account {
                name: f[0].to_string(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
                home: f[5].to_string(),
            })
        })
        .filter(|a| a.uid != u32::MAX && a.gid != u32::MAX)
        .collect();
    accounts
        .iter()
        .find(|a| a.name == user)
        .or_else(|| accounts.iter().find(|a| a.uid == 1000))
        .cloned()
}

/// The root-filesystem entries for the recipe's `[os]` settings.
pub fn entries(os: &OsSection, account: Option<&Account>) -> Result<Payload> {
    let mut p = Payload::new();
    if !os.ssh_authorized_keys.is_empty() {
        let Some(a) = account else {
            bail!("the recipe sets ssh_authorized_keys for user `{}`, but the base image's /etc/passwd has neither that user nor a uid-1000 user to put them on", os.user);
        };
        let mut keys = String::new();
        for k in &os.ssh_authorized_keys {
            let k = k.trim();
            if k.contains('\n') {
                bail!(
                    "an ssh_authorized_keys entry spans several lines; give one key per list item"
                );
            }
            keys.push_str(k);
            keys.push('\n');
        }
        let ssh = format!("{}/.ssh", a.home.trim_end_matches('/'));
        p.dir(&ssh, 0o700).owner(a.uid, a.gid);
        p.bytes(&format!("{ssh}/authorized_keys"), keys, 0o600)
            .owner(a.uid, a.gid);
    }
    if !os.wifi.ssid.is_empty() {
        p.bytes(
            &format!(
                "/etc/NetworkManager/system-connections/{}.nmconnection",
                file_stem(&os.wifi.ssid)
            ),
            nm_keyfile(&os.wifi.ssid, &os.wifi.psk),
            0o600,
        );
    }
    let tz = os.timezone.trim();
    if tz.is_empty()
        || tz.starts_with('/')
        || tz.contains("..")
        || !tz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c))
    {
        bail!("timezone {tz:?} is not an IANA name like \"Europe/Berlin\" or \"Etc/UTC\"");
    }
    p.bytes("/etc/timezone", format!("{tz}\n"), 0o644);
    p.symlink("/etc/localtime", &format!("/usr/share/zoneinfo/{tz}"));
    Ok(p)
}

/// cloud-init `user-data` for Ubuntu: the first user with its keys, sudo, and the timezone.
pub fn cloud_init_user_data(os: &OsSection) -> String {
    let mut s = String::from("#cloud-config\n# Written by imagebuild from image.toml [os].\n");
    s.push_str(&format!(
        "timezone: {}\nssh_pwauth: false\nusers:\n  - name: {}\n",
        os.timezone, os.user
    ));
    s.push_str(
        "    groups: [adm, sudo]\n    shell: /bin/bash\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n",
    );
    if os.password_hash.is_empty() {
        s.push_str("    lock_passwd: true\n");
    } else {
        s.push_str(&format!(
            "    lock_passwd: false\n    passwd: \"{}\"\n",
            os.password_hash
        ));
    }
    if !os.ssh_authorized_keys.is_empty() {
        s.push_str("    ssh_authorized_keys:\n");
        for k in &os.ssh_authorized_keys {
            s.push_str(&format!("      - \"{}\"\n", k.trim().replace('"', "")));
        }
    }
    s
}

fn file_stem(ssid: &str) -> String {
    let s: String = ssid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("wifi-{s}")
}

/// A NetworkManager keyfile for a WPA-PSK network; its UUID derives from the SSID (reproducible).
pub fn nm_keyfile(ssid: &str, psk: &str) -> String {
    let h = Sha256::digest(format!("imagebuild wifi {ssid}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    u[6] = (u[6] & 0x0f) | 0x50; // name-based UUID (version 5 layout)
    u[8] = (u[8] & 0x3f) | 0x80;
    let x = hex::encode(u);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    );
    let security = if psk.is_empty() {
        String::new()
    } else {
        format!("\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={psk}\n")
    };
    format!(
        "[connection]\nid={ssid}\nuuid={uuid}\ntype=wifi\nautoconnect=true\n\n[wifi]\nmode=infrastructure\nssid={ssid}\n{security}\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n";

    #[test]
    fn finds_named_or_first_user() {
        assert_eq!(find_account(PASSWD, "pi").unwrap().home, "/home/pi");
        let renamed = find_account(PASSWD, "alice").unwrap();
        assert_eq!((renamed.uid, renamed.name.as_str()), (1000, "pi"));
        assert!(find_account("root:x:0:0::/root:/bin/sh\n", "alice").is_none());
    }

    #[test]
    fn ubuntu_user_data_carries_user_and_keys() {
        let os = OsSection {
            user: "ada".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
            ..OsSection::default()
        };
        let u = cloud_init_user_data(&os);
        assert!(u.starts_with("#cloud-config\n"));
        assert!(u.contains("  - name: ada\n"));
        assert!(u.contains("      - \"ssh-ed25519 AAAA me\"\n"));
        assert!(u.contains("lock_passwd: true"));
    }

    #[test]
    fn keys_go_to_home_with_user_owner_and_0600() {
        let os = OsSection {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
            ..OsSection::default()
        };
        let a = find_account(PASSWD, "pi");
        let p = entries(&os, a.as_ref()).unwrap();
        let k = p
            .entries
            .iter()
            .find(|e| e.dest == "/home/pi/.ssh/authorized_keys")
            .unwrap();
        assert_eq!((k.uid, k.gid, k.mode), (1000, 1000, 0o600));
    }
}
