//! A kernel in memory, for tests of what `ops` and `state` decide — paths, reasons,
//! generations, rollback — without root (as knftables' `Fake` does for kube-proxy). A
//! change is applied to a copy of the tables and kept only when all of it succeeds; a
//! stale generation id or an injected rejection leaves everything as it was. The kernel
//! tests keep proving the bytes and the packets.

use super::decode::Installed;
use super::meta::TableMeta;
use super::sysctl::{self, PendingWrite, Sysctl};
use super::{Change, Enter, Kernel};
use crate::error::{Error, Result};
use crate::ruleset::Ruleset;
use nix::errno::Errno;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    /// The ruleset generation id; moves with every commit.
    pub genid: u32,
    /// Tables by name.
    pub tables: HashMap<String, (Ruleset, TableMeta)>,
    /// Sysctl values by key; absent reads as "0".
    pub sysctls: HashMap<&'static str, String>,
    /// Sysctls that refuse writes (a read-only /proc/sys).
    pub read_only: Vec<&'static str>,
    pub locals: Vec<IpAddr>,
    /// Refuse the next commit, as the kernel refuses a batch it cannot apply.
    pub reject_next: bool,
    /// Commits accepted, and the messages of the last one.
    pub commits: usize,
    pub last_commit: Vec<String>,
    pub cookie: u64,
    /// Tables another program made (no svcnat mark): reading them is refused, as the live
    /// kernel's decoder refuses.
    pub foreign: Vec<String>,
    /// The iptables flavour that holds svcnat's iptables rules, if any.
    pub iptables: Option<&'static str>,
    /// The conntrack table.
    pub flows: Vec<crate::conntrack::Flow>,
    /// Tables a `svcnat run` keeps.
    pub kept: Vec<String>,
    /// Other firewalls' forward chains that stop forwarded packets.
    pub blocks: Vec<crate::forward_drop::Block>,
    /// svcnat's accept in DOCKER-USER (there only when `docker_user` is).
    pub docker_user: bool,
    pub docker_user_accept: bool,
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel {
            genid: 1,
            cookie: 42,
            ..FakeKernel::default()
        }
    }

    /// Someone else commits in the namespace (moves the generation id).
    pub fn foreign_commit(&mut self) {
        self.genid = super::next_genid(self.genid);
    }

    pub fn ruleset(&self, table: &str) -> Option<&Ruleset> {
        self.tables.get(table).map(|(rs, _)| rs)
    }

    pub fn meta(&self, table: &str) -> Option<&TableMeta> {
        self.tables.get(table).map(|(_, m)| m)
    }

    fn owned(&self, table: &str) -> Result<()> {
        if self.foreign.iter().any(|t| t == table) {
            return Err(Error::ForeignTable {
                table: table.to_owned(),
            });
        }
        Ok(())
    }
}

impl Enter for FakeKernel {
    fn enter<T>(&mut self, f: impl FnOnce(&mut dyn Kernel) -> Result<T>) -> Result<T> {
        f(self)
    }
}

impl Kernel for FakeKernel {
    fn namespace(&self) -> (u64, &str) {
        (self.cookie, "fake")
    }

    fn genid(&mut self) -> Result<u32> {
        Ok(self.genid)
    }

    fn table_meta(&mut self, table: &str) -> Result<Option<TableMeta>> {
        self.owned(table)?;
        Ok(self.meta(table).cloned())
    }

    fn read_table(&mut self, table: &str) -> Result<Option<Installed>> {
        self.owned(table)?;
        Ok(self
            .tables
            .get(table)
            .map(|(ruleset, meta)| Installed::known(ruleset.clone(), meta.clone())))
    }

    fn commit(&mut self, change: Change<'_>, genid: u32) -> Result<Vec<String>> {
        if genid != self.genid {
            return Err(Error::Stale);
        }
        if std::mem::take(&mut self.reject_next) {
            return Err(rejected(
                "a message the fake was told to refuse".into(),
                Errno::EINVAL,
            ));
        }
        // On a copy: kept only when the whole change applies.
        let mut tables = self.tables.clone();
        let mut objects = Vec::new();
        match change {
            Change::Replace {
                ruleset,
                meta,
                absent,
                ..
            } => {
                if absent && tables.contains_key(&ruleset.table) {
                    return Err(rejected(
                        format!("add table inet {}", ruleset.table),
                        Errno::EEXIST,
                    ));
                }
                objects.push(format!("replace table inet {}", ruleset.table));
                tables.insert(ruleset.table.clone(), (ruleset.clone(), meta.clone()));
            }
            Change::Update {
                installed,
                ruleset,
                meta,
            } => {
                let (now, _) = tables
                    .get(&ruleset.table)
                    .ok_or_else(|| no_table(&ruleset.table))?;
                if *now != installed.ruleset {
                    // What the caller read is not what is there: the kernel's genid check
                    // would have caught this; the fake says so loudly.
                    return Err(Error::Stale);
                }
                objects.push(format!("update table inet {}", ruleset.table));
                tables.insert(ruleset.table.clone(), (ruleset.clone(), meta.clone()));
            }
            Change::Elements {
                table,
                before,
                meta,
                gone,
                new,
                sizes: _,
            } => {
                let (rs, m) = tables.get_mut(table).ok_or_else(|| no_table(table))?;
                if m != before {
                    return Err(rejected(
                        "delete the generation element".into(),
                        Errno::ENOENT,
                    ));
                }
                for (id, key) in gone {
                    let map = rs.dnat_maps.iter_mut().find(|d| d.id == *id);
                    let map = map.ok_or_else(|| no_table(&id.name()))?;
                    // Every slot of the key, as the kernel is sent them.
                    let before = map.elements.len();
                    map.elements.retain(|e| e.key != *key);
                    if before - map.elements.len() != usize::from(id.slots) {
                        return Err(rejected(
                            format!("delete elements of map {}", id.name()),
                            Errno::ENOENT,
                        ));
                    }
                    objects.push(format!("delete element of map {}", id.name()));
                }
                for (id, elem) in new {
                    let map = rs.dnat_maps.iter_mut().find(|d| d.id == *id);
                    let map = map.ok_or_else(|| no_table(&id.name()))?;
                    if (map.elements.iter()).any(|e| (e.key, e.slot) == (elem.key, elem.slot)) {
                        return Err(rejected(
                            format!("add elements to map {}", id.name()),
                            Errno::EEXIST,
                        ));
                    }
                    map.elements.push(elem.clone());
                    objects.push(format!("add element to map {}", id.name()));
                }
                *m = meta.clone();
            }
            Change::Delete { table } => {
                tables.remove(table).ok_or_else(|| no_table(table))?;
                objects.push(format!("delete table inet {table}"));
            }
        }
        self.tables = tables;
        self.genid = super::next_genid(self.genid);
        self.commits += 1;
        self.last_commit = objects.clone();
        Ok(objects)
    }

    fn local_addresses(&mut self) -> Vec<IpAddr> {
        self.locals.clone()
    }

    fn iptables_holder(&mut self) -> Option<&'static str> {
        self.iptables
    }

    fn read_sysctl(&mut self, s: &'static Sysctl) -> Result<String> {
        Ok(self
            .sysctls
            .get(s.key)
            .cloned()
            .unwrap_or_else(|| "0".into()))
    }

    fn open_sysctl(
        &mut self,
        s: &'static Sysctl,
        value: &'static [u8],
        why: String,
    ) -> Result<PendingWrite> {
        if self.read_only.contains(&s.key) {
            return Err(sysctl::cannot_set(s, value, &why, "read-only file system"));
        }
        Ok(PendingWrite::detached(s, value))
    }

    fn write_sysctl(&mut self, w: PendingWrite) -> Result<()> {
        let value = String::from_utf8_lossy(w.value).trim().to_owned();
        self.sysctls.insert(w.sysctl.key, value);
        w.write()
    }

    fn forward_blocks(&mut self, _own: &str) -> Result<Vec<crate::forward_drop::Block>> {
        Ok(self.blocks.clone())
    }

    fn docker_user_accept(&mut self, want: bool) -> Result<Vec<String>> {
        if !self.docker_user || self.docker_user_accept == want {
            return Ok(Vec::new());
        }
        self.docker_user_accept = want;
        Ok(vec![format!(
            "{} DOCKER-USER accept",
            if want { "added" } else { "removed" }
        )])
    }

    fn kept_by_run(&mut self, table: &str) -> Result<bool> {
        Ok(self.kept.iter().any(|t| t == table))
    }

    fn clear_conntrack(
        &mut self,
        protos: &[crate::validate::Proto],
        stale: &dyn Fn(&crate::conntrack::Flow) -> bool,
    ) -> Result<super::conntrack::Cleared> {
        let examined = self.flows.len();
        self.flows
            .retain(|f| !(f.dst_nat && protos.contains(&f.proto) && stale(f)));
        Ok(super::conntrack::Cleared {
            examined,
            deleted: examined - self.flows.len(),
        })
    }
}

/// The kernel's refusal of the message that did `object`.
fn rejected(object: String, errno: nix::errno::Errno) -> Error {
    Error::KernelRejected {
        object,
        errno,
        hint: None,
    }
}

fn no_table(name: &str) -> Error {
    rejected(format!("{name} (not in the fake kernel)"), Errno::ENOENT)
}
