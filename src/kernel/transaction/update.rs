//! The in-place update of an installed table: only the map elements and service chains
//! that differ are sent, when the table's shape allows it (`can_update`).

use super::{FlushChain, Transaction, cstring};
use crate::kernel::decode::Installed;
use crate::kernel::encode::key_bytes;
use crate::kernel::meta::TableMeta;
use crate::kernel::sets::{CounterObj, NfSet, SetMsg};
use crate::ruleset::{Chain, DnatElem, MapKind, Rule, Ruleset, Stmt};
use nftnl::{MsgType, ProtoFamily, Table};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;

/// Whether `desired` can be reached from what is installed by changing only map elements,
/// service chains and DNAT maps (with their lookup rules): the same base chains but for
/// those rules, the same verdict maps, DNAT maps present on both sides of the same size,
/// nothing svcnat does not recognise, and svcnat's bookkeeping set in place. Anything else
/// is replaced whole.
pub fn can_update(installed: &Installed, desired: &Ruleset) -> bool {
    // Base chains without their DNAT map lookups: those follow the maps (`dnat_lookups`).
    let base = |rs: &Ruleset| -> Vec<Chain> {
        rs.chains
            .iter()
            .filter(|c| c.hook.is_some())
            .map(|c| Chain {
                rules: c
                    .rules
                    .iter()
                    .filter(|r| !is_dnat_lookup(r))
                    .cloned()
                    .collect(),
                ..c.clone()
            })
            .collect()
    };
    let kinds = |rs: &Ruleset| -> Vec<MapKind> { rs.maps.iter().map(|m| m.kind).collect() };
    // A map's size is fixed when it is made: one that must grow is made again, whole.
    let resized = desired
        .dnat_maps
        .iter()
        .any(|m| (installed.ruleset.dnat_map(m.id)).is_some_and(|o| o.size != m.size));
    let families = |rs: &Ruleset| -> Vec<crate::plan::Family> {
        rs.accounts.iter().map(|a| a.family).collect()
    };
    let others = installed
        .ruleset
        .chains
        .iter()
        .any(|c| c.hook.is_none() && !c.name.starts_with(crate::ruleset::SERVICE_CHAIN_PREFIX));
    installed.unrecognized.is_empty()
        && installed.bookkeeping
        && !others
        && !resized
        && base(&installed.ruleset) == base(desired)
        && kinds(&installed.ruleset) == kinds(desired)
        && families(&installed.ruleset) == families(desired)
}

fn is_dnat_lookup(r: &Rule) -> bool {
    r.0.iter().any(|s| matches!(s, Stmt::DnatMap(_)))
}

impl Transaction {
    /// Turn the installed table into `rs` in place (see `can_update`): only the map
    /// elements and service chains that differ are touched, so a change to one service of
    /// 50,000 is a handful of messages, and connections through the others never notice.
    pub fn update_table(&mut self, installed: &Installed, rs: &Ruleset, meta: &TableMeta) {
        self.table = Some(rs.table.clone());
        let tname = cstring(&rs.table);
        let table = Table::new(tname.clone(), ProtoFamily::Inet);
        // The bookkeeping element: out with the old generation, in with the new.
        self.generation_element(&rs.table, &installed.meta, MsgType::Del);
        self.generation_element(&rs.table, meta, MsgType::Add);

        // DNAT maps that come (a first service of that many slots): the map, then the base
        // chains' rules again where their lookups changed, which binds it while empty;
        // maps that go, once no rule looks them up. Their elements follow below.
        let had = |id| installed.ruleset.dnat_map(id).is_some();
        let new_maps: Vec<_> = rs.dnat_maps.iter().filter(|m| !had(m.id)).collect();
        for m in &new_maps {
            let set = NfSet::dnat_map(&rs.table, m.id, m.size);
            self.add_set(&set, &format!("map {}", m.id.name()));
        }
        for c in rs.chains.iter().filter(|c| c.hook.is_some()) {
            let was = installed.ruleset.chain(&c.name).map(|o| &o.rules);
            if was != Some(&c.rules) {
                self.refill_chain((&table, &tname, &rs.table), c);
            }
        }
        for m in (installed.ruleset.dnat_maps.iter()).filter(|m| rs.dnat_map(m.id).is_none()) {
            let set = NfSet::dnat_map(&rs.table, m.id, m.size);
            self.batch.add(&SetMsg(&set), MsgType::Del);
            self.objects.push(format!("delete map {}", m.id.name()));
        }

        // DNAT map elements: a changed target or name is the old element out, the new one
        // in — in the same transaction, so no connection ever finds neither.
        for m in &rs.dnat_maps {
            let old = installed
                .ruleset
                .dnat_map(m.id)
                .map(|o| &o.elements[..])
                .unwrap_or(&[]);
            let want: HashSet<_> = m.elements.iter().collect();
            let have: HashSet<_> = old.iter().collect();
            let what = format!("map {}", m.id.name());
            let gone: Vec<DnatElem> = old.iter().filter(|e| !want.contains(e)).cloned().collect();
            self.dnat_elements(&rs.table, m.id, &gone, MsgType::Del, &what, usize::MAX);
            let new: Vec<DnatElem> = (m.elements.iter())
                .filter(|e| !have.contains(e))
                .cloned()
                .collect();
            self.dnat_elements(&rs.table, m.id, &new, MsgType::Add, &what, usize::MAX);
        }

        // Elements leaving each map, before the chains they lead to can go.
        let mut added = Vec::new();
        for m in &rs.maps {
            let old = installed
                .ruleset
                .map(m.kind)
                .map(|o| &o.elements[..])
                .unwrap_or(&[]);
            let want: HashSet<_> = m.elements.iter().collect();
            let have: HashSet<_> = old.iter().collect();
            let gone: Vec<_> = old.iter().filter(|e| !want.contains(e)).collect();
            if !gone.is_empty() {
                let set = NfSet::verdict_map(&rs.table, m.kind);
                for (key, _) in &gone {
                    set.add_elem(&key_bytes(key), None, None);
                }
                self.elements(&set, MsgType::Del, &format!("map {}", m.kind.name()));
            }
            let new: Vec<_> = m
                .elements
                .iter()
                .filter(|e| !have.contains(e))
                .cloned()
                .collect();
            if !new.is_empty() {
                added.push((m.kind, new));
            }
        }

        // Service chains: changed ones get their rules replaced, gone ones are emptied and
        // deleted, new ones created.
        let old: HashMap<&str, &Chain> = installed
            .ruleset
            .chains
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let new: HashSet<&str> = rs.chains.iter().map(|c| c.name.as_str()).collect();
        for c in rs.chains.iter().filter(|c| c.hook.is_none()) {
            let name = cstring(&c.name);
            let chain = Self::nl_chain(&table, &name, c);
            match old.get(c.name.as_str()) {
                Some(o) if o.rules == c.rules => {}
                Some(_) => self.refill_chain((&table, &tname, &rs.table), c),
                None => {
                    self.add(&chain, MsgType::Add, format!("add chain {}", c.name));
                    self.rules(&rs.table, &chain, c);
                }
            }
        }
        for o in installed
            .ruleset
            .chains
            .iter()
            .filter(|c| c.hook.is_none() && !new.contains(c.name.as_str()))
        {
            let name = cstring(&o.name);
            self.add(
                &FlushChain(&tname, &name),
                MsgType::Del,
                format!("flush chain {}", o.name),
            );
            let chain = nftnl::Chain::new(&name, &table);
            self.add(&chain, MsgType::Del, format!("delete chain {}", o.name));
        }

        // Per-target counters: elements leave their map before their counter goes; a new
        // counter exists before an element points at it.
        for a in &rs.accounts {
            let old = installed
                .ruleset
                .accounts
                .iter()
                .find(|o| o.family == a.family)
                .map(|o| &o.elements[..])
                .unwrap_or(&[]);
            let gone: Vec<_> = old.iter().filter(|e| !a.elements.contains(e)).collect();
            let new: Vec<_> = a.elements.iter().filter(|e| !old.contains(e)).collect();
            if !gone.is_empty() {
                let set = NfSet::account_map(&rs.table, a.family);
                for (target, name) in &gone {
                    set.add_account(target, name);
                }
                self.elements(&set, MsgType::Del, &format!("map {}", a.name()));
                for (_, name) in &gone {
                    let obj = CounterObj {
                        table: &rs.table,
                        name,
                    };
                    self.add(&obj, MsgType::Del, format!("delete counter {name}"));
                }
            }
            if !new.is_empty() {
                let set = NfSet::account_map(&rs.table, a.family);
                for (target, name) in &new {
                    let obj = CounterObj {
                        table: &rs.table,
                        name,
                    };
                    self.add(&obj, MsgType::Add, format!("add counter {name}"));
                    set.add_account(target, name);
                }
                self.elements(&set, MsgType::Add, &format!("map {}", a.name()));
            }
        }

        // Elements joining each map, now that their chains exist.
        for (kind, elements) in added {
            let set = NfSet::verdict_map(&rs.table, kind);
            for (key, chain) in &elements {
                set.add_elem(&key_bytes(key), None, Some(chain));
            }
            self.elements(&set, MsgType::Add, &format!("map {}", kind.name()));
        }
    }

    /// Chain `c`'s rules replaced by its own: flushed, then added again (one batch).
    fn refill_chain(&mut self, table: (&Table, &CString, &str), c: &Chain) {
        let (table, tname, table_name) = table;
        let name = cstring(&c.name);
        self.add(
            &FlushChain(tname, &name),
            MsgType::Del,
            format!("flush chain {}", c.name),
        );
        self.rules(table_name, &Self::nl_chain(table, &name, c), c);
    }
}
