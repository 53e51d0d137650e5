//! Everything that touches the system: entering a namespace, sysctls, and the netlink
//! transaction. Above this module all stages are pure; `ops` composes these primitives
//! into the commands that change the kernel.

pub mod closer;
pub mod decode;
mod elems;
pub mod encode;
pub mod expr;
pub mod meta;
pub mod netlink;
pub mod netns;
pub mod recognize;
pub mod sets;
pub mod sysctl;
pub mod transaction;

use crate::error::Result;
use decode::Installed;
use netlink::Netlink;
use netns::{NetnsGuard, NetnsSpec};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Inside the target namespace: its netlink socket and its identity.
pub struct Ctx {
    pub nl: Netlink,
    /// The namespace's kernel cookie (see `Netlink::netns_cookie`); 0 where unsupported.
    pub cookie: u64,
    /// How the user named the namespace (`--netns` or "current").
    pub label: String,
}

/// Run `f` inside the namespace (or here when `netns` is None) with a netlink socket
/// opened there. The original namespace is restored afterwards, also on error.
pub fn within<T>(netns: Option<&NetnsSpec>, f: impl FnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
    in_namespace(netns, || {
        let nl = Netlink::open()?;
        let cookie = nl.netns_cookie().unwrap_or(0);
        let label = netns.map_or_else(|| "current".to_owned(), |n| n.label.clone());
        let mut ctx = Ctx { nl, cookie, label };
        let out = f(&mut ctx);
        ctx.nl.close();
        out
    })
}

/// Run `f` inside the namespace (or here), without a netlink socket: for what only needs
/// to be there (health checks, a listening socket, iptables-save).
pub fn in_namespace<T>(netns: Option<&NetnsSpec>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _guard = netns.map(NetnsGuard::enter).transpose()?;
    f()
}

/// The addresses of this namespace's interfaces (to tell local targets from remote ones).
pub fn local_addresses() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The namespace's local addresses, kept between `svcnat run`'s reloads and read again
/// only after the kernel reported an address added or removed. Reading them dumps every
/// link and address (~0.09 ms of a ~1.2 ms reload); looking for a report is one `recv`.
pub struct LocalAddresses {
    /// A route socket subscribed to the namespace's address events, or None: read each time.
    watch: Option<OwnedFd>,
    known: Option<Vec<IpAddr>>,
}

impl LocalAddresses {
    /// Read afresh at every `get` (a one-shot command asks once).
    pub fn unwatched() -> LocalAddresses {
        LocalAddresses {
            watch: None,
            known: None,
        }
    }

    /// Kept, and watched in the caller's namespace (call it inside the one to watch).
    /// Where the socket cannot be had, the addresses are read each time instead.
    pub fn watched() -> LocalAddresses {
        // Safety: plain socket calls on a descriptor owned from here on.
        let watch = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            );
            (fd >= 0).then(|| OwnedFd::from_raw_fd(fd)).filter(|fd| {
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
                sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
                let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
                libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) == 0
            })
        };
        LocalAddresses { watch, known: None }
    }

    pub fn get(&mut self) -> &[IpAddr] {
        // Subscribed before the first read, and drained before each: a change after the
        // drain is read now or reported for the next time, never lost.
        if self.reported_change() {
            self.known = None;
        }
        self.known.get_or_insert_with(local_addresses)
    }

    /// Whether the kernel reported an address change since the last look (or lost reports:
    /// ENOBUFS). Without a watch, always.
    fn reported_change(&self) -> bool {
        let Some(fd) = &self.watch else {
            return true;
        };
        let mut any = false;
        let mut buf = [0u8; 64];
        loop {
            // The report's content does not matter, only that there was one: truncated.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                any = true;
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => return any,
                Some(libc::EINTR) => {}
                // ENOBUFS: reports were dropped; anything else: the watch cannot be trusted.
                _ => return true,
            }
        }
    }
}

pub fn show(netns: Option<&NetnsSpec>, table: &str) -> Result<Option<Installed>> {
    within(netns, |ctx| decode::dump(&mut ctx.nl, table))
}

/// Debug builds only, for tests of the guarantees around a commit:
/// - `SVCNAT_TEST_REJECT=1` appends a rule in a chain that does not exist, so the kernel
///   rejects the whole batch;
/// - `SVCNAT_TEST_PAUSE_MS=N` sleeps between reading the kernel and committing, so a test
///   can change the ruleset in that window.
///
/// Release builds ignore both.
pub fn test_hooks(tx: &mut transaction::Transaction) {
    if !cfg!(debug_assertions) {
        return;
    }
    if std::env::var_os("SVCNAT_TEST_REJECT").is_some() {
        tx.add_broken_rule();
    }
    if let Some(ms) = std::env::var("SVCNAT_TEST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
