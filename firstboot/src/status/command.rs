//! `firstboot status [--json]`: the persisted state for humans (or scripts); never the token.

use super::state::{Member, MembershipState, NodeState, Phase, QUORUM_LOST};
use crate::k3s::snapshots::SnapshotView;
use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Show what firstboot is doing on this node.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print the state file as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the status to `out`; `now_unix` is used for "updated N s ago". A reader that goes
/// away early (`| head`) is not an error. A node that is blocked or failed makes this return an
/// error (exit status 1) after printing, so scripts can test `firstboot status` directly.
pub fn run(
    args: &StatusArgs,
    root: &Path,
    out: &mut dyn Write,
    now_unix: u64,
) -> anyhow::Result<()> {
    let state = NodeState::load(root).context("reading the firstboot state file")?;
    let stuck = state
        .as_ref()
        .map(|s| s.phase)
        .filter(|p| matches!(p, Phase::Blocked | Phase::Failed));
    let text = match (state, args.json) {
        (None, true) => "null\n".to_string(),
        (None, false) => format!(
            "firstboot has not started on this node yet (no {})\n",
            NodeState::path(root).display()
        ),
        // Plain data with string keys: serializing cannot fail. A server's etcd snapshots are
        // read from its disk now (`snapshots`, with `stale`), not from the state file.
        (Some(s), true) => {
            let mut v = serde_json::to_value(&s).unwrap_or_default();
            if let (Some(view), Some(map)) = (SnapshotView::read(root), v.as_object_mut()) {
                let stale = view.is_stale(now_unix);
                let mut snaps = serde_json::to_value(&view).unwrap_or_default();
                snaps["stale"] = stale.into();
                map.insert("snapshots".into(), snaps);
            }
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        (Some(s), false) => {
            let mut text = table(&s, now_unix);
            if let Some(view) = SnapshotView::read(root) {
                text.push_str(&snapshot_row(&view, now_unix));
            }
            text
        }
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("writing the status")?,
    }
    match stuck {
        Some(p) => anyhow::bail!(
            "firstboot is {} on this node: see the errors above (journalctl -u firstboot for the whole story)",
            p.as_str()
        ),
        None => Ok(()),
    }
}

/// The snapshots row of a server's table: the newest snapshot's age, and a warning when it is
/// older than two schedule periods.
pub fn snapshot_row(v: &SnapshotView, now_unix: u64) -> String {
    let text = match (&v.newest, v.newest_unix) {
        (Some(name), Some(at)) => {
            let mut t = format!(
                "newest {} ago ({name}, {} in {}), schedule \"{}\"",
                span(now_unix.saturating_sub(at)),
                v.count,
                v.dir,
                v.schedule
            );
            if v.is_stale(now_unix) {
                t.push_str(
                    "; WARNING: older than two schedule periods: check `journalctl -u k3s` for \
                     snapshot errors, take one now with `sudo firstboot snapshot`",
                );
            }
            t
        }
        _ => format!(
            "none yet in {} (schedule \"{}\"; `sudo firstboot snapshot` takes one now)",
            v.dir, v.schedule
        ),
    };
    format!("{:<10} {text}\n", "snapshots")
}

/// The human-readable view.
pub fn table(s: &NodeState, now_unix: u64) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows: Vec<(&str, String)> = vec![
        ("cluster", or_dash(&s.cluster)),
        (
            "node",
            match (&s.node_name, &s.node_ip) {
                (Some(n), Some(ip)) => format!("{n} ({ip})"),
                (n, _) => or_dash(n),
            },
        ),
        ("state", s.phase.as_str().to_string()),
        (
            "role",
            s.role
                .map(|r| r.as_str().to_string())
                .unwrap_or_else(|| "not decided".into()),
        ),
    ];
    if let Some(at) = s.promoted_unix {
        rows.push((
            "promoted",
            format!(
                "from agent to server {} ago (unix {at}); the healer gave it a dead server's seat",
                span(now_unix.saturating_sub(at))
            ),
        ));
    }
    if let Some(init) = &s.init_node {
        rows.push(("init node", init.clone()));
    }
    if let Some(url) = &s.server_url {
        rows.push(("server", url.clone()));
    }
    if let Some(ca) = &s.ca_hash {
        rows.push(("ca sha256", ca.clone()));
    }
    if let Some(d) = &s.datastore {
        rows.push(("datastore", d.clone()));
    }
    if let Some(a) = &s.api_address {
        let since = a
            .since_unix
            .map(|t| format!(" for {}", span(now_unix.saturating_sub(t))))
            .unwrap_or_default();
        rows.push((
            "api address",
            if a.held_here {
                format!("{} held by this server{since}", a.address)
            } else {
                format!("{} held by another server", a.address)
            },
        ));
    }
    rows.push((
        "peers",
        // From the JSON's peers_visible (the others) and peers_expected (all nodes).
        format!(
            "{} of {} nodes visible (this node and {} other{})",
            s.peers_visible + 1,
            s.peers_expected,
            s.peers_visible,
            if s.peers_visible == 1 { "" } else { "s" }
        ),
    ));
    if let Some(m) = &s.membership {
        membership_rows(m, now_unix, &mut rows);
    }
    let st = &s.storage;
    let mut storage = st.class.clone().unwrap_or_else(|| "not probed yet".into());
    if let (Some(p50), Some(p99)) = (st.fdatasync_p50_us, st.fdatasync_p99_us) {
        storage.push_str(&format!(
            ", fdatasync p50 {:.1} ms p99 {:.1} ms",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        ));
    }
    if let Some(d) = &st.data_dir {
        storage.push_str(&format!(", data in {d}"));
    }
    rows.push(("storage", storage));
    for a in &st.applied {
        rows.push(("", format!("tuned: {a}")));
    }
    if s.errors.is_empty() {
        rows.push(("errors", "none".into()));
    }
    for e in &s.errors {
        rows.push(("error", e.clone()));
    }
    for n in &s.notes {
        rows.push(("note", n.clone()));
    }
    rows.push((
        "updated",
        format!("{} s ago", now_unix.saturating_sub(s.updated_unix)),
    ));
    rows.iter().map(|(k, v)| format!("{k:<10} {v}\n")).collect()
}

/// The servers (seat holders), the other members and the quorum, one row each.
fn membership_rows(m: &MembershipState, now_unix: u64, rows: &mut Vec<(&str, String)>) {
    let describe = |member: &Member| {
        let name = member.name.clone().unwrap_or_else(|| member.node.clone());
        let mut facts = Vec::new();
        if member.this_node {
            facts.push("this node".to_string());
        }
        match member.gone_since_unix {
            Some(since) => {
                facts.push(format!("gone {}", span(now_unix.saturating_sub(since))));
                match member.replace_from_unix {
                    Some(at) if at > now_unix => {
                        facts.push(format!("replaced in {}", span(at - now_unix)));
                    }
                    Some(_) => facts.push("replacement due".into()),
                    None => {}
                }
            }
            None if member.serving => facts.push("serving".into()),
            None => facts.push("joining".into()),
        }
        format!("{name} ({})", facts.join(", "))
    };
    let servers: Vec<String> = m
        .members
        .iter()
        .filter(|x| x.server)
        .map(describe)
        .collect();
    let others: Vec<String> = m
        .members
        .iter()
        .filter(|x| !x.server)
        .map(describe)
        .collect();
    rows.push((
        "servers",
        format!(
            "{} of {} alive ({} seats): {}",
            m.live_servers,
            servers.len(),
            m.servers,
            if servers.is_empty() {
                "none known yet".to_string()
            } else {
                servers.join(", ")
            }
        ),
    ));
    if !others.is_empty() {
        rows.push(("others", others.join(", ")));
    }
    if m.quorum_lost {
        rows.push((
            "quorum",
            format!(
                "LOST: {} of {} servers alive; {QUORUM_LOST}",
                m.live_servers,
                servers.len()
            ),
        ));
    }
}

/// A duration in seconds as "42s", "5m 3s", "2h 10m" or "3d 4h".
fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;
    use crate::status::state::{NodeRole, Phase};

    #[test]
    fn the_snapshot_row_gives_the_age_and_warns_past_two_periods() {
        let view = SnapshotView {
            dir: "/var/lib/rancher/k3s/server/db/snapshots".into(),
            schedule: "0 */6 * * *".into(),
            period_secs: Some(6 * 3600),
            newest: Some("etcd-snapshot-lab-1-1796000000".into()),
            newest_unix: Some(1_796_000_000),
            count: 3,
        };
        let fresh = snapshot_row(&view, 1_796_000_000 + 3600);
        assert!(
            fresh.starts_with("snapshots  newest 1h 0m ago (etcd-snapshot-lab-1-1796000000, 3 in "),
            "{fresh}"
        );
        assert!(!fresh.contains("WARNING"), "{fresh}");
        let stale = snapshot_row(&view, 1_796_000_000 + 12 * 3600 + 1);
        assert!(
            stale.contains("WARNING: older than two schedule periods"),
            "{stale}"
        );
        let none = SnapshotView {
            newest: None,
            newest_unix: None,
            count: 0,
            ..view
        };
        assert!(snapshot_row(&none, 0).contains("none yet"));
    }

    #[test]
    fn shows_state_and_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::new("status-secret-qq88ww".into()).unwrap();
        let mut s = NodeState::new();
        s.cluster = Some("lab".into());
        s.phase = Phase::Electing;
        s.role = Some(NodeRole::Agent);
        s.peers_visible = 1;
        s.peers_expected = 3;
        s.storage.class = Some("sd".into());
        s.storage.fdatasync_p50_us = Some(1200);
        s.storage.fdatasync_p99_us = Some(8000);
        s.errors
            .push("join refused for status-secret-qq88ww".into());
        s.init_node = Some("000000000000beef".into());
        s.ca_hash = Some("ab".repeat(32));
        s.save(dir.path(), Some(&token), 100).unwrap();
        for json in [false, true] {
            let args = StatusArgs { json };
            let mut out = Vec::new();
            run(&args, dir.path(), &mut out, 105).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("status-secret"), "{text}");
            if json {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["phase"], "electing");
                assert_eq!(v["peers_expected"], 3);
                assert_eq!(v["init_node"], "000000000000beef");
                assert_eq!(v["ca_hash"], "ab".repeat(32));
            } else {
                assert!(text.contains("state      electing\n"), "{text}");
                assert!(text.contains("init node  000000000000beef\n"), "{text}");
                assert!(
                    text.contains("2 of 3 nodes visible (this node and 1 other)"),
                    "{text}"
                );
                assert!(text.contains("p99 8.0 ms"), "{text}");
                assert!(text.contains("updated    5 s ago"), "{text}");
            }
        }
    }

    #[test]
    fn a_promoted_agent_shows_role_server_and_when_it_was_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = NodeState::new();
        s.phase = Phase::Ready;
        s.role = Some(NodeRole::Server);
        s.promoted_unix = Some(1_000);
        s.save(dir.path(), None, 1_100).unwrap();
        let mut out = Vec::new();
        run(&StatusArgs { json: true }, dir.path(), &mut out, 1_130).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["role"].as_str(), v["promoted_unix"].as_u64()),
            (Some("server"), Some(1_000))
        );
        let mut out = Vec::new();
        run(&StatusArgs { json: false }, dir.path(), &mut out, 1_130).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("role       server\n"), "{text}");
        assert!(
            text.contains("promoted   from agent to server 2m 10s ago (unix 1000)"),
            "{text}"
        );
    }

    #[test]
    fn blocked_or_failed_exits_non_zero_and_text_agrees_with_json() {
        let dir = tempfile::tempdir().unwrap();
        for (phase, fails) in [
            (Phase::Ready, false),
            (Phase::Blocked, true),
            (Phase::Failed, true),
        ] {
            let mut s = NodeState::new();
            s.phase = phase;
            s.peers_visible = 4;
            s.peers_expected = 7;
            s.save(dir.path(), None, 100).unwrap();
            for json in [false, true] {
                let mut out = Vec::new();
                let r = run(&StatusArgs { json }, dir.path(), &mut out, 100);
                assert_eq!(r.is_err(), fails, "{phase:?} json={json}");
                let text = String::from_utf8(out).unwrap();
                if json {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["peers_visible"], 4);
                    assert_eq!(v["peers_expected"], 7);
                } else {
                    assert!(
                        text.contains("5 of 7 nodes visible (this node and 4 others)"),
                        "{text}"
                    );
                }
            }
        }
    }

    fn member(name: &str, server: bool, gone: Option<u64>, replace: Option<u64>) -> Member {
        Member {
            node: "00000000000000aa".into(),
            name: Some(name.into()),
            server,
            this_node: name == "pi-a",
            serving: gone.is_none(),
            gone_since_unix: gone,
            replace_from_unix: replace,
        }
    }

    #[test]
    fn membership_shows_who_is_gone_when_it_is_replaced_and_a_lost_quorum() {
        let mut s = NodeState::new();
        s.membership = Some(MembershipState {
            servers: 3,
            live_servers: 2,
            quorum_lost: false,
            members: vec![
                member("pi-a", true, None, None),
                member("pi-b", true, None, None),
                member("pi-c", true, Some(1_000), Some(2_800)),
                member("pi-d", false, None, None),
            ],
        });
        let text = table(&s, 1_250);
        assert!(
            text.contains(
                "servers    2 of 3 alive (3 seats): pi-a (this node, serving), \
                 pi-b (serving), pi-c (gone 4m 10s, replaced in 25m 50s)\n"
            ),
            "{text}"
        );
        assert!(text.contains("others     pi-d (serving)\n"), "{text}");
        assert!(!text.contains("quorum"), "{text}");
        let m = s.membership.as_mut().unwrap();
        m.quorum_lost = true;
        m.live_servers = 1;
        m.members[1] = member("pi-b", true, Some(1_200), None);
        m.members[2].replace_from_unix = None;
        let text = table(&s, 1_250);
        assert!(
            text.contains("quorum     LOST: 1 of 3 servers alive; nothing is removed"),
            "{text}"
        );
        assert!(text.contains("--cluster-reset-restore-path"), "{text}");
        assert!(text.contains("pi-b (gone 50s)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["membership"]["quorum_lost"], true);
        assert_eq!(json["membership"]["members"][2]["gone_since_unix"], 1_000);
    }

    #[test]
    fn no_state_yet_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let args = StatusArgs { json: false };
        run(&args, dir.path(), &mut out, 0).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("not started"));
    }
}
