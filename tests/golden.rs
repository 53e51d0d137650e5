//! Golden renders: every `rulesets/NAME.toml` renders to the checked-in `NAME.nft` and
//! `NAME.iptables` (and `NAME.ip6tables` when it has IPv6 services), and the peers' own
//! tools accept them as they are (checked inside a throwaway namespace).
//!
//! Maps that use host names render with `--add-host host.docker.internal=10.99.0.1`.
//! After an intended change, regenerate with `SVCNAT_BLESS=1 cargo test --test golden`
//! and review the diff.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const ADD_HOST: &str = "host.docker.internal=10.99.0.1";

fn maps() -> Vec<PathBuf> {
    bundled_maps().iter().map(|m| repo().join(m)).collect()
}

fn render(map: &Path, format: &str) -> (String, String) {
    let rel = map.strip_prefix(repo()).unwrap().display().to_string();
    let (code, out, err) = svcnat(&[
        "render",
        "-f",
        &rel,
        "--add-host",
        ADD_HOST,
        "--format",
        format,
    ]);
    assert_eq!(code, 0, "render {rel} --format {format}: {err}");
    (out, err)
}

fn check_golden(map: &Path, ext: &str, actual: &str) {
    let expected_path = map.with_extension(ext);
    if std::env::var_os("SVCNAT_BLESS").is_some() {
        std::fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {}; create it with SVCNAT_BLESS=1",
            expected_path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "render of {} differs from {}",
        map.display(),
        expected_path.display()
    );
}

fn has_v6(nft: &str) -> bool {
    nft.contains("dnat ip6 ")
}

#[test]
fn renders_match_checked_in_files() {
    for map in maps() {
        let (nft, _) = render(&map, "nft");
        check_golden(&map, "nft", &nft);
        let (ipt, _) = render(&map, "iptables");
        check_golden(&map, "iptables", &ipt);
        if has_v6(&nft) {
            let (ip6t, _) = render(&map, "ip6tables");
            check_golden(&map, "ip6tables", &ip6t);
        }
    }
}

#[test]
fn nft_accepts_every_render() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("golden-nft");
    for map in maps() {
        let (nft, _) = render(&map, "nft");
        let file = TempFile::new("golden.nft", &nft);
        let o = ns.exec(&format!("nft -c -f {}", file.path()));
        assert!(
            o.status.success(),
            "nft -c rejects the render of {}: {}",
            map.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(ns.ruleset(), "", "nft -c must not change anything");
}

#[test]
fn iptables_restore_accepts_every_render() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("golden-ipt");
    for map in maps() {
        let (nft, _) = render(&map, "nft");
        let mut formats = vec![(
            "iptables",
            ["iptables-nft-restore", "iptables-legacy-restore"],
        )];
        if has_v6(&nft) {
            formats.push((
                "ip6tables",
                ["ip6tables-nft-restore", "ip6tables-legacy-restore"],
            ));
        }
        for (format, tools) in formats {
            let (text, _) = render(&map, format);
            let file = TempFile::new(format, &text);
            for tool in tools {
                let o = ns.exec(&format!("{tool} --test --noflush < {}", file.path()));
                assert!(
                    o.status.success(),
                    "{tool} --test rejects the {format} render of {}: {}",
                    map.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

#[test]
fn render_needs_no_root_and_no_kernel() {
    // The render path never opens a netlink socket: it works for any user. Checked by
    // running it with an empty environment and a map on standard input.
    let o = std::process::Command::new(bin())
        .args(["render", "-f", "-"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                b"[[service]]\nname=\"a\"\nlisten=\"80\"\ntargets=[\"10.0.0.2:80\"]\n",
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tcp . 80 comment \"a\" : 10.0.0.2 . 80"),
        "{out}"
    );
}
