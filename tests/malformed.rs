//! The catalogue of malformed maps (`tests/malformed/*.toml`): each is refused with exit 2
//! and exactly the message in its `.expected` file (golden; `SVCNAT_BLESS=1` rewrites them),
//! and leaves the kernel byte for byte as it was, svcnat's table and another program's
//! alike. Then the inputs that are not maps at all (too large, a directory, a FIFO, a loop
//! of links) and the tables svcnat did not create.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Another program's table, which no svcnat command may change.
const FOREIGN: &str = "table inet foreign {\n\tcomment \"not svcnat's\"\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 4444 counter accept\n\t}\n}\n";

fn lab(label: &str) -> Netns {
    let ns = Netns::new(label);
    apply_map("rulesets/skupper-ingress.toml", &ns);
    let f = TempFile::new("foreign.nft", FOREIGN);
    ns.exec_ok(&format!("nft -f {}", f.path()));
    ns
}

fn catalogue() -> Vec<PathBuf> {
    let mut maps: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/malformed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    maps.sort();
    maps
}

/// `svcnat ARGS` with a deadline (a FIFO must not hang it): (exit code, stderr).
fn run_bounded(args: &[&str]) -> (i32, String) {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .env("SVCNAT_STATE_DIR", state_root())
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("svcnat {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_malformed_map_exits_2_with_its_message_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let ns = lab("malformed");
    let before = ns.ruleset();
    assert!(before.contains("table inet foreign") && before.contains("table inet svcnat"));
    let bless = std::env::var_os("SVCNAT_BLESS").is_some();
    let maps = catalogue();
    assert!(maps.len() >= 40, "the catalogue has {} maps", maps.len());
    let mut wrong = Vec::new();
    for map in &maps {
        let rel = map.strip_prefix(repo()).unwrap().display().to_string();
        let (code, err) = run_bounded(&["apply", "-f", &rel, "--netns", &ns.name]);
        let expected_path = map.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &err).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if code != 2 || err != expected {
            wrong.push(format!(
                "{rel}: exit {code}\n--- got\n{err}--- expected\n{expected}"
            ));
        }
        assert_eq!(ns.ruleset(), before, "{rel} changed the kernel");
        // `check` says the same, without a kernel.
        let (code, check_err) = run_bounded(&["check", "-f", &rel]);
        assert_eq!(
            (code, &check_err),
            (2, &err),
            "{rel}: check and apply differ"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn what_is_not_a_map_file_is_refused_at_once() {
    if !require_root() {
        return;
    }
    let ns = lab("notamap");
    let before = ns.ruleset();
    let dir = std::env::temp_dir().join(format!("svcnat-notamap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    let fifo = dir.join("fifo.toml");
    must(&format!("mkfifo {}", fifo.display()));
    let (a, b) = (dir.join("a.toml"), dir.join("b.toml"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let cases: [(&Path, &str); 5] = [
        (&big, "larger than 32 MiB"),
        (&dir, "it is a directory"),
        (&fifo, "it is a FIFO"),
        (&a, "symbolic links"),
        (Path::new("/dev/zero"), "it is a device"),
    ];
    for (path, want) in cases {
        let p = path.display().to_string();
        let (code, err) = run_bounded(&["apply", "-f", &p, "--netns", &ns.name]);
        assert_eq!(code, 2, "{p}: {err}");
        assert!(err.contains(want) && err.contains("fix:"), "{p}: {err}");
        assert_eq!(ns.ruleset(), before, "{p}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_table_svcnat_did_not_create_is_never_touched() {
    if !require_root() {
        return;
    }
    let ns = lab("foreign");
    let before = ns.ruleset();
    let map = TempFile::new(
        "foreign-map.toml",
        "[settings]\ntable = \"foreign\"\n\n[[service]]\nname = \"web\"\nlisten = \"8080\"\ntargets = [\"10.0.0.2:80\"]\n",
    );
    let runs: [&[&str]; 4] = [
        &["apply", "-f", map.path(), "--netns", &ns.name],
        &["diff", "-f", map.path(), "--netns", &ns.name],
        &["flush", "--table", "foreign", "--netns", &ns.name],
        &["show", "--table", "foreign", "--netns", &ns.name],
    ];
    for args in runs {
        let (code, err) = run_bounded(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("table inet foreign was not created by svcnat") && err.contains("fix:"),
            "{args:?}: {err}"
        );
        assert_eq!(ns.ruleset(), before, "{args:?} changed the kernel");
    }
    // svcnat's own table carries its mark, and nft shows it.
    assert!(before.contains("comment \"managed by svcnat\""), "{before}");
}
