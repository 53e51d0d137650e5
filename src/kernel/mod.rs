//! Everything that touches the system: entering a namespace, sysctls, and the netlink
//! transaction. Above this module all stages are pure; `ops` composes these primitives
//! into the commands that change the kernel.

pub mod closer;
pub mod decode;
mod elems;
pub mod encode;
pub mod expr;
mod kept;
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

pub use kept::{Kept, LocalAddresses};

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
        let mut ctx = Ctx::open(netns)?;
        let out = f(&mut ctx);
        ctx.nl.close();
        out
    })
}

impl Ctx {
    /// A socket in the caller's namespace, which `netns` names (None: the current one).
    fn open(netns: Option<&NetnsSpec>) -> Result<Ctx> {
        let nl = Netlink::open()?;
        let cookie = nl.netns_cookie().unwrap_or(0);
        let label = netns.map_or_else(|| "current".to_owned(), |n| n.label.clone());
        Ok(Ctx { nl, cookie, label })
    }
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
