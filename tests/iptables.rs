//! The iptables backend, for both flavours (legacy and nft), in throwaway namespaces.

mod common;
use common::*;
use std::time::Duration;

const FLAVOURS: [&str; 2] = ["iptables-legacy", "iptables-nft"];

fn svc(ns: &Netns, cmd: &str, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--netns",
        &ns.name,
        "--backend",
        "iptables",
        "--iptables-cmd",
        cmd,
    ]);
    svcnat(&all)
}

fn svc_ok(ns: &Netns, cmd: &str, args: &[&str]) -> String {
    let (code, out, err) = svc(ns, cmd, args);
    assert_eq!(code, 0, "svcnat {args:?} ({cmd}) failed: {out}{err}");
    out
}

fn save(ns: &Netns, cmd: &str) -> String {
    ns.exec_ok(&format!("{cmd}-save"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn svcnat_lines(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains("SVCNAT-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn apply_show_diff_rollback_flush_leave_foreign_rules_alone() {
    if !require_root() {
        return;
    }
    for cmd in FLAVOURS {
        let ns = Netns::new("ipt");
        // Docker's embedded-DNS DNAT and a filter rule, in this flavour.
        ns.exec_ok(&format!(
            "{cmd} -t nat -A OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:41234"
        ));
        ns.exec_ok(&format!("{cmd} -A INPUT -p tcp --dport 22 -j ACCEPT"));
        let before = save(&ns, cmd);

        let out = svc_ok(&ns, cmd, &["apply", "-f", "rulesets/host-ports.toml"]);
        assert!(
            out.contains(&format!("the SVCNAT-* chains ({cmd})"))
                && out.contains("as generation 1"),
            "{out}"
        );
        let installed = save(&ns, cmd);
        let render = svcnat_ok(&[
            "render",
            "-f",
            "rulesets/host-ports.toml",
            "--format",
            "iptables",
        ]);
        for line in render.lines().filter(|l| l.starts_with("-A ")) {
            assert!(
                installed.contains(line),
                "{cmd}: {line} not installed:\n{installed}"
            );
        }
        let v: serde_json::Value =
            serde_json::from_str(&svc_ok(&ns, cmd, &["show", "--json"])).unwrap();
        assert_eq!(v["generation"], 1, "{v}");
        let vip = &v["services"][2];
        assert_eq!(vip["name"], "web-vip");
        assert_eq!(vip["listen"][0], "172.18.1.1:8083");
        assert_eq!(vip["targets"].as_array().unwrap().len(), 2);
        assert_eq!(v["services"][0]["localhost"], true);
        let (code, out, _) = svc(&ns, cmd, &["diff", "-f", "rulesets/host-ports.toml"]);
        assert_eq!(code, 0, "{cmd}: {out}");

        // Another map: the localhost guard and the unneeded chains go, foreign rules stay.
        svc_ok(
            &ns,
            cmd,
            &[
                "apply",
                "-f",
                "rulesets/skupper-ingress.toml",
                "--add-host",
                ADD_HOST,
            ],
        );
        let second = save(&ns, cmd);
        assert!(
            !second.contains("SVCNAT-INPUT") && !second.contains("SVCNAT-S-web1"),
            "{second}"
        );
        assert!(
            second.contains("-A OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT"),
            "{second}"
        );

        // A hand edit inside svcnat's chains is drift.
        ns.exec_ok(&format!("{cmd} -t nat -A SVCNAT-S-my-service -j RETURN"));
        let (code, out, _) = svc(
            &ns,
            cmd,
            &[
                "diff",
                "-f",
                "rulesets/skupper-ingress.toml",
                "--add-host",
                ADD_HOST,
            ],
        );
        assert_eq!(code, 1);
        assert!(
            out.contains("+ nat: -A SVCNAT-S-my-service -j RETURN"),
            "{cmd}: {out}"
        );

        // Rollback re-installs generation 1 exactly (recorded anew as generation 3, which
        // the meta comment names); flush removes all of svcnat's lines.
        let out = svc_ok(&ns, cmd, &["rollback"]);
        assert!(out.contains("from generation 2 to generation 1"), "{out}");
        assert!(out.contains("recorded as generation 3"), "{out}");
        let renumbered = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| l.replace("generation=1 ", "generation=3 "))
                .collect()
        };
        assert_eq!(
            svcnat_lines(&save(&ns, cmd)),
            renumbered(svcnat_lines(&installed))
        );
        let out = svc_ok(&ns, cmd, &["flush"]);
        assert!(out.contains("removed"), "{out}");
        assert_eq!(
            save(&ns, cmd),
            before,
            "{cmd}: flush must restore the tables byte for byte"
        );
        let out = svc_ok(&ns, cmd, &["flush"]);
        assert!(out.contains("nothing to flush"), "{out}");
    }
}

#[test]
fn a_proxy_on_the_iptables_backend_carries_traffic() {
    if !require_root() {
        return;
    }
    for cmd in FLAVOURS {
        let host = Netns::new("ih");
        let client = Netns::new("ic");
        let proxy = Netns::new("ip");
        bridge(&host, "br0", "10.99.0.1/24");
        wire(&host, "vc", Some("br0"), &client, "10.99.0.10/24");
        wire(&host, "vp", Some("br0"), &proxy, "10.99.0.11/24");
        let _http = host.spawn(&[
            "python3",
            &helper("netsvc.py"),
            "http",
            "10.99.0.1",
            "8080",
            "via-iptables",
        ]);
        wait_port(&host, "10.99.0.1:8080", Duration::from_secs(10));
        svc_ok(
            &proxy,
            cmd,
            &[
                "apply",
                "-f",
                "rulesets/skupper-ingress.toml",
                "--add-host",
                ADD_HOST,
            ],
        );
        let got = client.exec_ok(&format!(
            "python3 {} get http://10.99.0.11:8080",
            helper("netsvc.py")
        ));
        assert_eq!(got.trim(), "via-iptables", "{cmd}");
        let v: serde_json::Value =
            serde_json::from_str(&svc_ok(&proxy, cmd, &["show", "--json"])).unwrap();
        assert_eq!(v["services"][0]["connections"], 1, "{cmd}: {v}");
        svc_ok(&proxy, cmd, &["flush"]);
        let o = client.exec(&format!(
            "python3 {} get http://10.99.0.11:8080",
            helper("netsvc.py")
        ));
        assert!(!o.status.success(), "{cmd}: still forwarding after flush");
    }
}

#[test]
fn rollback_keeps_to_the_backend_that_installed_a_generation() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("ipmix");
    svcnat_ok(&[
        "apply",
        "-f",
        "rulesets/host-ports.toml",
        "--netns",
        &ns.name,
    ]);
    svcnat_ok(&["flush", "--netns", &ns.name]);
    let (code, _, err) = svc(&ns, "iptables-nft", &["rollback"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("installed with the nft backend") && err.contains("--backend nft"),
        "{err}"
    );
    let (code, _, err) = svcnat(&[
        "show",
        "--netns",
        &ns.name,
        "--iptables-cmd",
        "iptables-nft",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--iptables-cmd goes with --backend iptables"),
        "{err}"
    );
}

/// A jump restored twice (a render loaded by hand twice) is drift, and the next apply
/// leaves one; the other backend's rules are never installed over; a command that cannot
/// be run says what failed.
#[test]
fn duplicates_are_drift_and_backends_never_mix() {
    if !require_root() {
        return;
    }
    for cmd in FLAVOURS {
        let ns = Netns::new("dup");
        let map = "rulesets/dual-stack.toml";
        svc_ok(&ns, cmd, &["apply", "-f", map]);
        ns.exec_ok(&format!("{cmd} -t nat -A PREROUTING -j SVCNAT-PREROUTING"));
        let (code, out, err) = svc(&ns, cmd, &["diff", "-f", map]);
        assert_eq!(code, 1, "{cmd}: a duplicate jump is drift: {out}{err}");
        assert!(
            out.contains("+ nat: -A PREROUTING -j SVCNAT-PREROUTING"),
            "{cmd}: {out}"
        );
        svc_ok(&ns, cmd, &["apply", "-f", map]);
        let jumps = save(&ns, cmd)
            .lines()
            .filter(|l| *l == "-A PREROUTING -j SVCNAT-PREROUTING")
            .count();
        assert_eq!(jumps, 1, "{cmd}: apply leaves one jump");
        let (code, out, err) = svc(&ns, cmd, &["diff", "-f", map]);
        assert_eq!(code, 0, "{cmd}: {out}{err}");

        // The nft backend refuses to install beside svcnat's iptables rules.
        let before = ns.ruleset();
        let (code, _, err) = svcnat(&["apply", "-f", map, "--netns", &ns.name]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains(cmd) && err.contains("fix:"), "{cmd}: {err}");
        assert_eq!(ns.ruleset(), before, "{cmd}: nothing changed");
    }
    // flush with the flavour that holds nothing says which one does.
    let ns = Netns::new("flavour");
    svc_ok(
        &ns,
        "iptables-legacy",
        &["apply", "-f", "rulesets/dual-stack.toml"],
    );
    let (code, _, err) = svc(&ns, "iptables-nft", &["flush"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chains are in iptables-legacy")
            && err.contains("--iptables-cmd iptables-legacy"),
        "{err}"
    );
    svc_ok(&ns, "iptables-legacy", &["flush"]);
    // The other way round.
    let ns = Netns::new("mix");
    apply_map("rulesets/dual-stack.toml", &ns);
    let (code, _, err) = svc(
        &ns,
        "iptables-legacy",
        &["apply", "-f", "rulesets/dual-stack.toml"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("table inet svcnat") && err.contains("svcnat flush"),
        "{err}"
    );
    let (code, _, err) = svc(&ns, "/bin/false", &["show"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot run /bin/false-save") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn iptables_nft_flush_removes_the_builtin_chains_only_svcnat_used() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("iptb");
    // Someone else's rule in ip nat OUTPUT: that chain must stay, with its rule.
    ns.exec_ok("iptables-nft -t nat -A OUTPUT -d 127.0.0.11/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:41234");
    svc_ok(
        &ns,
        "iptables-nft",
        &["apply", "-f", "rulesets/dual-stack.toml"],
    );
    let applied = ns.exec_ok("nft list ruleset");
    assert!(
        applied.contains("table ip6 nat") && applied.contains("chain POSTROUTING"),
        "{applied}"
    );
    svc_ok(&ns, "iptables-nft", &["flush"]);
    let after = ns.exec_ok("nft list ruleset");
    let chains: Vec<&str> = after
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("chain "))
        .collect();
    assert_eq!(chains, ["chain OUTPUT {"], "{after}");
    assert!(after.contains("dport 53"), "{after}");
}
