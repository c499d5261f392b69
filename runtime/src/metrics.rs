//! Metrics served the same way by every binary: one `render` that puts the binary's metrics
//! under its prefix beside `<binary>_build_info` and the standard `process_*` metrics, in the
//! OpenMetrics text `prometheus_client` writes (hence `CONTENT_TYPE`); and one histogram
//! shape for every latency the binaries wait on.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of the body `render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The git revision the binary was built from (`unknown` outside a checkout).
pub const REVISION: &str = env!("SD_GIT_REVISION");

/// `--version`: the package version and the git revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SD_GIT_REVISION"), ")");

/// The scrape body: `register` adds the binary's metrics under `prefix` (with
/// `<prefix>_build_info`), and the process metrics are read now.
pub fn render(prefix: &str, register: impl FnOnce(&mut Registry)) -> String {
    let mut root = Registry::default();
    register_process(&mut root);
    let sub = root.sub_registry_with_prefix(prefix);
    register_build_info(sub);
    register(sub);
    let mut out = String::new();
    encode(&mut out, &root).expect("writing to a String cannot fail");
    out
}

/// What `doc` (Markdown: prose, tables, PromQL in code blocks) says about the metrics under
/// `prefix`: how many metric names it mentions, and those that `rendered` (a `render` body) does
/// not declare. Each binary's tests call it with its docs, so an alert in docs/monitoring.md
/// cannot name a metric that was renamed away. A name is `prefix_` and identifier characters,
/// not inside a longer word or a path, and not a file (`registry_processes.rs`).
pub fn undeclared_in_docs(rendered: &str, doc: &str, prefix: &str) -> (usize, Vec<String>) {
    let declared: std::collections::BTreeSet<&str> = rendered.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let ident = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let head = format!("{prefix}_");
    let (mut mentioned, mut missing) = (std::collections::BTreeSet::new(), Vec::new());
    for (at, _) in doc.match_indices(&head) {
        let before = doc[..at].chars().next_back();
        if before.is_some_and(|c| ident(c) || c.is_ascii_uppercase() || matches!(c, '/' | '.' | '-')) {
            continue;
        }
        let len = doc[at..].find(|c: char| !ident(c)).unwrap_or(doc.len() - at);
        let (name, after) = (&doc[at..at + len], &doc[at + len..]);
        if after.starts_with(".rs") || after.starts_with("::") || name.len() == head.len() {
            continue;
        }
        if !mentioned.insert(name) {
            continue;
        }
        // A sample's name is its family's plus a suffix the format adds.
        let family = ["_total", "_bucket", "_count", "_sum", "_created"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        if !declared.contains(family) && !declared.contains(name) {
            missing.push(name.to_string());
        }
    }
    (mentioned.len(), missing)
}

/// `undeclared_in_docs` over several docs (`(name, text)`): `Err` naming each doc that names
/// a metric the binary does not serve, or that names none of its metrics at all (a check
/// that no longer reads anything).
pub fn check_docs(rendered: &str, prefix: &str, docs: &[(&str, &str)]) -> Result<(), String> {
    let mut problems = Vec::new();
    for (file, text) in docs {
        match undeclared_in_docs(rendered, text, prefix) {
            (0, _) => problems.push(format!("{file} names no {prefix}_ metric")),
            (_, missing) if !missing.is_empty() => problems.push(format!("{file} names metrics {prefix} does not serve: {missing:?}")),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A latency histogram in seconds: 16 buckets doubling from 0.5 ms to about 16 s, wide enough
/// for a loopback request and a write behind a stalled disk alike.
pub fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Registers `build_info{version, revision} 1` in `r` (whose prefix names the binary).
pub fn register_build_info(r: &mut Registry) {
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into()), ("revision".into(), REVISION.into())]).set(1);
    r.register("build_info", "The version and git revision of this binary", info);
}

/// The process metrics Prometheus' client libraries export under these names (CPU, memory,
/// file descriptors, threads, start time), read from /proc now. Where /proc cannot be read
/// they are left out rather than reported as zero.
pub fn register_process(r: &mut Registry) {
    let Ok(me) = procfs::process::Process::myself() else { return };
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        cpu.inc_by((stat.utime + stat.stime) as f64 / ticks);
        r.register("process_cpu_seconds", "User and system CPU time spent, in seconds", cpu);
        let rss = gauge(stat.rss as f64 * procfs::page_size() as f64);
        r.register("process_resident_memory_bytes", "Resident memory size in bytes", rss);
        r.register("process_virtual_memory_bytes", "Virtual memory size in bytes", gauge(stat.vsize as f64));
        r.register("process_threads", "Threads in this process", gauge(stat.num_threads as f64));
        if let Ok(boot) = procfs::boot_time_secs() {
            r.register(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                gauge(boot as f64 + stat.starttime as f64 / ticks),
            );
        }
    }
    if let Ok(n) = me.fd_count() {
        r.register("process_open_fds", "Open file descriptors", gauge(n as f64));
    }
    if let Ok(procfs::process::LimitValue::Value(max)) = me.limits().map(|l| l.max_open_files.soft_limit) {
        r.register("process_max_fds", "The limit on open file descriptors", gauge(max as f64));
    }
}

fn gauge(v: f64) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let g = Gauge::default();
    g.set(v);
    g
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn names_in_the_docs_are_checked_against_the_declared_families() {
        let rendered = super::render("demo", |r| r.register("hits", "Hits", super::Counter::<u64>::default()));
        let doc = "Alert on `demo_hits_total`, `demo_hits_total{x=\"y\"}` and rate(demo_hits_total[5m]); `demo_gone_total` was \
                   renamed; tests/demo_file.rs, demo_proc.rs and the_demo_x are not names.";
        assert_eq!(super::undeclared_in_docs(&rendered, doc, "demo"), (2, vec!["demo_gone_total".to_string()]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_render_has_the_binarys_metrics_build_info_and_the_process_metrics() {
        let c: Counter = Counter::default();
        c.inc();
        let body = render("demo", |r| r.register("things", "Things", c.clone()));
        for needle in [
            "demo_things_total 1",
            "demo_build_info{",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(body.contains(needle), "{needle} missing from\n{body}");
        }
        assert_eq!(body.matches("# EOF").count(), 1, "{body}");
    }

    #[test]
    fn latency_buckets_span_a_millisecond_to_seconds() {
        let h = latency();
        h.observe(0.0003);
        h.observe(12.0);
        let mut r = Registry::default();
        r.register("wait_seconds", "Waits", h);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        assert!(out.contains("le=\"0.0005\"} 1") && out.contains("le=\"16.384\"} 2"), "{out}");
    }
}
