//! What a SIGHUP may change in a running syncer, and what it may not. The rule, in one place:
//! the pacing and safety settings (batch, resync, drain timeout, the breaker's limits, source
//! wait) take effect on the next pass; the source, the target, the backend mappings, the state
//! directory, the admin address, the id and the log format belong to the running process and
//! need a restart (a reload that changes them says so and keeps them). A config that does not
//! resolve is refused whole.

use crate::config::Config;
use crate::reconcile::Settings;

#[derive(Debug)]
pub struct Reload {
    /// The settings to run with from now on, when any changed.
    pub settings: Option<Settings>,
    /// One line per change applied, for the log.
    pub applied: Vec<String>,
    /// Settings that changed but need a restart.
    pub needs_restart: Vec<&'static str>,
}

pub fn merge(running: &Config, new: &Config) -> Reload {
    let needs_restart: Vec<&'static str> = [
        (new.source != running.source, "registry / zookeeper (and their credentials)"),
        (new.target != running.target, "haproxy target (socket, Data Plane API, server options)"),
        (new.settings.mappings != running.settings.mappings, "backend"),
        (new.state_dir != running.state_dir, "state_dir"),
        (new.admin != running.admin, "admin"),
        (new.id != running.id, "id"),
        (new.log_format != running.log_format, "log_format"),
        (new.log_level != running.log_level, "log_level"),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect();
    let (old, new_s) = (&running.settings, &new.settings);
    let mut applied = Vec::new();
    let mut note = |what: &str, a: String, b: String| {
        if a != b {
            applied.push(format!("{what} {a} -> {b}"));
        }
    };
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    note("batch", d(old.batch), d(new_s.batch));
    note("resync", d(old.resync), d(new_s.resync));
    note("drain_timeout", d(old.drain_timeout), d(new_s.drain_timeout));
    note("source_wait", d(old.source_wait), d(new_s.source_wait));
    note("min_servers", old.limits.min_servers.to_string(), new_s.limits.min_servers.to_string());
    note("max_remove_fraction", old.limits.max_fraction.to_string(), new_s.limits.max_fraction.to_string());
    note("remove_window", d(old.limits.window), d(new_s.limits.window));
    let settings = (!applied.is_empty()).then(|| Settings { mappings: old.mappings.clone(), ..new_s.clone() });
    Reload { settings, applied, needs_restart }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunArgs;

    fn args() -> RunArgs {
        RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            haproxy_socket: Some("/run/haproxy/admin.sock".into()),
            backends: vec!["web-servers".into()],
            id: Some("lb-1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn limits_apply_and_mappings_wait_for_a_restart() {
        let running = args().resolve().unwrap();
        let same = merge(&running, &args().resolve().unwrap());
        assert!(same.settings.is_none() && same.applied.is_empty() && same.needs_restart.is_empty());
        let new = RunArgs { min_servers: Some(3), backends: vec!["web-servers".into(), "api-servers".into()], ..args() }.resolve().unwrap();
        let r = merge(&running, &new);
        assert_eq!(r.applied, vec!["min_servers 1 -> 3"]);
        assert_eq!(r.needs_restart, vec!["backend"]);
        let s = r.settings.unwrap();
        assert_eq!(s.limits.min_servers, 3);
        assert_eq!(s.mappings, running.settings.mappings, "the mappings are the running ones");
    }
}
