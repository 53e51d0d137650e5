//! What wakes `svcnat run`'s loop: signals, read from a signalfd (never handled in a
//! handler); a scrape of `--metrics`; and poll's timeout for the next timer.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Block the signals the loop handles and return a signalfd that reports them.
pub(super) fn signal_fd() -> Result<OwnedFd> {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(Error::io(
                "blocking signals",
                std::io::Error::last_os_error(),
            ));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(Error::io("signalfd", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

pub(super) fn read_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    loop {
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize != size {
            return out;
        }
        out.push(info.ssi_signo as i32);
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
