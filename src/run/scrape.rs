//! The `--metrics` server: a thread of its own that accepts scrapers and answers each on a
//! short-lived thread, so that idle or slow clients never hold up `svcnat run`'s loop or
//! each other. Every connection gets a deadline and a size cap on its request; beyond
//! `MAX_CLIENTS` at once, a client is told to come back later.
//!
//! The loop publishes what it knows (`Snapshot`) after every change; a scrape reads the
//! counters from the kernel itself, inside the namespace (setns switches only the calling
//! thread).

use super::metrics::{Stats, View, render};
use crate::kernel::{self, netns::NetnsSpec};
use crate::plan::Plan;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Scrapers served at once (a thread each, with a small stack); more are answered 503.
pub const MAX_CLIENTS: usize = 256;
/// The most a request line and its headers may take, and how long a client may take to
/// send them.
pub const MAX_REQUEST: usize = 8 * 1024;
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// What the loop knows, as of its last change.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub resolved: std::sync::Arc<Plan>,
    pub installed: Option<std::sync::Arc<Plan>>,
    pub health: HashMap<SocketAddr, bool>,
    pub stats: Stats,
}

/// The loop's side: publish a new snapshot.
#[derive(Clone)]
pub struct Published(Arc<Mutex<Arc<Snapshot>>>);

impl Published {
    pub fn set(&self, s: Snapshot) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Arc::new(s);
        }
    }

    fn get(&self) -> Arc<Snapshot> {
        self.0.lock().map(|s| Arc::clone(&s)).unwrap_or_default()
    }
}

/// Serve `listener` on a thread of its own until the process ends.
pub fn start(listener: TcpListener, netns: Option<NetnsSpec>, first: Snapshot) -> Published {
    let published = Published(Arc::new(Mutex::new(Arc::new(first))));
    let state = published.clone();
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = answer(
                    &conn,
                    "503 Service Unavailable",
                    "too many scrapers at once\n",
                );
                continue;
            }
            let (state, netns, done) = (state.clone(), netns.clone(), Arc::clone(&active));
            let spawned = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    serve(conn, &state, netns.as_ref());
                    done.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
    published
}

fn serve(mut conn: TcpStream, state: &Published, netns: Option<&NetnsSpec>) {
    let Some(request) = read_request(&mut conn) else {
        let _ = answer(
            &conn,
            "431 Request Header Fields Too Large",
            "request too large\n",
        );
        return;
    };
    if !request.starts_with("GET /metrics ") && request != "GET /metrics" {
        let _ = answer(&conn, "404 Not Found", "try GET /metrics\n");
        return;
    }
    let snapshot = state.get();
    let table = snapshot
        .installed
        .as_ref()
        .map_or(&snapshot.resolved.table, |p| &p.table);
    let installed = kernel::show(netns, table).ok().flatten();
    let (counters, objects) = installed
        .map(|i| (i.counters, i.objects))
        .unwrap_or_default();
    let view = View {
        resolved: &snapshot.resolved,
        installed: snapshot.installed.as_deref(),
        health: &snapshot.health,
        stats: &snapshot.stats,
    };
    let body = render(&view, &counters, &objects);
    let _ = answer(&conn, "200 OK", &body);
}

/// The request line, once the headers have ended (or the client stopped sending); None
/// when more than `MAX_REQUEST` bytes came without the end of the headers. A client that
/// sends nothing within `REQUEST_DEADLINE` gets its connection closed.
fn read_request(conn: &mut TcpStream) -> Option<String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
    Some(String::from_utf8_lossy(line).trim_end().to_owned())
}

/// Send the response; for a refusal, then read what the client still sends (for a moment)
/// before closing, so that the kernel does not reset the connection over unread input and
/// the client gets to read why.
fn answer(conn: &TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    respond(conn, status, body)?;
    if !status.starts_with("200") {
        conn.shutdown(std::net::Shutdown::Write)?;
        let until = Instant::now() + Duration::from_millis(500);
        let mut sink = [0u8; 16 * 1024];
        let mut c = conn;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                break;
            }
            match c.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

fn respond(mut conn: &TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    conn.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 idle connections do not delay a scrape, and an oversized request is answered.
    #[test]
    fn idle_and_oversized_clients_do_not_block_a_scrape() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        start(listener, None, Snapshot::default());
        let idle: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let started = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        // Served at once, not after the idle ones time out.
        assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        drop(idle);
        // Once the idle ones are gone, a scrape gets the metrics.
        std::thread::sleep(Duration::from_millis(100));
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.0 200 OK"), "{reply}");
        assert!(reply.contains("svcnat_"), "{reply}");
        let mut big = TcpStream::connect(addr).unwrap();
        let line = vec![b'a'; 64 * 1024];
        let _ = big.write_all(&line);
        let mut reply = String::new();
        let _ = big.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.0 431"), "{reply}");
    }
}
