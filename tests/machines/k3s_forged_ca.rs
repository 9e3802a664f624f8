//! Issue 8 on machines: a joiner refuses a server whose CA does not match the CA hash of the
//! init node's signed announcement. Two machines form; then the K3s server at the init node's
//! address gets another CA (a rogue server in its place: the init's CA and datastore are deleted
//! and K3s restarted, so it makes a new one; real K3s would restore a CA deleted alone from its
//! datastore), while the init node's firstboot still announces the
//! original hash. The third machine, booted then, joins with that hash and must refuse.

use systests::machines::{harness, k3s_support};

use harness::{cluster_toml, random_token, Lan};
use k3s_support::*;
use std::time::Duration;

/// Generous bound on formation and on the refusal showing up (no speed assertion).
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn a_joiner_refuses_a_server_with_another_ca() {
    if skip("a_joiner_refuses_a_server_with_another_ca") {
        return;
    }
    let token = random_token();
    let toml = cluster_toml("machines", &token, 3, 3);
    let mut lan = Lan::new();
    for _ in 0..3 {
        lan.add_machine(&toml);
    }
    // Two of three are a majority: they form the cluster.
    lan.boot(0);
    lan.boot(1);
    lan.wait_for("2 machines ready", LIMIT, |lan| {
        lan.machines[..2]
            .iter()
            .all(|m| m.phase().as_deref() == Some("ready"))
    });
    let init = init_machine(&lan);
    let announced = status_str(init, "ca_hash").expect("the init node announces a CA hash");
    assert_eq!(ca_file_hash(init).as_deref(), Some(announced.as_str()));

    // The rogue server: same address, another CA.
    for step in [
        vec!["systemctl", "stop", "k3s.service"],
        vec![
            "rm",
            "-rf",
            "/var/lib/rancher/k3s/server/tls",
            "/var/lib/rancher/k3s/server/db",
        ],
        vec!["systemctl", "start", "k3s.service"],
    ] {
        let out = init
            .exec(step[0], &step[1..])
            .expect("the init machine runs");
        assert!(out.status.success(), "{step:?}: {out:?}");
    }
    let rogue = ca_file_hash(init).expect("the restarted server made a new CA");
    assert_ne!(rogue, announced);
    assert!(init.unit_active("k3s.service"));
    let init_address = init.address();
    // Any serving server answers joiners (issue 18): silence the honest server's firstboot, so
    // the rogue at the init's address is the only server the joiner can ask.
    let honest = (0..2)
        .find(|&i| lan.machines[i].name != init.name)
        .expect("two machines formed");
    let out = lan.machines[honest]
        .exec("systemctl", &["stop", "firstboot.service"])
        .expect("the honest server runs");
    assert!(out.status.success(), "{out:?}");

    lan.boot(2);
    let joiner = &lan.machines[2];
    lan.wait_for("the third machine to refuse the CA", LIMIT, |lan| {
        lan.machines[2]
            .journal(Some("k3s.service"))
            .contains("token CA hash does not match the Cluster CA certificate hash")
    });
    let status = joiner.status().expect("status");
    assert_eq!(status["role"], "server", "{}", joiner.report());
    assert_eq!(status["ca_hash"].as_str(), Some(announced.as_str()));
    assert_ne!(status["phase"], "ready", "{}", joiner.report());
    let yaml = joiner.config_yaml().expect("config.yaml");
    assert!(
        yaml.contains(&format!("token: \"K10{announced}::server:")),
        "the joiner's secure token does not carry the announced hash"
    );
    assert!(
        yaml.contains(&format!("server: \"https://{init_address}:6443\"")),
        "{}",
        joiner.report()
    );
    assert!(!joiner.unit_active("k3s.service"), "{}", joiner.report());
    assert!(
        ca_file_hash(joiner).is_none(),
        "the joiner took the rogue CA\n{}",
        joiner.report()
    );
}
