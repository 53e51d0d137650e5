//! What the kernel holds, per service: the reverse of `ruleset::lower`, read from a dump.

use crate::kernel::decode::Installed;
use crate::plan::Family;
use crate::ruleset::{MapKey, MapKind, SERVICE_CHAIN_PREFIX, Stmt};
use crate::validate::Proto;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownTarget {
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownService {
    pub name: String,
    pub protocol: Option<Proto>,
    pub family: Option<Family>,
    /// `*:PORT` or `ADDR:PORT`; several when one chain is reached from several keys.
    pub listen: Vec<String>,
    pub localhost: bool,
    pub targets: Vec<ShownTarget>,
    pub masquerade: bool,
    /// NAT chains see only the first packet of a connection: packets = connections.
    pub connections: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub table: String,
    pub services: Vec<ShownService>,
    /// Rules in svcnat's table that svcnat did not write.
    pub drift: Vec<String>,
}

/// Group a slot list back into weighted targets (slots repeat a target `weight` times).
fn weighted(slots: &[SocketAddr]) -> Vec<ShownTarget> {
    let mut out: Vec<(SocketAddr, u32)> = Vec::new();
    for s in slots {
        match out.last_mut() {
            Some((a, w)) if a == s => *w += 1,
            _ => out.push((*s, 1)),
        }
    }
    out.into_iter()
        .map(|(a, weight)| ShownTarget {
            address: a.to_string(),
            weight,
        })
        .collect()
}

pub fn services(inst: &Installed) -> Shown {
    let rs = &inst.ruleset;
    // Chain → the map keys that lead to it (one pass over the maps, not one per chain).
    let mut keys: HashMap<&str, Vec<(MapKind, &MapKey)>> = HashMap::new();
    for m in &rs.maps {
        for (key, chain) in &m.elements {
            keys.entry(chain.as_str()).or_default().push((m.kind, key));
        }
    }
    let mut services = Vec::new();
    for c in &rs.chains {
        let Some(name) = c.name.strip_prefix(SERVICE_CHAIN_PREFIX) else {
            continue;
        };
        let mut svc = ShownService {
            name: name.to_owned(),
            protocol: None,
            family: None,
            listen: Vec::new(),
            localhost: false,
            targets: Vec::new(),
            masquerade: false,
            connections: 0,
            bytes: 0,
        };
        for rule in &c.rules {
            let is_main = rule
                .0
                .iter()
                .any(|s| matches!(s, Stmt::DnatTo(_) | Stmt::DnatNumgen(_)));
            for s in &rule.0 {
                match s {
                    Stmt::L4proto(p) => svc.protocol = Some(*p),
                    Stmt::MarkSet(_) if is_main => svc.masquerade = true,
                    Stmt::DnatTo(a) => svc.targets = weighted(&[*a]),
                    Stmt::DnatNumgen(slots) => svc.targets = weighted(slots),
                    _ => {}
                }
            }
        }
        if let Some(t) = svc.targets.first() {
            let a: SocketAddr = t.address.parse().expect("formatted from a SocketAddr");
            svc.family = Some(Family::of(&a.ip()));
        }
        for (kind, key) in keys.get(c.name.as_str()).into_iter().flatten() {
            if *kind == MapKind::Loopback {
                svc.localhost = true;
            }
            svc.listen.push(match (kind, key.addr) {
                (MapKind::Loopback, _) => format!("127.0.0.1:{}", key.port),
                (_, Some(a)) => SocketAddr::new(a, key.port).to_string(),
                (_, None) => format!("*:{}", key.port),
            });
        }
        if let Some((p, b)) = inst.counters.get(&c.name) {
            svc.connections = *p;
            svc.bytes = *b;
        }
        services.push(svc);
    }
    Shown {
        table: rs.table.clone(),
        services,
        drift: inst.unrecognized.clone(),
    }
}

pub fn human(shown: &Shown, where_: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "table inet {}{where_}: {} service(s)",
        shown.table,
        shown.services.len()
    );
    if shown.services.is_empty() {
        return out;
    }
    let rows: Vec<[String; 6]> = shown
        .services
        .iter()
        .map(|s| {
            let listen = s.listen.join(",");
            let targets: Vec<String> = s
                .targets
                .iter()
                .map(|t| {
                    if t.weight == 1 {
                        t.address.clone()
                    } else {
                        format!("{}*{}", t.address, t.weight)
                    }
                })
                .collect();
            let mut flags = String::new();
            if s.masquerade {
                flags.push_str(" (masquerade)");
            }
            [
                s.name.clone(),
                s.protocol.map_or("?".into(), |p| p.to_string()),
                listen,
                format!("{}{flags}", targets.join(",")),
                s.connections.to_string(),
                s.bytes.to_string(),
            ]
        })
        .collect();
    let header = [
        "SERVICE",
        "PROTO",
        "LISTEN",
        "TARGETS",
        "CONNECTIONS",
        "BYTES",
    ];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 4 {
                let _ = write!(l, "{c:<w$}  ", w = width[i]);
            } else {
                let _ = write!(l, "{c:>w$}  ", w = width[i]);
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    let _ = writeln!(
        out,
        "(counted at the NAT rule, which sees the first packet of each connection; BYTES are those packets' bytes)"
    );
    for d in &shown.drift {
        let _ = writeln!(out, "drift: a rule svcnat did not write: {d}");
    }
    out
}
