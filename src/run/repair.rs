//! `svcnat run` keeping its table against other programs: what the nf_tables monitor
//! (`kernel::monitor`) reports, the periodic check behind it, and the repair itself — the
//! whole table put back in one transaction, recorded as a `repair` generation.

use super::Runner;
use crate::kernel::Enter;
use crate::log;
use crate::state::Reason;
use std::time::{Duration, Instant};

/// Notifications of one change come in a burst (a firewall reload deletes and re-adds many
/// tables in a few transactions): wait this long after the first before repairing once.
pub(super) const REPAIR_DEBOUNCE: Duration = Duration::from_millis(20);
/// The backstop to the monitor: how often `run` checks that its table is still the one it
/// committed (missed notifications, or no monitor at all).
pub(super) const TABLE_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Runner {
    /// Take in what the nf_tables monitor saw: a change by someone else schedules a repair.
    pub(super) fn watch_table(&mut self, now: Instant) {
        let table = self.table();
        let own = self.session.kernel.portid();
        let Some(m) = &mut self.monitor else {
            return;
        };
        let seen = m.read(&table, own);
        if !seen.any() {
            return;
        }
        if seen.by.is_empty() {
            // Only lost notifications: svcnat's own big commits overflow the socket (50,000
            // elements are megabytes of them). Whether anything else changed the table, the
            // generation it records says; a repair only if it is not run's.
            self.check_table(now);
            return;
        }
        let mut who = seen.by;
        if seen.overrun {
            who.push("unknown (notifications were lost)".into());
        }
        match &mut self.repair {
            Some((_, _, all)) => all.extend(who),
            None => self.repair = Some((now + REPAIR_DEBOUNCE, now, who)),
        }
    }

    /// The backstop, and what lost notifications lead to: the table's recorded generation,
    /// read back, must be what run committed.
    pub(super) fn check_table(&mut self, now: Instant) {
        let (Some(want), None) = (self.synced_generation(), &self.repair) else {
            return;
        };
        let table = self.table();
        let have = self
            .session
            .kernel
            .enter(|k| k.table_meta(&table))
            .ok()
            .map(|m| m.and_then(|m| m.generation));
        if have.is_some_and(|g| g != Some(want)) {
            self.repair = Some((
                now,
                now,
                vec!["unknown (found by the periodic check)".into()],
            ));
        }
    }

    /// The generation run last installed, if it knows it.
    fn synced_generation(&self) -> Option<u64> {
        self.installed.as_ref()?;
        self.last_generation
    }

    /// Put the table back whole after someone else changed it.
    pub(super) fn repair(&mut self, seen_at: Instant, who: Vec<String>) {
        let mut who = who;
        who.dedup();
        log::warn(&format!(
            "table inet {} was changed by {}: re-installing it",
            self.table(),
            who.join(", ")
        ));
        if self.sync_as(Reason::Repair, "repair", true) {
            self.stats.repairs += 1;
            log::info(&format!(
                "repaired {:.1} ms after the change was seen",
                seen_at.elapsed().as_secs_f64() * 1e3
            ));
        }
    }
}
