//! Docker's default-drop FORWARD, in both iptables flavours: svcnat's routed services get
//! no traffic and say why; with `forward_accept = true` svcnat keeps an accept in
//! DOCKER-USER, traffic flows, and flush leaves Docker's chains as they were.

mod common;
use common::*;
use std::time::Duration;

/// Docker 20.10's filter table, as `iptables-save` prints it on a Docker host.
const DOCKER_FILTER: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

fn filter(ns: &Netns, cmd: &str) -> String {
    ns.exec_ok(&format!("{cmd}-save -t filter"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{}\n", l.split(" [").next().unwrap_or(l)))
        .collect()
}

fn map(accept: bool) -> String {
    format!(
        "[settings]\nforward_accept = {accept}\n\n[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.66.0.2:8080\"]\n"
    )
}

#[test]
fn dockers_forward_drop_is_told_and_forward_accept_lets_traffic_through() {
    if !require_root() {
        return;
    }
    for cmd in ["iptables-nft", "iptables-legacy"] {
        let proxy = Netns::new("fdp");
        let client = Netns::new("fdc");
        let target = Netns::new("fdt");
        bridge(&proxy, "br0", "10.66.0.1/24");
        wire(&proxy, "vc", Some("br0"), &client, "10.66.0.10/24");
        wire(&proxy, "vt", Some("br0"), &target, "10.66.0.2/24");
        let _server = target.spawn(&[
            "python3",
            &helper("netsvc.py"),
            "http",
            "10.66.0.2",
            "8080",
            "a",
        ]);
        wait_port(&target, "10.66.0.2:8080", Duration::from_secs(10));
        let rules = TempFile::new("docker-filter", DOCKER_FILTER);
        proxy.exec_ok(&format!("{cmd}-restore < {}", rules.path()));
        let docker = filter(&proxy, cmd);
        let get = || {
            client
                .exec("python3 tests/helpers/netsvc.py get http://10.66.0.1:8080")
                .status
                .success()
        };

        // Without the fix: no traffic, and the warning names the chain and the fix.
        let plain = TempFile::new("fd.toml", &map(false));
        let (code, _, err) = svcnat(&["apply", "-f", plain.path(), "--netns", &proxy.name]);
        assert_eq!(code, 0, "{cmd}: {err}");
        assert!(
            err.contains("warning: chain FORWARD (table")
                && err.contains("drops forwarded packets")
                && err.contains(&format!(
                    "{cmd} -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT"
                ))
                && err.contains("forward_accept = true"),
            "{cmd}: {err}"
        );
        assert!(!get(), "{cmd}: traffic passed a FORWARD DROP");

        // With forward_accept: svcnat's accept in DOCKER-USER, traffic flows, no warning.
        let accept = TempFile::new("fd-accept.toml", &map(true));
        let (code, out, err) = svcnat(&["apply", "-f", accept.path(), "--netns", &proxy.name]);
        assert_eq!(code, 0, "{cmd}: {err}");
        assert!(
            out.contains(&format!("added its accept to DOCKER-USER ({cmd})")),
            "{out}"
        );
        assert!(!err.contains("warning"), "{cmd}: {err}");
        assert!(get(), "{cmd}: no traffic with forward_accept");
        let with_accept = filter(&proxy, cmd);
        assert!(
            with_accept.contains("-A DOCKER-USER -m conntrack --ctstate DNAT -m comment --comment \"svcnat forward_accept\" -j ACCEPT"),
            "{with_accept}"
        );
        // Applied again: kept, not doubled.
        svcnat_ok(&["apply", "-f", accept.path(), "--netns", &proxy.name]);
        assert_eq!(filter(&proxy, cmd), with_accept);

        // Flush takes it out: Docker's chains byte for byte as they were.
        let out = svcnat_ok(&["flush", "--netns", &proxy.name]);
        assert!(
            out.contains(&format!("removed its accept from DOCKER-USER ({cmd})")),
            "{out}"
        );
        assert_eq!(filter(&proxy, cmd), docker, "{cmd}");
    }
}

#[test]
fn a_reject_at_the_end_of_a_forward_chain_is_inconclusive() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fdr");
    ns.exec_ok(
        "nft add table inet fw && nft add chain inet fw fwdc \"{ type filter hook forward priority 0; policy accept; }\" && nft add rule inet fw fwdc ct state established accept && nft add rule inet fw fwdc counter reject",
    );
    let plain = TempFile::new("fd-reject.toml", &map(false));
    let (code, _, err) = svcnat(&["apply", "-f", plain.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("note: chain fwdc (table inet fw) ends with a rule that rejects every packet")
            && err.contains("inconclusive")
            && err.contains("nft insert rule inet fw fwdc ct status dnat accept"),
        "{err}"
    );
}
