//! What wakes `svcnat run`'s loop: signals, read from a signalfd (`signals`), nf_tables
//! notifications (`kernel::monitor`), and poll's timeout for the next timer. (Scrapes of `--metrics` are served on threads of their own:
//! `scrape`.)

use nix::sys::signalfd::SignalFd;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

/// Sleep until a signal arrives on `signals`, the nf_tables monitor has news, or
/// `timeout_ms` passes.
pub(super) fn wait(signals: &SignalFd, monitor: Option<BorrowedFd>, timeout_ms: i32) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(m) = monitor {
        fds.push(PollFd::new(m, PollFlags::POLLIN));
    }
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX);
    // EINTR and the like: the loop looks again.
    let _ = poll(&mut fds, timeout);
}

/// Sleep `d`, unless SIGTERM or SIGINT comes first (then true); children that end are
/// reaped meanwhile, SIGHUP is let pass.
pub(super) fn wait_for_stop(signals: &SignalFd, d: Duration) -> bool {
    let end = std::time::Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        wait(signals, None, poll_timeout(left));
        for sig in crate::signals::pending(signals) {
            match sig {
                nix::sys::signal::Signal::SIGTERM | nix::sys::signal::Signal::SIGINT => {
                    return true;
                }
                nix::sys::signal::Signal::SIGCHLD => reap_children(),
                _ => {}
            }
        }
    }
}

/// Reap every child that has ended: as PID 1 of a container, svcnat inherits orphans.
pub(super) fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// poll(2)'s timeout in milliseconds for `left`, rounded up: rounded down, the last
/// millisecond before each deadline was spent calling poll with 0 over and over.
pub(super) fn poll_timeout(left: Duration) -> i32 {
    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline less than a millisecond away is waited for, not polled for in a loop.
    #[test]
    fn poll_waits_until_the_deadline() {
        assert_eq!(poll_timeout(Duration::ZERO), 0);
        assert_eq!(poll_timeout(Duration::from_micros(1)), 1);
        assert_eq!(poll_timeout(Duration::from_micros(999)), 1);
        assert_eq!(poll_timeout(Duration::from_millis(1)), 1);
        assert_eq!(poll_timeout(Duration::from_micros(1001)), 2);
        assert_eq!(poll_timeout(Duration::from_secs(30)), 30_000);
        assert_eq!(poll_timeout(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
