//! `svcnat run`, with namespaces standing in for containers: a "host" with a bridge where
//! the router's stand-ins listen, a proxy "container" running svcnat, a client.

mod common;
use common::*;
use std::time::{Duration, Instant};

struct Lab {
    host: Netns,
    client: Netns,
    proxy: Netns,
    _servers: Vec<Proc>,
}

/// Host 10.94.0.1 (and .2) with HTTP servers answering "a" on :8080, "b" on :8081 and
/// "c" on 10.94.0.2:8080; client .10, proxy .11.
fn lab() -> Lab {
    let host = Netns::new("rh");
    let client = Netns::new("rc");
    let proxy = Netns::new("rp");
    bridge(&host, "br0", "10.94.0.1/24");
    host.exec_ok("ip addr add 10.94.0.2/24 dev br0");
    wire(&host, "vc", Some("br0"), &client, "10.94.0.10/24");
    wire(&host, "vp", Some("br0"), &proxy, "10.94.0.11/24");
    let netsvc = helper("netsvc.py");
    let servers = vec![
        host.spawn(&["python3", &netsvc, "http", "10.94.0.1", "8080", "a"]),
        host.spawn(&["python3", &netsvc, "http", "10.94.0.1", "8081", "b"]),
        host.spawn(&["python3", &netsvc, "http", "10.94.0.2", "8080", "c"]),
    ];
    for a in ["10.94.0.1:8080", "10.94.0.1:8081", "10.94.0.2:8080"] {
        wait_port(&host, a, Duration::from_secs(10));
    }
    Lab {
        host,
        client,
        proxy,
        _servers: servers,
    }
}

fn get(from: &Netns, url: &str) -> Option<String> {
    let o = from.exec(&format!("python3 {} get {url}", helper("netsvc.py")));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Poll until `get` answers `want` (the rules changed) or time runs out.
fn eventually(from: &Netns, url: &str, want: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let got = get(from, url);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{url} answered {got:?}, not {want:?}, within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_serves_reloads_keeps_rules_on_a_bad_map_and_cleans_up() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let map = TempFile::new(
        "run.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"router:8080\"]\n",
    );
    // As PID 1 of its own PID namespace, like a container's entrypoint.
    let bin = bin();
    let run = Running::start(
        &lab.proxy,
        &[
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            bin,
            "run",
            "-f",
            map.path(),
            "--add-host",
            "router=10.94.0.1",
        ],
        &[],
    );
    run.wait_log("INFO enabled net.ipv4.ip_forward", Duration::from_secs(2));
    let log = run.log();
    assert!(
        log.lines()
            .all(|l| l.len() > 21 && l.as_bytes()[4] == b'-' && l.contains('Z')),
        "one timestamped line per event:\n{log}"
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("a")
    );

    // SIGHUP after a change: traffic moves.
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"router:8081\"]\n",
    )
    .unwrap();
    let pid1 = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        run.proc.pid(),
        run.proc.pid()
    ))
    .unwrap();
    let pid1: i32 = pid1.trim().parse().unwrap();
    unsafe { libc::kill(pid1, libc::SIGHUP) };
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "b",
        Duration::from_secs(3),
    );

    // An invalid map keeps the running rules, and says where the mistake is.
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"80800\"\ntargets = [\"router:8080\"]\n",
    )
    .unwrap();
    unsafe { libc::kill(pid1, libc::SIGHUP) };
    run.wait_log(
        "the new map is invalid, the running rules stay",
        Duration::from_secs(3),
    );
    assert!(
        run.log().contains(&format!(
            "{}:3:10: service[1].listen: port 80800 is out of range",
            map.path()
        )),
        "{}",
        run.log()
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("b")
    );

    // SIGTERM: everything svcnat installed is gone, exit 0, within a second.
    let started = Instant::now();
    unsafe { libc::kill(pid1, libc::SIGTERM) };
    run.wait_log(
        "SIGTERM: removed svcnat's rules, exiting",
        Duration::from_secs(1),
    );
    let mut proc = run.proc;
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(lab.proxy.ruleset(), "");
    assert!(get(&lab.client, "http://10.94.0.11:8080").is_none());
}

#[test]
fn a_file_change_alone_reloads() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let map = TempFile::new(
        "watch.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8080\"]\n",
    );
    let run = Running::start(&lab.proxy, &[bin(), "run", "-f", map.path()], &[]);
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("a")
    );
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8081\"]\n",
    )
    .unwrap();
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "b",
        Duration::from_secs(4),
    );
    assert!(
        run.log().contains("map file changed: map re-read"),
        "{}",
        run.log()
    );
    run.signal(libc::SIGINT);
}

/// A reload trusts what the process committed last only while nobody else has committed
/// since (the kernel's ruleset generation id): then the table is not read back; after a
/// hand edit it is, and the edit is undone.
#[test]
fn reloads_read_the_table_back_only_after_someone_else_committed() {
    if !require_root() {
        return;
    }
    let lab = lab();
    // A port range, which the incremental reload by changed sections leaves to the full
    // apply: the one this test is about.
    let service = |port: u16| {
        format!(
            "[[service]]\nname = \"web\"\nlisten = \"8080-8081\"\ntargets = [\"10.94.0.1:{port}-{}\"]\n",
            port + 1
        )
    };
    let map = TempFile::new("known.toml", &service(8080));
    let run = Running::start(&lab.proxy, &[bin(), "run", "-f", map.path()], &[]);
    run.wait_log("applied 1 service(s)", Duration::from_secs(2));
    let pid = run.proc.pid() as i32;

    std::fs::write(&map.0, service(8081)).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "b",
        Duration::from_secs(3),
    );
    run.wait_log("table not read back", Duration::from_secs(2));

    // A commit by someone else, in another table (a change to svcnat's own would be
    // repaired first, after its debounce, racing the reload): the ruleset's generation
    // moved, so the next reload must read svcnat's table back.
    lab.proxy.exec_ok("nft add table inet someone-else");
    std::fs::write(&map.0, service(8080)).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "a",
        Duration::from_secs(3),
    );
    run.wait_log(
        "applied 1 service(s) (SIGHUP) as generation 3",
        Duration::from_secs(2),
    );
    let log = run.log();
    assert_eq!(log.matches("table not read back").count(), 1, "{log}");
    assert!(!log.contains("repair"), "{log}");
    let (code, diff, _) = svcnat(&["diff", "-f", map.path(), "--netns", &lab.proxy.name]);
    assert_eq!(code, 0, "{diff}");
    assert!(lab.proxy.ruleset().contains("table inet someone-else"));
    run.signal(libc::SIGINT);
}

#[test]
fn a_reload_sends_only_the_changed_sections() {
    if !require_root() {
        return;
    }
    let lab = lab();
    // 500 services; the one under test is in the middle.
    let map_with = |port: u16| {
        let mut m = String::new();
        for i in 0..500 {
            let target = if i == 250 {
                format!("10.94.0.1:{port}")
            } else {
                "10.94.0.2:8080".to_owned()
            };
            let listen = if i == 250 {
                "8080".to_owned()
            } else {
                format!("172.29.{}.{}:80", i / 256, i % 256)
            };
            m.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nlisten = \"{listen}\"\ntargets = [\"{target}\"]\n"
            ));
        }
        m
    };
    let map = TempFile::new("quick-run.toml", &map_with(8080));
    let run = Running::start(&lab.proxy, &[bin(), "run", "-f", map.path()], &[]);
    run.wait_log("applied 500 service(s)", Duration::from_secs(5));
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "a",
        Duration::from_secs(3),
    );
    let pid = run.proc.pid() as i32;

    for (port, answer) in [(8081, "b"), (8080, "a")] {
        std::fs::write(&map.0, map_with(port)).unwrap();
        unsafe { libc::kill(pid, libc::SIGHUP) };
        eventually(
            &lab.client,
            "http://10.94.0.11:8080",
            answer,
            Duration::from_secs(3),
        );
    }
    let log = run.log();
    assert_eq!(
        log.matches("only the changed sections of the map were read")
            .count(),
        2,
        "{log}"
    );
    let (code, diff, _) = svcnat(&["diff", "-f", map.path(), "--netns", &lab.proxy.name]);
    assert_eq!(code, 0, "{diff}");
    // One-shot writers beside run are refused (run would put its table back at once),
    // and change nothing.
    let before = lab.proxy.ruleset();
    for args in [
        vec!["rollback", "--to", "2"],
        vec!["apply", "-f", "rulesets/host-ports.toml"],
        vec!["flush"],
    ] {
        let mut all = args.clone();
        all.extend(["--netns", &lab.proxy.name]);
        let (code, _, err) = svcnat(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("`svcnat run` keeps table inet svcnat"),
            "{err}"
        );
    }
    assert_eq!(
        without_counters(&lab.proxy.ruleset()),
        without_counters(&before)
    );
    std::fs::write(&map.0, map_with(8081)).unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "b",
        Duration::from_secs(3),
    );
    assert_eq!(
        run.log()
            .matches("only the changed sections of the map were read")
            .count(),
        3,
        "{}",
        run.log()
    );

    // An invalid change keeps the running rules, as a full reload would.
    std::fs::write(
        &map.0,
        map_with(8081).replace("name = \"s300\"", "name = \"s10\""),
    )
    .unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    run.wait_log(
        "already used by the service at line",
        Duration::from_secs(3),
    );
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "b",
        Duration::from_secs(3),
    );
    run.signal(libc::SIGINT);
    run.wait_log("removed svcnat's rules", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(100));

    // Each reload recorded its generation, the second in the file made after the first's
    // log line: each can be installed again once run is gone.
    for (generation, answer) in [("2", "b"), ("3", "a")] {
        svcnat_ok(&["rollback", "--netns", &lab.proxy.name, "--to", generation]);
        eventually(
            &lab.client,
            "http://10.94.0.11:8080",
            answer,
            Duration::from_secs(3),
        );
    }
}

/// `svcnat run --netns NAME` keeps its netlink socket between reloads. When the namespace
/// is deleted and made again under its name, the next reload installs into the new one,
/// not into the old one the kept socket still holds; then reloads go by the changed
/// sections again, there.
#[test]
fn a_reload_follows_a_namespace_made_again_under_its_name() {
    if !require_root() {
        return;
    }
    let home = Netns::new("rnhome");
    let target = Netns::new("rntarget");
    let map_with = |port: u16| {
        (0..20)
            .map(|i| {
                let port = if i == 10 { port } else { 8080 };
                format!(
                    "[[service]]\nname = \"s{i}\"\nlisten = \"172.29.7.{i}:80\"\ntargets = [\"10.95.0.1:{port}\"]\n"
                )
            })
            .collect::<String>()
    };
    let map = TempFile::new("renamed-ns.toml", &map_with(8080));
    let run = Running::start(
        &home,
        &[bin(), "run", "-f", map.path(), "--netns", &target.name],
        &[],
    );
    let reload = |port: u16, reloads: usize| {
        std::fs::write(&map.0, map_with(port)).unwrap();
        run.signal(libc::SIGHUP);
        let done = |log: &str| log.matches("(SIGHUP) as generation").count() >= reloads;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&run.log()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(done(&run.log()), "{}", run.log());
    };
    let holds = |port: u16| target.ruleset().contains(&format!("10.95.0.1 . {port}"));
    reload(8081, 1);
    assert!(holds(8081), "{}", target.ruleset());
    must(&format!(
        "ip netns del {0} && ip netns add {0}",
        target.name
    ));
    assert!(!target.ruleset().contains("svcnat"), "a new namespace");
    reload(8082, 2);
    assert!(holds(8082), "the new namespace: {}", target.ruleset());
    reload(8083, 3);
    assert!(holds(8083), "{}", target.ruleset());
    let log = run.log();
    assert_eq!(
        log.matches("only the changed sections of the map were read")
            .count(),
        2,
        "the first and the last reload: {log}"
    );
    run.signal(libc::SIGINT);
}

#[test]
fn port_mapping_drop_in_with_only_net_admin() {
    if !require_root() {
        return;
    }
    let lab = lab();
    // The netfilter proxy image's configuration, and nothing but CAP_NET_ADMIN.
    let run = Running::start(
        &lab.proxy,
        &[
            "setpriv",
            "--bounding-set=-all,+net_admin",
            "--inh-caps=-all",
            bin(),
            "run",
            "--add-host",
            "host.docker.internal=10.94.0.1",
        ],
        &[(
            "PORT_MAPPING",
            "8080:host.docker.internal:8080 8081:host.docker.internal:8081",
        )],
    );
    let caps = std::fs::read_to_string(format!("/proc/{}/status", run.proc.pid())).unwrap();
    let eff = caps.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_eq!(
        eff.split_whitespace().nth(1),
        Some("0000000000001000"),
        "only CAP_NET_ADMIN: {eff}"
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("a")
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8081").as_deref(),
        Some("b")
    );
    run.signal(libc::SIGTERM);
    run.wait_log("removed svcnat's rules", Duration::from_secs(2));
    drop(run); // waited for: its mark in the namespace goes with it

    // --forward and $SVCNAT_FORWARD take the same specs.
    let run = Running::start(
        &lab.proxy,
        &[bin(), "run", "--forward", "9000:10.94.0.2:8080"],
        &[],
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:9000").as_deref(),
        Some("c")
    );
    run.signal(libc::SIGTERM);
    run.wait_log("removed svcnat's rules", Duration::from_secs(2));
    drop(run);
    // A name that does not resolve is waited for (located, with backoff), not an exit
    // into a restart loop; SIGTERM meanwhile ends it cleanly.
    let waiting = Running::start_until(
        &lab.proxy,
        &[bin(), "run", "--forward", "8080:nohost.invalid:8080"],
        &[],
        "retrying in 0.5s",
    );
    assert!(
        waiting.log().contains(
            "--forward:1:6: service[1].targets[1]: cannot resolve host \"nohost.invalid\""
        ),
        "{}",
        waiting.log()
    );
    waiting.signal(libc::SIGTERM);
    waiting.wait_log(
        "stopped before anything was installed",
        Duration::from_secs(3),
    );
}

#[test]
fn target_names_are_re_resolved() {
    if !require_root() {
        return;
    }
    let lab = lab();
    // `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts (rewrite it in place: the
    // bind mount keeps the inode).
    let dir = format!("/etc/netns/{}", lab.proxy.name);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let hosts = format!("{dir}/hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.94.0.1 router\n").unwrap();
    let run = Running::start(
        &lab.proxy,
        &[
            bin(),
            "run",
            "--forward",
            "8080:router:8080",
            "--resolve-interval",
            "1s",
        ],
        &[],
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("a")
    );
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.94.0.2 router\n").unwrap();
    eventually(
        &lab.client,
        "http://10.94.0.11:8080",
        "c",
        Duration::from_secs(4),
    );
    assert!(
        run.log().contains("a target's address changed"),
        "{}",
        run.log()
    );
    // Logged just after the commit that moved the traffic: wait for it, do not race it.
    run.wait_log("(re-resolution) as generation 2", Duration::from_secs(2));
    assert!(
        run.log().contains("updated in place"),
        "only the changed service is touched: {}",
        run.log()
    );
    run.signal(libc::SIGTERM);
}

#[test]
fn health_checks_fail_over_and_back_and_metrics_count() {
    if !require_root() {
        return;
    }
    let mut lab = lab();
    let map = TempFile::new(
        "hc.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8080\", \"10.94.0.1:8081\"]\n",
    );
    let run = Running::start(
        &lab.proxy,
        &[
            bin(),
            "run",
            "-f",
            map.path(),
            "--health-check",
            "tcp",
            "--health-interval",
            "1s",
            "--metrics",
            "10.94.0.11:9100",
        ],
        &[],
    );
    let scrape = |lab: &Lab| {
        lab.client
            .exec_ok("curl -s --max-time 2 http://10.94.0.11:9100/metrics")
    };
    let flows = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("svcnat_flows_total{service=\"web\"} "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = flows(&scrape(&lab));
    let counts = answers(&lab.client, "10.94.0.11", 8080, 40);
    assert_eq!(counts.values().sum::<u32>(), 40, "{counts:?}");
    assert!(
        counts.contains_key("a") && counts.contains_key("b"),
        "{counts:?}"
    );
    let text = scrape(&lab);
    assert_eq!(flows(&text), before + 40, "{text}");
    assert!(
        text.contains("svcnat_target_up{service=\"web\",target=\"10.94.0.1:8080\"} 1"),
        "{text}"
    );
    // Every packet of those connections, per target (run --metrics switches accounting on).
    let sum = |metric: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{service=\"web\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(sum("svcnat_packets_total") >= 40 * 6, "{text}");
    assert!(sum("svcnat_octets_total") >= 40 * 400, "{text}");

    // Backend "a" stops: within two intervals every new connection goes to "b".
    drop(lab._servers.remove(0));
    std::thread::sleep(Duration::from_millis(2500));
    let counts = answers(&lab.client, "10.94.0.11", 8080, 20);
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}\n{}", run.log());
    assert!(
        run.log().contains("target 10.94.0.1:8080 is down"),
        "{}",
        run.log()
    );
    assert!(
        scrape(&lab)
            .contains("svcnat_target_in_rotation{service=\"web\",target=\"10.94.0.1:8080\"} 0")
    );

    // It comes back: back in rotation within two intervals.
    lab._servers.push(lab.host.spawn(&[
        "python3",
        &helper("netsvc.py"),
        "http",
        "10.94.0.1",
        "8080",
        "a",
    ]));
    wait_port(&lab.host, "10.94.0.1:8080", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(2500));
    let counts = answers(&lab.client, "10.94.0.11", 8080, 40);
    assert!(
        counts.contains_key("a") && counts.contains_key("b"),
        "{counts:?}"
    );

    // Both down: fail open, keep both, and say so.
    lab._servers.clear();
    run.wait_log(
        "every target of service web is down: keeping them all (fail open)",
        Duration::from_secs(4),
    );
    run.signal(libc::SIGTERM);
}

#[test]
fn as_pid_1_it_reaps_orphans() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let run = Running::start(
        &lab.proxy,
        &[
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            bin(),
            "run",
            "--forward",
            "8080:10.94.0.1:8080",
        ],
        &[],
    );
    let children = |pid: i32| -> Vec<i32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let pid1 = children(run.proc.pid() as i32)[0];
    // A shell in svcnat's PID namespace leaves a short sleep behind: the orphan is
    // re-parented to PID 1, svcnat, which must reap it when it exits.
    // (Its output goes to /dev/null, or waiting for this command would wait for it.)
    must(&format!(
        "nsenter --target {pid1} --pid -- sh -c 'sleep 0.3 </dev/null >/dev/null 2>&1 & exit 0'"
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        children(pid1).len(),
        1,
        "the orphan should be svcnat's child now"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        children(pid1),
        Vec::<i32>::new(),
        "a zombie was left unreaped"
    );
    unsafe { libc::kill(pid1, libc::SIGTERM) };
    run.wait_log("removed svcnat's rules", Duration::from_secs(2));
}

/// How long until `ns` holds svcnat's table again, polled without a process per look.
fn table_back_within(ns: &Netns, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if ns.exec("nft list table inet svcnat").status.success() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "table not back within {timeout:?}"
        );
    }
}

#[test]
fn run_puts_its_table_back_after_a_flush_a_delete_or_a_hand_edit() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let map = TempFile::new(
        "heal.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8080\"]\n",
    );
    let run = Running::start(&lab.proxy, &[bin(), "run", "-f", map.path()], &[]);
    let url = "http://10.94.0.11:8080";
    assert_eq!(get(&lab.client, url).as_deref(), Some("a"));
    // Another program's table in the same namespace: svcnat's repairs never touch it.
    lab.proxy
        .exec_ok("nft add table ip other && nft add chain ip other c");

    // A firewall reload.
    lab.proxy.exec_ok("nft flush ruleset");
    let took = table_back_within(&lab.proxy, Duration::from_secs(2));
    run.wait_log("was changed by nft (pid", Duration::from_secs(2));
    run.wait_log("repaired", Duration::from_secs(2));
    assert_eq!(get(&lab.client, url).as_deref(), Some("a"), "{}", run.log());
    eprintln!("back after `nft flush ruleset` within {took:?}");

    // The table deleted by name.
    lab.proxy.exec_ok("nft delete table inet svcnat");
    table_back_within(&lab.proxy, Duration::from_secs(2));
    assert_eq!(get(&lab.client, url).as_deref(), Some("a"));

    // One map element deleted by hand: drift, put back.
    let rules = || without_generation(&without_counters(&lab.proxy.ruleset()));
    let before = rules();
    lab.proxy
        .exec_ok("nft delete element inet svcnat dnat-port4 { tcp . 8080 }");
    eventually(&lab.client, url, "a", Duration::from_secs(2));
    let start = Instant::now();
    while rules() != before {
        assert!(start.elapsed() < Duration::from_secs(2), "{}", run.log());
    }
    assert_eq!(
        run.log().matches("INFO repaired").count(),
        3,
        "{}",
        run.log()
    );
    // svcnat's own reloads are not repairs.
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8081\"]\n",
    )
    .unwrap();
    eventually(&lab.client, url, "b", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        run.log().matches("INFO repaired").count(),
        3,
        "{}",
        run.log()
    );
    let history = svcnat_ok(&["history", "--netns", &lab.proxy.name]);
    assert_eq!(history.matches("repair").count(), 3, "{history}");
    // A second run for the same table stops at once, saying why.
    let (code, _, err) = svcnat(&["run", "-f", map.path(), "--netns", &lab.proxy.name]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("another `svcnat run` keeps table inet svcnat"),
        "{err}"
    );
    run.signal(libc::SIGTERM);
}

#[test]
fn with_owner_nobody_else_can_change_the_table_and_it_goes_with_run() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let map = TempFile::new(
        "owner.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8080\"]\n",
    );
    let run = Running::start(
        &lab.proxy,
        &[bin(), "run", "-f", map.path(), "--owner"],
        &[],
    );
    let url = "http://10.94.0.11:8080";
    assert_eq!(get(&lab.client, url).as_deref(), Some("a"));
    assert!(
        lab.proxy.ruleset().contains("flags owner"),
        "{}",
        lab.proxy.ruleset()
    );
    // A firewall reload passes it over: nothing to repair, no gap.
    lab.proxy.exec_ok("nft flush ruleset");
    assert!(
        lab.proxy
            .exec("nft list table inet svcnat")
            .status
            .success()
    );
    let o = lab.proxy.exec("nft delete table inet svcnat");
    assert!(!o.status.success(), "the kernel must refuse");
    assert_eq!(get(&lab.client, url).as_deref(), Some("a"));
    // Reads still work from other processes.
    let shown = svcnat_ok(&["show", "--netns", &lab.proxy.name]);
    assert!(shown.contains("web"), "{shown}");
    // A reload is committed by the owner.
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8081\"]\n",
    )
    .unwrap();
    eventually(&lab.client, url, "b", Duration::from_secs(3));
    assert!(!run.log().contains("repair"), "{}", run.log());
    // Killed, it takes its table with it.
    run.signal(libc::SIGKILL);
    let start = Instant::now();
    while lab
        .proxy
        .exec("nft list table inet svcnat")
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "table left behind"
        );
    }
}

#[test]
fn a_name_that_does_not_resolve_yet_is_waited_for_not_a_restart_loop() {
    if !require_root() {
        return;
    }
    let lab = lab();
    // A private /etc/hosts for run (its own mount namespace), without the name at first.
    let hosts = TempFile::new("hosts", "127.0.0.1 localhost\n");
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} run --forward 8080:later.test:8080",
        hosts.path(),
        bin()
    );
    let path = hosts.path().to_owned();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // Written in place: the bind mount shows the same file.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "10.94.0.1 later.test").unwrap();
    });
    let run = Running::start(&lab.proxy, &["unshare", "-m", "sh", "-c", &script], &[]);
    writer.join().unwrap();
    let log = run.log();
    assert!(
        log.contains("cannot resolve host \"later.test\"") && log.contains("retrying in 0.5s"),
        "{log}"
    );
    assert_eq!(
        get(&lab.client, "http://10.94.0.11:8080").as_deref(),
        Some("a")
    );
    run.signal(libc::SIGTERM);
}

#[test]
fn the_log_names_each_service_at_start_and_each_change_with_why() {
    if !require_root() {
        return;
    }
    let lab = lab();
    let map = TempFile::new(
        "logs.toml",
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8080\"]\n",
    );
    let run = Running::start(&lab.proxy, &[bin(), "run", "-f", map.path()], &[]);
    run.wait_log(
        "INFO service web tcp/*:8080 -> 10.94.0.1:8080",
        Duration::from_secs(2),
    );
    std::fs::write(
        &map.0,
        "[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.94.0.1:8081\"]\n\n[[service]]\nname = \"api\"\nlisten = \"9090\"\ntargets = [\"10.94.0.2:8080\"]\n",
    )
    .unwrap();
    run.signal(libc::SIGHUP);
    run.wait_log(
        "service web: targets 10.94.0.1:8080 -> 10.94.0.1:8081 (SIGHUP)",
        Duration::from_secs(3),
    );
    run.wait_log(
        "service added (SIGHUP): api tcp/*:9090",
        Duration::from_secs(3),
    );
    run.signal(libc::SIGTERM);
    run.wait_log("removed svcnat's rules", Duration::from_secs(3));
    drop(run); // waited for: its mark in the namespace goes with it

    // The same events as JSON lines.
    let run = Running::start_until(
        &lab.proxy,
        &[bin(), "run", "-f", map.path(), "--log-format", "json"],
        &[],
        "\"message\":\"applied",
    );
    run.signal(libc::SIGTERM);
    run.wait_log("removed svcnat's rules", Duration::from_secs(3));
    for line in run.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            v["time"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn its_own_big_commit_is_not_taken_for_someone_elses_change() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("bigown");
    // 5,000 elements: more notifications than the monitor's socket holds (ENOBUFS).
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"172.29.{}.{}:80\"\ntargets = [\"10.94.0.2:8080\"]\n",
            i / 256,
            i % 256
        ));
    }
    let map = TempFile::new("bigown.toml", &text);
    let run = Running::start(&ns, &[bin(), "run", "-f", map.path()], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!run.log().contains("re-installing"), "{}", run.log());
    // Someone else's change is still seen, lost notifications or not.
    ns.exec_ok("nft delete table inet svcnat");
    run.wait_log("re-installing it", Duration::from_secs(6));
    run.signal(libc::SIGTERM);
}
