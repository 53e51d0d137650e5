//! Which path `sync` took, and why the incremental one was not taken: printed by `-v`,
//! logged by `svcnat run` and counted in its metrics.

/// The path one `sync` took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPath {
    /// The kernel already held the desired state: nothing sent, nothing recorded.
    Unchanged,
    /// Only the map's changed sections, as element changes, without reading the table.
    Incremental,
    /// The whole plan against the table read back (in place where its shape allows).
    Full(FullReason),
}

/// Why the full path ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FullReason {
    /// The request was a plan, not a map file's text (`--forward`, health, re-resolution,
    /// rollback, stdin).
    NotAMapFile,
    /// The iptables backend has no incremental path.
    IptablesBackend,
    /// A commit-confirmed apply.
    Confirm,
    /// No index of the last apply: the first apply, a map with host names, or the last
    /// apply was not of a map file.
    NoIndex,
    /// Someone committed in the namespace since svcnat's last apply (the kernel's genid
    /// moved), so the table may not be what the index describes.
    KernelMoved,
    /// svcnat's table is not the one the index describes (another generation, or gone).
    TableChanged,
    /// The recorded generations are not at the index's (another writer, or a rollback).
    HistoryMoved,
    /// The map's settings or section layout changed, or too many sections did.
    MapLayout,
    /// The map file changed while it was compared (its size or times moved): the full
    /// path reads it again.
    MapRewritten,
    /// A changed service has `localhost` or a port range, or a DNAT map appears, goes or
    /// changes size.
    ServiceShape,
    /// A changed section uses host names, which are resolved on the full path.
    HostNames,
    /// A sysctl must be switched on or off.
    Sysctls,
    /// The changed sections do not check: the full path reports the error.
    MapError,
    /// The kernel refused the element changes (nothing changed).
    Refused,
    /// Too many incremental generations in a row: a whole one is recorded again.
    LongChain,
    /// The map would leave no service: the full path refuses it without --allow-empty.
    EmptyMap,
}

impl SyncPath {
    pub fn name(self) -> &'static str {
        match self {
            SyncPath::Unchanged => "unchanged",
            SyncPath::Incremental => "incremental",
            SyncPath::Full(_) => "full",
        }
    }
}

impl FullReason {
    pub const ALL: [FullReason; 16] = [
        FullReason::NotAMapFile,
        FullReason::IptablesBackend,
        FullReason::Confirm,
        FullReason::NoIndex,
        FullReason::KernelMoved,
        FullReason::TableChanged,
        FullReason::HistoryMoved,
        FullReason::MapLayout,
        FullReason::MapRewritten,
        FullReason::ServiceShape,
        FullReason::HostNames,
        FullReason::Sysctls,
        FullReason::MapError,
        FullReason::Refused,
        FullReason::LongChain,
        FullReason::EmptyMap,
    ];

    /// A label for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            FullReason::NotAMapFile => "not-a-map-file",
            FullReason::IptablesBackend => "iptables-backend",
            FullReason::Confirm => "confirm",
            FullReason::NoIndex => "no-index",
            FullReason::KernelMoved => "kernel-moved",
            FullReason::TableChanged => "table-changed",
            FullReason::HistoryMoved => "history-moved",
            FullReason::MapLayout => "map-layout",
            FullReason::MapRewritten => "map-rewritten",
            FullReason::ServiceShape => "service-shape",
            FullReason::HostNames => "host-names",
            FullReason::Sysctls => "sysctls",
            FullReason::MapError => "map-error",
            FullReason::Refused => "refused",
            FullReason::LongChain => "long-chain",
            FullReason::EmptyMap => "empty-map",
        }
    }

    /// The reason in words, for `-v`.
    pub fn explain(self) -> &'static str {
        match self {
            FullReason::NotAMapFile => "the services did not come from a map file",
            FullReason::IptablesBackend => "the iptables backend replaces its chains whole",
            FullReason::Confirm => "a commit-confirmed apply installs the whole map",
            FullReason::NoIndex => "no index of the last apply (first apply, or host names)",
            FullReason::KernelMoved => "the ruleset changed since svcnat's last apply",
            FullReason::TableChanged => "svcnat's table is not what the last apply left",
            FullReason::HistoryMoved => "the recorded generations moved since the last apply",
            FullReason::MapLayout => "the map's settings or layout changed, or many services did",
            FullReason::MapRewritten => "the map file changed while it was read",
            FullReason::ServiceShape => {
                "a changed service has localhost or a port range, or a DNAT map appears, goes or changes size"
            }
            FullReason::HostNames => "a changed service names a host to resolve",
            FullReason::Sysctls => "a sysctl must be switched",
            FullReason::MapError => "the changed services do not check",
            FullReason::Refused => "the kernel refused the element changes",
            FullReason::LongChain => "many incremental generations in a row",
            FullReason::EmptyMap => "the map leaves no service",
        }
    }
}
