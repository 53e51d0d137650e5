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
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds: Vec<PollFd> = pending
            .iter()
            .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLOUT))
            .collect();
        let timeout = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut still = Vec::new();
        for ((addr, fd), ready) in pending.into_iter().zip(ready) {
            if !ready {
                still.push((addr, fd));
                continue;
            }
            let ok = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)
                .is_ok_and(|err| err == 0);
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
