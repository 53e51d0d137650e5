//! What `svcnat run` keeps in its namespace between reloads: the netlink socket and the
//! local addresses. A reload by the changed sections takes ~1.2 ms at 50,000 services;
//! opening a socket, and handing its close to a thread after the commit, took ~0.1 ms of
//! it, and reading the addresses ~0.09 ms. A one-shot apply keeps its socket from the
//! attempt by the changed sections to the full apply (`Kept::one_shot`); other commands
//! keep nothing (`Kept::nothing`). Whatever is kept closes when the `Kept` is dropped.

use super::netns::NetnsSpec;
use super::{Ctx, in_namespace, local_addresses, within};
use crate::error::Result;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

pub struct Kept {
    /// Whether to keep anything (false: a fresh socket per `within`, as `kernel::within`).
    keep: bool,
    /// Whether to watch the local addresses (else they are read at each `get`).
    watch: bool,
    /// The namespace the socket and the address watch belong to: device and inode of its
    /// nsfs file (not reused while the socket holds the namespace).
    ns: Option<(u64, u64)>,
    socket: Option<Ctx>,
    locals: LocalAddresses,
}

impl Kept {
    /// Nothing kept: each `within` opens and closes its own socket, and reads the addresses.
    pub fn nothing() -> Kept {
        Kept::new(false, false)
    }

    /// Keep a socket and watch the addresses, from the first `within` on.
    pub fn for_reloads() -> Kept {
        Kept::new(true, true)
    }

    /// Keep the socket for the rest of a one-shot command: one socket, and one close
    /// (a closer process, see `Netlink::close`), where each `within` would take its own.
    pub fn one_shot() -> Kept {
        Kept::new(true, false)
    }

    fn new(keep: bool, watch: bool) -> Kept {
        Kept {
            keep,
            watch,
            ns: None,
            socket: None,
            locals: LocalAddresses::unwatched(),
        }
    }

    /// Run `f` inside the namespace with its socket and addresses, the kept ones if any.
    /// A namespace named by `--netns` may have been deleted and made again under its name
    /// since: what was kept for the old one is dropped, and kept anew for this one. A
    /// socket that failed is not kept; nor are stale replies in it (a dump abandoned on an
    /// error).
    pub fn within<T>(
        &mut self,
        netns: Option<&NetnsSpec>,
        f: impl FnOnce(&mut Ctx, &mut LocalAddresses) -> Result<T>,
    ) -> Result<T> {
        if !self.keep {
            return within(netns, |ctx| f(ctx, &mut self.locals));
        }
        in_namespace(netns, || {
            let here = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| (m.dev(), m.ino()))
                .map_err(|e| crate::error::Error::io("/proc/thread-self/ns/net", e))?;
            if self.ns != Some(here) {
                self.drop_socket();
                if self.watch {
                    self.locals = LocalAddresses::watched();
                }
                self.ns = Some(here);
            }
            let ctx = match &mut self.socket {
                Some(ctx) => ctx,
                None => self.socket.insert(Ctx::open(netns)?),
            };
            // Whatever the last use left to sync, had its caller not settled it.
            ctx.nl.settle();
            ctx.nl.drain();
            let out = f(ctx, &mut self.locals);
            if out.is_err() {
                self.drop_socket();
            }
            out
        })
    }

    /// Sync and close the files the last `within` left to the socket's close (the
    /// generation record): the kept socket does not close. For after the reload's log line,
    /// as the close would have done them then.
    pub fn settle(&mut self) {
        if let Some(ctx) = &mut self.socket {
            ctx.nl.settle();
        }
    }

    fn drop_socket(&mut self) {
        if let Some(ctx) = self.socket.take() {
            ctx.nl.close();
        }
    }
}

impl Drop for Kept {
    /// The kept socket closes the way every socket does (`Netlink::close`), syncing what the
    /// last `within` left to its close.
    fn drop(&mut self) {
        self.drop_socket();
    }
}

/// The namespace's local addresses, kept between `svcnat run`'s reloads and read again
/// only after the kernel reported an address added or removed: looking for a report is one
/// `recv`, reading them a dump of every link and address.
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
