//! Plan → iptables-save text (for `iptables-restore`, or `ip6tables-restore` for IPv6).
//!
//! svcnat owns only its `SVCNAT-*` chains and one jump to each from a built-in chain. There
//! are no maps in iptables: a service costs one rule per hook, so lookups are linear in the
//! number of services — the nft backend is the fast one. Several targets use
//! `-m statistic --mode random` with probabilities w₁/W, w₂/(W−w₁), …, the last rule taking
//! what is left, so each target gets its weight's share.

use crate::plan::{Family, Plan, Service};
use crate::ruleset::MASQ_MARK;
use std::fmt::Write;

pub const CHAIN_PREFIX: &str = "SVCNAT-";
/// iptables chain names hold at most 28 characters.
const MAX_CHAIN: usize = 28;

/// The chain of one service: `SVCNAT-S-NAME`, or for long names a prefix plus a hash of
/// the whole name, so it stays unique and stable across runs.
pub fn service_chain(name: &str) -> String {
    let full = format!("{CHAIN_PREFIX}S-{name}");
    if full.len() <= MAX_CHAIN {
        return full;
    }
    // FNV-1a: tiny, stable across versions and platforms (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{CHAIN_PREFIX}S-{}-{:08x}", &name[..10], h as u32)
}

/// The probability iptables stores for `--probability p` (a 31-bit fraction), printed the
/// way iptables-save prints it, so a render and a save of the same rules match.
fn probability(p: f64) -> String {
    let stored = (p * f64::from(0x8000_0000u32)).round() as u64;
    format!("{:.11}", stored as f64 / f64::from(0x8000_0000u32))
}

/// The iptables-save text for the services of one family. `source` names the map in the
/// header comment.
pub fn render(plan: &Plan, family: Family, source: &str) -> String {
    let services: Vec<&Service> = plan
        .services
        .iter()
        .filter(|s| s.family == family)
        .collect();
    let (lo_net, restore) = match family {
        Family::V4 => ("127.0.0.0/8", "iptables-restore"),
        Family::V6 => ("::1/128", "ip6tables-restore"),
    };
    let host = |ip: std::net::IpAddr| match family {
        Family::V4 => format!("{ip}/32"),
        Family::V6 => format!("{ip}/128"),
    };
    let masq = services.iter().any(|s| s.masquerade || s.localhost);
    let localhost = services.iter().any(|s| s.localhost);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# svcnat: {} {} service(s) from {source}; load with: {restore} --noflush",
        services.len(),
        family.name()
    );
    // iptables-restore can append a rule but not "append unless present", so no restore
    // input can be both a first install and a re-install: say so where the user reads it.
    let _ = writeln!(
        out,
        "# restore it once: a second restore adds a second jump to each built-in chain; re-apply with svcnat apply --backend iptables"
    );
    out.push_str("*nat\n");
    let mut chains = vec!["SVCNAT-PREROUTING".to_owned(), "SVCNAT-OUTPUT".to_owned()];
    if masq {
        chains.push("SVCNAT-POSTROUTING".to_owned());
    }
    chains.extend(services.iter().map(|s| service_chain(&s.name)));
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str("-A PREROUTING -j SVCNAT-PREROUTING\n-A OUTPUT -j SVCNAT-OUTPUT\n");
    if masq {
        out.push_str("-A POSTROUTING -j SVCNAT-POSTROUTING\n");
    }
    for hook in ["SVCNAT-PREROUTING", "SVCNAT-OUTPUT"] {
        for s in &services {
            let p = s.proto.as_str();
            // A range as iptables-save prints it: `--dport 8000:8100`.
            let port = s.listen.port_text().replace('-', ":");
            let to = service_chain(&s.name);
            let comment = format!("-m comment --comment \"service {}\"", s.name);
            match s.listen.addr {
                Some(a) => {
                    let _ = writeln!(
                        out,
                        "-A {hook} -d {} -p {p} {comment} -m {p} --dport {port} -j {to}",
                        host(a)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "-A {hook} ! -d {lo_net} -p {p} {comment} -m addrtype --dst-type LOCAL -m {p} --dport {port} -j {to}"
                    );
                }
            }
            if s.localhost && hook == "SVCNAT-OUTPUT" {
                let _ = writeln!(
                    out,
                    "-A {hook} -d {lo_net} -p {p} {comment} -m {p} --dport {port} -j {to}"
                );
            }
        }
    }
    let mark = format!("0x{MASQ_MARK:x}/0x{MASQ_MARK:x}");
    if masq {
        let _ = writeln!(
            out,
            "-A SVCNAT-POSTROUTING -m mark --mark {mark} -j MASQUERADE"
        );
    }
    for s in &services {
        let c = service_chain(&s.name);
        let p = s.proto.as_str();
        if s.localhost && !s.masquerade {
            let _ = writeln!(out, "-A {c} -s {lo_net} -j MARK --set-xmark {mark}");
        }
        if s.masquerade {
            let _ = writeln!(out, "-A {c} -j MARK --set-xmark {mark}");
        }
        let mut remaining: u32 = s.targets.iter().map(|t| t.weight).sum();
        for (i, t) in s.targets.iter().enumerate() {
            let ip = match family {
                Family::V4 => t.addr.ip().to_string(),
                Family::V6 => format!("[{}]", t.addr.ip()),
            };
            // A range: the same ports (the address alone keeps the port), or shifted by
            // DNAT's `FIRST-LAST/BASE` (the listen range's first port maps to FIRST).
            let to = match (s.listen.is_range(), t.addr.port() == s.listen.port) {
                (false, _) => format!("{ip}:{}", t.addr.port()),
                (true, true) => t.addr.ip().to_string(),
                (true, false) => format!(
                    "{ip}:{}-{}/{}",
                    t.addr.port(),
                    s.last_target_port(t),
                    s.listen.port
                ),
            };
            if i + 1 == s.targets.len() {
                let _ = writeln!(out, "-A {c} -p {p} -j DNAT --to-destination {to}");
            } else {
                let prob = probability(f64::from(t.weight) / f64::from(remaining));
                let _ = writeln!(
                    out,
                    "-A {c} -p {p} -m statistic --mode random --probability {prob} -j DNAT --to-destination {to}"
                );
            }
            remaining -= t.weight;
        }
    }
    out.push_str("COMMIT\n");
    if localhost {
        // CVE-2020-8558 mitigation (see ruleset.rs).
        out.push_str("*filter\n:SVCNAT-INPUT - [0:0]\n-A INPUT -j SVCNAT-INPUT\n");
        let _ = writeln!(
            out,
            "-A SVCNAT-INPUT -d {lo_net} ! -i lo -m conntrack ! --ctstate DNAT -j DROP\nCOMMIT"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_and_stay_unique() {
        assert_eq!(service_chain("my-service"), "SVCNAT-S-my-service");
        let a = service_chain("a-very-long-service-name-number-one");
        let b = service_chain("a-very-long-service-name-number-two");
        assert!(a.len() <= MAX_CHAIN && b.len() <= MAX_CHAIN, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, service_chain("a-very-long-service-name-number-one"));
    }

    #[test]
    fn probabilities_print_like_iptables_save() {
        assert_eq!(probability(1.0 / 3.0), "0.33333333349");
        assert_eq!(probability(0.5), "0.50000000000");
    }
}
