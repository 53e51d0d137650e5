//! The way into a namespace's kernel: `Connection` enters the namespace for each call and
//! hands out a `Live` (a netlink socket there). `svcnat run` keeps the socket and watches
//! the local addresses between reloads (`Connection::for_reloads`); a one-shot apply keeps
//! its socket from the incremental attempt to the full apply (`Connection::one_shot`);
//! other commands keep nothing. Whatever is kept closes when the `Connection` is dropped.

use super::netns::NetnsSpec;
use super::{Enter, Kernel, Live, in_namespace, local_addresses};
use crate::error::Result;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

pub struct Connection {
    netns: Option<NetnsSpec>,
    /// Whether to keep the socket between calls (false: a fresh one per call).
    keep: bool,
    /// Whether to watch the local addresses (else they are read at each call).
    watch: bool,
    /// Whether to keep the socket after a failed call (else a fresh one is opened).
    hold: bool,
    /// The namespace the kept socket belongs to: device and inode of its nsfs file (not
    /// reused while the socket holds the namespace).
    ns: Option<(u64, u64)>,
    kept: Option<Live>,
}

impl Connection {
    /// Nothing kept: each call opens and closes its own socket, and reads the addresses.
    pub fn nothing(netns: Option<NetnsSpec>) -> Connection {
        Connection::new(netns, false, false)
    }

    /// Keep a socket and watch the addresses, from the first call on.
    pub fn for_reloads(netns: Option<NetnsSpec>) -> Connection {
        Connection::new(netns, true, true)
    }

    /// Keep the socket also after a call failed: a table owned by the socket
    /// (NFT_TABLE_F_OWNER) goes when the socket closes.
    pub fn holding(mut self) -> Connection {
        self.hold = true;
        self
    }

    /// Keep the socket for the rest of a one-shot command.
    pub fn one_shot(netns: Option<NetnsSpec>) -> Connection {
        Connection::new(netns, true, false)
    }

    fn new(netns: Option<NetnsSpec>, keep: bool, watch: bool) -> Connection {
        Connection {
            netns,
            keep,
            watch,
            hold: false,
            ns: None,
            kept: None,
        }
    }

    pub fn netns(&self) -> Option<&NetnsSpec> {
        self.netns.as_ref()
    }

    /// The port id of the kept socket (svcnat's commits come from it), if one is kept.
    pub fn portid(&self) -> Option<u32> {
        self.kept.as_ref().map(|l| l.nl.portid())
    }
}

impl Enter for Connection {
    /// Run `f` inside the namespace with its socket, the kept one if any. A namespace named
    /// by `--netns` may have been deleted and made again under its name since: what was kept
    /// for the old one is dropped, and kept anew for this one. A socket that failed is not
    /// kept; nor are stale replies in it (a dump abandoned on an error).
    fn enter<T>(&mut self, f: impl FnOnce(&mut dyn Kernel) -> Result<T>) -> Result<T> {
        let netns = self.netns.clone();
        in_namespace(netns.as_ref(), || {
            if !self.keep {
                return f(&mut Live::open(
                    netns.as_ref(),
                    LocalAddresses::unwatched(),
                )?);
            }
            let here = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| (m.dev(), m.ino()))
                .map_err(|e| crate::error::Error::io("/proc/thread-self/ns/net", e))?;
            if self.ns != Some(here) {
                self.kept = None;
                self.ns = Some(here);
            }
            let live = match &mut self.kept {
                Some(live) => live,
                None => {
                    let locals = match self.watch {
                        true => LocalAddresses::watched(),
                        false => LocalAddresses::unwatched(),
                    };
                    self.kept.insert(Live::open(netns.as_ref(), locals)?)
                }
            };
            live.nl.drain();
            let out = f(live);
            if out.is_err() && !self.hold {
                self.kept = None;
            }
            out
        })
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
        use nix::sys::socket::{
            AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
        };
        let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        let watch = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )
        .ok()
        .filter(|fd| bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).is_ok());
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
        use nix::errno::Errno;
        use nix::sys::socket::{MsgFlags, recv};
        let mut any = false;
        let mut buf = [0u8; 64];
        loop {
            // The report's content does not matter, only that there was one: truncated.
            match recv(
                fd.as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(_) => any = true,
                Err(Errno::EAGAIN) => return any,
                Err(Errno::EINTR) => {}
                // ENOBUFS: reports were dropped; anything else: the watch cannot be trusted.
                Err(_) => return true,
            }
        }
    }
}
