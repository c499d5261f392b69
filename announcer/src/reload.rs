//! What a SIGHUP may change in a running announcer, and what it may not. The rule, in one
//! place: the services (their instances, addresses, weights, meta and checks) and the drain
//! period take effect at once; the backend and its credentials, the TTL, the admin address, the
//! state directory and the log format belong to the running process and need a restart (a
//! reload that changes them says so and keeps them). A config that does not resolve is refused whole.

use crate::config::Config;

/// What a reload does.
#[derive(Debug)]
pub struct Reload {
    /// The config to run with from now on.
    pub config: Config,
    /// One line per change applied, for the log ("added web-servers/10.0.0.5:8080", ...).
    pub applied: Vec<String>,
    /// Settings that changed in the file but need a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Merges `new` into `running`: the reloadable parts from `new`, the rest from `running`.
pub fn merge(running: &Config, new: Config) -> Reload {
    let needs_restart: Vec<&'static str> = [
        (new.backend != running.backend, "registry / zookeeper (and their credentials)"),
        (new.zookeeper_auth != running.zookeeper_auth, "zookeeper_auth_file"),
        (new.ttl != running.ttl, "ttl"),
        (new.admin != running.admin, "admin"),
        (new.state_dir != running.state_dir, "state_dir"),
        (new.log_format != running.log_format, "log_format"),
        (new.log_level != running.log_level, "log_level"),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect();
    let key = |s: &crate::config::ServiceConfig| format!("{}/{}", s.service, s.instance);
    let mut applied = Vec::new();
    for s in &new.services {
        match running.services.iter().find(|r| key(r) == key(s)) {
            None => applied.push(format!("added {}", key(s))),
            Some(r) if r != s => applied.push(format!("changed {}", key(s))),
            Some(_) => {}
        }
    }
    for r in &running.services {
        if !new.services.iter().any(|s| key(s) == key(r)) {
            applied.push(format!("removed {}", key(r)));
        }
    }
    if new.drain != running.drain {
        applied.push(format!("drain {} -> {}", humantime::format_duration(running.drain), humantime::format_duration(new.drain)));
    }
    let config = Config { services: new.services, drain: new.drain, ..running.clone() };
    Reload { config, applied, needs_restart }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunArgs;
    use std::time::Duration;

    fn config(services: &[&str], ttl: &str) -> Config {
        RunArgs {
            registry: vec!["http://127.0.0.1:7401".into()],
            service: Some(services[0].into()),
            address: Some("10.0.0.5:8080".into()),
            ttl: Some(humantime::parse_duration(ttl).unwrap()),
            ..Default::default()
        }
        .resolve()
        .map(|mut c| {
            for extra in &services[1..] {
                let mut s = c.services[0].clone();
                s.service = extra.to_string();
                c.services.push(s);
            }
            c
        })
        .unwrap()
    }

    #[test]
    fn services_and_drain_apply_the_rest_waits_for_a_restart() {
        let running = config(&["web-servers"], "3s");
        let mut new = config(&["web-servers", "api-servers"], "10s");
        new.services[0].weight = 50;
        new.drain = Duration::from_secs(1);
        let r = merge(&running, new);
        assert_eq!(r.config.services.len(), 2);
        assert_eq!(r.config.services[0].weight, 50);
        assert_eq!(r.config.drain, Duration::from_secs(1));
        assert_eq!(r.config.ttl, Duration::from_secs(3), "the TTL is the running one");
        assert_eq!(r.needs_restart, vec!["ttl"]);
        assert_eq!(r.applied, vec!["changed web-servers/10.0.0.5:8080", "added api-servers/10.0.0.5:8080", "drain 5s -> 1s"]);
        let back = merge(&r.config, config(&["api-servers"], "3s"));
        assert!(back.applied.contains(&"removed web-servers/10.0.0.5:8080".to_string()), "{:?}", back.applied);
        assert!(merge(&running, running.clone()).applied.is_empty());
    }
}
