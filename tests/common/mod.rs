//! Shared helpers for the tests that need a kernel: throwaway network namespaces, the
//! processes started in them, and running the real svcnat binary.
//!
//! Every namespace gets a unique name and is deleted when its guard drops, also when the
//! test panics. Nothing here touches the host's own namespace.

#![allow(dead_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Root-only tests fail loudly without root. Set SVCNAT_SKIP_ROOT_TESTS=1 to skip them on
/// a developer machine on purpose; CI never sets it.
pub fn require_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("SVCNAT_SKIP_ROOT_TESTS").is_some() && std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED: needs root (SVCNAT_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!(
        "this test needs root (network namespaces, nftables); run the suite as root, e.g. `sudo -E cargo test`"
    );
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_svcnat")
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs")
}

/// Run a shell command that must succeed; returns stdout.
pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A throwaway network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        let name = format!(
            "svt-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            label
        );
        must(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.exec_ok("ip link set lo up");
        ns
    }

    /// `ip netns exec NAME sh -c CMD`
    pub fn exec(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip runs")
    }

    pub fn exec_ok(&self, cmd: &str) -> String {
        must(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Start a long-running process inside; it is ended (by its PID) when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Proc { child }
    }

    /// A process that is inside this namespace *now*: `ip netns exec` switches namespace
    /// only after it starts, so a bare PID taken at spawn time can still be in the test's
    /// own (the host's) namespace. This waits for the process to report from inside, and
    /// checks its namespace is this one, before the PID may be used as `--netns pid:N`.
    pub fn spawn_inside(&self) -> Proc {
        use std::io::BufRead;
        use std::os::unix::fs::MetadataExt;
        let mut p = self.spawn(&["sh", "-c", "echo ready; exec sleep 120"]);
        let mut line = String::new();
        std::io::BufReader::new(p.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        let theirs = std::fs::metadata(format!("/proc/{}/ns/net", p.pid()))
            .unwrap()
            .ino();
        let ours = std::fs::metadata(self.path()).unwrap().ino();
        let host = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(
            theirs,
            ours,
            "process {} is not in namespace {}",
            p.pid(),
            self.name
        );
        assert_ne!(
            theirs,
            host,
            "process {} is still in the host namespace",
            p.pid()
        );
        p
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `nft list ruleset` here.
    pub fn ruleset(&self) -> String {
        self.exec_ok("nft list ruleset")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process started by a test; killed by PID on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run svcnat with arguments; returns (exit code, stdout, stderr).
pub fn svcnat(args: &[&str]) -> (i32, String, String) {
    svcnat_env(args, &[])
}

pub fn svcnat_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(repo())
        .env_remove("SVCNAT_MAP")
        .env("SVCNAT_STATE_DIR", state_root());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("svcnat runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What `host.docker.internal` resolves to in tests that use the bundled skupper map.
pub const ADD_HOST: &str = "host.docker.internal=10.99.0.1";

/// `svcnat apply -f MAP --netns NS` (with ADD_HOST), which must succeed; returns stdout.
pub fn apply_map(map: &str, ns: &Netns) -> String {
    svcnat_ok(&[
        "apply",
        "-f",
        map,
        "--add-host",
        ADD_HOST,
        "--netns",
        &ns.name,
    ])
}

/// A bridge `name` with `addr` (CIDR) in `host`.
pub fn bridge(host: &Netns, name: &str, addr: &str) {
    host.exec_ok(&format!(
        "ip link add {name} type bridge && ip addr add {addr} dev {name} && ip link set {name} up"
    ));
}

/// A veth pair: `host_if` stays in `host` (enslaved to `bridge` if given), `eth0` goes to
/// `peer` with `addr` (CIDR).
pub fn wire(host: &Netns, host_if: &str, bridge: Option<&str>, peer: &Netns, addr: &str) {
    host.exec_ok(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {}",
        peer.name
    ));
    if let Some(br) = bridge {
        host.exec_ok(&format!("ip link set {host_if} master {br}"));
    }
    host.exec_ok(&format!("ip link set {host_if} up"));
    peer.exec_ok(&format!(
        "ip addr add {addr} dev eth0 && ip link set eth0 up"
    ));
}

/// Tests keep svcnat's state under cargo's target directory, never in /var/lib/svcnat.
/// Namespaces are told apart by their kernel cookie, so tests can share the root.
pub fn state_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("svcnat-state")
}

/// svcnat that must exit 0; returns stdout.
pub fn svcnat_ok(args: &[&str]) -> String {
    let (code, out, err) = svcnat(args);
    assert_eq!(
        code, 0,
        "svcnat {args:?} failed\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Counters change with traffic; compare rulesets without them.
pub fn without_counters(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let mut l = line.to_owned();
        while let Some(i) = l.find("counter packets ") {
            let rest = &l[i..];
            let end = rest.find(" bytes ").map(|b| {
                let after = &rest[b + 7..];
                b + 7 + after.find(' ').unwrap_or(after.len())
            });
            match end {
                Some(e) => l.replace_range(i..i + e, "counter"),
                None => break,
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `apply` records the installed generation as the one element of `set generation`; a
/// render (and so `nft -f` of it) declares the set empty. Drop that element to compare.
pub fn without_generation(s: &str) -> String {
    let mut out = String::new();
    let mut in_generation = false;
    for line in s.lines() {
        if line.trim() == "set generation {" {
            in_generation = true;
        } else if line.trim() == "}" {
            in_generation = false;
        }
        if in_generation && line.trim_start().starts_with("elements = { 0x") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Wait until `addr` accepts TCP connections from inside `ns`.
pub fn wait_port(ns: &Netns, addr: &str, timeout: Duration) {
    let start = Instant::now();
    let (host, port) = addr.rsplit_once(':').unwrap();
    loop {
        let o = ns.exec(&format!(
            "python3 -c 'import socket; socket.create_connection((\"{host}\", {port}), 1).close()'"
        ));
        if o.status.success() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{addr} did not accept connections in {}: {}",
            ns.name,
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bundled maps, as paths relative to the repository (sorted).
pub fn bundled_maps() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("rulesets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    v.sort();
    assert!(v.len() >= 2, "rulesets/ should hold the bundled maps");
    v
}

/// A file in the temp directory, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, text: &str) -> TempFile {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("svcnat-test-{}-{n}-{tag}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `n` HTTP GETs on new connections from `from`; how many answers each body got.
pub fn answers(
    from: &Netns,
    host: &str,
    port: u16,
    n: u32,
) -> std::collections::HashMap<String, u32> {
    let o = from.exec(&format!(
        "python3 {} gets {host} {port} {n}",
        helper("netsvc.py")
    ));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(body, count)| (body.to_owned(), count.parse().unwrap()))
        .collect()
}

pub fn helper(name: &str) -> String {
    repo()
        .join("tests/helpers")
        .join(name)
        .display()
        .to_string()
}

/// A running `svcnat run` and everything it logged so far.
pub struct Running {
    pub proc: Proc,
    pub log: Arc<Mutex<String>>,
}

impl Running {
    pub fn start(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::start_until(ns, args, env, "INFO applied")
    }

    /// `start`, waiting for `needle` in the log instead of the text format's first apply.
    pub fn start_until(ns: &Netns, args: &[&str], env: &[(&str, &str)], needle: &str) -> Running {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]).args(args);
        cmd.env("SVCNAT_STATE_DIR", state_root())
            .env_remove("SVCNAT_FORWARD")
            .env_remove("PORT_MAPPING");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let r = Running {
            proc: Proc { child },
            log,
        };
        r.wait_log(needle, Duration::from_secs(10));
        r
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.proc.pid() as i32, sig) };
    }
}
