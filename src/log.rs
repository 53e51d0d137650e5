//! One line per event on standard error: `TIME LEVEL message`. The level comes from
//! `$RUST_LOG` (error, warn, info, debug; default info), as Rust programs usually read it.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

fn threshold() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let v = std::env::var("RUST_LOG")
            .unwrap_or_default()
            .to_ascii_lowercase();
        // `svcnat=debug` and `debug` both work; the last level named wins.
        let last = v
            .split([',', '='])
            .rev()
            .find(|s| !s.is_empty())
            .unwrap_or("");
        match last {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "debug" | "trace" => Level::Debug,
            _ => Level::Info,
        }
    })
}

pub fn log(level: Level, message: &str) {
    if level <= threshold() {
        let name = match level {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        };
        // Several lines (a multi-error map) stay one event: continuation lines indented.
        let message = message.replace('\n', "\n    ");
        let line = format!(
            "{} {name} {message}\n",
            crate::state::rfc3339(crate::state::now())
        );
        // One write per event (eprintln! writes each piece on its own: six per line), so
        // that a line reaches a pipe whole, never interleaved with another writer's, and
        // whoever waits on the log is woken once for it.
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

pub fn error(m: &str) {
    log(Level::Error, m)
}
pub fn warn(m: &str) {
    log(Level::Warn, m)
}
pub fn info(m: &str) {
    log(Level::Info, m)
}
pub fn debug(m: &str) {
    log(Level::Debug, m)
}
