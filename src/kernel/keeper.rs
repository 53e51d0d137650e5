//! Which process keeps svcnat's table in a namespace. `svcnat run` puts its table back
//! whenever another program changes it (`kernel::monitor`), so a one-shot `apply`,
//! `rollback` or `flush` beside it would be undone within milliseconds: those commands
//! refuse instead, and say what to do.
//!
//! The mark is an abstract unix socket bound by `run` inside the namespace: abstract
//! names belong to the network namespace, so every process that enters it — from the
//! host or from another container — sees the same name, and the kernel releases it the
//! moment `run` ends, however it ends (no file to go stale, no PID to reuse).

use super::netns::NetnsSpec;
use crate::error::{Error, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use std::os::fd::{AsRawFd, OwnedFd};

/// The mark `run` holds while it keeps a table.
pub struct Keeper {
    _sock: OwnedFd,
}

fn name(table: &str) -> Result<UnixAddr> {
    UnixAddr::new_abstract(format!("svcnat-run/{table}").as_bytes())
        .map_err(|e| Error::Netlink(format!("cannot name the run mark: {e}")))
}

/// Try to bind the mark for `table` in the namespace; Ok(None) when another process holds it.
fn try_bind(netns: Option<&NetnsSpec>, table: &str) -> Result<Option<OwnedFd>> {
    super::in_namespace(netns, || {
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| Error::Netlink(format!("cannot open a unix socket: {e}")))?;
        match bind(sock.as_raw_fd(), &name(table)?) {
            Ok(()) => Ok(Some(sock)),
            Err(nix::Error::EADDRINUSE) => Ok(None),
            Err(e) => Err(Error::Netlink(format!("cannot bind the run mark: {e}"))),
        }
    })
}

impl Keeper {
    /// Claim the table for `svcnat run`; an error when another `run` keeps it already.
    pub fn claim(netns: Option<&NetnsSpec>, table: &str) -> Result<Keeper> {
        match try_bind(netns, table)? {
            Some(sock) => Ok(Keeper { _sock: sock }),
            None => Err(Error::Usage(format!(
                "another `svcnat run` keeps table inet {table} in this namespace\n  fix: stop it first, or give this one another table (settings.table)"
            ))),
        }
    }
}

/// Whether a `svcnat run` keeps `table` in the namespace (a bind that succeeds is closed
/// at once: nobody did).
pub fn kept(netns: Option<&NetnsSpec>, table: &str) -> Result<bool> {
    Ok(try_bind(netns, table)?.is_none())
}

/// The refusal of a one-shot change to a table `svcnat run` keeps.
pub fn kept_by_run(table: &str) -> Error {
    Error::Usage(format!(
        "`svcnat run` keeps table inet {table} in this namespace and puts back any change made beside it, so this change would be undone at once\n  fix: change the map `svcnat run` reads (it reloads when the file changes or on SIGHUP), or stop it first"
    ))
}
