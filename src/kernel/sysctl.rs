//! The sysctls a plan needs in its namespace: forwarding when targets may be elsewhere,
//! `route_localnet` when a service is reachable through 127.0.0.1.
//!
//! Files under /proc/sys/net belong to the namespace of the thread that opens them, so they
//! are opened while inside the target namespace. They are opened for writing *before* the
//! batch is sent (a read-only /proc/sys, as in most containers, fails there and nothing is
//! changed) and written only after the kernel accepted the batch.

use super::Kernel;
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
    let remote = |family| {
        plan.services
            .iter()
            .any(|s| s.family == family && s.reaches_out(local))
    };
    needed(
        [remote(Family::V4), remote(Family::V6)],
        plan.uses_localhost(),
    )
}

/// The sysctls that must read 1 when some IPv4 / IPv6 service reaches out of the
/// namespace (`remote`), and when some service answers on 127.0.0.1 (`localhost`).
pub fn needed(remote: [bool; 2], localhost: bool) -> Vec<&'static Sysctl> {
    let mut out = Vec::new();
    for (yes, sysctl) in remote.into_iter().zip([&IP_FORWARD, &IP6_FORWARD]) {
        if yes {
            out.push(sysctl);
        }
    }
    if localhost {
        out.push(&ROUTE_LOCALNET);
    }
    out
}

pub const ALL: [&Sysctl; 3] = [&IP_FORWARD, &IP6_FORWARD, &ROUTE_LOCALNET];

/// A sysctl write to make once the batch is in (opened beforehand, so it cannot fail for
/// lack of permission after the ruleset changed).
pub struct PendingWrite {
    pub sysctl: &'static Sysctl,
    pub value: &'static [u8],
    /// The file opened for writing; None for a `FakeKernel`, which keeps values itself.
    file: Option<File>,
}

impl PendingWrite {
    /// A write with no file behind it (`FakeKernel`).
    pub fn detached(sysctl: &'static Sysctl, value: &'static [u8]) -> PendingWrite {
        PendingWrite {
            sysctl,
            value,
            file: None,
        }
    }

    pub fn write(self) -> Result<()> {
        match self.file {
            Some(mut f) => f
                .write_all(self.value)
                .map_err(|e| Error::io(format!("writing {}", self.sysctl.key), e)),
            None => Ok(()),
        }
    }
}

/// The sysctl writes of one apply or flush, and what svcnat will own afterwards.
pub struct Changes {
    /// 0 → 1: the plan needs them.
    pub enable: Vec<PendingWrite>,
    /// 1 → 0: svcnat had switched them on and the plan no longer needs them (leaving
    /// route_localnet on without svcnat's guard would reopen CVE-2020-8558).
    pub disable: Vec<PendingWrite>,
    /// The sysctls svcnat owns after this change, to record on its table.
    pub owned: Vec<&'static str>,
}

pub fn read(s: &Sysctl) -> Result<String> {
    let mut v = String::new();
    File::open(s.path())
        .and_then(|mut f| f.read_to_string(&mut v))
        .map_err(|e| Error::Sysctl {
            message: format!("cannot read {} ({}): {e}", s.key, s.path()),
            hint: "svcnat needs /proc mounted in the target namespace".into(),
        })?;
    Ok(v.trim().to_owned())
}

/// Why a sysctl cannot be written, and how to set it by hand.
pub fn cannot_set(s: &Sysctl, value: &[u8], why: &str, e: impl std::fmt::Display) -> Error {
    Error::Sysctl {
        message: format!("{why}, and svcnat cannot set it: {e}"),
        hint: format!(
            "run `sysctl -w {}={}` in that namespace first; in a container, add to compose `sysctls: [{}={}]` (or `docker run --sysctl {}={}`)",
            s.key, value[0] as char, s.key, value[0] as char, s.key, value[0] as char
        ),
    }
}

pub fn open_for_write(
    s: &'static Sysctl,
    value: &'static [u8],
    why: String,
) -> Result<PendingWrite> {
    let file = OpenOptions::new()
        .write(true)
        .open(s.path())
        .map_err(|e| cannot_set(s, value, &why, e))?;
    Ok(PendingWrite {
        sysctl: s,
        value,
        file: Some(file),
    })
}

/// Plan the sysctl writes: switch on what `needed` lacks, switch off what svcnat had
/// switched on (`owned_before`, from its table) and no longer needs. Fails, before anything
/// changed, when a write is due and /proc/sys cannot be written.
pub fn prepare(
    k: &mut dyn Kernel,
    needed: &[&'static Sysctl],
    owned_before: &[String],
) -> Result<Changes> {
    let mut changes = Changes {
        enable: Vec::new(),
        disable: Vec::new(),
        owned: Vec::new(),
    };
    for s in needed {
        let was_ours = owned_before.iter().any(|k| k == s.key);
        if k.read_sysctl(s)? == "1" {
            if was_ours {
                changes.owned.push(s.key);
            }
            continue;
        }
        let why = format!("{} is 0, {} need it to be 1", s.key, s.why);
        changes.enable.push(k.open_sysctl(s, b"1\n", why)?);
        changes.owned.push(s.key);
    }
    for s in ALL {
        let ours = owned_before.iter().any(|k| k == s.key);
        if ours && !needed.iter().any(|n| n.key == s.key) && k.read_sysctl(s)? == "1" {
            let why = format!(
                "{} was switched on by svcnat and is no longer needed",
                s.key
            );
            changes.disable.push(k.open_sysctl(s, b"0\n", why)?);
        }
    }
    Ok(changes)
}

/// Make the planned writes; returns the keys (enabled, disabled).
pub fn write(
    k: &mut dyn Kernel,
    changes: Changes,
) -> Result<(Vec<&'static str>, Vec<&'static str>)> {
    let mut done = (Vec::new(), Vec::new());
    for w in changes.enable {
        done.0.push(w.sysctl.key);
        k.write_sysctl(w)?;
    }
    for w in changes.disable {
        done.1.push(w.sysctl.key);
        k.write_sysctl(w)?;
    }
    Ok(done)
}
