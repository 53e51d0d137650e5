//! Everything that touches the system: entering a namespace, sysctls, and the netlink
//! transaction. Above this module all stages are pure.

pub mod decode;
pub mod encode;
pub mod expr;
pub mod netlink;
pub mod netns;
pub mod sysctl;

use crate::error::Result;
use crate::plan::Plan;
use crate::ruleset::Ruleset;
use decode::Installed;
use netlink::Netlink;
use netns::{NetnsGuard, NetnsSpec};
use std::net::IpAddr;

/// What an apply did.
#[derive(Debug)]
pub struct Applied {
    pub messages: usize,
    /// Sysctls switched from 0 to 1.
    pub enabled: Vec<&'static str>,
}

/// Run `f` inside the namespace (or here when `netns` is None), with a netlink socket
/// opened there.
pub fn within<T>(
    netns: Option<&NetnsSpec>,
    f: impl FnOnce(&mut Netlink) -> Result<T>,
) -> Result<T> {
    let _guard = netns.map(NetnsGuard::enter).transpose()?;
    let mut nl = Netlink::open()?;
    f(&mut nl)
}

/// The addresses of this namespace's interfaces (to tell local targets from remote ones).
fn local_addresses() -> Vec<IpAddr> {
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

/// Replace svcnat's table with the plan's ruleset, in one transaction, and switch on the
/// sysctls it needs. On any error before or during the batch, nothing has changed.
pub fn apply(netns: Option<&NetnsSpec>, plan: &Plan, rs: &Ruleset) -> Result<Applied> {
    within(netns, |nl| {
        let locals = local_addresses();
        let needed = sysctl::required(plan, &|ip| locals.contains(ip));
        let pending = sysctl::prepare(&needed)?;
        let mut tx = encode::Transaction::new();
        tx.replace_table(rs);
        inject_fault_for_tests(&mut tx);
        let messages = nl.commit(tx)?;
        let mut enabled = Vec::new();
        for p in pending {
            enabled.push(p.sysctl.key);
            p.commit()?;
        }
        Ok(Applied { messages, enabled })
    })
}

/// Delete svcnat's table. Returns whether there was one.
pub fn flush(netns: Option<&NetnsSpec>, table: &str) -> Result<bool> {
    within(netns, |nl| {
        let existed = decode::dump(nl, table)?.is_some();
        if existed {
            let mut tx = encode::Transaction::new();
            tx.delete_table(table);
            nl.commit(tx)?;
        }
        Ok(existed)
    })
}

pub fn show(netns: Option<&NetnsSpec>, table: &str) -> Result<Option<Installed>> {
    within(netns, |nl| decode::dump(nl, table))
}

/// Debug builds only: `SVCNAT_TEST_REJECT=1` appends a rule that jumps to a chain that does
/// not exist, so tests can watch the kernel reject a whole batch. Release builds ignore it.
fn inject_fault_for_tests(tx: &mut encode::Transaction) {
    if cfg!(debug_assertions) && std::env::var_os("SVCNAT_TEST_REJECT").is_some() {
        tx.add_broken_rule();
    }
}
