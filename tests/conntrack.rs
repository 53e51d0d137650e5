//! Stale conntrack entries, proven with a UDP client that keeps sending: after a change
//! removes the target it was pinned to, its next datagrams reach the new target — and with
//! `--conntrack-cleanup off` they keep going to the old one (the problem being solved).

mod common;
use common::*;
use std::time::{Duration, Instant, SystemTime};

struct Lab {
    proxy: Netns,
    client: Netns,
    _targets: Vec<Netns>,
    _servers: Vec<Proc>,
}

/// The proxy holds bridge 10.77.0.1/24; the client is .10, targets "one" .2 and "two" .3,
/// each answering UDP :5353 with its name and accepting TCP :5353 (the health check).
fn lab() -> Lab {
    let proxy = Netns::new("ctp");
    let client = Netns::new("ctc");
    bridge(&proxy, "br0", "10.77.0.1/24");
    wire(&proxy, "vc", Some("br0"), &client, "10.77.0.10/24");
    let netsvc = helper("netsvc.py");
    let mut targets = Vec::new();
    let mut servers = Vec::new();
    for (i, name) in [(2, "one"), (3, "two")] {
        let t = Netns::new(&format!("ct{name}"));
        wire(
            &proxy,
            &format!("v{name}"),
            Some("br0"),
            &t,
            &format!("10.77.0.{i}/24"),
        );
        let addr = format!("10.77.0.{i}");
        servers.push(t.spawn(&["python3", &netsvc, "udpname", &addr, "5353", name]));
        servers.push(t.spawn(&["python3", &netsvc, "echo", &addr, "5353"]));
        wait_port(&t, &format!("{addr}:5353"), Duration::from_secs(10));
        targets.push(t);
    }
    Lab {
        proxy,
        client,
        _targets: targets,
        _servers: servers,
    }
}

fn map(targets: &[&str]) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}:5353\"")).collect();
    format!(
        "[[service]]\nname = \"dns\"\nlisten = \"10.77.0.1:5353\"\nprotocol = \"udp\"\ntargets = [{}]\n",
        list.join(", ")
    )
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Answers as (time, name), from a udpping run's output.
fn answers(out: &str) -> Vec<(f64, String)> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, n)| (t.parse().unwrap(), n.to_owned()))
        .collect()
}

/// Every datagram sent after `changed` (one send interval and more later) was answered,
/// and by `name` only.
fn only_answered_after(got: &[(f64, String)], changed: f64, name: &str, log: &str) {
    let after: Vec<&str> = got
        .iter()
        .filter(|(t, _)| *t > changed + 0.15)
        .map(|(_, n)| n.as_str())
        .collect();
    assert!(after.len() >= 5, "{got:?}\n{log}");
    assert!(
        after.iter().all(|n| *n == name),
        "not all {name}: {got:?}\n{log}"
    );
}

/// A UDP client sending every 100 ms for `secs`; `change` runs once answers flow and
/// returns when the change is in. Returns every answer and when the change returned.
fn ping_across(lab: &Lab, secs: f64, change: impl FnOnce()) -> (Vec<(f64, String)>, f64) {
    let mut ping = lab.client.spawn(&[
        "python3",
        &helper("netsvc.py"),
        "udpping",
        "10.77.0.1",
        "5353",
        &secs.to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(800));
    change();
    let changed = now();
    let out = ping.child.stdout.take().unwrap();
    let status = ping.child.wait().unwrap();
    assert!(status.success());
    let text = std::io::read_to_string(out).unwrap();
    (answers(&text), changed)
}

fn apply(lab: &Lab, targets: &[&str], extra: &[&str]) -> String {
    let file = TempFile::new("ct.toml", &map(targets));
    let mut args = vec!["apply", "-f", file.path(), "--netns", &lab.proxy.name];
    args.extend(extra);
    svcnat_ok(&args)
}

#[test]
fn a_udp_client_follows_a_changed_target_at_its_next_datagram() {
    if !require_root() {
        return;
    }
    let lab = lab();
    apply(&lab, &["10.77.0.2"], &[]);
    let (got, changed) = ping_across(&lab, 3.0, || {
        let out = apply(&lab, &["10.77.0.3"], &["-v"]);
        eprintln!("{out}");
        assert!(out.contains("deleted 1 stale conntrack entry"), "{out}");
    });
    assert!(
        got.iter().any(|(t, n)| *t < changed && n == "one"),
        "answers before the change came from one: {got:?}"
    );
    // The first datagram sent after the apply returned is answered by the new target.
    only_answered_after(&got, changed, "two", "");
}

#[test]
fn without_cleanup_the_client_stays_pinned_to_the_removed_target() {
    if !require_root() {
        return;
    }
    let lab = lab();
    apply(&lab, &["10.77.0.2"], &[]);
    let (got, changed) = ping_across(&lab, 2.5, || {
        let out = apply(&lab, &["10.77.0.3"], &["--conntrack-cleanup", "off"]);
        assert!(!out.contains("conntrack"), "{out}");
    });
    only_answered_after(&got, changed, "one", "");
    // A rollback to the target the client is pinned to keeps its entry: only entries of
    // targets a change removes go.
    let out = svcnat_ok(&["rollback", "--netns", &lab.proxy.name]);
    assert!(
        out.contains("deleted 0 stale conntrack entries (of 1 read"),
        "{out}"
    );
}

#[test]
fn a_health_failover_under_run_moves_the_client_within_an_interval() {
    if !require_root() {
        return;
    }
    let mut lab = lab();
    let file = TempFile::new("ct-run.toml", &map(&["10.77.0.2", "10.77.0.3"]));
    let run = Running::start(
        &lab.proxy,
        &[
            bin(),
            "run",
            "-f",
            file.path(),
            "--health-check",
            "tcp",
            "--health-interval",
            "300ms",
        ],
        &[],
    );
    let mut ping = lab.client.spawn(&[
        "python3",
        &helper("netsvc.py"),
        "udpping",
        "10.77.0.1",
        "5353",
        "4",
    ]);
    std::thread::sleep(Duration::from_millis(800));
    // The client is pinned to one target: fail that one's health check only (its UDP
    // server stays up, so without the cleanup the client would keep its answers).
    let (stdout, first) = {
        let out = ping.child.stdout.take().unwrap();
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        (r, line.split_whitespace().nth(1).unwrap().to_owned())
    };
    // Servers: [one udp, one tcp, two udp, two tcp].
    let tcp = if first == "one" { 1 } else { 3 };
    let failed_at = Instant::now();
    lab._servers.remove(tcp);
    let other = if first == "one" { "two" } else { "one" };
    run.wait_log("deleted 1 stale conntrack entry", Duration::from_secs(3));
    let moved = now();
    let healed = failed_at.elapsed();
    assert!(ping.child.wait().unwrap().success());
    let got = answers(&std::io::read_to_string(stdout).unwrap());
    only_answered_after(&got, moved, other, &run.log());
    eprintln!("failover with conntrack cleanup after {healed:?}");
    run.signal(libc::SIGTERM);
}
