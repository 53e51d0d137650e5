//! One line per event on standard error: `TIME LEVEL message`, or with `--log-format json`
//! (or `$SVCNAT_LOG_FORMAT=json`) one JSON object per line: `{"time":…,"level":…,"message":…}`.
//! The level comes from `$RUST_LOG` (error, warn, info, debug; default info), as Rust
//! programs usually read it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Log JSON lines from now on (`run --log-format json`).
pub fn use_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

fn json() -> bool {
    JSON.load(Ordering::Relaxed)
        || std::env::var("SVCNAT_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

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
        let time = crate::state::rfc3339(crate::state::now());
        let line = if json() {
            let mut l =
                serde_json::json!({ "time": time, "level": name, "message": message }).to_string();
            l.push('\n');
            l
        } else {
            // Several lines (a multi-error map) stay one event: continuation lines indented.
            let message = message.replace('\n', "\n    ");
            format!("{time} {name} {message}\n")
        };
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
