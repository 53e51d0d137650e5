//! `scripts/demo` is what a new user runs first: keep it working.

mod common;
use common::*;

#[test]
fn demo_shows_a_request_through_the_proxy_and_cleans_up() {
    if !require_root() {
        return;
    }
    let o = std::process::Command::new("bash")
        .arg(repo().join("scripts/demo"))
        .env("SVCNAT", bin())
        .env("SVCNAT_NO_BUILD", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        out.matches("\nhello from the host router\n").count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("my-service      tcp    *:8080  10.99.0.1:8080 (masquerade)            -"),
        "{out}"
    );
    assert!(out.contains("removed table inet svcnat"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("demo done; namespaces removed on exit"),
        "{out}"
    );
    let pid_prefix = "svcnat-demo-";
    let left = must("ip netns list");
    assert!(
        !left.contains(pid_prefix),
        "demo left namespaces behind: {left}"
    );
}
