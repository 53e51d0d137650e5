//! `history` and `rollback`: the recorded generations, and installing one of them again.

use super::FullReason;
use super::{Desired, Session, Synced, Target, current_meta, full, remove, state_dir};
use crate::error::{Error, Result};
use crate::kernel::Enter;
use crate::state::{Generation, Reason, StateDir};

/// A recorded generation, as `history` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The generation's number (`generation`, as `show` names the installed one).
    #[serde(rename = "generation")]
    pub number: u64,
    pub time: String,
    pub reason: &'static str,
    pub confirmed: bool,
    /// Services added, removed or changed against what was installed before.
    pub changed: usize,
    /// Services installed by it (0 for a flush): a count, where `show`'s `services` is
    /// the list.
    #[serde(rename = "service_count")]
    pub services: usize,
    pub digest: String,
    pub source: String,
    pub backend: String,
    /// Whether the kernel holds it now.
    pub installed: bool,
}

/// history: the recorded generations (oldest first), and the one the kernel holds.
pub fn history<E: Enter>(
    s: &mut Session<E>,
    t: &Target,
    table: &str,
) -> Result<(Vec<Entry>, Option<u64>, bool)> {
    s.kernel.enter(|k| {
        let dir = state_dir(t, k)?;
        let meta = current_meta(k, &t.backend, table)?;
        let current = meta.as_ref().and_then(|m| m.generation);
        let entries = dir
            .generations()?
            .into_iter()
            .filter(|g| g.plan.table == table)
            .map(|g| Entry {
                number: g.number(),
                confirmed: dir.confirmed(&g.head),
                time: g.head.time,
                reason: g.head.reason.name(),
                changed: g.head.changed,
                services: g.plan.services.len(),
                digest: g.head.digest,
                source: g.head.source,
                backend: g.head.backend,
                installed: Some(g.head.number) == current,
            })
            .collect();
        Ok((entries, current, meta.is_some()))
    })
}

/// What `status` found: the generation the kernel's table records (None: no table, or a
/// table without svcnat's record), the newest generation recorded in the state directory,
/// and whether a `svcnat run` keeps the table.
#[derive(Debug)]
pub struct Status {
    pub table: bool,
    pub installed: Option<u64>,
    pub recorded: Option<u64>,
    pub kept_by_run: bool,
}

impl Status {
    /// Healthy: the table is there, and holds the newest recorded generation (when there
    /// are records to compare with). Else why not.
    pub fn problem(&self) -> Option<String> {
        match (self.table, self.installed, self.recorded) {
            (false, _, _) => Some("nothing installed".into()),
            (true, Some(i), Some(r)) if i != r => Some(format!(
                "it holds generation {i}, but svcnat last recorded generation {r}: changed by another program or command"
            )),
            (true, None, Some(r)) => Some(format!(
                "it holds no generation record, but svcnat last recorded generation {r}"
            )),
            _ => None,
        }
    }
}

/// status: compare the table with the newest record, without changing anything.
pub fn status<E: Enter>(s: &mut Session<E>, t: &Target, table: &str) -> Result<Status> {
    s.kernel.enter(|k| {
        let meta = current_meta(k, &t.backend, table)?;
        let dir = state_dir(t, k)?;
        // Newest first, and only until one of this table: a healthcheck every few seconds
        // reads one record, not all ten (each holds a whole plan).
        let mut recorded = None;
        for n in dir.numbers()?.into_iter().rev() {
            if dir.generation(n)?.is_some_and(|g| g.plan.table == table) {
                recorded = Some(n);
                break;
            }
        }
        Ok(Status {
            table: meta.is_some(),
            installed: meta.and_then(|m| m.generation),
            recorded,
            kept_by_run: k.kept_by_run(table).unwrap_or(false),
        })
    })
}

/// What `rollback` re-installed.
#[derive(Debug)]
pub struct RolledBack {
    /// The generation installed before (None: nothing, e.g. after a flush).
    pub from: Option<u64>,
    /// The generation re-installed, as recorded then.
    pub to: Generation,
    pub done: Synced,
}

/// The generation `rollback` re-installs: `to`, else the newest one that installs
/// something different from what is installed now. After a flush, that is what the flush
/// removed; after a rollback, the state rolled back from (so two rollbacks in a row return
/// to where they began, as `cd -` does).
fn choose(
    dir: &StateDir,
    table: &str,
    current: Option<u64>,
    to: Option<u64>,
) -> Result<Generation> {
    let kept = dir.numbers()?;
    let listed = || numbers(&kept);
    if let Some(n) = to {
        let g = dir.generation(n)?.ok_or_else(|| {
            Error::Usage(format!(
                "generation {n} is not recorded for this namespace (kept: {})\n  fix: pick one from `svcnat history`",
                listed()
            ))
        })?;
        if g.removes() {
            return Err(Error::Usage(format!(
                "generation {n} is a flush: it installs nothing\n  fix: run `svcnat flush`, or pick another from `svcnat history`"
            )));
        }
        return Ok(g);
    }
    let installed = match current {
        Some(c) => dir.generation(c)?,
        None => None,
    };
    for &n in kept.iter().rev() {
        let Some(g) = dir.generation(n)? else {
            continue;
        };
        if g.removes() || g.plan.table != table || Some(n) == current {
            continue;
        }
        if installed.as_ref().is_some_and(|i| i.plan == g.plan) {
            continue;
        }
        return Ok(g);
    }
    Err(Error::Usage(match current {
        Some(c) => format!(
            "generation {c} is installed and no other recorded generation differs from it (kept: {})\n  fix: see `svcnat history`",
            listed()
        ),
        None => "nothing is recorded for this namespace: no apply to roll back to".into(),
    }))
}

/// rollback: re-install a recorded generation (see `choose`), recorded anew as a
/// `Reason::Rollback` generation.
pub fn rollback<E: Enter>(
    s: &mut Session<E>,
    t: &Target,
    table: &str,
    to: Option<u64>,
) -> Result<RolledBack> {
    let last = &mut s.last;
    s.kernel.enter(|k| {
        t.refuse_beside_run(k, table)?;
        let dir = state_dir(t, k)?;
        let _lock = dir.lock()?;
        let current = current_meta(k, &t.backend, table)?.and_then(|m| m.generation);
        let target = choose(&dir, table, current, to)?;
        if target.head.backend != t.backend.name() {
            return Err(Error::Usage(format!(
                "generation {} was installed with the {} backend\n  fix: pass --backend {}",
                target.number(),
                target.head.backend,
                target.head.backend
            )));
        }
        let desired = Desired {
            plan: std::sync::Arc::new(target.plan.clone()),
            digest: target.head.digest.clone(),
            source: target.head.source.clone(),
            sections: None,
        };
        let done = full(
            k,
            &dir,
            t,
            desired,
            FullReason::NotAMapFile,
            Reason::Rollback,
            true,
            last,
        )?;
        Ok(RolledBack {
            from: current,
            to: target,
            done,
        })
    })
}

/// Put back generation `previous` (or remove the table when there was none), recording it
/// as `reason`: for a commit-confirmed apply that was not confirmed (the lock is held).
/// Returns the generation put back.
pub(super) fn restore(
    k: &mut dyn crate::kernel::Kernel,
    dir: &StateDir,
    t: &super::Target,
    table: &str,
    previous: Option<u64>,
    reason: Reason,
) -> Result<Option<u64>> {
    let Some(n) = previous else {
        remove(k, &t.backend, table)?;
        return Ok(None);
    };
    let g = dir.generation(n)?.ok_or_else(|| Error::State {
        message: format!(
            "generation {n}, installed before, is no longer recorded in {}",
            dir.path.display()
        ),
    })?;
    let desired = Desired {
        plan: std::sync::Arc::new(g.plan),
        digest: g.head.digest,
        source: g.head.source,
        sections: None,
    };
    full(
        k,
        dir,
        t,
        desired,
        FullReason::NotAMapFile,
        reason,
        true,
        &mut None,
    )?;
    Ok(Some(n))
}

fn numbers(kept: &[u64]) -> String {
    if kept.is_empty() {
        return "none".into();
    }
    kept.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
