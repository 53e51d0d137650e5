//! Watching svcnat's table for changes made by anyone else, as `nft monitor` does: a
//! netfilter socket subscribed to the nf_tables multicast group (NFNLGRP_NFTABLES), which
//! the kernel sends every committed object change to, then a NEWGEN message naming the
//! process that committed the transaction. `svcnat run` polls it: a firewall reload (`nft
//! flush ruleset`), `nft delete table …`, an element deleted by hand — each shows up within
//! the same transaction's notifications, and `run` puts its table back.
//!
//! Own commits are told apart by netlink port id: notifications carry the port id of the
//! socket whose batch made them, and svcnat's commits all come from the socket `run` keeps.

use super::netlink::{attr, messages};
use super::netns::NetnsSpec;
use super::wire::{be32, text};
use crate::error::{Error, Result};
use nftnl::nftnl_sys::libc;
use std::os::fd::{AsRawFd, BorrowedFd};

/// nf_tables' multicast group (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_NEWGEN: u16 = libc::NFT_MSG_NEWGEN as u16;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// Every object message (tables, chains, rules, sets, elements, objects, flowtables)
/// names its table in attribute 1.
const TABLE_ATTR: u16 = 1;

pub struct Monitor {
    sock: mnl::Socket,
    buf: Vec<u8>,
    /// Changes to the table by another socket, since the last NEWGEN.
    touched: bool,
}

/// What the monitor saw since it was last read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The processes that changed svcnat's table (`nft (pid 812)`), one per transaction.
    pub by: Vec<String>,
    /// The socket's queue overflowed (ENOBUFS): notifications were lost, so anything may
    /// have changed.
    pub overrun: bool,
}

impl Seen {
    pub fn any(&self) -> bool {
        self.overrun || !self.by.is_empty()
    }
}

impl Monitor {
    /// Subscribe in the namespace `netns` names (None: the current one).
    pub fn open(netns: Option<&NetnsSpec>) -> Result<Monitor> {
        super::in_namespace(netns, || {
            let fail =
                |e: std::io::Error| Error::Netlink(format!("cannot watch nf_tables events: {e}"));
            let sock = mnl::Socket::open(mnl::Bus::Netfilter).map_err(fail)?;
            sock.bind(1 << (NFNLGRP_NFTABLES - 1), 0).map_err(fail)?;
            Ok(Monitor {
                sock,
                buf: vec![0; 256 * 1024],
                touched: false,
            })
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.sock`, which outlives the borrow and closes
        // it only when dropped (mnl::Socket has no `AsFd` of its own).
        unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) }
    }

    /// Read every queued notification without waiting: which transactions changed `table`
    /// (family inet) from a socket other than `own` (svcnat's port id).
    pub fn read(&mut self, table: &str, own: Option<u32>) -> Seen {
        use nix::sys::socket::{MsgFlags, recv};
        let mut seen = Seen::default();
        loop {
            let n = match recv(self.sock.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(nix::Error::EAGAIN) => break,
                Ok(n) => n,
                Err(nix::Error::ENOBUFS) => {
                    seen.overrun = true;
                    continue;
                }
                Err(_) => break,
            };
            for m in messages(&self.buf[..n]).map_while(|m| m.ok()) {
                note(&mut self.touched, m, table, own, &mut seen);
            }
        }
        seen
    }
}

/// Take in one notification `m`: `touched` (a change to `table` by another socket since
/// the last NEWGEN) is set by object messages and reported, with the process, by NEWGEN.
fn note(touched: &mut bool, m: &[u8], table: &str, own: Option<u32>, seen: &mut Seen) {
    let kind = u16::from_ne_bytes([m[4], m[5]]);
    let portid = u32::from_ne_bytes([m[12], m[13], m[14], m[15]]);
    if kind >> 8 != libc::NFNL_SUBSYS_NFTABLES as u16 || m.len() < 20 {
        return;
    }
    let family = m[16];
    match kind & 0xff {
        NFT_MSG_NEWGEN if std::mem::take(touched) => {
            let pid = attr(m, NFTA_GEN_PROC_PID).and_then(be32);
            let name = attr(m, NFTA_GEN_PROC_NAME).map(text);
            seen.by.push(match (name, pid) {
                (Some(n), Some(p)) => format!("{n} (pid {p})"),
                (None, Some(p)) => format!("pid {p}"),
                _ => "an unknown process".into(),
            });
        }
        NFT_MSG_NEWGEN => {}
        _ if family == libc::NFPROTO_INET as u8
            && Some(portid) != own
            && attr(m, TABLE_ATTR).map(text).as_deref() == Some(table) =>
        {
            *touched = true;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::note;
    use super::*;

    /// A notification: nlmsghdr, nfgenmsg (family inet), then string attributes.
    fn notification(kind: u16, portid: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in attrs {
            super::super::netlink::put_attr(&mut body, *k, v);
        }
        let full = ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | kind;
        let mut m = super::super::netlink::message(full, 0, 0, libc::NFPROTO_INET as u8, &body);
        m[12..16].copy_from_slice(&portid.to_ne_bytes());
        m
    }

    #[test]
    fn only_other_sockets_changes_to_the_table_count() {
        let mut touched = false;
        let gen_msg = notification(
            NFT_MSG_NEWGEN,
            0,
            &[
                (NFTA_GEN_PROC_PID, &812u32.to_be_bytes()),
                (NFTA_GEN_PROC_NAME, b"nft\0"),
            ],
        );
        let mut seen = Seen::default();
        // Our own commit (port 7), and another table's change: nothing.
        note(
            &mut touched,
            &notification(2, 7, &[(TABLE_ATTR, b"svcnat\0")]),
            "svcnat",
            Some(7),
            &mut seen,
        );
        note(
            &mut touched,
            &notification(2, 9, &[(TABLE_ATTR, b"other\0")]),
            "svcnat",
            Some(7),
            &mut seen,
        );
        note(&mut touched, &gen_msg, "svcnat", Some(7), &mut seen);
        assert!(!seen.any());
        // Another socket deleted our table: named at the end of its transaction.
        note(
            &mut touched,
            &notification(2, 9, &[(TABLE_ATTR, b"svcnat\0")]),
            "svcnat",
            Some(7),
            &mut seen,
        );
        note(&mut touched, &gen_msg, "svcnat", Some(7), &mut seen);
        assert_eq!(seen.by, ["nft (pid 812)"]);
    }
}
