//! First-user setup in the root filesystem: login shell, sudo, SSH keys, Wi-Fi and timezone.

use super::payload::Payload;
use crate::recipe::{OsSection, Wifi};
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// What the base's root filesystem says that first-user and Wi-Fi setup depend on.
#[derive(Debug, Clone, Default)]
pub struct BaseFacts {
    /// The base's /etc/passwd.
    pub passwd: String,
    /// Whether the base runs NetworkManager (Raspberry Pi OS does; Ubuntu Server does not).
    pub network_manager: bool,
    /// Whether the base creates its first user itself (Ubuntu: cloud-init) rather than
    /// renaming an existing account (Raspberry Pi OS: userconf-pi).
    pub creates_user: bool,
}

/// Login shells that refuse a login: pi-gen gives a first user without a password one of these
/// (2026-02, `adduser --disabled-login`), and userconf-pi keeps it when renaming.
const NO_LOGIN_SHELLS: [&str; 4] = [
    "/usr/sbin/nologin",
    "/sbin/nologin",
    "/bin/false",
    "/usr/bin/false",
];

/// The shell a first user gets when the base gave it none that allows logins.
pub const LOGIN_SHELL: &str = "/bin/bash";

/// The saved rfkill states systemd-rfkill restores for the on-board Wi-Fi: it names a file
/// `<udev ID_PATH>:wlan`. Pi 3 / Zero 2 W (SDIO at 3f300000), Pi 4 / Pi 400 / CM4 (fe300000) and
/// Pi 5 / CM5 (1001100000); all are written so one image suits every board.
pub const RFKILL_WLAN_STATES: [&str; 3] = [
    "/var/lib/systemd/rfkill/platform-3f300000.mmcnr:wlan",
    "/var/lib/systemd/rfkill/platform-fe300000.mmcnr:wlan",
    "/var/lib/systemd/rfkill/platform-1001100000.mmc:wlan",
];

/// NetworkManager's saved radio state; Raspberry Pi OS ships it with `WirelessEnabled=false`.
pub const NM_STATE: &str = "/var/lib/NetworkManager/NetworkManager.state";

/// Where the Wi-Fi keyfile goes (NetworkManager's keyfile plugin reads this directory).
pub const NM_CONNECTIONS: &str = "/etc/NetworkManager/system-connections";

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
    /// Login shell.
    pub shell: String,
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
                shell: f[6].to_string(),
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
pub fn entries(os: &OsSection, account: Option<&Account>, base: &BaseFacts) -> Result<Payload> {
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
    if !base.creates_user {
        login(&mut p, os, account, &base.passwd);
    }
    if os.wifi.wanted() && base.network_manager {
        wifi_on(&mut p, &os.wifi);
    }
    let tz = os.timezone.trim();
    crate::recipe::check_timezone_name(tz)?;
    p.bytes("/etc/timezone", format!("{tz}\n"), 0o644);
    p.symlink("/etc/localtime", &format!("/usr/share/zoneinfo/{tz}"));
    Ok(p)
}

/// The first user can log in and use sudo on every Raspberry Pi OS release: a real shell where
/// pi-gen gave a password-less user `nologin`, and a sudoers drop-in because releases from
/// 2026-04 no longer ship `010_pi-nopasswd`. The drop-in names the final user, so userconf-pi's
/// rename (which rewrites only `010_pi-nopasswd`) leaves it right.
fn login(p: &mut Payload, os: &OsSection, account: Option<&Account>, passwd: &str) {
    if let Some(a) = account {
        if NO_LOGIN_SHELLS.contains(&a.shell.as_str()) {
            p.bytes(
                "/etc/passwd",
                with_shell(passwd, &a.name, LOGIN_SHELL),
                0o644,
            );
        }
    }
    p.bytes(
        &sudoers_path(&os.user, os.password_hash.is_empty()),
        sudoers_rule(&os.user, os.password_hash.is_empty()),
        0o440,
    );
}

/// `/etc/sudoers.d/010_<user>-nopasswd` (key-only) or `010_<user>-passwd`; sudo reads every
/// file there whose name has no `.` and does not end in `~`, which a valid user name guarantees.
pub fn sudoers_path(user: &str, key_only: bool) -> String {
    let kind = if key_only { "nopasswd" } else { "passwd" };
    format!("/etc/sudoers.d/010_{user}-{kind}")
}

/// The sudoers rule: a key-only user has no password to type, so sudo must not ask for one;
/// a user with a password confirms with it, as Raspberry Pi OS does from 2026-04.
pub fn sudoers_rule(user: &str, key_only: bool) -> String {
    if key_only {
        format!("# Written by imagebuild: {user} logs in with an SSH key only and has no password to give sudo.\n{user} ALL=(ALL) NOPASSWD: ALL\n")
    } else {
        format!("# Written by imagebuild: {user} may use sudo with its password.\n{user} ALL=(ALL:ALL) ALL\n")
    }
}

/// /etc/passwd with `user`'s login shell replaced.
pub fn with_shell(passwd: &str, user: &str, shell: &str) -> String {
    let mut out = String::new();
    for line in passwd.lines() {
        let mut f: Vec<&str> = line.split(':').collect();
        if f.len() == 7 && f[0] == user {
            f[6] = shell;
            out.push_str(&f.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Wi-Fi on at first boot, as raspi-config's `do_wifi_country` leaves a system (the country on
/// the cmdline is added with the boot partition): the keyfile, the on-board radios' saved rfkill
/// state "unblocked", and NetworkManager's saved radio switch on. Without the last two, Raspberry
/// Pi OS (since 2024-10) keeps Wi-Fi off: rfkill blocks it by default and its
/// NetworkManager.state says `WirelessEnabled=false`.
fn wifi_on(p: &mut Payload, wifi: &Wifi) {
    p.bytes(
        &format!("{NM_CONNECTIONS}/{}.nmconnection", file_stem(&wifi.ssid)),
        nm_keyfile(&wifi.ssid, &wifi.psk),
        0o600,
    );
    for f in RFKILL_WLAN_STATES {
        p.bytes(f, "0\n", 0o644);
    }
    p.bytes(
        NM_STATE,
        "[main]\nNetworkingEnabled=true\nWirelessEnabled=true\nWWANEnabled=true\n",
        0o644,
    );
}

/// cloud-init `network-config` (netplan v2) for Ubuntu Server, which has no NetworkManager:
/// wired DHCP as Ubuntu's own file has it, plus the Wi-Fi network with its regulatory domain.
pub fn cloud_init_network_config(wifi: &Wifi) -> String {
    let mut s = String::from(
        "# Written by imagebuild from image.toml [os] wifi (netplan v2, read by cloud-init).\n\
         network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n",
    );
    s.push_str(&format!(
        "  wifis:\n    wlan0:\n      dhcp4: true\n      optional: true\n      regulatory-domain: \"{}\"\n      access-points:\n        {}:\n",
        wifi.country_code(),
        yaml_string(&wifi.ssid)
    ));
    if wifi.psk.is_empty() {
        s.push_str("          {}\n");
    } else {
        s.push_str(&format!("          password: {}\n", yaml_string(&wifi.psk)));
    }
    s
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_string(v: &str) -> String {
    serde_json::Value::String(v.to_string()).to_string()
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
    fn nologin_first_user_gets_a_shell_and_sudo() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/usr/sbin/nologin\n";
        let os = OsSection {
            user: "ada".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
            ..OsSection::default()
        };
        let facts = BaseFacts {
            passwd: passwd.into(),
            ..BaseFacts::default()
        };
        let p = entries(&os, find_account(passwd, "ada").as_ref(), &facts).unwrap();
        let get = |d: &str| p.entries.iter().find(|e| e.dest == d).unwrap();
        let pw = get("/etc/passwd");
        assert_eq!(pw.mode, 0o644);
        let crate::rootfs::payload::EntryKind::Bytes(b) = &pw.kind else {
            panic!("/etc/passwd is not written from bytes")
        };
        assert_eq!(
            String::from_utf8_lossy(b),
            "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
        );
        let sudo = get("/etc/sudoers.d/010_ada-nopasswd");
        assert_eq!((sudo.mode, sudo.uid, sudo.gid), (0o440, 0, 0));
        // A base that creates the user itself (Ubuntu) gets neither.
        let ubuntu = BaseFacts {
            creates_user: true,
            ..facts
        };
        let p = entries(&os, find_account(passwd, "ada").as_ref(), &ubuntu).unwrap();
        assert!(p
            .entries
            .iter()
            .all(|e| !e.dest.starts_with("/etc/sudoers.d") && e.dest != "/etc/passwd"));
    }

    #[test]
    fn ubuntu_network_config_is_netplan_wifi() {
        let w = Wifi {
            country: "de".into(),
            ssid: "home \"net\"".into(),
            psk: "correct horse".into(),
        };
        let n = cloud_init_network_config(&w);
        assert!(n.contains("  wifis:\n    wlan0:\n"), "{n}");
        assert!(n.contains("regulatory-domain: \"DE\""), "{n}");
        assert!(
            n.contains("\"home \\\"net\\\"\":\n          password: \"correct horse\"\n"),
            "{n}"
        );
    }

    #[test]
    fn keys_go_to_home_with_user_owner_and_0600() {
        let os = OsSection {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
            ..OsSection::default()
        };
        let a = find_account(PASSWD, "pi");
        let p = entries(&os, a.as_ref(), &BaseFacts::default()).unwrap();
        let k = p
            .entries
            .iter()
            .find(|e| e.dest == "/home/pi/.ssh/authorized_keys")
            .unwrap();
        assert_eq!((k.uid, k.gid, k.mode), (1000, 1000, 0o600));
    }
}
