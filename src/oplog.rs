//! The operator's log: how lines are written (text with every value
//! escaped, so that nothing a client sends can forge a line, or JSON), and
//! the gate that keeps every refusal visible without letting one client
//! flood the log: at most one line a second per principal and reason, and
//! when lines resume, one summary of how many were held back.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

/// How often one principal's refusals of one kind reach the log.
const WINDOW: Duration = Duration::from_secs(1);

/// Principals the gate remembers at once: a botnet-sized set of addresses
/// shares one line a second per reason beyond it.
const MAX_PRINCIPALS: usize = 4096;

/// How long a principal's held-back count waits for its summary.
const FORGET: Duration = Duration::from_secs(60);

/// The principal that stands for every other once the table is full.
const OVERFLOW: &str = "*";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line of `key=value` fields, values escaped.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's log writer on stderr; `RUST_LOG` filters it
/// (`edgegate=info` when unset).
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "edgegate=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Json => builder.json().init(),
        Format::Text => {
            use tracing_subscriber::field::MakeExt;
            let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                if field.name() != "message" {
                    write!(w, "{field}=")?;
                }
                write!(Escaped(w), "{value:?}")
            })
            .delimited(" ");
            builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .fmt_fields(fields)
                .init();
        }
    }
}

/// Writes control characters (newlines, escape sequences) as escapes.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_debug())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Escapes a value for a log line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let _ = Escaped(&mut out).write_str(s);
    out
}

/// Decides which refusal lines go out. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct Gate {
    /// By reason, then by principal.
    slots: HashMap<&'static str, HashMap<Box<str>, Slot>>,
    len: usize,
    pruned: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    last: Instant,
    held: u64,
}

/// What the gate lets out for one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Let {
    /// Nothing: a line like it went out less than a second ago.
    Held,
    /// The line, after a summary of the `n` held back since the last one
    /// (no summary when 0).
    Line {
        /// How many similar lines were held back.
        suppressed: u64,
    },
}

impl Gate {
    /// A refusal of `who` for `reason` at `now`.
    pub fn admit(&mut self, now: Instant, who: &str, reason: &'static str) -> Let {
        // A principal not seen yet needs room: made by forgetting quiet
        // ones, else it shares the overflow line.
        let known = self.slots.get(reason).is_some_and(|m| m.contains_key(who));
        if !known && self.len >= MAX_PRINCIPALS {
            self.prune(now);
        }
        let who = if !known && self.len >= MAX_PRINCIPALS {
            OVERFLOW
        } else {
            who
        };
        let by_who = self.slots.entry(reason).or_default();
        match by_who.get_mut(who) {
            Some(slot) if now.duration_since(slot.last) < WINDOW => {
                slot.held += 1;
                Let::Held
            }
            Some(slot) => {
                let suppressed = std::mem::take(&mut slot.held);
                slot.last = now;
                Let::Line { suppressed }
            }
            None => {
                by_who.insert(who.into(), Slot { last: now, held: 0 });
                self.len += 1;
                Let::Line { suppressed: 0 }
            }
        }
    }

    /// Forgets principals quiet for a window with nothing held back (or
    /// quiet for a minute: their summary is dropped), at most once a
    /// window, so that a full table costs one scan a second.
    fn prune(&mut self, now: Instant) {
        if self.pruned.is_some_and(|t| now.duration_since(t) < WINDOW) {
            return;
        }
        self.pruned = Some(now);
        for by_who in self.slots.values_mut() {
            by_who.retain(|_, s| {
                let quiet = now.duration_since(s.last);
                quiet < WINDOW || (s.held > 0 && quiet < FORGET)
            });
        }
        self.len = self.slots.values().map(HashMap::len).sum();
    }
}

static GATE: LazyLock<Mutex<Gate>> = LazyLock::new(Mutex::default);

/// The process's gate at this instant (see [`refusal!`](crate::refusal)).
pub fn admit(who: &str, reason: &'static str) -> Let {
    GATE.lock().admit(Instant::now(), who, reason)
}

/// Logs a refusal of `who` for `reason` (a short name, `snake_case`),
/// through the gate: `refusal!(who, reason, field = value, ..., "message")`.
/// `who` is the certificate id, the client id or the source address, as
/// far as the gateway knows it.
#[macro_export]
macro_rules! refusal {
    ($who:expr, $reason:expr, $($rest:tt)+) => {{
        let who: &str = $who;
        let reason: &'static str = $reason;
        if let $crate::oplog::Let::Line { suppressed } = $crate::oplog::admit(who, reason) {
            if suppressed > 0 {
                tracing::info!(
                    target: "edgegate::refusal",
                    principal = who,
                    reason,
                    suppressed,
                    "suppressed {suppressed} similar"
                );
            }
            tracing::info!(target: "edgegate::refusal", principal = who, reason, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_principal_and_reason_then_a_summary() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut gate = Gate::default();
        assert_eq!(
            gate.admit(t0, "dev-1", "denied"),
            Let::Line { suppressed: 0 }
        );
        let held = (1..1000)
            .filter(|i| gate.admit(t0 + ms(*i), "dev-1", "denied") == Let::Held)
            .count();
        assert_eq!(held, 999, "a thousand denials in a second make one line");
        assert_eq!(
            gate.admit(t0, "dev-2", "denied"),
            Let::Line { suppressed: 0 },
            "another principal has its own line"
        );
        assert_eq!(
            gate.admit(t0, "dev-1", "limit"),
            Let::Line { suppressed: 0 },
            "another reason has its own line"
        );
        assert_eq!(
            gate.admit(t0 + ms(1000), "dev-1", "denied"),
            Let::Line { suppressed: 999 },
            "when lines resume, a summary of what was held back"
        );
        assert_eq!(
            gate.admit(t0 + ms(2500), "dev-1", "denied"),
            Let::Line { suppressed: 0 }
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut gate = Gate::default();
        for i in 0..MAX_PRINCIPALS * 3 {
            gate.admit(t0, &format!("10.0.{}.{}", i / 256, i % 256), "tls");
        }
        assert!(
            gate.len <= MAX_PRINCIPALS + 1,
            "{} principals kept",
            gate.len
        );
        assert_eq!(
            gate.admit(t0, "10.99.0.1", "tls"),
            Let::Held,
            "beyond the table, addresses share one line a second"
        );
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            gate.admit(later, "10.99.0.2", "tls"),
            Let::Line { suppressed: 0 },
            "quiet principals are forgotten"
        );
    }

    #[test]
    fn values_cannot_forge_lines() {
        assert_eq!(escape("dev\nINFO forged"), "dev\\nINFO forged");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("plain ü"), "plain ü");
    }
}
