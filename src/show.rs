//! What the kernel holds, per service: `lift` of a dump, with each service's counters.

use crate::kernel::decode::Installed;
use crate::kernel::meta::TableMeta;
use crate::lift::lift;
use crate::plan::{Family, Service};
use crate::ruleset::service_chain;
use crate::validate::Proto;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownTarget {
    pub address: String,
    pub weight: u32,
    /// Every packet and byte of the connections redirected to it, both directions
    /// (with `settings.accounting`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownService {
    pub name: String,
    pub protocol: Proto,
    pub family: Family,
    /// `*:PORT` or `ADDR:PORT`, then `127.0.0.1:PORT` for `localhost` services.
    pub listen: Vec<String>,
    pub localhost: bool,
    pub targets: Vec<ShownTarget>,
    pub masquerade: bool,
    /// NAT chains see only the first packet of a connection: packets = connections. None
    /// for a service without accounting: DNAT map elements, with no counter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub table: String,
    pub services: Vec<ShownService>,
    /// Differences from what svcnat would have written (see `diff`).
    pub drift: Vec<String>,
    /// Sysctls svcnat switched on in this namespace.
    pub enabled_sysctls: Vec<String>,
    /// The generation installed and the digest of its map, as recorded on the table.
    pub generation: Option<u64>,
    pub digest: Option<String>,
}

fn shown(
    s: &Service,
    counters: Option<&(u64, u64)>,
    objects: &HashMap<String, (u64, u64)>,
) -> ShownService {
    let mut listen = vec![s.listen.to_string()];
    if s.localhost {
        listen.push(format!("127.0.0.1:{}", s.listen.port));
    }
    let (connections, bytes) = (counters.map(|c| c.0), counters.map(|c| c.1));
    ShownService {
        name: s.name.clone(),
        protocol: s.proto,
        family: s.family,
        listen,
        localhost: s.localhost,
        targets: s
            .targets
            .iter()
            .map(|t| {
                let acct = objects.get(&crate::ruleset::counter_name(&t.addr));
                ShownTarget {
                    // A port range's target: its range (`10.0.0.2:9000-9100`).
                    address: match s.listen.is_range() {
                        false => t.addr.to_string(),
                        true => format!("{}-{}", t.addr, s.last_target_port(t)),
                    },
                    weight: t.weight,
                    packets: acct.map(|c| c.0),
                    bytes: acct.map(|c| c.1),
                }
            })
            .collect(),
        masquerade: s.masquerade,
        connections,
        bytes,
    }
}

/// What the kernel holds, from a lifted plan and each service's counters (by name).
pub fn from_plan(
    plan: &crate::plan::Plan,
    counters: &HashMap<String, (u64, u64)>,
    objects: &HashMap<String, (u64, u64)>,
    drift: Vec<String>,
    meta: &TableMeta,
) -> Shown {
    Shown {
        table: plan.table.clone(),
        services: plan
            .services
            .iter()
            .map(|s| shown(s, counters.get(&s.name), objects))
            .collect(),
        drift,
        enabled_sysctls: meta.enabled_sysctls.clone(),
        generation: meta.generation,
        digest: meta.digest.clone(),
    }
}

/// The nft backend: lift a dump; a service's counter is its chain's.
pub fn services(inst: &Installed) -> Shown {
    let plan = lift(&inst.ruleset);
    let counters = plan
        .services
        .iter()
        .filter_map(|s| Some((s.name.clone(), *inst.counters.get(&service_chain(&s.name))?)))
        .collect();
    from_plan(
        &plan,
        &counters,
        &inst.objects,
        crate::diff::drift(inst),
        &inst.meta,
    )
}

/// `place`: where the rules live, as `table inet svcnat in netns X`.
pub fn human(shown: &Shown, place: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{place}: {} service(s)", shown.services.len());
    if let (Some(g), Some(d)) = (shown.generation, &shown.digest) {
        let _ = writeln!(out, "generation {g}, map {d}");
    }
    if !shown.enabled_sysctls.is_empty() {
        let _ = writeln!(
            out,
            "sysctls switched on by svcnat: {}",
            shown.enabled_sysctls.join(", ")
        );
    }
    if !shown.services.is_empty() {
        let rows: Vec<[String; 6]> = shown
            .services
            .iter()
            .map(|s| {
                let targets: Vec<String> = s
                    .targets
                    .iter()
                    .map(|t| match t.weight {
                        1 => t.address.clone(),
                        w => format!("{}*{w}", t.address),
                    })
                    .collect();
                let flags = if s.masquerade { " (masquerade)" } else { "" };
                [
                    s.name.clone(),
                    s.protocol.to_string(),
                    s.listen.join(","),
                    format!("{}{flags}", targets.join(",")),
                    s.connections.map_or("-".into(), |c| c.to_string()),
                    s.bytes.map_or("-".into(), |c| c.to_string()),
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
        if shown.services.iter().any(|s| s.connections.is_none()) {
            let _ = writeln!(
                out,
                "(-: without accounting a service is DNAT map elements, without a counter; `accounting = true` counts every service)"
            );
        }
    }
    for d in &shown.drift {
        let _ = writeln!(out, "drift: {d}");
    }
    out
}
