//! Logs fit journald and log pipelines: no ANSI colour codes when stderr is not a terminal (here
//! a file), and `--log-level` on every binary, checked when parsed.

use std::time::Duration;

use e2e::{binary, free_port, wait_for, Proc, RegistryCluster};

fn assert_plain(name: &str, log: &str) {
    assert!(!log.contains('\u{1b}'), "{name} wrote ANSI escape codes to a file:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_colours_in_a_file_and_log_level_works_on_every_binary() {
    let cluster = RegistryCluster::start_with(1, &["--log-level", "debug"]).await;
    let dir = tempfile::tempdir().unwrap();
    let announcer = Proc::spawn(
        "announcer",
        &binary("announcer"),
        &[
            "--registry".into(),
            format!("http://127.0.0.1:{}", free_port()),
            "--service".into(),
            "web-servers".into(),
            "--address".into(),
            "127.0.0.1:8080".into(),
            "--admin".into(),
            "off".into(),
            "--log-level".into(),
            "debug".into(),
        ],
        dir.path(),
    );
    let syncer = Proc::spawn(
        "syncer",
        &binary("syncer"),
        &[
            "--registry".into(),
            format!("http://127.0.0.1:{}", free_port()),
            "--haproxy-socket".into(),
            dir.path().join("no-haproxy.sock").display().to_string(),
            "--backend".into(),
            "web-servers".into(),
            "--admin".into(),
            "off".into(),
            "--log-level".into(),
            "debug".into(),
        ],
        dir.path(),
    );
    // Each has logged at debug level (the level took effect) and at least one warning about
    // what it cannot reach.
    for (name, p) in [("registry", &cluster.nodes[0]), ("announcer", &announcer), ("syncer", &syncer)] {
        let log = wait_for(Duration::from_secs(15), &format!("{name} to log at debug level"), || {
            let log = p.log_text();
            async move { log.contains("DEBUG").then_some(log) }
        })
        .await;
        assert_plain(name, &log);
    }
    // The registry's /metrics: OpenMetrics, with build_info.
    let r = cluster.http().get(format!("{}/metrics", cluster.urls()[0])).bearer_auth(cluster.admin_token().unwrap()).send().await.unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(ct.starts_with("application/openmetrics-text") && body.contains("registry_build_info{"), "{ct}: {body}");
    // Process metrics beside it, and write latencies (the cluster has made writes by now).
    assert!(body.contains("process_cpu_seconds_total ") && body.contains("process_start_time_seconds "), "{body}");
    assert!(body.contains("registry_write_duration_seconds_bucket{le=\"0.0005\"}"), "{body}");
}

#[test]
fn a_bad_log_level_is_refused_naming_the_flag() {
    for (bin, args) in
        [("registry", vec!["serve", "--log-level", "info,=x=y"]), ("announcer", vec!["--log-level", "info,=x=y"]), ("syncer", vec!["--log-level", "info,=x=y"])]
    {
        let out = std::process::Command::new(binary(bin)).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--log-level"), "{bin}: {err}");
    }
}
