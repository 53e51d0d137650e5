//! The incremental apply (`quick`): when a few sections of the map changed and nobody else
//! committed in the namespace since svcnat's last apply, only those sections are parsed and
//! sent. Everything it does not cover falls back to the full apply, whose answer — rules or
//! error — is the one the user gets.

mod common;
use common::*;

const QUICK: &str = "only the changed sections of the map were read";

/// `n` virtual-IP services `s0`…; `edit` may rewrite any one's section (None: drop it).
fn map(n: u32, edit: impl Fn(u32, String) -> Option<String>) -> String {
    let mut m = String::from("# services of the quick tests\n[settings]\ntable = \"svcnat\"\n\n");
    for i in 0..n {
        let section = format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"172.30.{}.{}:80\"\ntargets = [\"10.8.{}.{}:8080\"]\n",
            i / 256,
            i % 256,
            i / 256,
            i % 256
        );
        if let Some(s) = edit(i, section) {
            m.push_str(&s);
        }
    }
    m
}

fn plain(n: u32) -> String {
    map(n, |_, s| Some(s))
}

/// Service `at` sent to another target.
fn retarget(n: u32, at: u32) -> String {
    map(n, |i, s| {
        Some(if i == at {
            s.replace(":8080\"]", ":9090\"]")
        } else {
            s
        })
    })
}

/// `svcnat apply -v`; (exit code, stdout, stderr).
fn apply(file: &TempFile, ns: &Netns) -> (i32, String, String) {
    svcnat(&["apply", "-f", file.path(), "--netns", &ns.name, "-v"])
}

/// Apply, which must succeed; whether it went by the changed sections alone.
fn apply_quick(file: &TempFile, ns: &Netns) -> bool {
    let (code, out, err) = apply(file, ns);
    assert_eq!(code, 0, "{out}\n{err}");
    out.contains(QUICK)
}

/// The kernel holds exactly `file`'s map.
fn assert_installed(file: &TempFile, ns: &Netns) {
    let (code, out, err) = svcnat(&["diff", "-f", file.path(), "--netns", &ns.name]);
    assert_eq!(
        code,
        0,
        "the kernel differs from {}:\n{out}\n{err}",
        file.path()
    );
}

/// The target of the element keyed by `vip` in dnat-vip4, as the kernel lists it
/// (`VIP . tcp . 80 comment "NAME" : ADDR . PORT`).
fn element(ns: &Netns, vip: &str) -> String {
    let list = ns.exec_ok("nft list map inet svcnat dnat-vip4");
    let at = list
        .find(&format!("{vip} . tcp . 80 "))
        .unwrap_or_else(|| panic!("no element for {vip}:\n{list}"));
    let value = list[at..].split(" : ").nth(1).unwrap();
    let value = value.split([',', '\n', '}']).next().unwrap().trim();
    value.replace(" . ", ":")
}

/// This namespace's state directory (each holds a `netns` file with its name).
fn state_dir(ns: &Netns) -> std::path::PathBuf {
    std::fs::read_dir(state_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("netns")).is_ok_and(|l| l == ns.name))
        .expect("a state directory for the namespace")
}

#[test]
fn a_changed_target_is_sent_alone_and_rolls_back() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick1");
    let before = TempFile::new("q-before.toml", &plain(600));
    let after = TempFile::new("q-after.toml", &retarget(600, 300));
    assert!(!apply_quick(&before, &ns), "the first apply is a full one");

    let (code, out, err) = apply(&after, &ns);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(QUICK), "{err}");
    assert!(
        out.contains("4 netlink messages, incremental path"),
        "{out}"
    );
    assert_eq!(element(&ns, "172.30.1.44"), "10.8.1.44:9090");
    assert_eq!(element(&ns, "172.30.1.45"), "10.8.1.45:8080");
    assert_installed(&after, &ns);

    // Recorded like any generation: history lists it, and rollback restores the one before.
    let history = svcnat_ok(&["history", "--netns", &ns.name]);
    assert!(
        history.contains("q-after.toml") && history.contains("q-before.toml"),
        "{history}"
    );
    svcnat_ok(&["rollback", "--netns", &ns.name]);
    assert_eq!(element(&ns, "172.30.1.44"), "10.8.1.44:8080");
    assert_installed(&before, &ns);

    // The rollback was a commit the index did not see: the next apply is a full one again,
    // and then they are quick once more.
    assert!(!apply_quick(&after, &ns));
    assert!(apply_quick(&before, &ns));
    assert_installed(&before, &ns);
}

#[test]
fn sections_added_and_removed_anywhere() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick2");
    let first = TempFile::new("q-first.toml", &plain(400));
    assert!(!apply_quick(&first, &ns));
    let extra =
        "[[service]]\nname = \"new\"\nlisten = \"172.31.0.1:80\"\ntargets = [\"10.7.0.1:80\"]\n";
    // Each step changes one place of the map before it: the changed sections are the ones
    // between the first and the last difference.
    let steps = [
        map(400, |i, s| {
            Some(if i == 0 { format!("{extra}{s}") } else { s })
        }),
        plain(400),
        map(400, |i, s| {
            Some(if i == 200 { format!("{extra}{s}") } else { s })
        }),
        plain(400),
        plain(400) + extra,
        plain(400),
        map(400, |i, s| (i != 123).then_some(s)),
        plain(400),
        map(400, |i, s| {
            Some(if i == 7 || i == 8 {
                s.replace(":8080", ":8081")
            } else {
                s
            })
        }),
        plain(400),
    ];
    for (n, text) in steps.iter().enumerate() {
        let file = TempFile::new("q-step.toml", text);
        assert!(apply_quick(&file, &ns), "step {n} took the full path");
        assert_installed(&file, &ns);
    }
}

#[test]
fn a_commit_by_anyone_else_means_a_full_apply() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick3");
    let before = TempFile::new("q3-before.toml", &plain(300));
    let after = TempFile::new("q3-after.toml", &retarget(300, 100));
    assert!(!apply_quick(&before, &ns));

    // Someone else's table: the ruleset moved on, svcnat reads its own table back.
    ns.exec_ok("nft add table inet someone-else");
    assert!(!apply_quick(&after, &ns));
    assert_installed(&after, &ns);

    // A hand edit of svcnat's own map is found and undone by the full apply.
    ns.exec_ok("nft delete element inet svcnat dnat-vip4 '{ 172.30.0.5 . tcp . 80 }'");
    assert!(!apply_quick(&before, &ns));
    assert_eq!(element(&ns, "172.30.0.5"), "10.8.0.5:8080");
    assert_installed(&before, &ns);
    assert!(ns.exec_ok("nft list tables").contains("someone-else"));

    // A damaged index is ignored.
    let index = state_dir(&ns).join("index");
    assert!(index.exists());
    std::fs::write(&index, b"SVCNATIX, torn").unwrap();
    assert!(!apply_quick(&after, &ns));
    assert_installed(&after, &ns);
}

#[test]
fn mistakes_in_a_changed_section_get_the_full_check() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick4");
    let good = TempFile::new("q4-good.toml", &plain(300));
    assert!(!apply_quick(&good, &ns));
    let kernel_before = ns.ruleset();

    let cases = [
        // a name another (unchanged) service has
        (
            map(300, |i, s| {
                Some(if i == 200 {
                    s.replace("\"s200\"", "\"s10\"")
                } else {
                    s
                })
            }),
            "service name \"s10\" is already used by the service at line",
        ),
        // a listen address another service has
        (
            map(300, |i, s| {
                Some(if i == 200 {
                    s.replace("172.30.0.200:80", "172.30.0.10:80")
                } else {
                    s
                })
            }),
            "172.30.0.10:80/tcp is already taken by service \"s10\"",
        ),
        // broken syntax
        (
            map(300, |i, s| {
                Some(if i == 200 {
                    s.replace("targets = [", "targets = [[")
                } else {
                    s
                })
            }),
            "service[201]",
        ),
    ];
    for (text, want) in cases {
        let bad = TempFile::new("q4-bad.toml", &text);
        let (code, out, err) = apply(&bad, &ns);
        assert_eq!(code, 2, "{out}\n{err}");
        assert!(err.contains(want), "wanted {want:?} in:\n{err}");
        assert!(err.contains(bad.path()), "the error names the file:\n{err}");
        assert_eq!(
            ns.ruleset(),
            kernel_before,
            "an invalid map changed the kernel"
        );
    }
    // Nothing was committed: the next valid change is quick.
    let fixed = TempFile::new("q4-fixed.toml", &retarget(300, 200));
    assert!(apply_quick(&fixed, &ns));
    assert_installed(&fixed, &ns);
}

#[test]
fn changes_it_does_not_cover_go_the_full_way() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick5");
    let one = TempFile::new("q5-one.toml", &plain(200));
    assert!(!apply_quick(&one, &ns));

    // A second target puts the service in a map of two slots that is not there yet: the
    // full apply adds it.
    let two = TempFile::new(
        "q5-two.toml",
        &map(200, |i, s| {
            Some(if i == 50 {
                s.replace("\"]", "\", \"10.8.9.9:8080\"]")
            } else {
                s
            })
        }),
    );
    // The table is updated in place all the same: the map, its lookup rules, the elements.
    let in_place = |file: &TempFile| {
        let (code, out, err) = apply(file, &ns);
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.contains(QUICK) && out.contains("updated in place"),
            "{out}\n{err}"
        );
    };
    in_place(&two);
    assert!(
        ns.exec_ok("nft list map inet svcnat dnat-vip4-n2")
            .contains("172.30.0.50 . tcp . 80 . 1 : 10.8.9.9 . 8080")
    );
    assert_installed(&two, &ns);
    // ... and undoing it too (the map of two slots goes: the index knows s50 was in it).
    in_place(&one);
    assert_installed(&one, &ns);
    assert!(!ns.ruleset().contains("dnat-vip4-n2"));

    // Settings are not in any service's section: changing them is a full apply.
    let settings = TempFile::new(
        "q5-settings.toml",
        &plain(200).replace("[settings]\n", "[settings]\nmasquerade = true\n"),
    );
    assert!(!apply_quick(&settings, &ns));
    assert_installed(&settings, &ns);

    // Settings after the services would apply to every one of them: no index for that.
    let late = TempFile::new(
        "q5-late.toml",
        &(plain(200).replace("[settings]\ntable = \"svcnat\"\n", "")
            + "[settings]\ntable = \"svcnat\"\n"),
    );
    assert!(!apply_quick(&late, &ns));
    let late2 = TempFile::new(
        "q5-late2.toml",
        &(retarget(200, 3).replace("[settings]\ntable = \"svcnat\"\n", "")
            + "[settings]\ntable = \"svcnat\"\n"),
    );
    assert!(!apply_quick(&late2, &ns));
    assert_installed(&late2, &ns);
}

#[test]
fn ipv6_udp_and_port_services_change_by_section_too() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick6");
    let mixed = |port: u16| {
        let mut m = plain(100);
        m.push_str(&format!(
            "[[service]]\nname = \"v6\"\nlisten = \"[fd00::10]:53\"\nprotocol = \"udp\"\ntargets = [\"[fd00::1]:{port}\"]\n\
             [[service]]\nname = \"ports\"\nlisten = \"8080\"\ntargets = [\"10.9.0.1:{port}\"]\n"
        ));
        m
    };
    let first = TempFile::new("q6-first.toml", &mixed(5353));
    assert!(!apply_quick(&first, &ns));
    let second = TempFile::new("q6-second.toml", &mixed(5354));
    assert!(apply_quick(&second, &ns));
    assert_installed(&second, &ns);
    let v6 = ns.exec_ok("nft list map inet svcnat dnat-vip6");
    assert!(
        v6.contains("fd00::10 . udp . 53") && v6.contains("fd00::1 . 5354"),
        "{v6}"
    );
    let ports = ns.exec_ok("nft list map inet svcnat dnat-port4");
    assert!(ports.contains("10.9.0.1 . 5354"), "{ports}");
}

#[test]
fn balanced_services_change_by_their_slot_elements() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick7");
    // 20 services over two targets, one weighted 2:1 (three slots), among one-target ones.
    let balanced = |retarget: Option<(u32, &str)>| {
        map(200, |i, s| {
            Some(match i {
                0..20 => {
                    let second = match retarget {
                        Some((at, to)) if at == i => to.to_owned(),
                        _ => format!("10.9.0.{i}:8080"),
                    };
                    s.replace("\"]", &format!("\", \"{second}\"]"))
                }
                20 => s.replace(
                    "targets = [\"10.8.0.20:8080\"]",
                    "targets = [{ address = \"10.8.0.20:8080\", weight = 2 }, \"10.9.0.20:8080\"]",
                ),
                _ => s,
            })
        })
    };
    let first = TempFile::new("q7-first.toml", &balanced(None));
    assert!(!apply_quick(&first, &ns));
    assert_installed(&first, &ns);

    // One of the two targets of s7 changes: its two slots out, two in, and the generation.
    let moved = TempFile::new("q7-moved.toml", &balanced(Some((7, "10.7.7.7:7070"))));
    let (code, out, err) = apply(&moved, &ns);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(QUICK) && out.contains("4 netlink messages, incremental path"),
        "{out}\n{err}"
    );
    let n2 = ns.exec_ok("nft list map inet svcnat dnat-vip4-n2");
    assert!(
        n2.contains("172.30.0.7 . tcp . 80 . 0 comment \"s7\" : 10.8.0.7 . 8080")
            && n2.contains("172.30.0.7 . tcp . 80 . 1 : 10.7.7.7 . 7070")
            && !n2.contains("10.9.0.7 . 8080"),
        "{n2}"
    );
    assert_installed(&moved, &ns);

    // s8 weighted like s20: from the map of two slots into the one of three, by elements.
    let weighted = TempFile::new(
        "q7-weighted.toml",
        &balanced(None).replace(
            "targets = [\"10.8.0.8:8080\", \"10.9.0.8:8080\"]",
            "targets = [{ address = \"10.8.0.8:8080\", weight = 2 }, \"10.9.0.8:8080\"]",
        ),
    );
    assert!(apply_quick(&weighted, &ns));
    assert_installed(&weighted, &ns);
    let n3 = ns.exec_ok("nft list map inet svcnat dnat-vip4-n3");
    assert!(
        n3.contains("172.30.0.8 . tcp . 80 . 1 : 10.8.0.8 . 8080")
            && n3.contains("172.30.0.8 . tcp . 80 . 2 : 10.9.0.8 . 8080"),
        "{n3}"
    );
    assert!(
        !ns.exec_ok("nft list map inet svcnat dnat-vip4-n2")
            .contains("172.30.0.8 ")
    );

    // Back to one target: into the one-slot map.
    let single = TempFile::new(
        "q7-single.toml",
        &balanced(None).replace(
            "targets = [\"10.8.0.9:8080\", \"10.9.0.9:8080\"]",
            "targets = [\"10.8.0.9:8080\"]",
        ),
    );
    assert!(apply_quick(&single, &ns));
    assert_installed(&single, &ns);
    assert_eq!(element(&ns, "172.30.0.9"), "10.8.0.9:8080");
}

#[test]
fn localhost_services_change_by_their_elements_too() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("quick8");
    // Every tenth service is also reachable at 127.0.0.1:PORT: an element of lo4 as well.
    let local = |retarget: bool| {
        map(100, |i, s| {
            let s = match i % 10 {
                0 => s.replace(":80\"\n", &format!(":{}\"\nlocalhost = true\n", 1000 + i)),
                _ => s,
            };
            Some(match (i, retarget) {
                (30, true) => s.replace("10.8.0.30:8080", "10.7.0.30:7070"),
                _ => s,
            })
        })
    };
    let first = TempFile::new("q8-first.toml", &local(false));
    assert!(!apply_quick(&first, &ns));
    let moved = TempFile::new("q8-moved.toml", &local(true));
    assert!(apply_quick(&moved, &ns));
    assert_installed(&moved, &ns);
    let lo4 = ns.exec_ok("nft list map inet svcnat dnat-lo4");
    assert!(
        lo4.contains("tcp . 1030 comment \"s30\" : 10.7.0.30 . 7070"),
        "{lo4}"
    );
    assert!(apply_quick(&first, &ns));
    assert_installed(&first, &ns);
}
