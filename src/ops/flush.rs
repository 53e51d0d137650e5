//! flush: remove everything svcnat installed and undo what it switched on, recorded as a
//! generation `rollback` can undo.

use super::full::{header, next_number};
use super::outside::{clear_stale_flows, forward_accept};
use super::*;

/// What `remove` undid besides the table: sysctls switched off, and what changed outside
/// the table (svcnat's accept in DOCKER-USER).
pub(super) struct Removed {
    disabled: Vec<&'static str>,
    outside: Vec<String>,
}

/// Remove everything svcnat installed (if anything), switch off the sysctls it switched
/// on and take its accept out of DOCKER-USER (the lock is held). None when nothing was
/// there.
pub(super) fn remove(
    k: &mut dyn Kernel,
    backend: &Backend,
    table: &str,
) -> Result<Option<Removed>> {
    let undo = |k: &mut dyn Kernel, meta: &TableMeta| -> Result<Removed> {
        let changes = sysctl::prepare(k, &[], &meta.enabled_sysctls)?;
        let outside = forward_accept(k, false, meta.forward_accept)?;
        Ok(Removed {
            disabled: sysctl::write(k, changes)?.1,
            outside,
        })
    };
    if let Backend::Iptables(tool) = backend {
        let Some(meta) = xtables::flush(tool)? else {
            // Nothing in this flavour: say so if the other one holds svcnat's chains.
            if let Some(other) = k.iptables_holder().filter(|o| *o != tool.cmd) {
                return Err(Error::Usage(format!(
                    "nothing of svcnat's in {}: its SVCNAT-* chains are in {other}\n  fix: svcnat flush --backend iptables --iptables-cmd {other}",
                    tool.cmd
                )));
            }
            return Ok(None);
        };
        return undo(k, &meta).map(Some);
    }
    let mut retries = 0;
    loop {
        let genid = k.genid()?;
        let Some(meta) = k.table_meta(table)? else {
            return Ok(None);
        };
        // Checked before the table goes: a read-only /proc/sys fails with nothing changed.
        sysctl::prepare(k, &[], &meta.enabled_sysctls)?;
        match k.commit(Change::Delete { table }, genid) {
            Err(Error::Stale) if retries + 1 < MAX_ATTEMPTS => retries += 1,
            Err(e) => return Err(e),
            Ok(_) => return undo(k, &meta).map(Some),
        }
    }
}

/// What `flush` removed.
#[derive(Debug)]
pub struct Flushed {
    /// The sysctls switched off.
    pub disabled: Vec<&'static str>,
    /// The generation recorded for the flush (None: svcnat had recorded nothing here).
    pub generation: Option<u64>,
    /// The conntrack entries of the removed services deleted (None: none recorded).
    pub flows: Option<FlowsCleared>,
    /// What changed outside the table (svcnat's accept in DOCKER-USER taken out).
    pub outside: Vec<String>,
}

/// flush: delete svcnat's table, switch off the sysctls svcnat switched on, and record a
/// `Reason::Flush` generation so that `rollback` can bring back what was removed. None when
/// there was nothing to remove.
pub fn flush<E: Enter>(s: &mut Session<E>, t: &Target, table: &str) -> Result<Option<Flushed>> {
    s.last = None;
    s.kernel.enter(|k| {
        t.refuse_beside_run(k, table)?;
        let dir = state_dir(t, k)?;
        let _lock = dir.lock()?;
        let installed = current_meta(k, &t.backend, table)?.and_then(|m| m.generation);
        let Some(Removed { disabled, outside }) = remove(k, &t.backend, table)? else {
            return Ok(None);
        };
        Index::remove(&dir.path);
        // What was installed, as recorded: every flow DNATed by it is stale now.
        let was = match installed {
            Some(n) => dir.generation(n)?.map(|g| g.plan),
            None => None,
        };
        let flows = was
            .as_ref()
            .and_then(|was| clear_stale_flows(k, &Watch::all(was, t.conntrack)));
        // Recorded only where svcnat keeps records of this table: a flush of rules it never
        // recorded has nothing for a rollback to bring back.
        let generation = match dir.numbers()?.last() {
            Some(_) => {
                let number = next_number(&dir, installed)?;
                // Services changed = the services the flush removed, as recorded for the
                // generation it removed (0 when that record is gone).
                let removed = was.as_ref().map_or(0, |p| p.services.len());
                let empty = Desired {
                    plan: std::sync::Arc::new(Plan {
                        table: table.to_owned(),
                        services: Vec::new(),
                        accounting: false,
                        forward_accept: false,
                    }),
                    digest: String::new(),
                    source: "flush".into(),
                    sections: None,
                };
                let head = header(number, Reason::Flush, true, removed, &empty, &t.backend);
                dir.record(&Generation {
                    head,
                    plan: &*empty.plan,
                })?;
                Some(number)
            }
            None => None,
        };
        Ok(Some(Flushed {
            disabled,
            generation,
            flows,
            outside,
        }))
    })
}
