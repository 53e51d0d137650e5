//! Crashes that lose nothing: svcnat killed with SIGKILL at random moments of a 50,000-
//! service apply and of a `run` reload leaves the kernel holding exactly the old or the new
//! ruleset, and the state directory usable (no lock held for ever, the next apply, diff
//! and rollback work); and every file of the state directory truncated or garbled gives a
//! clear message or a recovery, never a panic.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// n one-target services on virtual IPs, all to `target`.
fn big_map(n: usize, target: &str) -> String {
    let mut s = String::with_capacity(n * 90);
    for i in 0..n {
        s.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"10.96.{}.{}:80\"\ntargets = [\"{target}\"]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    s
}

/// How many DNAT elements of the table lead to each of the two targets.
fn targets_installed(ns: &Netns) -> (usize, usize) {
    let o = ns.exec("nft list map inet svcnat dnat-vip4");
    let text = String::from_utf8_lossy(&o.stdout);
    (
        text.matches("10.81.0.2 . 8080").count(),
        text.matches("10.81.0.3 . 8080").count(),
    )
}

/// A small xorshift, seeded from the clock: the kill moments differ from run to run, and
/// the seed is printed so a failure can be replayed.
struct Moments(u64);
impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn seed() -> u64 {
    let s = std::env::var("SVCNAT_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill moments seeded with SVCNAT_KILL_SEED={s}");
    s
}

#[test]
fn sigkill_during_a_50000_service_apply_leaves_old_or_new_whole() {
    if !require_root() {
        return;
    }
    const N: usize = 50_000;
    let ns = Netns::new("kill");
    let state = tempdir("kill-state");
    let a = TempFile::new("kill-a.toml", &big_map(N, "10.81.0.2:8080"));
    let b = TempFile::new("kill-b.toml", &big_map(N, "10.81.0.3:8080"));
    let env = [("SVCNAT_STATE_DIR", state.as_str())];
    let run = |args: &[&str]| svcnat_env(args, &env);
    let (code, _, err) = run(&["apply", "-f", a.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    // How long an apply of the other map takes: kills are spread over it.
    let started = Instant::now();
    let (code, _, err) = run(&["apply", "-f", b.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let span = started.elapsed().as_millis() as u64 + 20;
    let mut moments = Moments(seed());
    let (mut old, mut new) = (0, 0);
    // What the kernel holds, as the last check found it (b was applied last).
    let mut installed_now = (0, N);
    for round in 0..30 {
        let next = match installed_now {
            (N, 0) => &b,
            _ => &a,
        };
        let mut child = Command::new(bin())
            .args(["apply", "-f", next.path(), "--netns", &ns.name])
            .env("SVCNAT_STATE_DIR", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Up to one and a half applies: before the commit, around it, and after the end.
        std::thread::sleep(Duration::from_millis(moments.next(span * 3 / 2)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        installed_now = targets_installed(&ns);
        match installed_now {
            (N, 0) | (0, N) => {}
            mixed => panic!("round {round}: after SIGKILL the kernel holds a mix {mixed:?}"),
        }
        let installed = if installed_now.0 == N { &a } else { &b };
        if installed.path() == next.path() {
            new += 1;
        } else {
            old += 1;
        }
        // The state directory still serves (the next round applies through it; a lock left
        // held would fail it), and every few rounds diff reads the whole table back and
        // finds it in sync with whichever map is installed.
        if round % 10 == 9 {
            let (code, out, err) = run(&["diff", "-f", installed.path(), "--netns", &ns.name]);
            assert_eq!(code, 0, "round {round}: diff after SIGKILL: {out}{err}");
        }
    }
    eprintln!("30 kills: {old} left the old ruleset, {new} the new one, 0 a mix");
    let (code, _, err) = run(&["history", "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["rollback", "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    assert!(matches!(targets_installed(&ns), (N, 0) | (0, N)));
    let (code, _, err) = run(&["apply", "-f", a.path(), "--netns", &ns.name]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(targets_installed(&ns), (N, 0));
}

#[test]
fn sigkill_during_a_run_reload_leaves_old_or_new_whole() {
    if !require_root() {
        return;
    }
    const N: usize = 20_000;
    let ns = Netns::new("killrun");
    let state = tempdir("killrun-state");
    let live = TempFile::new("killrun-live.toml", &big_map(N, "10.81.0.2:8080"));
    let b = big_map(N, "10.81.0.3:8080");
    let mut moments = Moments(seed());
    for round in 0..10 {
        let mut run = Command::new(bin())
            .args(["run", "-f", live.path(), "--netns", &ns.name])
            .env("SVCNAT_STATE_DIR", &state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Started: the table holds the live map.
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = if round % 2 == 0 { (N, 0) } else { (0, N) };
        while targets_installed(&ns) != want {
            assert!(
                Instant::now() < deadline,
                "round {round}: run did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let next = if round % 2 == 0 {
            b.clone()
        } else {
            big_map(N, "10.81.0.2:8080")
        };
        std::fs::write(format!("{}.new", live.path()), next).unwrap();
        std::fs::rename(format!("{}.new", live.path()), live.path()).unwrap();
        hangup(run.id());
        std::thread::sleep(Duration::from_millis(moments.next(300)));
        let _ = run.kill();
        let _ = run.wait();
        match targets_installed(&ns) {
            (N, 0) | (0, N) => {}
            mixed => panic!("round {round}: after SIGKILL the kernel holds a mix {mixed:?}"),
        }
        // The next round's run starts from the file, whatever the kill left.
    }
}

/// Send SIGHUP to `pid`.
fn hangup(pid: u32) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
}

/// A fresh directory under the test's temporary directory.
fn tempdir(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("svcnat-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn every_state_file_truncated_or_garbled_is_named_or_recovered_from() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("corrupt");
    let pristine = tempdir("corrupt-pristine");
    let maps: Vec<TempFile> = [
        ("10.81.0.2:8080", 3),
        ("10.81.0.2:8080", 4),
        ("10.81.0.3:8080", 4),
    ]
    .iter()
    .enumerate()
    .map(|(i, (t, n))| TempFile::new(&format!("corrupt-{i}.toml"), &big_map(*n, t)))
    .collect();
    for m in &maps {
        let (code, _, err) = svcnat_env(
            &["apply", "-f", m.path(), "--netns", &ns.name],
            &[("SVCNAT_STATE_DIR", &pristine)],
        );
        assert_eq!(code, 0, "{err}");
    }
    let rules = ns.ruleset();
    let files: Vec<std::path::PathBuf> = walk(std::path::Path::new(&pristine));
    assert!(files.len() >= 5, "{files:?}");
    let mut checked = 0;
    for file in &files {
        for (how, damage) in [
            ("truncated", &truncate as &dyn Fn(&[u8]) -> Vec<u8>),
            ("garbled", &garble),
        ] {
            let state = tempdir("corrupt-copy");
            must(&format!("cp -a {pristine}/. {state}/"));
            let rel = file.strip_prefix(&pristine).unwrap();
            let target = std::path::Path::new(&state).join(rel);
            let bytes = std::fs::read(&target).unwrap();
            std::fs::write(&target, damage(&bytes)).unwrap();
            let env = [("SVCNAT_STATE_DIR", state.as_str())];
            for args in [
                vec!["history", "--netns", &ns.name],
                vec!["diff", "-f", maps[2].path(), "--netns", &ns.name],
                vec!["apply", "-f", maps[2].path(), "--netns", &ns.name],
                vec!["apply", "-f", maps[1].path(), "--netns", &ns.name],
                vec!["rollback", "--netns", &ns.name],
                vec!["apply", "-f", maps[2].path(), "--netns", &ns.name],
            ] {
                let (code, out, err) = svcnat_env(&args, &env);
                let what = format!("{} {how}: svcnat {args:?}", rel.display());
                assert!(
                    !err.contains("panicked") && (0..=2).contains(&code),
                    "{what}: exit {code}\n{out}{err}"
                );
                // A file svcnat could not use is named, not silently ignored.
                if err.contains("note:") || code == 1 {
                    let name = rel.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(
                        err.contains(&name) || err.contains("gen-") || name == "index",
                        "{what}: the message does not name the file:\n{err}"
                    );
                }
            }
            // Whatever happened, the last apply installed map 2 again.
            assert_eq!(
                without_generation(&ns.ruleset()),
                without_generation(&rules),
                "{} {how}",
                rel.display()
            );
            let _ = std::fs::remove_dir_all(&state);
            checked += 1;
        }
    }
    eprintln!("{checked} damaged state directories: no panic, every file named or recovered from");
}

fn truncate(b: &[u8]) -> Vec<u8> {
    b[..b.len() / 2].to_vec()
}

fn garble(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    for (i, x) in out.iter_mut().enumerate() {
        if i % 7 == 3 {
            *x = x.wrapping_mul(31).wrapping_add(17);
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
