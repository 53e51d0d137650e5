//! Incremental apply: a change to one service of many is a handful of messages, and
//! connections through the other services never notice.

mod common;
use common::*;
use std::fmt::Write as _;
use std::io::BufRead;
use std::time::Duration;

/// A map of `n` virtual-IP services; service `changed` (if any) gets another target.
fn big_map(n: u32, changed: Option<u32>, extra: bool) -> String {
    let mut m = String::new();
    for i in 0..n {
        let (a, b) = ((i >> 8) & 255, i & 255);
        let target = if Some(i) == changed {
            format!("10.9.{a}.{b}:9090")
        } else {
            format!("10.8.{a}.{b}:8080")
        };
        let _ = write!(
            m,
            "[[service]]\nname = \"s{i}\"\nlisten = \"172.30.{a}.{b}:{}\"\ntargets = [\"{target}\"]\n",
            80 + (i >> 16)
        );
    }
    if extra {
        m.push_str("[[service]]\nname = \"extra\"\nlisten = \"172.31.0.1:80\"\ntargets = [\"10.7.0.1:80\"]\n");
    }
    m
}

fn messages(out: &str) -> usize {
    let at = out.find(" netlink messages").expect("summary line");
    out[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn one_change_in_fifty_thousand_services_is_a_handful_of_messages() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("inc50k");
    let n = 50_000;
    let full = TempFile::new("50k.toml", &big_map(n, None, false));
    let out = svcnat_ok(&["apply", "-f", full.path(), "--netns", &ns.name]);
    assert!(out.contains("table created"), "{out}");
    // 50,000 one-target services are elements of one DNAT map: a few dozen messages.
    assert!(messages(&out) < 100, "{out}");

    // One service's target changes: its element is replaced, nothing else is sent.
    let one = TempFile::new("50k-one.toml", &big_map(n, Some(31_337), false));
    let (code, out, err) = svcnat(&["apply", "-f", one.path(), "--netns", &ns.name, "--verbose"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("updated in place"), "{out}");
    assert_eq!(messages(&out), 4, "{out}\n{err}");
    assert!(
        err.contains("delete") && err.contains("add") && err.contains("map dnat-vip4"),
        "{err}"
    );

    // One service added, then removed again.
    let plus = TempFile::new("50k-plus.toml", &big_map(n, Some(31_337), true));
    let out = svcnat_ok(&["apply", "-f", plus.path(), "--netns", &ns.name]);
    assert!(
        out.contains("updated in place") && messages(&out) <= 5,
        "{out}"
    );
    let out = svcnat_ok(&["apply", "-f", one.path(), "--netns", &ns.name]);
    assert!(
        out.contains("updated in place") && messages(&out) <= 5,
        "{out}"
    );

    // And the kernel holds exactly that map.
    let (code, diff, _) = svcnat(&["diff", "-f", one.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{diff}");

    // A second target moves the service into the map of two slots (a new map, so a full
    // apply), and back again.
    let two = big_map(n, Some(31_337), false).replace(
        "targets = [\"10.9.122.105:9090\"]",
        "targets = [\"10.9.122.105:9090\", \"10.9.122.106:9090\"]",
    );
    let two = TempFile::new("50k-two.toml", &two);
    svcnat_ok(&["apply", "-f", two.path(), "--netns", &ns.name]);
    let slots = ns.exec_ok("nft list map inet svcnat dnat-vip4-n2");
    assert!(
        slots.contains(". 0 comment \"s31337\" : 10.9.122.105 . 9090")
            && slots.contains(". 1 : 10.9.122.106 . 9090"),
        "{slots}"
    );
    let (code, diff, _) = svcnat(&["diff", "-f", two.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{diff}");
    svcnat_ok(&["apply", "-f", one.path(), "--netns", &ns.name]);
    let (code, diff, _) = svcnat(&["diff", "-f", one.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{diff}");
    assert!(!ns.ruleset().contains("dnat-vip4-n2"));
}

#[test]
fn a_long_lived_stream_keeps_flowing_across_an_incremental_apply() {
    if !require_root() {
        return;
    }
    let host = Netns::new("sh");
    let client = Netns::new("sc");
    let proxy = Netns::new("sp");
    bridge(&host, "br0", "10.96.0.1/24");
    wire(&host, "vc", Some("br0"), &client, "10.96.0.10/24");
    wire(&host, "vp", Some("br0"), &proxy, "10.96.0.11/24");
    let _echo = host.spawn(&["python3", &helper("netsvc.py"), "echo", "10.96.0.1", "5201"]);
    wait_port(&host, "10.96.0.1:5201", Duration::from_secs(10));
    let map = |other_target: &str| {
        TempFile::new(
            "stream.toml",
            &format!(
                "[[service]]\nname = \"stream\"\nlisten = \"5201\"\ntargets = [\"10.96.0.1:5201\"]\n\n\
                 [[service]]\nname = \"other\"\nlisten = \"8080\"\ntargets = [\"{other_target}\"]\n"
            ),
        )
    };
    let before = map("10.96.0.1:8080");
    svcnat_ok(&["apply", "-f", before.path(), "--netns", &proxy.name]);

    let mut stream = client.spawn(&[
        "python3",
        &helper("netsvc.py"),
        "stream",
        "10.96.0.11",
        "5201",
        "3",
    ]);
    let mut out = std::io::BufReader::new(stream.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    // Mid-stream: the other service changes target.
    let after = map("10.96.0.1:9090");
    let out_apply = svcnat_ok(&["apply", "-f", after.path(), "--netns", &proxy.name]);
    assert!(out_apply.contains("updated in place"), "{out_apply}");

    let status = stream.child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(stream.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "the stream broke across the apply: {err}");
    assert!(rest.starts_with("streamed "), "{rest}");
}
