//! What wakes `svcnat run`'s loop: signals, read from a signalfd (`signals`); a scrape of
//! `--metrics`; and poll's timeout for the next timer.

use nix::sys::signalfd::SignalFd;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::Duration;

/// Sleep until a signal arrives on `signals`, a scraper connects to `listener`, or
/// `timeout_ms` passes; whether a scraper is waiting.
pub(super) fn wait(signals: &SignalFd, listener: Option<&TcpListener>, timeout_ms: i32) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(l) = listener {
        fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
    }
    let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX);
    // EINTR and the like: the loop looks again.
    let _ = poll(&mut fds, timeout);
    fds.get(1)
        .and_then(|p| p.revents())
        .is_some_and(|r| !r.is_empty())
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

pub(super) fn serve_scrape(listener: &TcpListener, body: impl FnOnce() -> String) {
    let Ok((mut conn, _)) = listener.accept() else {
        return;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..n]);
    let response = if request.starts_with("GET /metrics ") {
        let body = body();
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 17\r\nConnection: close\r\n\r\ntry GET /metrics\n".to_owned()
    };
    let _ = conn.write_all(response.as_bytes());
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
