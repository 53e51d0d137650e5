//! Every failure svcnat can report, and the exit code each one maps to.
//!
//! Exit codes are part of the interface (documented in `--help`):
//! 0 success, 1 runtime or kernel error, 2 invalid input or usage.

use std::fmt;
use std::path::PathBuf;

/// A mistake in the service map, located in its source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    /// The file as the user named it (`-` for standard input).
    pub file: String,
    /// 1-based line and column of the offending text.
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `service[2].listen`.
    pub field: String,
    pub message: String,
    /// How to fix it, in one sentence.
    pub hint: String,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, self.field, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  fix: {}", self.hint)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more mistakes in the map; all are reported, not just the first.
    #[error("{}", join_map_errors(.0))]
    Map(Vec<MapError>),

    /// The map cannot be read (missing, not a regular file, too large, unreadable).
    #[error("cannot read service map {}: {problem}\n  fix: {hint}", path.display())]
    ReadMap {
        path: PathBuf,
        problem: String,
        hint: String,
    },

    /// Wrong flags or arguments that clap itself cannot catch.
    #[error("{0}")]
    Usage(String),

    #[error("network namespace {name}: {message}\n  fix: {hint}")]
    Netns {
        name: String,
        message: String,
        hint: String,
    },

    /// A sysctl svcnat needs cannot be read or written.
    #[error("{message}\n  fix: {hint}")]
    Sysctl { message: String, hint: String },

    /// The kernel refused the batch; nothing was changed.
    #[error(
        "the kernel rejected the ruleset, nothing was changed: {object}: {errno}{}",
        hint.as_ref().map(|h| format!("\n  fix: {h}")).unwrap_or_default()
    )]
    KernelRejected {
        object: String,
        errno: nix::errno::Errno,
        hint: Option<String>,
    },

    /// svcnat's rules are installed by the other backend: applying would leave both.
    #[error(
        "svcnat's rules are already installed here by {installed}; applying with {wanted} would leave both in place, nothing was changed\n  fix: {fix}"
    )]
    BackendsMixed {
        installed: String,
        wanted: String,
        fix: String,
    },

    /// The map (or --table) names a table that svcnat did not create.
    #[error(
        "table inet {table} was not created by svcnat, and svcnat changes only tables it created (they carry the comment \"managed by svcnat\"); nothing was changed\n  fix: name another table with [settings] table = \"...\" (or --table); if it is an svcnat table from an old version, delete it with `nft delete table inet {table}` and apply again"
    )]
    ForeignTable { table: String },

    /// The ruleset changed between reading it and sending the batch (the kernel refused the
    /// batch for its generation id); the caller re-reads and retries.
    #[error(
        "the ruleset changed while svcnat was preparing its change, and kept changing; nothing was changed\n  fix: try again; if another program rewrites the ruleset constantly, stop it first"
    )]
    Stale,

    /// `svcnat confirm` found no commit-confirmed apply waiting.
    #[error(
        "nothing is waiting for confirmation in this namespace: it was confirmed already, or it was rolled back"
    )]
    NothingPending,

    /// The state directory (generations, lock) cannot be used.
    #[error("{message}")]
    State { message: String },

    /// iptables-restore (or -save) refused; with --noflush and one COMMIT per table, a
    /// refused table is left as it was.
    #[error("{tool} failed, that table is unchanged: {message}")]
    KernelRejectedText { tool: String, message: String },

    /// An iptables command could not be run at all.
    #[error("iptables: {message}\n  fix: {hint}")]
    Iptables { message: String, hint: String },

    /// Talking to netlink failed (socket, send, receive, unexpected reply).
    #[error("netlink: {0}")]
    Netlink(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn join_map_errors(errors: &[MapError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&e.to_string());
    }
    out
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Map(_)
            | Error::ReadMap { .. }
            | Error::Usage(_)
            | Error::ForeignTable { .. }
            | Error::BackendsMixed { .. } => 2,
            Error::Netns { .. }
            | Error::Sysctl { .. }
            | Error::KernelRejected { .. }
            | Error::Stale
            | Error::State { .. }
            | Error::NothingPending
            | Error::KernelRejectedText { .. }
            | Error::Netlink(_)
            | Error::Iptables { .. }
            | Error::Io { .. } => 1,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
