//! The reverse of `ruleset::lower`: the kernel's Ruleset → the Plan that would produce it,
//! and the structural differences between two Rulesets.
//!
//! `lift(lower(plan)) == plan` for every valid plan (tested on every bundled map, through
//! the kernel). What a hand edit adds or removes shows up as a difference between the
//! kernel's Ruleset and `lower(lift(kernel))`: that is drift.

use crate::plan::{Family, Plan, Service, Target};
use crate::ruleset::{
    Chain, DnatElem, DnatId, MapKey, MapKind, Rule, Ruleset, SERVICE_CHAIN_PREFIX, Stmt,
};
use crate::validate::Listen;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Group a slot list back into weighted targets (slot i repeats a target `weight` times;
/// validation forbids listing one target twice, so runs are unambiguous).
fn weighted(slots: &[SocketAddr]) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for s in slots {
        match out.last_mut() {
            Some(t) if t.addr == *s => t.weight += 1,
            _ => out.push(Target {
                addr: *s,
                weight: 1,
            }),
        }
    }
    out
}

/// The services the kernel's table implements, by name. A service chain without a DNAT
/// rule, or not reachable from any map, is not a service: it will show up as drift.
pub fn lift(rs: &Ruleset) -> Plan {
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
        let Some(main) = c.rules.iter().find(|r| {
            r.0.iter()
                .any(|s| matches!(s, Stmt::DnatTo(_) | Stmt::DnatNumgen(_)))
        }) else {
            continue;
        };
        let mut proto = None;
        let mut masquerade = false;
        let mut targets = Vec::new();
        for s in &main.0 {
            match s {
                Stmt::L4proto(p) => proto = Some(*p),
                Stmt::MarkSet(_) => masquerade = true,
                Stmt::DnatTo(a) => targets = weighted(&[*a]),
                Stmt::DnatNumgen(slots) => targets = weighted(slots),
                _ => {}
            }
        }
        let Some(proto) = proto else { continue };
        let mut listen = None;
        let mut localhost = false;
        for (kind, key) in keys.get(c.name.as_str()).into_iter().flatten() {
            match kind {
                MapKind::Loopback => localhost = true,
                _ if listen.is_none() => listen = Some(Listen::one(key.addr, key.port)),
                _ => {}
            }
        }
        let Some(listen) = listen else { continue };
        services.push(Service {
            name: name.to_owned(),
            proto,
            family: Family::of(&targets[0].addr.ip()),
            listen,
            targets: targets.into(),
            masquerade,
            localhost,
        });
    }
    // DNAT map elements: a service's listen key (one element per slot), and its loopback
    // key with `localhost`.
    let mut direct: Vec<Service> = Vec::new();
    let mut loopback: Vec<&str> = Vec::new();
    for m in &rs.dnat_maps {
        if m.id.kind == MapKind::Loopback {
            loopback.extend(
                m.elements
                    .iter()
                    .filter(|e| e.slot == 0)
                    .map(|e| e.service.as_str()),
            );
            continue;
        }
        // A service's slots share its key; the first names it (`DnatElem::of`). Only a
        // whole set of them is a service, named on slot 0 alone: a slot missing, doubled or
        // named otherwise is drift, which `differences` shows. Slots numgen never draws
        // are no part of a service.
        let mut slots: HashMap<MapKey, Vec<&DnatElem>> = HashMap::new();
        let mut order = Vec::new();
        for e in m.elements.iter().filter(|e| e.slot < m.id.slots) {
            let group = slots.entry(e.key).or_default();
            if group.is_empty() {
                order.push(e.key);
            }
            group.push(e);
        }
        for key in order {
            let mut group = slots.remove(&key).unwrap_or_default();
            group.sort_by_key(|e| e.slot);
            let whole = group.len() == usize::from(m.id.slots)
                && group
                    .iter()
                    .enumerate()
                    .all(|(i, e)| usize::from(e.slot) == i && (i == 0) != e.service.is_empty());
            if !whole {
                continue;
            }
            let targets: Vec<SocketAddr> = group.iter().map(|e| e.target).collect();
            direct.push(Service {
                name: group[0].service.to_string(),
                proto: key.proto,
                family: m.id.family(),
                listen: Listen::one(key.addr, key.port),
                targets: weighted(&targets).into(),
                masquerade: m.id.masquerades(),
                localhost: false,
            });
        }
    }
    for s in &mut direct {
        s.localhost = loopback.contains(&s.name.as_str());
    }
    services.extend(merge_ranges(direct));
    // Map elements come back in the kernel's hash order: name order is the stable one.
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Plan {
        table: rs.table.clone(),
        services,
        accounting: !rs.accounts.is_empty(),
        // Not in svcnat's table: it is a rule in Docker's chain (`forward_drop`).
        forward_accept: false,
    }
}

/// A port range service is an element per port, all commented with its name: put
/// consecutive ports of one name, each to the next port of one target, back together.
fn merge_ranges(mut direct: Vec<Service>) -> Vec<Service> {
    direct.sort_by(|a, b| (&a.name, a.listen.port).cmp(&(&b.name, b.listen.port)));
    let mut out: Vec<Service> = Vec::with_capacity(direct.len());
    for s in direct {
        if let Some(prev) = out.last_mut()
            && prev.name == s.name
            && prev.proto == s.proto
            && prev.localhost == s.localhost
            && prev.masquerade == s.masquerade
            && prev.listen.addr == s.listen.addr
            && u32::from(prev.listen.last) + 1 == u32::from(s.listen.port)
            && prev.targets[0].addr.ip() == s.targets[0].addr.ip()
            && u32::from(prev.last_target_port(&prev.targets[0])) + 1
                == u32::from(s.targets[0].addr.port())
        {
            prev.listen.last = s.listen.port;
            continue;
        }
        out.push(s);
    }
    out
}

/// One structural difference: `expected` lacks what `actual` has (Extra), or the reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A map (by name) on one side only.
    MissingMap(String),
    ExtraMap(String),
    MissingDnat(DnatId, DnatElem),
    ExtraDnat(DnatId, DnatElem),
    MissingElement(MapKind, MapKey, String),
    ExtraElement(MapKind, MapKey, String),
    MissingChain(String),
    ExtraChain(String),
    /// A target counted (by `settings.accounting`) on one side only.
    MissingAccount(SocketAddr),
    ExtraAccount(SocketAddr),
    /// The chain exists on both sides with other rules (or another hook).
    ChainRules {
        chain: String,
        missing: Vec<Rule>,
        extra: Vec<Rule>,
    },
}

impl Difference {
    /// One line in nft's words, prefixed `+` (in the kernel, not expected) or `-` (expected,
    /// not in the kernel).
    pub fn lines(&self) -> Vec<String> {
        use crate::render::nft::{key_text, stmt_text};
        let rule = |r: &Rule| r.0.iter().map(stmt_text).collect::<Vec<_>>().join(" ");
        match self {
            Difference::MissingMap(name) => vec![format!("- map {name}")],
            Difference::ExtraMap(name) => vec![format!("+ map {name}")],
            Difference::MissingDnat(k, e) | Difference::ExtraDnat(k, e) => {
                let sign = if matches!(self, Difference::MissingDnat(..)) {
                    '-'
                } else {
                    '+'
                };
                let comment = match e.service.as_str() {
                    "" => String::new(),
                    name => format!(" comment \"{name}\""),
                };
                let slot = match k.slots {
                    1 => String::new(),
                    _ => format!(" . {}", e.slot),
                };
                vec![format!(
                    "{sign} element {}: {}{slot}{comment} : {} . {}",
                    k.name(),
                    key_text(k.kind, &e.key),
                    e.target.ip(),
                    e.target.port()
                )]
            }
            Difference::MissingElement(k, key, c) => {
                vec![format!(
                    "- element {}: {} : goto {c}",
                    k.name(),
                    key_text(*k, key)
                )]
            }
            Difference::ExtraElement(k, key, c) => {
                vec![format!(
                    "+ element {}: {} : goto {c}",
                    k.name(),
                    key_text(*k, key)
                )]
            }
            Difference::MissingAccount(a) => vec![format!(
                "- counter {} for target {a}",
                crate::ruleset::counter_name(a)
            )],
            Difference::ExtraAccount(a) => vec![format!(
                "+ counter {} for target {a}",
                crate::ruleset::counter_name(a)
            )],
            Difference::MissingChain(c) => vec![format!("- chain {c}")],
            Difference::ExtraChain(c) if c.starts_with(SERVICE_CHAIN_PREFIX) => {
                vec![format!("+ chain {c} (no map element leads to it)")]
            }
            Difference::ExtraChain(c) => vec![format!("+ chain {c}")],
            Difference::ChainRules {
                chain,
                missing,
                extra,
            } => missing
                .iter()
                .map(|r| format!("- rule in chain {chain}: {}", rule(r)))
                .chain(
                    extra
                        .iter()
                        .map(|r| format!("+ rule in chain {chain}: {}", rule(r))),
                )
                .collect(),
        }
    }
}

/// What differs between the Ruleset svcnat expects and the one the kernel holds.
pub fn differences(expected: &Ruleset, actual: &Ruleset) -> Vec<Difference> {
    let mut out = Vec::new();
    for kind in MapKind::ALL {
        match (expected.map(kind), actual.map(kind)) {
            (Some(_), None) => out.push(Difference::MissingMap(kind.name().into())),
            (None, Some(_)) => out.push(Difference::ExtraMap(kind.name().into())),
            (Some(e), Some(a)) => {
                let want: HashMap<&MapKey, &String> =
                    e.elements.iter().map(|(k, c)| (k, c)).collect();
                let have: HashMap<&MapKey, &String> =
                    a.elements.iter().map(|(k, c)| (k, c)).collect();
                for (k, c) in &e.elements {
                    if have.get(k) != Some(&c) {
                        out.push(Difference::MissingElement(kind, *k, c.clone()));
                    }
                }
                for (k, c) in &a.elements {
                    if want.get(k) != Some(&c) {
                        out.push(Difference::ExtraElement(kind, *k, c.clone()));
                    }
                }
            }
            (None, None) => {}
        }
    }
    let mut ids: Vec<DnatId> = (expected.dnat_maps.iter())
        .chain(&actual.dnat_maps)
        .map(|m| m.id)
        .collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        match (expected.dnat_map(id), actual.dnat_map(id)) {
            (Some(_), None) => out.push(Difference::MissingMap(id.name().into())),
            (None, Some(_)) => out.push(Difference::ExtraMap(id.name().into())),
            (Some(e), Some(a)) => {
                let want: HashSet<&DnatElem> = e.elements.iter().collect();
                let have: HashSet<&DnatElem> = a.elements.iter().collect();
                for x in e.elements.iter().filter(|x| !have.contains(x)) {
                    out.push(Difference::MissingDnat(id, x.clone()));
                }
                for x in a.elements.iter().filter(|x| !want.contains(x)) {
                    out.push(Difference::ExtraDnat(id, x.clone()));
                }
            }
            (None, None) => {}
        }
    }
    let have: HashMap<&str, &Chain> = actual.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let want: HashMap<&str, &Chain> = expected
        .chains
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    for f in [Family::V4, Family::V6] {
        let want = expected.accounts.iter().find(|a| a.family == f);
        let have = actual.accounts.iter().find(|a| a.family == f);
        let none = Vec::new();
        let (w, h) = (
            want.map_or(&none, |a| &a.elements),
            have.map_or(&none, |a| &a.elements),
        );
        for e in w.iter().filter(|e| !h.contains(e)) {
            out.push(Difference::MissingAccount(e.0));
        }
        for e in h.iter().filter(|e| !w.contains(e)) {
            out.push(Difference::ExtraAccount(e.0));
        }
    }
    for e in &expected.chains {
        match have.get(e.name.as_str()) {
            None => out.push(Difference::MissingChain(e.name.clone())),
            Some(a) if a.rules != e.rules || a.hook != e.hook => {
                let missing = e
                    .rules
                    .iter()
                    .filter(|r| !a.rules.contains(r))
                    .cloned()
                    .collect();
                let extra = a
                    .rules
                    .iter()
                    .filter(|r| !e.rules.contains(r))
                    .cloned()
                    .collect();
                out.push(Difference::ChainRules {
                    chain: e.name.clone(),
                    missing,
                    extra,
                });
            }
            Some(_) => {}
        }
    }
    for a in &actual.chains {
        if !want.contains_key(a.name.as_str()) {
            out.push(Difference::ExtraChain(a.name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::plan_from_source;
    use crate::map::Source;
    use crate::resolve::Resolver;
    use crate::ruleset::lower;

    fn bundled() -> Vec<Plan> {
        let mut hosts = HashMap::new();
        hosts.insert(
            "host.docker.internal".to_owned(),
            "10.99.0.1".parse().unwrap(),
        );
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rulesets");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        let mut plans = Vec::new();
        for p in paths {
            if p.extension().is_some_and(|x| x == "toml") {
                let src = Source::new(
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                );
                plans.push(
                    plan_from_source(src, Resolver::new(hosts.clone()))
                        .unwrap()
                        .0,
                );
            }
        }
        assert!(plans.len() >= 3);
        plans
    }

    #[test]
    fn lift_inverts_lower() {
        for plan in bundled() {
            let rs = lower(&plan);
            let mut by_name = plan.clone();
            by_name.services.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(lift(&rs), by_name);
            assert!(differences(&rs, &lower(&lift(&rs))).is_empty());
        }
    }

    #[test]
    fn hand_edits_are_differences() {
        let plan = bundled()
            .into_iter()
            .find(|p| p.services[0].name == "web1")
            .unwrap();
        let plan = &plan;
        let expected = lower(plan);
        let mut actual = expected.clone();
        // nft delete element … dnat-vip4-n2 { 172.18.1.1 . tcp . 8083 . 1 };
        // nft delete element … dnat-lo4 { tcp . 8082 }
        let vip = actual
            .dnat_maps
            .iter_mut()
            .find(|m| m.id.slots == 2)
            .unwrap();
        vip.elements.retain(|e| e.slot != 1);
        let lo4 = actual
            .dnat_maps
            .iter_mut()
            .find(|m| m.id.kind == MapKind::Loopback)
            .unwrap();
        lo4.elements.retain(|e| e.key.port != 8082);
        let lines: Vec<String> = differences(&expected, &actual)
            .iter()
            .flat_map(|d| d.lines())
            .collect();
        assert_eq!(
            lines,
            [
                "- element dnat-vip4-n2: 172.18.1.1 . tcp . 8083 . 1 : 172.18.0.3 . 8000",
                "- element dnat-lo4: tcp . 8082 comment \"web2\" : 172.18.0.3 . 8000",
            ]
        );
        // A service missing a slot is no service: what is left of it is drift (here the
        // whole map, as it was the map's only service), not a service of one target.
        let lifted = lift(&actual);
        assert!(
            lifted.services.iter().all(|s| s.name != "web-vip"),
            "{lifted:?}"
        );
        let drift: Vec<String> = differences(&lower(&lifted), &actual)
            .iter()
            .flat_map(|d| d.lines())
            .collect();
        assert_eq!(drift[0], "+ map dnat-vip4-n2", "{drift:?}");
    }
}
