//! Signals read from a signalfd, never handled in a handler: `svcnat run`'s loop and the
//! wait of `apply --confirm` block the signals they care about and poll for them.

use crate::error::{Error, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Block `signals` in this thread (call it before starting any other) and return a
/// non-blocking signalfd that reports them.
pub fn block(signals: &[Signal]) -> Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set.thread_block()
        .map_err(|e| Error::io("blocking signals", e.into()))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::io("signalfd", e.into()))
}

/// The signals reported since the last read.
pub fn pending(fd: &SignalFd) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
            out.push(s);
        }
    }
    out
}
