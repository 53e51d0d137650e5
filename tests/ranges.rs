//! Port ranges with traffic: the first, a middle and the last port of a range land on the
//! target's port shifted by the same offset (or on the same port), with both backends;
//! `diff` reads them back as the ranges they were written as; a 10,000-port range is one
//! transaction.

mod common;
use common::*;
use std::time::{Duration, Instant};

struct Lab {
    proxy: Netns,
    client: Netns,
    _target: Netns,
    _servers: Vec<Proc>,
}

/// Proxy bridge 10.55.0.1/24, client .10, target .2 answering HTTP with "pPORT" on the
/// shifted ports 19000, 19005, 19009 and on the same-port range's 7000 and 7002.
fn lab() -> Lab {
    let proxy = Netns::new("rgp");
    let client = Netns::new("rgc");
    let target = Netns::new("rgt");
    bridge(&proxy, "br0", "10.55.0.1/24");
    wire(&proxy, "vc", Some("br0"), &client, "10.55.0.10/24");
    wire(&proxy, "vt", Some("br0"), &target, "10.55.0.2/24");
    let netsvc = helper("netsvc.py");
    let mut servers = Vec::new();
    for port in [19000, 19005, 19009, 7000, 7002] {
        let p = port.to_string();
        servers.push(target.spawn(&[
            "python3",
            &netsvc,
            "http",
            "10.55.0.2",
            &p,
            &format!("p{p}"),
        ]));
    }
    for port in [19000, 19005, 19009, 7000, 7002] {
        wait_port(
            &target,
            &format!("10.55.0.2:{port}"),
            Duration::from_secs(10),
        );
    }
    Lab {
        proxy,
        client,
        _target: target,
        _servers: servers,
    }
}

const MAP: &str = "[[service]]\nname = \"shifted\"\nlisten = \"9000-9009\"\ntargets = [\"10.55.0.2:19000-19009\"]\n\n\
[[service]]\nname = \"same\"\nlisten = \"7000-7002\"\ntargets = [\"10.55.0.2\"]\n";

fn get(lab: &Lab, port: u16) -> Option<String> {
    let o = lab.client.exec(&format!(
        "python3 {} get http://10.55.0.1:{port}",
        helper("netsvc.py")
    ));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

#[test]
fn the_first_a_middle_and_the_last_port_land_on_their_shifted_ports() {
    if !require_root() {
        return;
    }
    let map = TempFile::new("ranges.toml", MAP);
    for backend in [
        &["--backend", "nft"][..],
        &["--backend", "iptables", "--iptables-cmd", "iptables-legacy"],
    ] {
        let lab = lab();
        let mut args = vec!["apply", "-f", map.path(), "--netns", &lab.proxy.name];
        args.extend(backend);
        svcnat_ok(&args);
        for (port, answer) in [
            (9000, "p19000"),
            (9005, "p19005"),
            (9009, "p19009"),
            (7000, "p7000"),
            (7002, "p7002"),
        ] {
            assert_eq!(
                get(&lab, port).as_deref(),
                Some(answer),
                "{backend:?}: port {port}"
            );
        }
        // Outside the range: nothing.
        assert_eq!(get(&lab, 9010), None, "{backend:?}");
        // Read back as the ranges they were written as.
        let mut diff = vec!["diff", "-f", map.path(), "--netns", &lab.proxy.name];
        diff.extend(backend);
        let (code, out, err) = svcnat(&diff);
        assert_eq!(code, 0, "{backend:?}: {out}{err}");
        let mut show = vec!["show", "--netns", &lab.proxy.name];
        show.extend(backend);
        let shown = svcnat_ok(&show);
        assert!(
            shown.contains("*:9000-9009") && shown.contains("10.55.0.2:19000-19009"),
            "{backend:?}: {shown}"
        );
    }
}

#[test]
fn a_ten_thousand_port_range_is_one_transaction() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("rgbig");
    let map = TempFile::new(
        "big-range.toml",
        "[[service]]\nname = \"wide\"\nlisten = \"20000-29999\"\ntargets = [\"10.55.0.3:30000-39999\"]\n",
    );
    let started = Instant::now();
    let out = svcnat_ok(&["apply", "-f", map.path(), "--netns", &ns.name, "-v"]);
    let took = started.elapsed();
    assert!(out.contains("as generation 1"), "{out}");
    let listed = ns.exec_ok("nft list map inet svcnat dnat-port4");
    assert_eq!(listed.matches("comment \"wide\"").count(), 10_000);
    assert!(
        listed.contains("tcp . 29999 comment \"wide\" : 10.55.0.3 . 39999"),
        "last port"
    );
    let (code, out, _) = svcnat(&["diff", "-f", map.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{out}");
    eprintln!("10,000-port range applied in {took:?} (whole command)");
}

#[test]
fn a_one_target_service_without_masquerade_is_a_plain_map_element_and_keeps_the_client() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let _peer = lab
        ._target
        .spawn(&["python3", &helper("netsvc.py"), "peer", "10.55.0.2", "8090"]);
    wait_port(&lab._target, "10.55.0.2:8090", Duration::from_secs(10));
    // Replies to the client go back through the proxy, which un-DNATs them.
    lab._target
        .exec_ok("ip route add 10.55.0.10/32 via 10.55.0.1");
    for (masquerade, seen) in [(false, "10.55.0.10"), (true, "10.55.0.1")] {
        let map = TempFile::new(
            "keep.toml",
            &format!(
                "[[service]]\nname = \"keep\"\nlisten = \"8090\"\nmasquerade = {masquerade}\ntargets = [\"10.55.0.2:8090\"]\n"
            ),
        );
        svcnat_ok(&["apply", "-f", map.path(), "--netns", &lab.proxy.name]);
        assert_eq!(
            get(&lab, 8090).as_deref(),
            Some(seen),
            "masquerade = {masquerade}"
        );
        let rules = lab.proxy.ruleset();
        // An element either way: no chain per service.
        assert!(!rules.contains("chain svc-keep"), "{rules}");
        let plain = rules.contains("map dnat-port4-plain");
        assert_eq!(plain, !masquerade, "{rules}");
        let (code, out, _) = svcnat(&["diff", "-f", map.path(), "--netns", &lab.proxy.name]);
        assert_eq!(code, 0, "{out}");
    }
}
