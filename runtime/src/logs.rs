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
