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
    /// Sysctls svcnat had switched on and switched off again.
    pub disabled: Vec<&'static str>,
}

/// Make the planned sysctl writes; returns (enabled, disabled) keys.
fn write_sysctls(changes: sysctl::Changes) -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    let mut done = (Vec::new(), Vec::new());
    for p in changes.enable {
        done.0.push(p.sysctl.key);
        p.commit()?;
    }
    for p in changes.disable {
        done.1.push(p.sysctl.key);
        p.commit()?;
    }
    Ok(done)
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
/// sysctls it needs (and off those svcnat switched on that it no longer needs). On any
/// error before or during the batch, nothing has changed.
pub fn apply(netns: Option<&NetnsSpec>, plan: &Plan, rs: &Ruleset) -> Result<Applied> {
    within(netns, |nl| {
        let owned_before = decode::table_meta(nl, &rs.table)?.unwrap_or_default();
        let locals = local_addresses();
        let needed = sysctl::required(plan, &|ip| locals.contains(ip));
        let changes = sysctl::prepare(&needed, &owned_before)?;
        let mut tx = encode::Transaction::new();
        tx.replace_table(rs, encode::table_udata(&changes.owned));
        inject_fault_for_tests(&mut tx);
        let messages = nl.commit(tx)?;
        let (enabled, disabled) = write_sysctls(changes)?;
        Ok(Applied {
            messages,
            enabled,
            disabled,
        })
    })
}

/// Delete svcnat's table and switch off the sysctls svcnat had switched on. Returns None
/// when there was no table, else the sysctls switched off.
pub fn flush(netns: Option<&NetnsSpec>, table: &str) -> Result<Option<Vec<&'static str>>> {
    within(netns, |nl| {
        let Some(owned) = decode::table_meta(nl, table)? else {
            return Ok(None);
        };
        let changes = sysctl::prepare(&[], &owned)?;
        let mut tx = encode::Transaction::new();
        tx.delete_table(table);
        nl.commit(tx)?;
        Ok(Some(write_sysctls(changes)?.1))
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
