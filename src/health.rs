//! TCP health checks: a target is healthy when it accepts a TCP connection. All targets are
//! tried at once (non-blocking connects, one poll), so a round takes at most `timeout`
//! whatever the number of targets. Run inside the proxy's namespace: the check sees what
//! its forwarded connections would see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn start_connect(addr: &SocketAddr) -> Option<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, connect, socket,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let r = match addr {
        SocketAddr::V4(a) => connect(fd.as_raw_fd(), &SockaddrIn::from(*a)),
        SocketAddr::V6(a) => connect(fd.as_raw_fd(), &SockaddrIn6::from(*a)),
    };
    match r {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Some(fd),
        Err(_) => None,
    }
}

/// Whether each target accepted a TCP connection within `timeout`.
pub fn check(targets: &[SocketAddr], timeout: Duration) -> HashMap<SocketAddr, bool> {
    let mut result: HashMap<SocketAddr, bool> = targets.iter().map(|t| (*t, false)).collect();
    let mut pending: Vec<(SocketAddr, OwnedFd)> = targets
        .iter()
        .filter_map(|t| start_connect(t).map(|fd| (*t, fd)))
        .collect();
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().max(1) as i32,
            )
        };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let mut still = Vec::new();
        for ((addr, fd), p) in pending.into_iter().zip(&fds) {
            if p.revents == 0 {
                still.push((addr, fd));
                continue;
            }
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let ok = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            } == 0
                && err == 0;
            result.insert(addr, ok);
        }
        pending = still;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_is_healthy_closed_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = l.local_addr().unwrap();
        let down = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap()
        };
        let r = check(&[up, down], Duration::from_secs(2));
        assert!(r[&up]);
        assert!(!r[&down]);
    }
}
