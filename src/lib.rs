//! svcnat: service map → netfilter NAT rules, installed atomically over netlink.
//!
//! The data flows one way, one module per stage:
//! `map` (parse) → `validate` → `resolve` (→ `plan::Plan`) → `ruleset` (nf_tables objects)
//! → `render::{nft, iptables}` (text) or `ops::sync` (the one door) → `kernel` (netlink).
//! `kernel::decode` reads the kernel back into a `ruleset::Ruleset`; `show` and `diff`
//! turn that into per-service reports; `state` records the generations installed.
//!
//! `unsafe` lives only under `kernel/` (libnftnl's C API, one socket option), and every block
//! says why it holds.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod commands;
pub mod conntrack;
pub mod diff;
pub mod error;
pub mod forward;
pub mod forward_drop;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod kernel;
pub mod lift;
pub mod log;
pub mod map;
pub mod ops;
pub mod plan;
pub mod render;
pub mod resolve;
pub mod ruleset;
pub mod run;
pub mod short;
pub mod show;
pub mod signals;
pub mod state;
pub mod validate;
pub mod xtables;

/// Cores this process may run on (1 when unknown): large maps are split in two when
/// there are two. Asked once (it reads the cgroup's CPU quota).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
