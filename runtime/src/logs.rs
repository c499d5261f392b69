//! Logging, the same for every binary: text or JSON lines on stderr; ANSI colours only when
//! stderr is a terminal, so journald and log pipelines get plain text; the level from
//! `--log-level`, else `RUST_LOG`, else the binary's default.

use std::io::IsTerminal as _;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Checks a `--log-level` value: a level (`error`, `warn`, `info`, `debug`, `trace`) or a
/// `RUST_LOG`-style list of directives (`info,openraft=warn`).
pub fn parse_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty; give a level (error, warn, info, debug, trace) or directives like info,openraft=warn".into());
    }
    EnvFilter::try_new(s).map(|_| s.to_string()).map_err(|e| format!("{s:?}: {e}"))
}

/// The filter: `level` if given, else `RUST_LOG` if set and valid, else `default`.
pub fn filter(level: Option<&str>, default: &str) -> EnvFilter {
    if let Some(l) = level {
        if let Ok(f) = EnvFilter::try_new(l) {
            return f;
        }
    }
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the subscriber for the whole process.
pub fn init(format: LogFormat, level: Option<&str>, default: &str) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level, default)).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_when_parsed() {
        assert_eq!(parse_level("debug").unwrap(), "debug");
        assert_eq!(parse_level(" info,openraft=warn ").unwrap(), "info,openraft=warn");
        assert!(parse_level("").is_err());
        assert!(parse_level("info,=x=y").is_err());
        assert_eq!(filter(Some("warn"), "info").to_string(), "warn");
    }
}

/// Keeps a repeated warning from flooding the log: the first occurrence of a condition is
/// logged, then at most one line per `every` saying how many were left out, and its end once.
/// (A syncer with HAProxy down used to warn on every 250 ms pass.)
pub struct Throttle {
    every: std::time::Duration,
    active: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

impl Throttle {
    pub fn new(every: std::time::Duration) -> Throttle {
        Throttle { every, active: Default::default() }
    }

    /// Condition `key` happened at `now`: `Some(left_out)` when a line should be logged
    /// (`left_out`: occurrences not logged since the last line), `None` to stay quiet.
    pub fn hit(&mut self, key: &str, now: std::time::Instant) -> Option<u64> {
        match self.active.get_mut(key) {
            None => {
                self.active.insert(key.to_string(), (now, 0));
                Some(0)
            }
            Some((last, left_out)) if now.saturating_duration_since(*last) >= self.every => {
                let n = *left_out;
                *last = now;
                *left_out = 0;
                Some(n)
            }
            Some((_, left_out)) => {
                *left_out += 1;
                None
            }
        }
    }

    /// Condition `key` is over: true if it was going on (log that it ended).
    pub fn clear(&mut self, key: &str) -> bool {
        self.active.remove(key).is_some()
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn first_then_one_line_per_period_then_the_end() {
        let mut t = Throttle::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(t.hit("haproxy", t0), Some(0));
        for i in 1..=10 {
            assert_eq!(t.hit("haproxy", t0 + Duration::from_millis(250 * i)), None);
        }
        assert_eq!(t.hit("other", t0), Some(0), "conditions are counted apart");
        assert_eq!(t.hit("haproxy", t0 + Duration::from_secs(31)), Some(10));
        assert!(t.clear("haproxy"));
        assert!(!t.clear("haproxy"));
        assert_eq!(t.hit("haproxy", t0 + Duration::from_secs(32)), Some(0), "a new episode is logged at once");
    }
}
