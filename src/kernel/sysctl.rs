//! The sysctls a plan needs in its namespace: forwarding when targets may be elsewhere,
//! `route_localnet` when a service is reachable through 127.0.0.1.
//!
//! Files under /proc/sys/net belong to the namespace of the thread that opens them, so they
//! are opened while inside the target namespace. They are opened for writing *before* the
//! batch is sent (a read-only /proc/sys, as in most containers, fails there and nothing is
//! changed) and written only after the kernel accepted the batch.

use crate::error::{Error, Result};
use crate::plan::{Family, Plan};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};

pub struct Sysctl {
    pub key: &'static str,
    pub why: &'static str,
}

impl Sysctl {
    fn path(&self) -> String {
        format!("/proc/sys/{}", self.key.replace('.', "/"))
    }
}

pub const IP_FORWARD: Sysctl = Sysctl {
    key: "net.ipv4.ip_forward",
    why: "IPv4 services with targets outside this namespace",
};
pub const IP6_FORWARD: Sysctl = Sysctl {
    key: "net.ipv6.conf.all.forwarding",
    why: "IPv6 services with targets outside this namespace",
};
pub const ROUTE_LOCALNET: Sysctl = Sysctl {
    key: "net.ipv4.conf.all.route_localnet",
    why: "services with localhost = true",
};

/// The sysctls that must read 1 for this plan. `local` says whether an address belongs
/// to this namespace (such targets need no forwarding).
pub fn required(plan: &Plan, local: &dyn Fn(&std::net::IpAddr) -> bool) -> Vec<&'static Sysctl> {
    let mut out = Vec::new();
    for (family, sysctl) in [(Family::V4, &IP_FORWARD), (Family::V6, &IP6_FORWARD)] {
        let remote = plan
            .services
            .iter()
            .filter(|s| s.family == family)
            .flat_map(|s| s.non_loopback_targets())
            .any(|t| !local(&t.addr.ip()));
        if remote {
            out.push(sysctl);
        }
    }
    if plan.uses_localhost() {
        out.push(&ROUTE_LOCALNET);
    }
    out
}

/// A sysctl that is 0 and will be set to 1 once the batch is in.
pub struct PendingWrite {
    pub sysctl: &'static Sysctl,
    file: File,
}

impl PendingWrite {
    pub fn commit(mut self) -> Result<()> {
        self.file
            .write_all(b"1\n")
            .map_err(|e| Error::io(format!("writing {}", self.sysctl.key), e))
    }
}

fn read(s: &Sysctl) -> Result<String> {
    let mut v = String::new();
    File::open(s.path())
        .and_then(|mut f| f.read_to_string(&mut v))
        .map_err(|e| Error::Sysctl {
            message: format!("cannot read {} ({}): {e}", s.key, s.path()),
            hint: "svcnat needs /proc mounted in the target namespace".into(),
        })?;
    Ok(v.trim().to_owned())
}

/// Check each required sysctl; open the ones that are off for writing. Fails, before
/// anything changed, when one is off and cannot be written.
pub fn prepare(needed: &[&'static Sysctl]) -> Result<Vec<PendingWrite>> {
    let mut pending = Vec::new();
    for s in needed {
        if read(s)? == "1" {
            continue;
        }
        let file = OpenOptions::new().write(true).open(s.path()).map_err(|e| Error::Sysctl {
            message: format!("{} is 0, {} need it to be 1, and svcnat cannot set it: {e}", s.key, s.why),
            hint: format!(
                "run `sysctl -w {}=1` in that namespace first; in a container, add to compose `sysctls: [{}=1]` (or `docker run --sysctl {}=1`)",
                s.key, s.key, s.key
            ),
        })?;
        pending.push(PendingWrite { sysctl: s, file });
    }
    Ok(pending)
}
