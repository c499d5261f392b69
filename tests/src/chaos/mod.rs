//! The chaos test, split the way etcd's robustness suite is: `topology` starts the real
//! processes, `fault` breaks them, `workload` uses the system the way production does and
//! records what it saw, and `validate` checks each guarantee by name against the record.

pub mod fault;
pub mod topology;
pub mod validate;
pub mod workload;

use std::time::Duration;

/// How long the faults run: `CHAOS_DURATION` (`90s`, `10m`, ...), default 90 s.
pub fn duration_from_env() -> Duration {
    std::env::var("CHAOS_DURATION").ok().and_then(|v| parse_duration(&v)).unwrap_or(Duration::from_secs(90))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("10m"), Some(std::time::Duration::from_secs(600)));
        assert_eq!(super::parse_duration("90"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(super::parse_duration("x"), None);
    }
}
