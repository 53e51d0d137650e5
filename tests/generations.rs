//! Generations, rollback and concurrent writers, against a real kernel in throwaway
//! namespaces.

mod common;
use common::*;
use std::process::{Command, Stdio};

const A: &str = "rulesets/skupper-ingress.toml";
const B: &str = "rulesets/host-ports.toml";

fn table(ns: &Netns) -> String {
    without_counters(&ns.exec_ok("nft list table inet svcnat"))
}

fn history(ns: &Netns) -> serde_json::Value {
    serde_json::from_str(&svcnat_ok(&["history", "--netns", &ns.name, "--json"])).unwrap()
}

/// The rules of a table, without the bookkeeping element that names its generation.
fn rules(ns: &Netns) -> String {
    without_generation(&table(ns))
}

fn reasons(h: &serde_json::Value) -> Vec<(u64, String)> {
    h["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// apply A; apply B; rollback (A is back); flush; rollback: A again, the state the flush
/// removed — each step recorded with its reason, and the kernel's rules byte for byte.
#[test]
fn rollback_after_flush_reinstalls_what_the_flush_removed() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("rb");
    assert!(apply_map(A, &ns).contains("as generation 1"));
    let after_a = rules(&ns);
    assert!(apply_map(B, &ns).contains("as generation 2"));
    let after_b = rules(&ns);

    let out = svcnat_ok(&["rollback", "--netns", &ns.name]);
    assert!(out.contains("from generation 2 to generation 1"), "{out}");
    assert!(out.contains("recorded as generation 3"), "{out}");
    assert_eq!(
        rules(&ns),
        after_a,
        "rollback restores what apply A installed"
    );

    let out = svcnat_ok(&["flush", "--netns", &ns.name]);
    assert!(out.contains("recorded as generation 4"), "{out}");
    assert_eq!(ns.ruleset(), "");
    let out = svcnat_ok(&["rollback", "--netns", &ns.name]);
    assert!(
        out.contains("from nothing installed to generation 3"),
        "{out}"
    );
    assert_eq!(
        rules(&ns),
        after_a,
        "the flush removed A: rollback brings A back"
    );

    let h = history(&ns);
    assert_eq!(h["generation"], 5);
    assert_eq!(
        reasons(&h),
        [
            (1, "apply"),
            (2, "apply"),
            (3, "rollback"),
            (4, "flush"),
            (5, "rollback")
        ]
        .map(|(n, r)| (n, r.to_owned()))
    );
    let text = svcnat_ok(&["history", "--netns", &ns.name]);
    assert!(text.contains("reason"), "{text}");
    assert!(text.contains("flush"), "{text}");

    // Forward by number; a flush record is not something to install; unknown numbers.
    svcnat_ok(&["rollback", "--netns", &ns.name, "--to", "2"]);
    assert_eq!(rules(&ns), after_b);
    let (code, _, err) = svcnat(&["rollback", "--netns", &ns.name, "--to", "4"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("generation 4 is a flush"), "{err}");
    let (code, _, err) = svcnat(&["rollback", "--netns", &ns.name, "--to", "99"]);
    assert_eq!(code, 2);
    assert!(err.contains("generation 99 is not recorded"), "{err}");
    assert_eq!(rules(&ns), after_b, "refused rollbacks change nothing");
}

/// The same map applied five times is one generation: the four later applies find the
/// kernel holding it already, say so, and record nothing. `rollback` then goes to the
/// generation before, not to a copy of the one installed.
#[test]
fn identical_applies_record_one_generation() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("same");
    apply_map(B, &ns);
    let after_b = rules(&ns);
    apply_map(A, &ns);
    for _ in 0..4 {
        let out = apply_map(A, &ns);
        assert!(out.contains("unchanged"), "{out}");
        assert!(out.contains("generation 2"), "{out}");
    }
    let h = history(&ns);
    assert_eq!(reasons(&h).len(), 2, "{h}");
    let out = svcnat_ok(&["rollback", "--netns", &ns.name]);
    assert!(out.contains("from generation 2 to generation 1"), "{out}");
    assert_eq!(rules(&ns), after_b);
}

#[test]
fn the_table_says_which_generation_and_map_it_holds() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("meta");
    apply_map(B, &ns);
    let sum = must(&format!("xxh128sum {}", repo().join(B).display()));
    let sum = sum.split_whitespace().next().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&svcnat_ok(&["show", "--netns", &ns.name, "--json"])).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["digest"], format!("xxh128:{sum}"));
    // Recorded on the table itself: a fresh state directory still sees it.
    let elsewhere = std::env::temp_dir().join(format!("svcnat-empty-state-{}", std::process::id()));
    let out = must(&format!(
        "SVCNAT_STATE_DIR={} {} show --netns {}",
        elsewhere.display(),
        bin(),
        ns.name
    ));
    assert!(
        out.contains(&format!("generation 1, map xxh128:{sum}")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn the_last_ten_generations_are_kept_as_whole_files() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("keep");
    for i in 0..12 {
        apply_map(if i % 2 == 0 { A } else { B }, &ns);
    }
    let h = history(&ns);
    let numbers: Vec<u64> = h["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (3..=12).collect::<Vec<_>>());
    assert_eq!(h["generation"], 12);
    // Every file is complete JSON with the resolved plan; no temporary file is left.
    let dirs = must(&format!(
        "grep -lx {} {}/*/netns",
        ns.name,
        state_root().display()
    ));
    let dir = std::path::Path::new(dirs.trim())
        .parent()
        .unwrap()
        .to_path_buf();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.iter().all(|f| !f.contains(".tmp")), "{files:?}");
    let g12: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("gen-000012.json")).unwrap()).unwrap();
    assert_eq!(g12["plan"]["services"][0]["name"], "web1");
    assert_eq!(
        g12["plan"]["services"][0]["targets"][0]["addr"],
        "172.18.0.2:8000"
    );
}

#[test]
fn twenty_concurrent_writers_leave_exactly_one_map() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("race");
    let reference_a = Netns::new("refa");
    let reference_b = Netns::new("refb");
    apply_map(A, &reference_a);
    apply_map(B, &reference_b);
    // Generation numbers differ from the references (1 there, 20 here); the rest must not.
    // Generation numbers differ from the references (1 there, 20 here); the rest must not.
    let (ta, tb) = (
        without_generation(&table(&reference_a)),
        without_generation(&table(&reference_b)),
    );

    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(bin())
                .args([
                    "apply",
                    "-f",
                    if i % 2 == 0 { A } else { B },
                    "--add-host",
                    ADD_HOST,
                    "--netns",
                    &ns.name,
                ])
                .current_dir(repo())
                .env("SVCNAT_STATE_DIR", state_root())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut waited = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "a concurrent apply failed: {err}");
        waited += err.matches("svcnat: waiting: another svcnat (pid").count();
    }
    let now = without_generation(&table(&ns));
    assert!(
        now == ta || now == tb,
        "the kernel holds neither map exactly:\n{now}"
    );
    assert!(
        waited > 0,
        "20 simultaneous writers never had to wait for the lock"
    );
    // Every apply that changed the kernel recorded one generation, the last of them is
    // installed, and an apply that found its map installed recorded nothing.
    let h = history(&ns);
    let newest = h["generations"].as_array().unwrap().last().unwrap()["generation"].clone();
    assert_eq!(h["generation"], newest, "{h}");
    assert!(newest.as_u64().unwrap() <= 20, "{h}");
}

#[test]
fn a_change_by_someone_else_between_read_and_commit_is_not_overwritten() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("stale");
    // svcnat reads the ruleset, then (debug hook) pauses before committing; meanwhile nft
    // changes the ruleset. The kernel must refuse svcnat's batch (stale generation id),
    // and svcnat must read again and commit on top of the change.
    let child = Command::new(bin())
        .args([
            "apply",
            "-f",
            A,
            "--add-host",
            ADD_HOST,
            "--netns",
            &ns.name,
        ])
        .current_dir(repo())
        .env("SVCNAT_STATE_DIR", state_root())
        .env("SVCNAT_TEST_PAUSE_MS", "800")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    ns.exec_ok("nft add table ip intruder");
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("the ruleset changed meanwhile: re-read and retried 1x"),
        "{out}"
    );
    let rs = ns.ruleset();
    assert!(
        rs.contains("table ip intruder") && rs.contains("table inet svcnat"),
        "{rs}"
    );
    let (code, diff, _) = svcnat(&["diff", "-f", A, "--add-host", ADD_HOST, "--netns", &ns.name]);
    assert_eq!(code, 0, "{diff}");
}

/// Start `apply --confirm SECONDS` and wait until it reports the new rules are in.
fn apply_confirm(map: &str, ns: &Netns, seconds: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .args([
            "apply",
            "-f",
            map,
            "--add-host",
            ADD_HOST,
            "--netns",
            &ns.name,
            "--confirm",
            seconds,
        ])
        .current_dir(repo())
        .env("SVCNAT_STATE_DIR", state_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("svcnat: confirm within") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "apply --confirm ended early: {seen}"
        );
        seen.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, seen)
}

#[test]
fn confirmed_apply_stays() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("cfm");
    apply_map(A, &ns);
    let (child, said) = apply_confirm(B, &ns, "20");
    assert!(
        said.contains(&format!("`svcnat confirm --netns {}`", ns.name)),
        "{said}"
    );
    assert!(
        said.contains("otherwise it rolls back to generation 1"),
        "{said}"
    );
    assert!(
        table(&ns).contains("comment \"web-vip\""),
        "the new rules are in while waiting"
    );
    // The terminal going away (SSH dropped) must not end the wait.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = svcnat_ok(&["confirm", "--netns", &ns.name]);
    assert!(out.contains("confirmed generation 2"), "{out}");
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(table(&ns).contains("comment \"web-vip\""));
    let h = history(&ns);
    assert_eq!(h["generation"], 2);
    assert_eq!(
        h["generations"][1]["confirmed"], true,
        "confirmed since: {h}"
    );
    let (code, _, err) = svcnat(&["confirm", "--netns", &ns.name]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing is waiting for confirmation"), "{err}");
}

#[test]
fn unconfirmed_apply_rolls_back_byte_for_byte() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nocfm");
    apply_map(A, &ns);
    let after_a = rules(&ns);
    let started = std::time::Instant::now();
    let (child, _) = apply_confirm(B, &ns, "1");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not confirmed in time: rolled back to generation 1"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(rules(&ns), after_a);
    // B is recorded as never confirmed, and A's return as the timeout's.
    let h = history(&ns);
    assert_eq!(
        reasons(&h),
        [(1, "apply"), (2, "apply"), (3, "confirm-timeout")].map(|(n, r)| (n, r.to_owned()))
    );
    assert_eq!(h["generations"][1]["confirmed"], false, "{h}");
    assert_eq!(h["generations"][0]["confirmed"], true, "{h}");
    assert_eq!(
        ns.exec_ok("sysctl -n net.ipv4.conf.all.route_localnet")
            .trim(),
        "0"
    );
    let (code, _, _) = svcnat(&["confirm", "--netns", &ns.name]);
    assert_eq!(code, 1, "too late to confirm");

    // With nothing installed before, rolling back removes the table.
    let fresh = Netns::new("nocfm0");
    let (child, said) = apply_confirm(A, &fresh, "1");
    assert!(
        said.contains("rolls back to nothing (the table is removed)"),
        "{said}"
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fresh.ruleset(), "");

    // Ctrl-C (SIGINT) during the window rolls back at once.
    let (child, _) = apply_confirm(B, &ns, "60");
    let started = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interrupted: rolled back to generation 3")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(rules(&ns), after_a);
}

#[test]
fn status_check_says_healthy_only_for_the_newest_record() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("stat");
    let status = || svcnat(&["status", "--check", "--netns", &ns.name]);
    let (code, out, _) = status();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("unhealthy") && out.contains("nothing installed"),
        "{out}"
    );
    svcnat_ok(&["apply", "-f", B, "--netns", &ns.name]);
    let (code, out, _) = status();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("healthy: table inet svcnat") && out.contains("holds generation 1"),
        "{out}"
    );
    // Replaced by hand with the same rules but no record: not what svcnat installed.
    let render = TempFile::new("status.nft", &svcnat_ok(&["render", "-f", B]));
    ns.exec_ok(&format!("nft -f {}", render.path()));
    let (code, out, _) = status();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no generation record, but svcnat last recorded generation 1"),
        "{out}"
    );
    // Without --check it tells, and exits 0.
    let (code, _, _) = svcnat(&["status", "--netns", &ns.name]);
    assert_eq!(code, 0);
}
