//! The command line as users meet it: help texts, map sources, and the message and exit
//! code of every kind of mistake. No root needed.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn help_documents_exit_codes_and_examples() {
    let out = svcnat_ok(&["--help"]);
    assert!(
        out.contains("Exit codes:") && out.contains("2  invalid input"),
        "{out}"
    );
    assert!(
        out.contains("svcnat apply  -f map.toml --netns proxy1"),
        "{out}"
    );
    for cmd in ["render", "check", "apply", "flush", "show"] {
        let out = svcnat_ok(&[cmd, "--help"]);
        assert!(
            out.contains("Exit codes"),
            "{cmd} --help lacks exit codes:\n{out}"
        );
    }
    let (code, _, err) = svcnat(&["frobnicate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn check_summarises_a_valid_map() {
    let out = svcnat_ok(&["check", "-f", "rulesets/host-ports.toml"]);
    assert!(
        out.contains("web1 tcp/*:8081 -> 172.18.0.2:8000 (masquerade, localhost)"),
        "{out}"
    );
    assert!(
        out.contains("web-vip tcp/172.18.1.1:8083 -> 172.18.0.2:8000, 172.18.0.3:8000"),
        "{out}"
    );
    assert!(out.contains("ok: 3 service(s), table inet svcnat"), "{out}");
    let quiet = svcnat_ok(&["check", "-q", "-f", "rulesets/host-ports.toml"]);
    assert_eq!(quiet, "ok: 3 service(s), table inet svcnat\n");
}

#[test]
fn map_from_env_and_stdin() {
    let (code, out, err) = svcnat_env(&["check"], &[("SVCNAT_MAP", "rulesets/host-ports.toml")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 3 service(s)"));
    let mut c = Command::new(bin())
        .args(["check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"[[service]]\nname=\"x\"\nlisten=\"1\"\ntargets=[\"10.0.0.1:1\"]\nbogus=1\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("-:5:1: service[1].bogus: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn missing_map_says_how_to_name_one() {
    let (code, _, err) = svcnat(&["check", "-f", "/nonexistent/map.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read service map /nonexistent/map.toml"),
        "{err}"
    );
    assert!(err.contains("fix: pass the map with -f FILE"), "{err}");
}

#[test]
fn every_mistake_is_located_named_and_fixable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = [\"10.0.0.2:80\"]\nprotocl = \"udp\"\n",
            ":5:1: service[1].protocl: unknown field `protocl`",
            "did you mean `protocol`? Allowed here: name, listen, protocol",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\nprotocol = \"sctp\"\ntargets = [\"10.0.0.2:80\"]\n",
            ":4:12: service[1].protocol: unknown protocol \"sctp\"",
            "use \"tcp\" or \"udp\"",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = [\"10.0.0.2:80\"]\n\n[[service]]\nname = \"b\"\nlisten = \"8080\"\ntargets = [\"10.0.0.3:80\"]\n",
            ":8:10: service[2].listen: *:8080/tcp is already taken by service \"a\" (line 3)",
            "each listen address, port and protocol belongs to one service",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = [\"10.0.0.2:80\"]\n[[service]]\nname = \"a\"\nlisten = \"8081\"\ntargets = [\"10.0.0.2:80\"]\n",
            "service[2].name: service name \"a\" is already used",
            "give every service a unique name",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = [\"no-such-host.invalid:80\"]\n",
            ":4:12: service[1].targets[1]: cannot resolve host \"no-such-host.invalid\"",
            "--add-host no-such-host.invalid=IP",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = [{ address = \"10.0.0.2:80\", weight = 0 }]\n",
            ":4:12: service[1].targets[1].weight: weight 0 is out of range",
            "from 1 to 100",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"10.0.0.1:8080\"\ntargets = [\"[fd00::2]:80\"]\n",
            "has no IPv4 address",
            "does not translate between IPv4 and IPv6",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"8080\"\ntargets = \"10.0.0.2:80\"\n",
            ":4:11: service[1].targets: `targets` must be an array of targets, not a string",
            "write targets = [\"HOST:PORT\"]",
        ),
        ("[[service]\n", ":1:", "correct the TOML syntax"),
    ];
    for (i, (text, message, fix)) in cases.iter().enumerate() {
        let map = TempFile::new(&format!("case{i}.toml"), text);
        let path = map.path().to_owned();
        let (code, out, err) = svcnat(&["apply", "-f", &path, "--netns", "svt-never-reached"]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(out.is_empty(), "case {i}: {out}");
        assert!(
            err.contains(&format!("{path}{message}")) || err.contains(message),
            "case {i}: {err}"
        );
        assert!(err.contains(fix), "case {i}: no fix in {err}");
        // Input errors are found before the namespace is even opened.
        assert!(!err.contains("svt-never-reached"), "case {i}: {err}");
    }
}

#[test]
fn diff_tells_a_runtime_error_from_a_difference() {
    // A namespace that is not there: a runtime error, 3 (1 is "differs", 2 bad input).
    let (code, _, err) = svcnat(&[
        "diff",
        "-f",
        "rulesets/host-ports.toml",
        "--netns",
        "svt-not-there",
    ]);
    assert_eq!(code, 3, "{err}");
    let (code, _, _) = svcnat(&[
        "diff",
        "-f",
        "rulesets/nope.toml",
        "--netns",
        "svt-not-there",
    ]);
    assert_eq!(code, 2);
}

#[test]
fn bad_flags_are_usage_errors() {
    let (code, _, err) = svcnat(&[
        "render",
        "-f",
        "rulesets/host-ports.toml",
        "--add-host",
        "nohost",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("expected NAME=IP"), "{err}");
    let (code, _, err) = svcnat(&["render", "-f", "rulesets/host-ports.toml", "--format", "pf"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = svcnat(&["apply", "-f", "rulesets/host-ports.toml", "--netns", "a/b"]);
    assert_eq!(code, 2);
    assert!(err.contains("give a name under /run/netns"), "{err}");
}

#[test]
fn iptables_render_notes_left_out_ipv6_services() {
    let (code, out, err) = svcnat(&[
        "render",
        "-f",
        "rulesets/dual-stack.toml",
        "--format",
        "iptables",
    ]);
    assert_eq!(code, 0);
    assert!(
        err.contains("2 IPv6 service(s) left out; render them with --format ip6tables"),
        "{err}"
    );
    assert!(
        out.contains("SVCNAT-S-ingest") && !out.contains("api6"),
        "{out}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    let bash = svcnat_ok(&["completions", "bash"]);
    assert!(
        bash.contains("_svcnat()")
            && bash.contains("rollback")
            && bash.contains("--conntrack-cleanup")
    );
    let checked = std::process::Command::new("bash")
        .args(["-n", "-c", &bash])
        .status()
        .unwrap();
    assert!(checked.success(), "bash -n rejects the completions");
    let man = svcnat_ok(&["completions", "man"]);
    assert!(
        man.contains(".TH svcnat") && man.contains(".SH NAME"),
        "{man}"
    );
    let version = svcnat_ok(&["--version"]);
    assert!(version.contains("(libnftnl 1."), "{version}");
}
