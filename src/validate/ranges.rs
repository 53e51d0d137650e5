//! The checks on port ranges that need the whole map (see `Checker::check_ranges`).

use super::Checker;

/// At most this many ports in all the port ranges of a map together (each is a map element).
const MAX_RANGE_PORTS: u32 = 1_000_000;

impl Checker<'_> {
    /// What only the whole map tells of its port ranges: overlaps with any other service
    /// (the listen keys' hashes see one port each), accounting, and the total size.
    /// Nothing to do without ranges.
    pub(super) fn check_ranges(&mut self, accounting: bool) {
        let ranges: Vec<usize> = (0..self.services.len())
            .filter(|i| self.services[*i].listen.is_range())
            .collect();
        let mut total = 0u32;
        for &r in &ranges {
            let s = &self.services[r];
            // `service[N]`, from where the listen is written.
            let field = crate::map::field_at(&self.source.text, s.listen_span.start);
            let at = field.strip_suffix(".listen").unwrap_or(&field).to_owned();
            let l = s.listen;
            total += l.ports();
            if let Some(other) = self.services.iter().enumerate().find(|(i, o)| {
                *i != r
                    && o.proto == s.proto
                    && o.listen.addr == l.addr
                    && o.listen.port <= l.last
                    && l.port <= o.listen.last
            }) {
                let line = self.source.line_col(other.1.listen_span.start).0;
                let e = self.source.error(
                    &s.listen_span,
                    format!("{at}.listen"),
                    format!(
                        "{}/{} overlaps service {:?} ({}, line {line})",
                        l, s.proto, other.1.name, other.1.listen
                    ),
                    "each listen address, port and protocol belongs to one service: make the ranges disjoint",
                );
                self.errors.push(e);
            }
            if accounting {
                let e = self.source.error(
                    &s.listen_span,
                    format!("{at}.listen"),
                    format!(
                        "a port range ({}) cannot be counted by settings.accounting",
                        l.port_text()
                    ),
                    "turn accounting off, or list the ports as services of their own",
                );
                self.errors.push(e);
            }
        }
        if total > MAX_RANGE_PORTS
            && let Some(&last) = ranges.last()
        {
            let s = &self.services[last];
            let e = self.source.error(
                &s.listen_span,
                crate::map::field_at(&self.source.text, s.listen_span.start),
                format!("the map's port ranges cover {total} ports, more than {MAX_RANGE_PORTS}"),
                "use fewer or smaller ranges",
            );
            self.errors.push(e);
        }
    }
}
