//! apply --confirm and `svcnat confirm`: a commit that stays only if it is confirmed in
//! time, else what was there before is installed again.

use super::{Installed, Target, apply_locked, current_meta, install, remove, state_dir};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::kernel;
use crate::plan::Plan;
use crate::state;
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static ENTER_PRESSED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// apply --confirm: install, then keep the lock and wait for `svcnat confirm` (or Enter on
/// a terminal) until the window closes; otherwise re-install what was there before. Losing
/// the terminal (SIGHUP) does not stop the wait — that is when a rollback matters most;
/// SIGINT/SIGTERM roll back at once. `ready` is told once the new rules are in.
pub fn apply_confirmed(
    t: &Target,
    plan: &Plan,
    digest: &str,
    source: &str,
    window: Duration,
    ready: impl FnOnce(&Installed, Option<u64>),
) -> Result<Confirmation> {
    kernel::within(t.netns.as_ref(), |ctx| {
        let dir = state_dir(t, ctx)?;
        let _lock = dir.lock()?;
        let before = current_meta(ctx, &t.backend, &plan.table)?;
        let previous = before.as_ref().and_then(|m| m.generation);
        let locals = kernel::local_addresses();
        let (done, ()) = apply_locked(
            ctx,
            &t.backend,
            &dir,
            plan,
            digest,
            source,
            None,
            &locals,
            || (),
        )?;
        Index::remove(&dir.path);
        dir.set_pending(&state::Pending {
            generation: done.generation,
            pid: std::process::id(),
            deadline: state::now() + window.as_secs().max(1),
        })?;
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            let handler = on_interrupt as *const () as libc::sighandler_t;
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        if unsafe { libc::isatty(0) } == 1 {
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
                return Ok(Confirmation::Confirmed);
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
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
        // Put back what was there: the previous generation, or no table at all.
        match (before, previous) {
            (Some(_), Some(n)) => {
                let g = dir.generation(n)?.ok_or_else(|| Error::State {
                    message: format!(
                        "generation {n}, installed before, is no longer recorded: generation {} stays installed",
                        done.generation
                    ),
                })?;
                let locals = kernel::local_addresses();
                install(ctx, &t.backend, &g.plan, g.number, &g.digest, None, &locals)?;
                Ok(Confirmation::RolledBack { to: Some(n), why })
            }
            _ => {
                remove(ctx, &t.backend, &plan.table)?;
                Ok(Confirmation::RolledBack { to: None, why })
            }
        }
    })
}

/// confirm: settle a pending commit-confirmed apply so it stays. Ok(generation).
pub fn confirm(t: &Target) -> Result<u64> {
    kernel::within(t.netns.as_ref(), |ctx| {
        let dir = state_dir(t, ctx)?;
        match dir.claim_pending("confirmed")? {
            Some(p) => Ok(p.generation),
            None => Err(Error::NothingPending),
        }
    })
}
