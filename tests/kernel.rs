//! Kernel tests, each in its own throwaway network namespace: what svcnat installs over
//! netlink, what it reads back, what it removes, and what it must leave alone.

mod common;
use common::*;

#[test]
fn netlink_apply_equals_nft_loading_the_render() {
    if !require_root() {
        return;
    }
    // The kernel holds the same thing whether svcnat sends it over netlink or nft loads
    // svcnat's text render: the two backends of one Ruleset agree, statement by statement.
    for map in bundled_maps() {
        let via_netlink = Netns::new("nl");
        let via_nft = Netns::new("nft");
        apply_map(&map, &via_netlink);
        let text = svcnat_ok(&["render", "-f", &map, "--add-host", ADD_HOST]);
        let file = TempFile::new("render.nft", &text);
        via_nft.exec_ok(&format!("nft -f {}", file.path()));
        let a = via_netlink.ruleset();
        assert!(
            a.contains("table inet svcnat"),
            "{map}: nothing installed:\n{a}"
        );
        assert_eq!(
            without_generation(&a),
            via_nft.ruleset(),
            "{map}: netlink apply differs from nft -f of the render"
        );
    }
}

#[test]
fn apply_show_reapply_flush() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("cycle");
    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(out.contains("applied 2 service(s)"), "{out}");
    assert!(out.contains("table created"), "{out}");
    let first = ns.ruleset();

    let json = svcnat_ok(&["show", "--netns", &ns.name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["installed"], true);
    assert_eq!(v["schema_version"], 1);
    // history and diff say the same things with the same keys.
    let h: serde_json::Value =
        serde_json::from_str(&svcnat_ok(&["history", "--netns", &ns.name, "--json"])).unwrap();
    assert_eq!(
        (&h["schema_version"], &h["installed"], &h["generation"]),
        (&v["schema_version"], &v["installed"], &v["generation"]),
        "{h}"
    );
    assert_eq!(h["generations"][0]["generation"], v["generation"], "{h}");
    let (code, d, _) = svcnat(&[
        "diff",
        "-f",
        "rulesets/skupper-ingress.toml",
        "--add-host",
        ADD_HOST,
        "--netns",
        &ns.name,
        "--json",
    ]);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(
        (code, &d["schema_version"], &d["installed"]),
        (0, &v["schema_version"], &v["installed"])
    );
    let services = v["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{json}");
    assert_eq!(services[0]["name"], "my-service");
    assert_eq!(services[0]["protocol"], "tcp");
    assert_eq!(services[0]["listen"][0], "*:8080");
    assert_eq!(services[0]["targets"][0]["address"], "10.99.0.1:8080");
    assert_eq!(services[1]["listen"][0], "*:5201");
    assert_eq!(services[1]["targets"][0]["address"], "10.99.0.1:5201");
    assert_eq!(v["drift"].as_array().unwrap().len(), 0);

    let human = svcnat_ok(&["show", "--netns", &ns.name]);
    assert!(
        human.contains("my-tcp-service") && human.contains("10.99.0.1:5201"),
        "{human}"
    );

    // Applying the same map again changes nothing: no message, no new generation, the
    // kernel's bytes as they were.
    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(
        out.contains("unchanged:") && out.contains("(generation 1); nothing recorded"),
        "{out}"
    );
    assert_eq!(without_counters(&ns.ruleset()), without_counters(&first));

    // Another map replaces it whole: no leftovers of the first.
    apply_map("rulesets/host-ports.toml", &ns);
    let second = ns.ruleset();
    assert!(
        !second.contains("my-service") && second.contains("comment \"web-vip\""),
        "{second}"
    );

    let out = svcnat_ok(&["flush", "--netns", &ns.name]);
    assert!(out.contains("removed table inet svcnat"), "{out}");
    assert_eq!(ns.ruleset(), "");
    let out = svcnat_ok(&["flush", "--netns", &ns.name]);
    assert!(out.contains("nothing to flush"), "{out}");
    let out = svcnat_ok(&["show", "--netns", &ns.name]);
    assert!(out.contains("nothing installed"), "{out}");
}

/// What other tools own in a namespace, in their own tools' words.
fn foreign_state(ns: &Netns) -> String {
    let strip = |s: String| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    format!(
        "== nft table ip other\n{}== iptables-nft-save\n{}== iptables-legacy-save\n{}",
        ns.exec_ok("nft list table ip other"),
        strip(ns.exec_ok("iptables-nft-save")),
        strip(ns.exec_ok("iptables-legacy-save"))
    )
}

#[test]
fn foreign_rules_survive_apply_and_flush_byte_for_byte() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("foreign");
    // Docker's embedded-DNS rules in a container's nat table (iptables-nft), a legacy
    // iptables rule, and another tool's nft table with a set and a counter.
    ns.exec_ok("iptables-nft -t nat -N DOCKER_OUTPUT");
    ns.exec_ok("iptables-nft -t nat -A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT");
    ns.exec_ok(
        "iptables-nft -t nat -A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:41234",
    );
    ns.exec_ok("iptables-legacy -t nat -A PREROUTING -p tcp --dport 2222 -j DNAT --to-destination 10.1.1.1:22");
    ns.exec_ok("nft add table ip other");
    ns.exec_ok("nft add set ip other blocked { type ipv4_addr\\; elements = { 192.0.2.1 } \\; }");
    ns.exec_ok("nft add chain ip other input { type filter hook input priority 0 \\; }");
    ns.exec_ok("nft add rule ip other input ip saddr @blocked counter drop");
    let before = foreign_state(&ns);

    apply_map("rulesets/host-ports.toml", &ns);
    assert_eq!(
        foreign_state(&ns),
        before,
        "apply changed rules svcnat does not own"
    );
    apply_map("rulesets/skupper-ingress.toml", &ns);
    assert_eq!(
        foreign_state(&ns),
        before,
        "re-apply changed rules svcnat does not own"
    );
    svcnat_ok(&["flush", "--netns", &ns.name]);
    assert_eq!(
        foreign_state(&ns),
        before,
        "flush changed rules svcnat does not own"
    );
    assert!(!ns.ruleset().contains("table inet svcnat"));
}

#[test]
fn a_rejected_batch_leaves_the_previous_ruleset_byte_identical() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("reject");
    apply_map("rulesets/skupper-ingress.toml", &ns);
    let before = ns.ruleset();
    let history = svcnat_ok(&["history", "--netns", &ns.name]);
    // Debug builds append a rule in a chain that does not exist: the kernel must refuse
    // the whole batch, including the delete of the table that came first in it.
    let (code, out, err) = svcnat_env(
        &[
            "apply",
            "-f",
            "rulesets/host-ports.toml",
            "--netns",
            &ns.name,
        ],
        &[("SVCNAT_TEST_REJECT", "1")],
    );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("the kernel rejected the ruleset, nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains("chain no-such-chain") && err.contains("ENOENT"),
        "{err}"
    );
    assert_eq!(ns.ruleset(), before);
    assert_eq!(svcnat_ok(&["history", "--netns", &ns.name]), history);
    // A large map's generation is written while the kernel commits: a refused commit
    // must not put it in place either.
    let mut big = String::new();
    for i in 0..1500 {
        big += &format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"172.30.{}.{}:80\"\ntargets = [\"10.8.0.2:80\"]\n",
            i / 256,
            i % 256
        );
    }
    let big = TempFile::new("reject-big.toml", &big);
    let (code, _, err) = svcnat_env(
        &["apply", "-f", big.path(), "--netns", &ns.name],
        &[("SVCNAT_TEST_REJECT", "1")],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(ns.ruleset(), before);
    assert_eq!(svcnat_ok(&["history", "--netns", &ns.name]), history);
    // route_localnet was needed by host-ports but must not have been switched on.
    assert_eq!(
        ns.exec_ok("cat /proc/sys/net/ipv4/conf/all/route_localnet")
            .trim(),
        "0"
    );
}

#[test]
fn invalid_map_changes_nothing_and_exits_2() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("invalid");
    apply_map("rulesets/skupper-ingress.toml", &ns);
    let before = ns.ruleset();
    let bad = TempFile::new(
        "bad.toml",
        "[[service]]\nname = \"x\"\nlisten = \"70000\"\ntargets = [\"10.0.0.1:80\"]\n",
    );
    let (code, _, err) = svcnat(&["apply", "-f", bad.path(), "--netns", &ns.name]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":3:10: service[1].listen: port 70000 is out of range"),
        "{err}"
    );
    assert_eq!(ns.ruleset(), before);
}

#[test]
fn read_only_proc_sys_fails_before_sending_with_the_fix() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("rosys");
    assert_eq!(ns.exec_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "0");
    // Like a container: /proc/sys mounted read-only (in a private mount namespace).
    let cmd = format!(
        "unshare -m sh -c 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && {} apply -f rulesets/skupper-ingress.toml --add-host {ADD_HOST} --state-dir {}'",
        bin(),
        state_root().display()
    );
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", &cmd])
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("net.ipv4.ip_forward is 0"), "{err}");
    assert!(err.contains("sysctl -w net.ipv4.ip_forward=1"), "{err}");
    assert!(err.contains("sysctls: [net.ipv4.ip_forward=1]"), "{err}");
    assert_eq!(
        ns.ruleset(),
        "",
        "nothing may be installed when the sysctl cannot be set"
    );

    // With forwarding already on, a read-only /proc/sys is no obstacle.
    ns.exec_ok("sysctl -qw net.ipv4.ip_forward=1");
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c", &cmd])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("enabled"), "nothing needed enabling: {out}");
    assert!(ns.ruleset().contains("comment \"my-service\""));
}

#[test]
fn apply_enables_forwarding_only_for_remote_targets() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fwd");
    ns.exec_ok("ip link add d0 type veth peer name d1 && ip addr add 10.7.0.1/24 dev d0 && ip link set d0 up");
    let local = TempFile::new(
        "local.toml",
        "[[service]]\nname = \"here\"\nlisten = \"80\"\ntargets = [\"10.7.0.1:8080\", \"127.0.0.1:8081\"]\n",
    );
    let out = svcnat_ok(&["apply", "-f", local.path(), "--netns", &ns.name]);
    assert!(!out.contains("enabled"), "{out}");
    assert_eq!(ns.exec_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "0");

    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(out.contains("enabled net.ipv4.ip_forward"), "{out}");
    assert_eq!(ns.exec_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    assert_eq!(
        ns.exec_ok("cat /proc/sys/net/ipv4/conf/all/route_localnet")
            .trim(),
        "0"
    );

    let out = apply_map("rulesets/host-ports.toml", &ns);
    assert!(
        out.contains("enabled net.ipv4.conf.all.route_localnet"),
        "{out}"
    );
    assert_eq!(
        ns.exec_ok("cat /proc/sys/net/ipv4/conf/all/route_localnet")
            .trim(),
        "1"
    );
}

#[test]
fn netns_by_name_path_and_pid() {
    if !require_root() {
        return;
    }
    let by_path = Netns::new("path");
    svcnat_ok(&[
        "apply",
        "-f",
        "rulesets/skupper-ingress.toml",
        "--add-host",
        ADD_HOST,
        "--netns",
        &by_path.path(),
    ]);
    assert!(by_path.ruleset().contains("comment \"my-service\""));

    let by_pid = Netns::new("pid");
    let sleeper = by_pid.spawn_inside();
    let pid = format!("pid:{}", sleeper.pid());
    svcnat_ok(&["apply", "-f", "rulesets/host-ports.toml", "--netns", &pid]);
    assert!(by_pid.ruleset().contains("comment \"web-vip\""));
    svcnat_ok(&["flush", "--netns", &pid]);
    assert_eq!(by_pid.ruleset(), "");

    let (code, _, err) = svcnat(&["show", "--netns", "svt-no-such-namespace"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/run/netns/svt-no-such-namespace") && err.contains("ip netns list"),
        "{err}"
    );
    let (code, _, err) = svcnat(&["show", "--netns", "pid:notanumber"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn svcnat_switches_off_only_the_sysctls_it_switched_on() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("own");
    let read = |k: &str| ns.exec_ok(&format!("sysctl -n {k}")).trim().to_owned();
    let out = apply_map("rulesets/host-ports.toml", &ns);
    assert!(
        out.contains("enabled net.ipv4.ip_forward, net.ipv4.conf.all.route_localnet"),
        "{out}"
    );

    // No localhost services any more: the guard goes, and so must route_localnet, or the
    // namespace would accept 127.0.0.0/8 from outside with nothing to stop it.
    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(
        out.contains("switched off net.ipv4.conf.all.route_localnet (no longer needed)"),
        "{out}"
    );
    assert!(!out.contains("enabled"), "{out}");
    assert_eq!(read("net.ipv4.conf.all.route_localnet"), "0");
    assert_eq!(read("net.ipv4.ip_forward"), "1");

    let out = svcnat_ok(&["flush", "--netns", &ns.name]);
    assert!(
        out.contains("switched off net.ipv4.ip_forward (svcnat had switched it on)"),
        "{out}"
    );
    assert_eq!(read("net.ipv4.ip_forward"), "0");

    // What someone else switched on stays on.
    ns.exec_ok("sysctl -qw net.ipv4.ip_forward=1");
    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(!out.contains("enabled"), "{out}");
    let out = svcnat_ok(&["flush", "--netns", &ns.name]);
    assert!(!out.contains("switched off"), "{out}");
    assert_eq!(read("net.ipv4.ip_forward"), "1");
}

#[test]
fn plan_apply_dump_round_trips_for_every_bundled_map() {
    if !require_root() {
        return;
    }
    // diff reads the kernel's table back over netlink, lifts it into a Plan and compares it
    // with the map's: exit 0 means dump == plan, with no drift.
    for map in bundled_maps() {
        let ns = Netns::new("rt");
        let (code, out, _) = svcnat(&[
            "diff",
            "-f",
            &map,
            "--add-host",
            ADD_HOST,
            "--netns",
            &ns.name,
        ]);
        assert_eq!(code, 1, "{map}: nothing installed yet must differ: {out}");
        assert!(out.contains("apply would install the map"), "{out}");
        apply_map(&map, &ns);
        let (code, out, err) = svcnat(&[
            "diff",
            "-f",
            &map,
            "--add-host",
            ADD_HOST,
            "--netns",
            &ns.name,
        ]);
        assert_eq!(code, 0, "{map}: not in sync right after apply:\n{out}{err}");
        assert!(out.contains("in sync"), "{out}");
    }
}

#[test]
fn diff_reads_like_a_plan_and_reports_hand_edits_as_drift() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("drift");
    apply_map("rulesets/host-ports.toml", &ns);
    let diff = |map: &str| {
        svcnat(&[
            "diff",
            "-f",
            map,
            "--add-host",
            ADD_HOST,
            "--netns",
            &ns.name,
        ])
    };

    // Another map: services to add, remove and change.
    let other = TempFile::new(
        "other.toml",
        "[[service]]\nname = \"web1\"\nlisten = \"8081\"\nlocalhost = true\ntargets = [\"172.18.0.9:8000\"]\n\n\
         [[service]]\nname = \"api\"\nlisten = \"9000\"\nprotocol = \"udp\"\ntargets = [\"10.1.1.1:9000\"]\n",
    );
    let (code, out, _) = diff(other.path());
    assert_eq!(code, 1);
    assert!(
        out.contains("~ service web1: targets 172.18.0.2:8000 -> 172.18.0.9:8000\n"),
        "{out}"
    );
    assert!(
        out.contains("+ service api udp/*:9000 -> 10.1.1.1:9000 (masquerade)\n"),
        "{out}"
    );
    assert!(
        out.contains("- service web2 tcp/*:8082 -> 172.18.0.3:8000 (masquerade, localhost)\n"),
        "{out}"
    );
    assert!(
        out.contains("- service web-vip tcp/172.18.1.1:8083"),
        "{out}"
    );
    assert!(!out.contains("drift"), "{out}");

    // Hand edits with nft inside svcnat's table.
    // An element in a slot numgen never draws (mod 2): harmless, but not svcnat's.
    ns.exec_ok(
        "nft add element inet svcnat dnat-vip4-n2 \
         { 172.18.1.1 . tcp . 8083 . 5 comment \\\"web-vip\\\" : 10.0.0.5 . 80 }",
    );
    ns.exec_ok("nft delete element inet svcnat dnat-lo4 { tcp . 8082 }");
    ns.exec_ok("nft add element inet svcnat dnat-port4 { udp . 9999 : 10.0.0.9 . 9999 }");
    ns.exec_ok("nft insert rule inet svcnat prerouting tcp dport 22 accept");
    let (code, out, _) = diff("rulesets/host-ports.toml");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("drift (changed in the kernel without svcnat; apply restores it):"),
        "{out}"
    );
    assert!(
        out.contains("  + element dnat-vip4-n2: 172.18.1.1 . tcp . 8083 . 5 comment \"web-vip\" : 10.0.0.5 . 80\n"),
        "{out}"
    );
    assert!(
        !out.contains("service web-vip"),
        "its two slots are intact: {out}"
    );
    assert!(
        out.contains("  + element dnat-port4: udp . 9999 : 10.0.0.9 . 9999\n"),
        "an element without a service name is drift: {out}"
    );
    assert!(
        out.contains("~ service web2: localhost false -> true"),
        "a lost lo4 element is a changed service: {out}"
    );
    assert!(
        out.contains("+ rule svcnat did not write, in chain prerouting handle")
            && out.contains(": tcp dport 22 accept\n"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(
        &svcnat(&[
            "diff",
            "-f",
            "rulesets/host-ports.toml",
            "--netns",
            &ns.name,
            "--json",
        ])
        .1,
    )
    .unwrap();
    assert_eq!(v["in_sync"], false);
    assert_eq!(v["drift"].as_array().unwrap().len(), 3, "{v}");

    // apply restores exactly the map.
    apply_map("rulesets/host-ports.toml", &ns);
    let (code, out, _) = diff("rulesets/host-ports.toml");
    assert_eq!(code, 0, "{out}");

    let bad = TempFile::new("bad.toml", "[[service]]\nname = \"x\"\n");
    let (code, _, err) = diff(bad.path());
    assert_eq!(code, 2, "{err}");
}

/// Processes whose network namespace is `ns`'s.
fn processes_in(ns: &Netns) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(net) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if net.ino() == target {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!("{pid}: {}", cmd.replace('\0', " ")));
        }
    }
    found
}

/// A one-shot apply leaves nothing behind: when it exits, no process of svcnat is in the
/// namespace, its pipes are closed, the next apply started at once commits, and the
/// generation it recorded is there for `rollback` (synced before it said "applied").
#[test]
fn a_one_shot_apply_leaves_no_process_and_no_pipe_behind() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("closer");
    for round in 0..5 {
        let port = 8080 + round;
        let map = TempFile::new(
            "closer",
            &format!(
                "[[service]]\nname = \"web\"\nlisten = \"172.30.0.1:80\"\ntargets = [\"10.8.0.1:{port}\"]\n"
            ),
        );
        let started = std::time::Instant::now();
        // output() reads stdout and stderr to end of file: it returns only when every
        // process holding them has closed them.
        let (code, out, err) = svcnat(&["apply", "-f", map.path(), "--netns", &ns.name]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "apply's output took {:?}",
            started.elapsed()
        );
        let ruleset = ns.ruleset();
        assert!(ruleset.contains(&format!("10.8.0.1 . {port}")), "{ruleset}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let left = processes_in(&ns);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes still in the namespace 3 s after the last apply: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, _, err) = svcnat(&["rollback", "--netns", &ns.name]);
    assert_eq!(code, 0, "the generations were recorded: {err}");
}

/// The namespace's interface addresses svcnat reads (to tell local targets from remote
/// ones) are the ones iproute2 lists: a point-to-point address is its local end, not its
/// peer, and IPv6 addresses come too.
#[test]
fn local_addresses_are_the_ones_ip_lists() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("addrs");
    ns.exec_ok("ip link add d0 type veth peer name d1 && ip link set d0 up && ip link set d1 up");
    ns.exec_ok("ip addr add 10.77.0.1 peer 10.77.0.2/32 dev d0");
    ns.exec_ok("ip addr add 10.78.0.1/24 dev d0");
    ns.exec_ok("ip -6 addr add fd77::1/64 dev d0 nodad");
    let spec = svcnat::kernel::netns::NetnsSpec::parse(&ns.name).unwrap();
    let mut ours =
        svcnat::kernel::in_namespace(Some(&spec), || Ok(svcnat::kernel::local_addresses()))
            .unwrap();
    // `ip -o addr`: "N: IFACE inet 10.77.0.1 peer 10.77.0.2/32 ..." — the local end first.
    let mut listed: Vec<std::net::IpAddr> = ns
        .exec_ok("ip -o addr show")
        .lines()
        .filter_map(|l| {
            let mut words = l
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6");
            words.next()?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect();
    ours.sort();
    listed.sort();
    assert!(ours.contains(&"10.77.0.1".parse().unwrap()), "{ours:?}");
    assert!(
        !ours.contains(&"10.77.0.2".parse().unwrap()),
        "the peer is not ours: {ours:?}"
    );
    assert!(ours.contains(&"fd77::1".parse().unwrap()), "{ours:?}");
    assert_eq!(ours, listed);
}

/// `svcnat run` keeps the local addresses between reloads, watched: an address added or
/// removed in the namespace since the last read is seen at the next one.
#[test]
fn watched_local_addresses_follow_the_namespace() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("addrwatch");
    ns.exec_ok("ip link add d0 type veth peer name d1 && ip link set d0 up && ip link set d1 up");
    ns.exec_ok("ip addr add 10.79.0.1/24 dev d0");
    let spec = svcnat::kernel::netns::NetnsSpec::parse(&ns.name).unwrap();
    let mut locals =
        svcnat::kernel::in_namespace(
            Some(&spec),
            || Ok(svcnat::kernel::LocalAddresses::watched()),
        )
        .unwrap();
    // Read inside the namespace, as the reload does; the watch was made there.
    let mut get =
        || svcnat::kernel::in_namespace(Some(&spec), || Ok(locals.get().to_vec())).unwrap();
    let (a, b, v6): (std::net::IpAddr, std::net::IpAddr, std::net::IpAddr) = (
        "10.79.0.1".parse().unwrap(),
        "10.79.1.2".parse().unwrap(),
        "fd79::1".parse().unwrap(),
    );
    let first = get();
    assert!(first.contains(&a) && !first.contains(&b), "{first:?}");
    assert_eq!(get(), first, "nothing changed");
    ns.exec_ok("ip addr add 10.79.1.2/24 dev d0");
    assert!(get().contains(&b), "an added address is seen");
    ns.exec_ok("ip addr del 10.79.0.1/24 dev d0");
    let now = get();
    assert!(!now.contains(&a) && now.contains(&b), "{now:?}");
    ns.exec_ok("ip -6 addr add fd79::1/64 dev d0 nodad");
    // The kernel announces an IPv6 address from addrconf's work queue, after `ip` returns:
    // wait (boundedly) for the announcement, as a reload a moment later would see it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !get().contains(&v6) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(get().contains(&v6), "IPv6 too");
    ns.exec_ok("ip link del d0");
    let gone = get();
    assert!(!gone.contains(&b) && !gone.contains(&v6), "{gone:?}");
}

/// A sysctl the installed rules need, switched off behind svcnat's back, is drift.
#[test]
fn diff_reports_a_needed_sysctl_that_is_off() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("sysdrift");
    let map = "rulesets/dual-stack.toml";
    apply_map(map, &ns);
    let (code, out, err) = svcnat(&["diff", "-f", map, "--netns", &ns.name]);
    assert_eq!(code, 0, "{out}{err}");
    ns.exec_ok("sysctl -qw net.ipv4.ip_forward=0");
    let (code, out, err) = svcnat(&["diff", "-f", map, "--netns", &ns.name]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("sysctl net.ipv4.ip_forward = 1 (it is 0"),
        "{out}"
    );
}

#[test]
fn without_cap_net_admin_the_error_names_the_capability() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nocap");
    let o = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(bin())
        .args(["show"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("needs the CAP_NET_ADMIN capability"), "{err}");
}

/// A table svcnat believes absent is only created (no delete first, so the commit frees
/// nothing to wait for), with NLM_F_EXCL: were one there after all, the kernel refuses
/// the whole batch and the table stays as it was, byte for byte.
#[test]
fn creating_a_table_that_is_there_is_refused_whole() {
    use svcnat::kernel::{Change, Kernel, meta::TableMeta, netns::NetnsSpec, within};
    if !require_root() {
        return;
    }
    let ns = Netns::new("excl");
    let out = apply_map("rulesets/skupper-ingress.toml", &ns);
    assert!(out.contains("table created"), "{out}");
    let before = ns.ruleset();
    let plan = svcnat::cli::plan_from_source(
        svcnat::map::read::read(std::path::Path::new("rulesets/host-ports.toml")).unwrap(),
        svcnat::resolve::Resolver::new(Default::default()),
    )
    .unwrap()
    .0;
    let rs = svcnat::ruleset::lower(&plan);
    let spec = NetnsSpec::parse(&ns.name).unwrap();
    let e = within(Some(&spec), |k| {
        let genid = k.genid()?;
        let create = Change::Replace {
            ruleset: &rs,
            meta: &TableMeta::default(),
            owned: false,
            absent: true,
        };
        k.commit(create, genid)
    })
    .unwrap_err();
    assert!(e.to_string().contains("EEXIST"), "{e}");
    assert_eq!(ns.ruleset(), before);
}
