//! Everything that touches the system: entering a namespace, sysctls, and the netlink
//! transaction. Above this module all stages are pure; `ops` composes what `Kernel` offers
//! into the commands that change the kernel.
//!
//! `Kernel` is the one interface `ops` sees. `Live` implements it over netlink in a real
//! namespace; `fake::FakeKernel` implements it on an in-memory copy (applies a change to a
//! copy and keeps it only when the whole change succeeds), so the state logic above is
//! tested without root.

mod connection;
pub mod conntrack;
pub mod decode;
mod elems;
pub mod encode;
pub mod expr;
pub mod fake;
pub mod forward_hook;
pub mod keeper;
pub mod meta;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod recognize;
pub mod sets;
pub mod sysctl;
pub mod transaction;
mod wire;

use crate::error::{Error, Result};
use crate::ruleset::{DnatElem, DnatId, MapKey, Ruleset};
use decode::Installed;
use meta::TableMeta;
use netlink::Netlink;
use netns::{NetnsGuard, NetnsSpec};
use std::net::IpAddr;
use sysctl::{PendingWrite, Sysctl};
use transaction::Transaction;

pub use connection::{Connection, LocalAddresses};

/// One change to svcnat's table, committed as one transaction.
pub enum Change<'a> {
    /// Delete the table (if any) and create `ruleset` whole; `owned`: owned by the
    /// committing socket (NFT_TABLE_F_OWNER). `absent`: the table is not there (as read
    /// after the genid the commit is guarded by): it is only created, refused if it exists
    /// (NLM_F_EXCL). Then the commit frees nothing, and the one-shot command's exit does not
    /// wait for the kernel's deferred destruction (an RCU grace period, 8-25 ms here).
    Replace {
        ruleset: &'a Ruleset,
        meta: &'a TableMeta,
        owned: bool,
        absent: bool,
    },
    /// Turn `installed` into `ruleset` by changing only map elements and service chains
    /// (`transaction::can_update` says when that is possible).
    Update {
        installed: &'a Installed,
        ruleset: &'a Ruleset,
        meta: &'a TableMeta,
    },
    /// Swap a few services' DNAT map elements, without reading the table (the incremental
    /// path): `gone` out by key (every slot of it), `new` in; `sizes` of the maps as they are.
    Elements {
        table: &'a str,
        before: &'a TableMeta,
        meta: &'a TableMeta,
        gone: &'a [(DnatId, MapKey)],
        new: &'a [(DnatId, DnatElem)],
        sizes: &'a dyn Fn(DnatId) -> u32,
    },
    /// Delete the table.
    Delete { table: &'a str },
}

/// What `ops` may ask of a network namespace's netfilter and sysctls.
pub trait Kernel {
    /// The namespace's identity: a cookie unique for the boot (names its state directory)
    /// and how the user named it.
    fn namespace(&self) -> (u64, &str);
    /// The ruleset's generation id: the kernel moves it on every commit, by anyone.
    fn genid(&mut self) -> Result<u32>;
    /// What svcnat recorded on its table; None when the table is absent.
    fn table_meta(&mut self, table: &str) -> Result<Option<TableMeta>>;
    /// The whole table, read back; None when absent.
    fn read_table(&mut self, table: &str) -> Result<Option<Installed>>;
    /// Commit `change` in one transaction, only if the ruleset is still at `genid`
    /// (else `Error::Stale`, nothing changed). Returns what each message did.
    fn commit(&mut self, change: Change<'_>, genid: u32) -> Result<Vec<String>>;
    /// The addresses of the namespace's interfaces.
    fn local_addresses(&mut self) -> Vec<IpAddr>;
    /// The iptables flavour holding svcnat's SVCNAT-* chains here, if any.
    fn iptables_holder(&mut self) -> Option<&'static str>;
    fn read_sysctl(&mut self, s: &'static Sysctl) -> Result<String>;
    /// Get ready to write `value` (fails, before anything changed, where it cannot be).
    fn open_sysctl(
        &mut self,
        s: &'static Sysctl,
        value: &'static [u8],
        why: String,
    ) -> Result<PendingWrite>;
    fn write_sysctl(&mut self, w: PendingWrite) -> Result<()>;
    /// Base chains of other tables (not `own`) on the forward hook that stop forwarded
    /// packets.
    fn forward_blocks(&mut self, own: &str) -> Result<Vec<crate::forward_drop::Block>>;
    /// Make svcnat's accept in Docker's DOCKER-USER present or absent (`forward_accept`);
    /// what changed, in words.
    fn docker_user_accept(&mut self, want: bool) -> Result<Vec<String>>;
    /// Whether a `svcnat run` keeps `table` here (see `keeper`).
    fn kept_by_run(&mut self, table: &str) -> Result<bool>;
    /// Delete the conntrack entries of `protos` that `stale` picks (see `crate::conntrack`).
    fn clear_conntrack(
        &mut self,
        protos: &[crate::validate::Proto],
        stale: &dyn Fn(&crate::conntrack::Flow) -> bool,
    ) -> Result<conntrack::Cleared>;
}

/// Something that runs code with a `Kernel` of one namespace: a `Connection` (entering the
/// namespace for the call) or a `FakeKernel`.
pub trait Enter {
    fn enter<T>(&mut self, f: impl FnOnce(&mut dyn Kernel) -> Result<T>) -> Result<T>;
}

/// A netlink socket inside the target namespace, with its identity and addresses.
pub struct Live {
    pub nl: Netlink,
    /// The namespace's kernel cookie (see `Netlink::netns_cookie`); 0 where unsupported.
    cookie: u64,
    /// How the user named the namespace (`--netns` or "current").
    label: String,
    locals: LocalAddresses,
}

impl Live {
    /// A socket in the caller's namespace, which `netns` names (None: the current one).
    fn open(netns: Option<&NetnsSpec>, locals: LocalAddresses) -> Result<Live> {
        let nl = Netlink::open()?;
        let cookie = nl.netns_cookie().unwrap_or(0);
        let label = netns.map_or_else(|| "current".to_owned(), |n| n.label.clone());
        Ok(Live {
            nl,
            cookie,
            label,
            locals,
        })
    }
}

impl Kernel for Live {
    fn namespace(&self) -> (u64, &str) {
        (self.cookie, &self.label)
    }

    fn genid(&mut self) -> Result<u32> {
        self.nl.genid()
    }

    fn table_meta(&mut self, table: &str) -> Result<Option<TableMeta>> {
        decode::table_meta(&mut self.nl, table)
    }

    fn read_table(&mut self, table: &str) -> Result<Option<Installed>> {
        decode::dump(&mut self.nl, table)
    }

    fn commit(&mut self, change: Change<'_>, genid: u32) -> Result<Vec<String>> {
        let mut tx = Transaction::new();
        match change {
            Change::Replace {
                ruleset,
                meta,
                owned,
                absent,
            } => tx.replace_table(ruleset, meta, owned, absent),
            Change::Update {
                installed,
                ruleset,
                meta,
            } => tx.update_table(installed, ruleset, meta),
            Change::Elements {
                table,
                before,
                meta,
                gone,
                new,
                sizes,
            } => tx.replace_dnat_elements(table, (before, meta), gone, new, sizes),
            Change::Delete { table } => tx.delete_table(table),
        }
        test_hooks(&mut tx);
        self.nl
            .commit(&tx.batch.finalize(), &tx.objects, Some(genid))?;
        Ok(tx.objects)
    }

    fn local_addresses(&mut self) -> Vec<IpAddr> {
        self.locals.get().to_vec()
    }

    fn iptables_holder(&mut self) -> Option<&'static str> {
        crate::xtables::holder()
    }

    fn read_sysctl(&mut self, s: &'static Sysctl) -> Result<String> {
        sysctl::read(s)
    }

    fn open_sysctl(
        &mut self,
        s: &'static Sysctl,
        value: &'static [u8],
        why: String,
    ) -> Result<PendingWrite> {
        sysctl::open_for_write(s, value, why)
    }

    fn write_sysctl(&mut self, w: PendingWrite) -> Result<()> {
        w.write()
    }

    fn clear_conntrack(
        &mut self,
        protos: &[crate::validate::Proto],
        stale: &dyn Fn(&crate::conntrack::Flow) -> bool,
    ) -> Result<conntrack::Cleared> {
        conntrack::clear(&mut self.nl, protos, stale)
    }

    fn forward_blocks(&mut self, own: &str) -> Result<Vec<crate::forward_drop::Block>> {
        let mut blocks = forward_hook::blocks(&mut self.nl, own)?;
        blocks.extend(crate::xtables::legacy_forward_blocks());
        Ok(blocks)
    }

    fn docker_user_accept(&mut self, want: bool) -> Result<Vec<String>> {
        crate::xtables::docker_user_accept(want)
    }

    fn kept_by_run(&mut self, table: &str) -> Result<bool> {
        // Already inside the namespace: the current one.
        keeper::kept(None, table)
    }
}

/// The genid after one commit from `genid` (the kernel skips 0).
pub fn next_genid(genid: u32) -> u32 {
    match genid.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// Behave like other Unix tools when the reader goes away (`svcnat show | head`): Rust
/// ignores SIGPIPE by default, so writes would fail with EPIPE and panic in `println!`.
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler of ours, so no code runs in signal context; called
    // first thing in main, before any thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Run `f` inside the namespace (or here when `netns` is None) with a netlink socket
/// opened there. The original namespace is restored afterwards, also on error.
pub fn within<T>(netns: Option<&NetnsSpec>, f: impl FnOnce(&mut Live) -> Result<T>) -> Result<T> {
    in_namespace(netns, || {
        f(&mut Live::open(netns, LocalAddresses::unwatched())?)
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

pub fn show(netns: Option<&NetnsSpec>, table: &str) -> Result<Option<Installed>> {
    within(netns, |live| decode::dump(&mut live.nl, table))
}

/// An error for a `Kernel` that cannot do what was asked (the fake, for the iptables
/// backend).
pub fn unsupported(what: &str) -> Error {
    Error::Netlink(format!("{what} is not supported here"))
}

/// Debug builds only, for tests of the guarantees around a commit:
/// - `SVCNAT_TEST_REJECT=1` appends a rule in a chain that does not exist, so the kernel
///   rejects the whole batch;
/// - `SVCNAT_TEST_PAUSE_MS=N` sleeps between reading the kernel and committing, so a test
///   can change the ruleset in that window.
///
/// Release builds ignore both.
fn test_hooks(tx: &mut Transaction) {
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

/// Hand the heap's free pages back to the system. A sync of 50,000 services peaks at tens
/// of megabytes of parsing, ruleset and netlink buffers; once they are freed, glibc keeps
/// the pages unless the free space is at the heap's very top, so a long-running `svcnat
/// run` would idle at its peak. `malloc_trim` gives back every free page inside the heap
/// too (`madvise(MADV_DONTNEED)`).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks and trims glibc's own free lists; it takes the
    // allocator's lock and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
