//! Plan → Ruleset: only what the plan needs is created.

use super::*;
use crate::plan::{Plan, Service};

/// Whether a service is DNAT map elements rather than a chain: whenever no per-service
/// flow counter is wanted (accounting off). Masqueraded or not, one slot or many: each
/// combination has its map.
pub fn is_direct(_s: &Service, accounting: bool) -> bool {
    !accounting
}

pub fn service_chain(name: &str) -> String {
    format!("{SERVICE_CHAIN_PREFIX}{name}")
}

/// Lower a Plan into the objects to install. Only what the plan needs is created: no
/// empty maps, no masquerade chain without masquerading services, no loopback guard
/// without `localhost` services.
pub fn lower(plan: &Plan) -> Ruleset {
    let mut maps: Vec<VerdictMap> = MapKind::ALL
        .into_iter()
        .map(|kind| VerdictMap {
            kind,
            elements: Vec::new(),
        })
        .collect();
    let mut dnat_maps: Vec<DnatMap> = Vec::new();
    let index_of = |kind: MapKind| MapKind::ALL.iter().position(|k| *k == kind).expect("known");
    let (mut masquerades, mut localhost) = (false, false);
    let mut service_chains = Vec::new();
    for s in &plan.services {
        let direct = is_direct(s, plan.accounting);
        masquerades |= s.masquerade || s.localhost;
        localhost |= s.localhost;
        let key = MapKey {
            addr: s.listen.addr,
            proto: s.proto,
            port: s.listen.port,
        };
        if direct {
            let id = DnatId::of(s);
            let mut add = |id: DnatId, key: MapKey| {
                let m = dnat_map_for(&mut dnat_maps, id, plan.services.len());
                if s.listen.is_range() {
                    // A port range: an element per port, each to its shifted target port
                    // (nftables cannot add an offset to a port in the DNAT itself).
                    for (port, target) in s.port_pairs(&s.targets[0]) {
                        m.elements.push(DnatElem {
                            key: MapKey { port, ..key },
                            slot: 0,
                            target,
                            service: crate::short::Short::new(&s.name),
                        });
                    }
                } else {
                    m.elements.extend(DnatElem::of(key, s));
                }
            };
            add(id, key);
            if s.localhost {
                add(
                    id.with_kind(MapKind::Loopback),
                    MapKey { addr: None, ..key },
                );
            }
            continue;
        }
        let chain = service_chain_of(s);
        maps[index_of(MapKind::of(s))]
            .elements
            .push((key, chain.name.clone()));
        if s.localhost {
            maps[index_of(MapKind::Loopback)]
                .elements
                .push((MapKey { addr: None, ..key }, chain.name.clone()));
        }
        service_chains.push(chain);
    }
    maps.retain(|m| !m.elements.is_empty());
    // One order whatever the services' order: by kind, then slot count.
    dnat_maps.sort_by_key(|m| m.id);
    for m in &mut dnat_maps {
        m.size = dnat_map_size(m.elements.len());
    }
    let has = |k: MapKind| maps.iter().any(|m| m.kind == k);

    // Arriving traffic (prerouting) and local processes (output) look services up the same
    // way, except that only output may reach a service through 127.0.0.1.
    // Each kind of lookup is one rule per map: the DNAT maps' (by slot count), then the
    // verdict map's.
    let lookups = |hook: BaseHook| {
        let mut rules = Vec::new();
        let mut both = |prefix: Vec<Stmt>, kind: MapKind| {
            for m in dnat_maps.iter().filter(|m| m.id.kind == kind) {
                let mut r = prefix.clone();
                r.push(Stmt::DnatMap(m.id));
                rules.push(Rule(r));
            }
            if has(kind) {
                let mut r = prefix;
                r.push(Stmt::Vmap(kind));
                rules.push(Rule(r));
            }
        };
        for f in [Family::V4, Family::V6] {
            both(Vec::new(), MapKind::Vip(f));
            both(Vec::new(), MapKind::VipPlain(f));
        }
        if hook == BaseHook::Output {
            let lo = Stmt::DaddrLoopback {
                family: Family::V4,
                negate: false,
            };
            both(vec![lo], MapKind::Loopback);
        }
        for f in [Family::V4, Family::V6] {
            // Loopback destinations are excluded: in prerouting they would be the
            // CVE-2020-8558 hole, in output they belong to `localhost = true` only.
            let not_lo = Stmt::DaddrLoopback {
                family: f,
                negate: true,
            };
            both(vec![not_lo.clone(), Stmt::FibDaddrLocal], MapKind::Port(f));
            both(vec![not_lo, Stmt::FibDaddrLocal], MapKind::PortPlain(f));
        }
        rules
    };

    let mut accounts: Vec<AccountMap> = Vec::new();
    if plan.accounting {
        for f in [Family::V4, Family::V6] {
            let mut elements: Vec<(SocketAddr, String)> = Vec::new();
            for t in plan
                .services
                .iter()
                .filter(|s| s.family == f)
                .flat_map(|s| &s.targets)
            {
                if !elements.iter().any(|(a, _)| *a == t.addr) {
                    elements.push((t.addr, counter_name(&t.addr)));
                }
            }
            if !elements.is_empty() {
                accounts.push(AccountMap {
                    family: f,
                    elements,
                });
            }
        }
    }

    let mut chains = Vec::new();
    if !plan.services.is_empty() {
        for hook in [BaseHook::Prerouting, BaseHook::Output] {
            chains.push(Chain {
                name: hook.chain_name().to_owned(),
                hook: Some(hook),
                rules: lookups(hook),
            });
        }
    }
    if masquerades {
        chains.push(Chain {
            name: BaseHook::Postrouting.chain_name().to_owned(),
            hook: Some(BaseHook::Postrouting),
            rules: vec![Rule(vec![Stmt::MarkTest(MASQ_MARK), Stmt::Masquerade])],
        });
    }
    if localhost {
        // CVE-2020-8558 mitigation, as kube-proxy does: with route_localnet on, drop what
        // arrives from outside for 127.0.0.0/8 unless svcnat redirected it.
        chains.push(Chain {
            name: BaseHook::Input.chain_name().to_owned(),
            hook: Some(BaseHook::Input),
            rules: vec![Rule(vec![
                Stmt::IifnameNotLo,
                Stmt::DaddrLoopback {
                    family: Family::V4,
                    negate: false,
                },
                Stmt::CtNotDnat,
                Stmt::Drop,
            ])],
        });
    }
    if !accounts.is_empty() {
        // Arriving packets both ways (forwarded, and replies to local clients), then what
        // local processes send towards a target.
        let rule = |family, reply| {
            Rule(vec![
                Stmt::CtDnat,
                Stmt::CtDirection { reply },
                Stmt::CountTarget { family, reply },
            ])
        };
        let families: Vec<Family> = accounts.iter().map(|a| a.family).collect();
        chains.push(Chain {
            name: BaseHook::AccountPre.chain_name().to_owned(),
            hook: Some(BaseHook::AccountPre),
            rules: families
                .iter()
                .flat_map(|f| [rule(*f, false), rule(*f, true)])
                .collect(),
        });
        chains.push(Chain {
            name: BaseHook::AccountOut.chain_name().to_owned(),
            hook: Some(BaseHook::AccountOut),
            rules: families.iter().map(|f| rule(*f, false)).collect(),
        });
    }
    chains.append(&mut service_chains);
    Ruleset {
        table: plan.table.clone(),
        maps,
        dnat_maps,
        accounts,
        chains,
    }
}

/// The DNAT map `id` in `maps`, added (with room for `room` elements) when it is not yet.
/// Room not written to is address space only, never touched: grown by doubling, 50,000
/// elements were copied about three times over.
fn dnat_map_for(maps: &mut Vec<DnatMap>, id: DnatId, room: usize) -> &mut DnatMap {
    let at = match maps.iter().position(|m| m.id == id) {
        Some(at) => at,
        None => {
            maps.push(DnatMap {
                id,
                elements: Vec::with_capacity(room * usize::from(id.slots)),
                size: 0,
            });
            maps.len() - 1
        }
    };
    &mut maps[at]
}

fn service_chain_of(s: &Service) -> Chain {
    let mut rules = Vec::new();
    if s.localhost && !s.masquerade {
        // A connection from 127.0.0.1 cannot leave the host with that source: masquerade it
        // even when the service does not masquerade others.
        rules.push(Rule(vec![Stmt::SaddrLoopback, Stmt::MarkSet(MASQ_MARK)]));
    }
    let mut main = vec![Stmt::L4proto(s.proto), Stmt::Counter];
    if s.masquerade {
        main.push(Stmt::MarkSet(MASQ_MARK));
    }
    let slots: Vec<SocketAddr> = s.slots().collect();
    main.push(if slots.len() == 1 {
        Stmt::DnatTo(slots[0])
    } else {
        Stmt::DnatNumgen(slots)
    });
    rules.push(Rule(main));
    Chain {
        name: service_chain(&s.name),
        hook: None,
        rules,
    }
}
