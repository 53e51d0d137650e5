//! iptables-save text → the services svcnat's chains implement (the iptables backend's
//! read-back, as `crate::lift` is the nft backend's).

use super::Installed;
use crate::plan::{Family, Plan, Service, Target};
use crate::validate::{Listen, Proto};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// A DNAT rule's `--to-destination`, as the target of listen port `first`: `IP:PORT`,
/// `IP` alone (a range to the same ports), or `IP:FIRST-LAST/BASE` (a shifted range).
fn destination(to: &str, first: u16) -> Option<SocketAddr> {
    let to = to.split('/').next()?;
    if let Ok(ip) = to.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, first));
    }
    let (ip, ports) = to.rsplit_once(':')?;
    let ip = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = ports.split('-').next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

fn field<'a>(rule: &'a str, flag: &str) -> Option<&'a str> {
    let at = rule.find(&format!(" {flag} "))?;
    let rest = &rule[at + flag.len() + 2..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split_once('"').map(|(v, _)| v);
    }
    rest.split_whitespace().next()
}

/// The services svcnat's chains implement, and each one's connection counter (the
/// packets of the jumps into its chain: NAT rules see a connection's first packet).
pub fn lift(v4: &Installed, v6: &Installed, table: &str) -> (Plan, HashMap<String, (u64, u64)>) {
    let mut services: Vec<Service> = Vec::new();
    // By name: a service has a rule per hook, all pointing at its chain.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut counters: HashMap<String, (u64, u64)> = HashMap::new();
    for (family, inst) in [(Family::V4, v4), (Family::V6, v6)] {
        let nat = &inst.nat;
        // Each chain's rules, in order: one pass over the table, not one per service.
        let mut by_chain: HashMap<&str, Vec<&String>> = HashMap::new();
        for r in &nat.rules {
            if let Some(chain) = r
                .strip_prefix("-A ")
                .and_then(|r| r.split_whitespace().next())
            {
                by_chain.entry(chain).or_default().push(r);
            }
        }
        for rule in &nat.rules {
            let Some(name) = field(rule, "--comment").and_then(|c| c.strip_prefix("service "))
            else {
                continue;
            };
            let (hook, chain) = (
                rule.split_whitespace().nth(1).unwrap_or(""),
                field(rule, "-j").unwrap_or(""),
            );
            let c = counters.entry(name.to_owned()).or_default();
            if let Some((p, b)) = nat.counters.get(rule) {
                c.0 += p;
                c.1 += b;
            }
            let loopback = rule.contains(" -d 127.0.0.0/8 ") || rule.contains(" -d ::1/128 ");
            if let Some(&i) = by_name.get(name) {
                services[i].localhost |= hook == "SVCNAT-OUTPUT" && loopback;
                continue;
            }
            let proto = match field(rule, "-p") {
                Some("udp") => Proto::Udp,
                _ => Proto::Tcp,
            };
            // `--dport 8080`, or a range `--dport 8000:8100`.
            let (port, last) = field(rule, "--dport")
                .and_then(|p| crate::validate::parse_ports(&p.replace(':', "-")).ok())
                .unwrap_or((0, 0));
            let addr = field(rule, "-d")
                .filter(|_| !rule.contains(" ! -d "))
                .and_then(|d| d.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok());
            // Targets: the DNAT rules of the service chain, weights from probabilities.
            let mut targets: Vec<(SocketAddr, f64)> = Vec::new();
            let mut remaining = 1.0;
            let mut masquerade = false;
            for r in by_chain.get(chain).map_or(&[][..], |rs| &rs[..]) {
                if r.contains("-j MARK") && !r.contains(" -s ") {
                    masquerade = true;
                }
                let Some(to) = field(r, "--to-destination").and_then(|to| destination(to, port))
                else {
                    continue;
                };
                let p = field(r, "--probability")
                    .and_then(|p| p.parse::<f64>().ok())
                    .unwrap_or(1.0);
                targets.push((to, remaining * p));
                remaining *= 1.0 - p;
            }
            if targets.is_empty() || port == 0 {
                continue;
            }
            let least = targets.iter().map(|t| t.1).fold(f64::MAX, f64::min);
            by_name.insert(name.to_owned(), services.len());
            services.push(Service {
                name: name.to_owned(),
                proto,
                family,
                listen: Listen { addr, port, last },
                targets: targets
                    .into_iter()
                    .map(|(addr, share)| Target {
                        addr,
                        weight: (share / least).round().max(1.0) as u32,
                    })
                    .collect(),
                masquerade,
                localhost: false,
            });
        }
    }
    (
        Plan {
            table: table.to_owned(),
            services,
            accounting: false,
            forward_accept: false,
        },
        counters,
    )
}
