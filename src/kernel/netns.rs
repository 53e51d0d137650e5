//! Entering another network namespace for the duration of one operation.
//!
//! `setns` switches only the calling thread, so svcnat enters the namespace on the main
//! thread before it starts any other, opens its netlink socket and sysctl files there (they
//! stay bound to that namespace), and returns through a guard whose `Drop` restores the
//! original namespace, also on error or panic.

use crate::error::{Error, Result};
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::path::PathBuf;

/// Where `--netns` points: a name under /run/netns, a path, or `pid:N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsSpec {
    pub label: String,
    pub path: PathBuf,
}

impl NetnsSpec {
    pub fn parse(s: &str) -> Result<NetnsSpec> {
        let path = if let Some(pid) = s.strip_prefix("pid:") {
            let pid: u32 = pid.parse().map_err(|_| {
                Error::Usage(format!(
                    "--netns {s:?}: after pid: comes a process id, e.g. pid:1234"
                ))
            })?;
            PathBuf::from(format!("/proc/{pid}/ns/net"))
        } else if s.starts_with('/') {
            PathBuf::from(s)
        } else if !s.is_empty() && !s.contains('/') && s != "." && s != ".." {
            PathBuf::from("/run/netns").join(s)
        } else {
            return Err(Error::Usage(format!(
                "--netns {s:?}: give a name under /run/netns, an absolute path, or pid:N"
            )));
        };
        Ok(NetnsSpec {
            label: s.to_owned(),
            path,
        })
    }
}

fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// While alive, the calling thread is in the target namespace.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn enter(spec: &NetnsSpec) -> Result<NetnsGuard> {
        let fail = |message: String, hint: &str| Error::Netns {
            name: spec.label.clone(),
            message,
            hint: hint.to_owned(),
        };
        let original = File::open("/proc/thread-self/ns/net").map_err(|e| {
            fail(
                format!("cannot open the current namespace: {e}"),
                "is /proc mounted?",
            )
        })?;
        let target = File::open(&spec.path).map_err(|e| {
            fail(
                format!("cannot open {}: {e}", spec.path.display()),
                "check the name with `ip netns list`, or the pid with `ps`",
            )
        })?;
        if same_file(&original, &target) {
            eprintln!(
                "svcnat: note: --netns {} is the network namespace svcnat is already in",
                spec.label
            );
        }
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| {
            fail(
                format!("cannot enter {}: {e}", spec.path.display()),
                "entering a namespace needs root (CAP_SYS_ADMIN); is the path a network namespace?",
            )
        })?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            // Carrying on in the wrong namespace could change the wrong ruleset.
            eprintln!("svcnat: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            NetnsSpec::parse("proxy1").unwrap().path,
            PathBuf::from("/run/netns/proxy1")
        );
        assert_eq!(
            NetnsSpec::parse("pid:42").unwrap().path,
            PathBuf::from("/proc/42/ns/net")
        );
        assert_eq!(
            NetnsSpec::parse("/proc/1/ns/net").unwrap().path,
            PathBuf::from("/proc/1/ns/net")
        );
        assert!(NetnsSpec::parse("pid:x").is_err());
        assert!(NetnsSpec::parse("a/b").is_err());
        assert!(NetnsSpec::parse("").is_err());
    }
}
