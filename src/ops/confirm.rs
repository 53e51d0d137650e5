//! apply --confirm and `svcnat confirm`: a commit that stays only if it is confirmed in
//! time, else what was there before is installed again.

use super::history::restore;
use super::{Desired, FullReason, Session, Synced, Target, current_meta, full, state_dir};
use crate::error::{Error, Result};
use crate::kernel::Enter;
use crate::state::{self, Reason, index::Index};
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a commit-confirmed apply ended.
#[derive(Debug)]
pub enum Confirmation {
    Confirmed,
    /// Not confirmed in time (or interrupted): the previous generation, or nothing, is back.
    RolledBack {
        to: Option<u64>,
        why: &'static str,
    },
}

static ENTER_PRESSED: AtomicBool = AtomicBool::new(false);

/// apply --confirm: install (recorded unconfirmed), then keep the lock and wait for
/// `svcnat confirm` (or Enter on a terminal) until the window closes; otherwise re-install
/// what was there before, recorded as `confirm-timeout`. Losing the terminal (SIGHUP) does
/// not stop the wait — that is when a rollback matters most; SIGINT/SIGTERM roll back at
/// once. `ready` is told once the new rules are in.
pub fn apply_confirmed<E: Enter>(
    s: &mut Session<E>,
    t: &Target,
    desired: Desired,
    window: Duration,
    ready: impl FnOnce(&Synced, Option<u64>),
) -> Result<Confirmation> {
    let table = desired.plan.table.clone();
    s.last = None;
    // Blocked before the terminal thread starts, so that it inherits the mask.
    let signals = crate::signals::block(&[
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ])?;
    s.kernel.enter(|k| {
        let dir = state_dir(t, k)?;
        let _lock = dir.lock()?;
        let previous = current_meta(k, &t.backend, &table)?.and_then(|m| m.generation);
        let done = full(
            k,
            &dir,
            t,
            desired,
            FullReason::Confirm,
            Reason::Apply,
            false,
            &mut None,
        )?;
        Index::remove(&dir.path);
        let Some(generation) = done
            .generation
            .filter(|_| done.path != super::SyncPath::Unchanged)
        else {
            // Nothing changed: there is nothing to confirm or roll back.
            ready(&done, previous);
            return Ok(Confirmation::Confirmed);
        };
        dir.set_pending(&state::Pending {
            generation,
            pid: std::process::id(),
            deadline: state::now() + window.as_secs().max(1),
        })?;
        if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
            std::thread::spawn(|| {
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                    ENTER_PRESSED.store(true, Ordering::SeqCst);
                }
            });
        }
        ready(&done, previous);
        let end = Instant::now() + window;
        let why = loop {
            if dir.pending().is_none() {
                return Ok(Confirmation::Confirmed); // `svcnat confirm` settled it
            }
            if ENTER_PRESSED.load(Ordering::SeqCst) && dir.claim_pending("confirmed")?.is_some() {
                dir.confirm(generation)?;
                return Ok(Confirmation::Confirmed);
            }
            let got = crate::signals::pending(&signals);
            if got
                .iter()
                .any(|s| matches!(s, Signal::SIGINT | Signal::SIGTERM))
            {
                break "interrupted";
            }
            if Instant::now() >= end {
                break "not confirmed in time";
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if dir.claim_pending("expired")?.is_none() {
            return Ok(Confirmation::Confirmed); // confirm won the race
        }
        let to = restore(k, &dir, t, &table, previous, Reason::ConfirmTimeout)?;
        Ok(Confirmation::RolledBack { to, why })
    })
}

/// confirm: settle a pending commit-confirmed apply so it stays. Ok(generation).
pub fn confirm<E: Enter>(s: &mut Session<E>, t: &Target) -> Result<u64> {
    s.kernel.enter(|k| {
        let dir = state_dir(t, k)?;
        match dir.claim_pending("confirmed")? {
            Some(p) => {
                dir.confirm(p.generation)?;
                Ok(p.generation)
            }
            None => Err(Error::NothingPending),
        }
    })
}
