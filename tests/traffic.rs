//! Traffic tests: namespaces wired with veth pairs and bridges stand in for a host and its
//! containers; real servers and clients prove that packets flow through svcnat's rules,
//! and stop flowing after `flush`.

mod common;
use common::*;
use std::time::Duration;

fn get(from: &Netns, url: &str) -> Result<String, String> {
    let o = from.exec(&format!("python3 {} get {url}", helper("netsvc.py")));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
    }
}

fn server(ns: &Netns, args: &[&str]) -> Proc {
    let script = helper("netsvc.py");
    let mut all = vec!["python3", script.as_str()];
    all.extend_from_slice(args);
    ns.spawn(&all)
}

#[test]
fn skupper_ingress_proxies_carry_http_and_tcp_until_flushed() {
    if !require_root() {
        return;
    }
    // "host" with a bridge; a client and two proxy "containers" on it.
    let host = Netns::new("host");
    let client = Netns::new("client");
    let proxy1 = Netns::new("proxy1");
    let proxy2 = Netns::new("proxy2");
    bridge(&host, "br0", "10.99.0.1/24");
    wire(&host, "vc", Some("br0"), &client, "10.99.0.10/24");
    wire(&host, "vp1", Some("br0"), &proxy1, "10.99.0.11/24");
    wire(&host, "vp2", Some("br0"), &proxy2, "10.99.0.12/24");
    // The router on the host that the proxies redirect to (skupper-router's place).
    let _http = server(
        &host,
        &["http", "10.99.0.1", "8080", "hello-from-the-host-router"],
    );
    let _echo = server(&host, &["echo", "10.99.0.1", "5201"]);
    wait_port(&host, "10.99.0.1:8080", Duration::from_secs(10));
    wait_port(&host, "10.99.0.1:5201", Duration::from_secs(10));

    // Before svcnat: nothing listens on the proxies.
    assert!(get(&client, "http://10.99.0.11:8080").is_err());

    for p in [&proxy1, &proxy2] {
        let out = svcnat_ok(&[
            "apply",
            "-f",
            "rulesets/skupper-ingress.toml",
            "--add-host",
            "host.docker.internal=10.99.0.1",
            "--netns",
            &p.name,
        ]);
        // A fresh namespace has forwarding off: svcnat switches it on and says so.
        assert!(out.contains("enabled net.ipv4.ip_forward"), "{out}");
    }

    assert_eq!(
        get(&client, "http://10.99.0.11:8080").unwrap(),
        "hello-from-the-host-router"
    );
    let o = client.exec(&format!(
        "python3 {} echoed 10.99.0.12 5201 200000",
        helper("netsvc.py")
    ));
    assert!(
        o.status.success(),
        "echo through proxy2 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // One-target services are DNAT map elements: no per-service counter (the balanced VIP
    // below has one, and counts every connection).
    let v: serde_json::Value =
        serde_json::from_str(&svcnat_ok(&["show", "--netns", &proxy2.name, "--json"])).unwrap();
    let tcp = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "my-tcp-service")
        .unwrap();
    assert!(tcp.get("connections").is_none(), "{v}");
    let v: serde_json::Value =
        serde_json::from_str(&svcnat_ok(&["show", "--netns", &proxy1.name, "--json"])).unwrap();
    let web = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "my-service")
        .unwrap();
    assert!(web.get("connections").is_none(), "{v}");

    for p in [&proxy1, &proxy2] {
        svcnat_ok(&["flush", "--netns", &p.name]);
    }
    let err = get(&client, "http://10.99.0.11:8080").unwrap_err();
    assert!(err.contains("refused"), "{err}");
    let o = client.exec(&format!(
        "python3 {} echoed 10.99.0.12 5201 1000",
        helper("netsvc.py")
    ));
    assert!(!o.status.success(), "echo still works after flush");
}

#[test]
fn host_ports_publish_ports_localhost_and_a_balanced_virtual_ip() {
    if !require_root() {
        return;
    }
    // A host with a container bridge (two containers serving on :8000) and a link to an
    // outside machine that routes the virtual IP to the host.
    let host = Netns::new("h");
    let c1 = Netns::new("c1");
    let c2 = Netns::new("c2");
    let outside = Netns::new("out");
    bridge(&host, "br1", "172.18.0.1/16");
    wire(&host, "vc1", Some("br1"), &c1, "172.18.0.2/16");
    wire(&host, "vc2", Some("br1"), &c2, "172.18.0.3/16");
    wire(&host, "vo", None, &outside, "10.98.0.2/24");
    host.exec_ok("ip addr add 10.98.0.1/24 dev vo");
    outside.exec_ok("ip route add 172.18.1.1/32 via 10.98.0.1");
    let _s1 = server(&c1, &["http", "0.0.0.0", "8000", "c1"]);
    let _s2 = server(&c2, &["http", "0.0.0.0", "8000", "c2"]);
    wait_port(&c1, "172.18.0.2:8000", Duration::from_secs(10));
    wait_port(&c2, "172.18.0.3:8000", Duration::from_secs(10));

    let out = svcnat_ok(&[
        "apply",
        "-f",
        "rulesets/host-ports.toml",
        "--netns",
        &host.name,
    ]);
    assert!(out.contains("net.ipv4.conf.all.route_localnet"), "{out}");

    // Published ports, from outside and from the host itself (its own address and 127.0.0.1).
    assert_eq!(get(&outside, "http://10.98.0.1:8081").unwrap(), "c1");
    assert_eq!(get(&outside, "http://10.98.0.1:8082").unwrap(), "c2");
    assert_eq!(get(&host, "http://10.98.0.1:8081").unwrap(), "c1");
    assert_eq!(get(&host, "http://127.0.0.1:8081").unwrap(), "c1");
    assert_eq!(get(&host, "http://127.0.0.1:8082").unwrap(), "c2");

    // 200 connections to the virtual IP reach both backends, none fails.
    let counts = answers(&outside, "172.18.1.1", 8083, 200);
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert_eq!(
        n("c1") + n("c2"),
        200,
        "all 200 must be answered: {counts:?}"
    );
    // Binomial(200, 1/2): fewer than 60 on one side has probability below 1e-8.
    assert!(n("c1") >= 60 && n("c2") >= 60, "unbalanced: {counts:?}");
    let v: serde_json::Value =
        serde_json::from_str(&svcnat_ok(&["show", "--netns", &host.name, "--json"])).unwrap();
    let vip = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web-vip")
        .unwrap();
    // Slot elements of a map, no chain: nothing counts its connections without accounting.
    assert!(vip["connections"].is_null(), "{v}");

    svcnat_ok(&["flush", "--netns", &host.name]);
    assert!(get(&outside, "http://10.98.0.1:8081").is_err());
    assert!(get(&host, "http://127.0.0.1:8081").is_err());
    assert!(get(&outside, "http://172.18.1.1:8083").is_err());
}

#[test]
fn localhost_guard_drops_outside_packets_for_127_0_0_0_8() {
    if !require_root() {
        return;
    }
    let host = Netns::new("lh");
    let outside = Netns::new("lo-out");
    wire(&host, "vo", None, &outside, "10.97.0.2/24");
    host.exec_ok("ip addr add 10.97.0.1/24 dev vo");
    // A service bound to 127.0.0.1 only: what CVE-2020-8558 exposed to neighbours.
    let _secret = server(&host, &["http", "127.0.0.1", "9999", "secret"]);
    wait_port(&host, "127.0.0.1:9999", Duration::from_secs(10));
    // The neighbour routes 127.0.0.0/8 to the host instead of its own loopback, and
    // accepts replies from 127.0.0.1 (route_localnet on its side too).
    outside.exec_ok("ip addr del 127.0.0.1/8 dev lo");
    outside.exec_ok("ip route add 127.0.0.0/8 via 10.97.0.1 dev eth0");
    outside.exec_ok("sysctl -qw net.ipv4.conf.all.route_localnet=1");

    let map = TempFile::new(
        "lh.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8081\"\nlocalhost = true\ntargets = [\"10.97.0.2:8000\"]\n",
    );
    svcnat_ok(&["apply", "-f", map.path(), "--netns", &host.name]);
    assert_eq!(
        host.exec_ok("sysctl -n net.ipv4.conf.all.route_localnet")
            .trim(),
        "1"
    );

    assert_eq!(get(&host, "http://127.0.0.1:9999").unwrap(), "secret");
    let err = get(&outside, "http://127.0.0.1:9999").unwrap_err();
    assert!(
        err.contains("timed out"),
        "the guard must drop it silently: {err}"
    );

    // Without the guard (removed by hand) the same packets reach the loopback service:
    // the test really exercises the hole the guard closes.
    host.exec_ok("nft delete chain inet svcnat input");
    assert_eq!(get(&outside, "http://127.0.0.1:9999").unwrap(), "secret");
    // flush switches route_localnet off again, which closes the hole too.
    svcnat_ok(&["flush", "--netns", &host.name]);
    assert!(get(&outside, "http://127.0.0.1:9999").is_err());
}

#[test]
fn ipv6_port_service_and_balanced_virtual_ip() {
    if !require_root() {
        return;
    }
    let host = Netns::new("h6");
    let client = Netns::new("c6");
    let proxy = Netns::new("p6");
    host.exec_ok("ip link add br6 type bridge && ip link set br6 up && ip addr add fd00:99::1/64 dev br6 nodad");
    for (ns, hif, addr) in [
        (&client, "v6c", "fd00:99::10/64"),
        (&proxy, "v6p", "fd00:99::11/64"),
    ] {
        host.exec_ok(&format!(
            "ip link add {hif} type veth peer name eth0 netns {}",
            ns.name
        ));
        host.exec_ok(&format!(
            "ip link set {hif} master br6 && ip link set {hif} up"
        ));
        ns.exec_ok(&format!(
            "ip addr add {addr} dev eth0 nodad && ip link set eth0 up"
        ));
    }
    client.exec_ok("ip -6 route add fd00:98::1/128 via fd00:99::11");
    let _a = server(&host, &["http", "fd00:99::1", "8080", "v6-a"]);
    let _b = server(&host, &["http", "fd00:99::1", "8081", "v6-b"]);
    wait_port(&host, "fd00:99::1:8080", Duration::from_secs(10));
    wait_port(&host, "fd00:99::1:8081", Duration::from_secs(10));

    let map = TempFile::new(
        "v6.toml",
        "[[service]]\nname = \"web6\"\nlisten = \"8080\"\ntargets = [\"[fd00:99::1]:8080\"]\n\n\
         [[service]]\nname = \"vip6\"\nlisten = \"[fd00:98::1]:80\"\ntargets = [\"[fd00:99::1]:8080\", \"[fd00:99::1]:8081\"]\n",
    );
    let out = svcnat_ok(&["apply", "-f", map.path(), "--netns", &proxy.name]);
    assert!(
        out.contains("enabled net.ipv6.conf.all.forwarding"),
        "{out}"
    );

    assert_eq!(get(&client, "http://[fd00:99::11]:8080").unwrap(), "v6-a");
    let counts = answers(&client, "fd00:98::1", 80, 100);
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert_eq!(n("v6-a") + n("v6-b"), 100, "{counts:?}");
    // Binomial(100, 1/2): fewer than 25 on one side has probability below 1e-6.
    assert!(n("v6-a") >= 25 && n("v6-b") >= 25, "unbalanced: {counts:?}");

    svcnat_ok(&["flush", "--netns", &proxy.name]);
    assert!(get(&client, "http://[fd00:99::11]:8080").is_err());
}

#[test]
fn accounting_counts_every_byte_per_target_and_survives_in_place_updates() {
    if !require_root() {
        return;
    }
    let host = Netns::new("ah");
    let client = Netns::new("ac");
    let proxy = Netns::new("ap");
    bridge(&host, "br0", "10.93.0.1/24");
    wire(&host, "vc", Some("br0"), &client, "10.93.0.10/24");
    wire(&host, "vp", Some("br0"), &proxy, "10.93.0.11/24");
    let _echo = host.spawn(&["python3", &helper("netsvc.py"), "echo", "10.93.0.1", "5201"]);
    wait_port(&host, "10.93.0.1:5201", Duration::from_secs(10));
    let map = |extra: bool| {
        let more = if extra { ", \"10.93.0.1:5202\"" } else { "" };
        TempFile::new(
            "acct.toml",
            &format!(
                "[settings]\naccounting = true\n\n[[service]]\nname = \"echo\"\nlisten = \"5201\"\ntargets = [{{ address = \"10.93.0.1:5201\", weight = 100 }}{more}]\n"
            ),
        )
    };
    let one = map(false);
    svcnat_ok(&["apply", "-f", one.path(), "--netns", &proxy.name]);
    let o = client.exec(&format!(
        "python3 {} echoed 10.93.0.11 5201 300000",
        helper("netsvc.py")
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let target = |v: &serde_json::Value, addr: &str| -> (u64, u64) {
        let t = v["services"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr)
            .unwrap_or_else(|| panic!("no target {addr}: {v}"))
            .clone();
        (t["packets"].as_u64().unwrap(), t["bytes"].as_u64().unwrap())
    };
    let show = || -> serde_json::Value {
        serde_json::from_str(&svcnat_ok(&["show", "--netns", &proxy.name, "--json"])).unwrap()
    };
    let (packets, bytes) = target(&show(), "10.93.0.1:5201");
    // 300 kB each way, and at least a 40-byte IPv4 + TCP header per packet counted: every
    // packet of the connection, both directions. Above that only retransmissions, which are
    // real traffic (a CI run under load once counted 120 kB of them); counting a direction
    // twice would be 1.2 MB or more.
    let least = 600_000 + 40 * packets;
    assert!(
        (least..900_000).contains(&bytes),
        "{bytes} bytes in {packets} packets"
    );
    assert!(packets >= 20, "{packets} packets");

    // A second target, in place: the first target's counter keeps its count.
    let two = map(true);
    let out = svcnat_ok(&[
        "apply",
        "-f",
        two.path(),
        "--netns",
        &proxy.name,
        "--verbose",
    ]);
    assert!(out.contains("updated in place"), "{out}");
    let v = show();
    assert_eq!(target(&v, "10.93.0.1:5201"), (packets, bytes));
    assert_eq!(target(&v, "10.93.0.1:5202"), (0, 0));
    let (code, diff, _) = svcnat(&["diff", "-f", two.path(), "--netns", &proxy.name]);
    assert_eq!(code, 0, "{diff}");
    // And back: the counter of the target that left is removed with it.
    svcnat_ok(&["apply", "-f", one.path(), "--netns", &proxy.name]);
    let listing = proxy.ruleset();
    assert!(!listing.contains("t4-0a5d0001-1452"), "{listing}");
    assert!(listing.contains("t4-0a5d0001-1451"), "{listing}");
}

#[test]
fn load_balancing_example_splits_connections_by_weight_in_every_shape() {
    if !require_root() {
        return;
    }
    // rulesets/load-balancing.toml as shipped: a host with a pod bridge (IPv4 and IPv6) and
    // an outside client on a link of its own.
    let host = Netns::new("lb");
    let outside = Netns::new("lb-out");
    let pods = [Netns::new("p1"), Netns::new("p2"), Netns::new("p3")];
    bridge(&host, "br3", "10.42.0.1/16");
    host.exec_ok("ip addr add fd00:42::1/64 dev br3 nodad");
    for (i, p) in pods.iter().enumerate() {
        let n = 11 + i;
        wire(
            &host,
            &format!("vp{n}"),
            Some("br3"),
            p,
            &format!("10.42.0.{n}/16"),
        );
        p.exec_ok(&format!(
            "ip addr add 10.42.1.{}/16 dev eth0 && ip addr add fd00:42::{n}/64 dev eth0 nodad \
             && ip route add default via 10.42.0.1 && ip -6 route add default via fd00:42::1",
            5 + i
        ));
    }
    wire(&host, "vlo", None, &outside, "10.98.0.2/24");
    host.exec_ok("ip addr add 10.98.0.1/24 dev vlo && ip addr add fd00:98::1/64 dev vlo nodad");
    outside.exec_ok("ip addr add fd00:98::2/64 dev eth0 nodad");
    let mut servers = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let name = format!("p{}", i + 1);
        // `::` takes IPv4 connections too.
        servers.push(server(p, &["http", "::", "8080", &name]));
        servers.push(server(
            p,
            &["udppeer", &format!("10.42.1.{}", 5 + i), "514", &name],
        ));
        wait_port(
            p,
            &format!("10.42.0.{}:8080", 11 + i),
            Duration::from_secs(10),
        );
    }
    svcnat_ok(&[
        "apply",
        "-f",
        "rulesets/load-balancing.toml",
        "--netns",
        &host.name,
    ]);

    // shop: weights 2:1:1, so half the connections to p1 and a quarter to each other.
    // Binomial(400, 1/2) and (400, 1/4): the bounds are over 4.6 standard deviations out.
    let counts = answers(&outside, "10.98.0.1", 30080, 400);
    let n = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert_eq!(n("p1") + n("p2") + n("p3"), 400, "all answered: {counts:?}");
    assert!(
        (150..=250).contains(&n("p1")),
        "p1 has weight 2: {counts:?}"
    );
    assert!((60..=140).contains(&n("p2")), "{counts:?}");
    assert!((60..=140).contains(&n("p3")), "{counts:?}");
    // ... from the host itself through 127.0.0.1 too (the loopback map of four slots).
    let local = answers(&host, "127.0.0.1", 30080, 60);
    assert_eq!(local.values().sum::<u32>(), 60, "{local:?}");
    assert!(local.len() >= 2, "one pod took all 60: {local:?}");

    // shop-v6: two IPv6 pods, evenly.
    let v6 = answers(&outside, "fd00:98::1", 30081, 100);
    let n6 = |name: &str| v6.get(name).copied().unwrap_or(0);
    assert_eq!(n6("p1") + n6("p2"), 100, "{v6:?}");
    assert!(n6("p1") >= 25 && n6("p2") >= 25, "{v6:?}");

    // syslog over UDP without masquerade: every collector gets a share, and each sees the
    // sender's own address.
    let o = outside.exec_ok(&format!(
        "python3 {} udpgets 10.98.0.1 514 90",
        helper("netsvc.py")
    ));
    let mut got = 0;
    for line in o.lines() {
        let (what, count) = line.rsplit_once(' ').unwrap();
        let count: u32 = count.parse().unwrap();
        assert!(what.ends_with(" 10.98.0.2"), "masqueraded or lost: {o}");
        assert!(count >= 10, "a collector is left out: {o}");
        got += count;
    }
    assert_eq!(got, 90, "{o}");
    assert_eq!(o.lines().count(), 3, "{o}");

    // syslog weighted 2:1:1: out of the map of three slots (the last service in it, so the
    // map and its lookup rules go) into a new one of four, in place.
    let shipped = std::fs::read_to_string("rulesets/load-balancing.toml").unwrap();
    let weighted = TempFile::new(
        "lb-weighted.toml",
        &shipped.replace(
            "targets = [\"10.42.1.5:514\", \"10.42.1.6:514\", \"10.42.1.7:514\"]",
            "targets = [{ address = \"10.42.1.5:514\", weight = 2 }, \"10.42.1.6:514\", \"10.42.1.7:514\"]",
        ),
    );
    let out = svcnat_ok(&["apply", "-f", weighted.path(), "--netns", &host.name]);
    assert!(out.contains("updated in place"), "{out}");
    let rules = host.ruleset();
    assert!(
        rules.contains("dnat-port4-plain-n4") && !rules.contains("dnat-port4-plain-n3"),
        "{rules}"
    );
    let o = outside.exec_ok(&format!(
        "python3 {} udpgets 10.98.0.1 514 120",
        helper("netsvc.py")
    ));
    let share = |name: &str| -> u32 {
        o.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or(0)
    };
    // Binomial(120, 1/2) for p1, (120, 1/4) for the others: bounds past 4 deviations.
    assert!((38..=82).contains(&share("p1")), "p1 has weight 2: {o}");
    assert!(share("p2") >= 10 && share("p3") >= 10, "{o}");

    svcnat_ok(&["flush", "--netns", &host.name]);
    assert!(get(&outside, "http://10.98.0.1:30080").is_err());
}
