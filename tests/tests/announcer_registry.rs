//! The real announcer against a real 3-node registry and a real local HTTP server.

use std::path::Path;
use std::time::Duration;

use e2e::tcp_proxy::HoldProxy;
use e2e::{binary, free_port, wait_for, Proc, RegistryCluster};
use proto::{InstanceState, WatchEvent};
use tokio::time::Instant;

struct Web {
    _proc: Proc,
    port: u16,
    fail_file: std::path::PathBuf,
}

fn web(dir: &Path, name: &str) -> Web {
    let port = free_port();
    let fail_file = dir.join(format!("{name}.fail"));
    let args = vec!["--listen".into(), format!("127.0.0.1:{port}"), "--name".into(), name.into(), "--fail-file".into(), fail_file.display().to_string()];
    Web { _proc: Proc::spawn(name, &binary("demo_web"), &args, dir), port, fail_file }
}

/// `access`: the flags that reach the cluster (`RegistryCluster::access_args`).
fn announcer(dir: &Path, name: &str, registry: &[String], access: &[String], web: &Web, admin: u16, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec![
        "--registry".into(),
        registry.join(","),
        "--service".into(),
        "web-servers".into(),
        "--address".into(),
        format!("127.0.0.1:{}", web.port),
        "--check-http".into(),
        format!("http://127.0.0.1:{}/health", web.port),
        "--check-interval".into(),
        "200ms".into(),
        "--rise".into(),
        "2".into(),
        "--fall".into(),
        "2".into(),
        "--ttl".into(),
        "2s".into(),
        "--admin".into(),
        format!("127.0.0.1:{admin}"),
        // Its own, never the machine's /var/lib/announcer.
        "--state-dir".into(),
        dir.join(format!("{name}-state")).display().to_string(),
    ];
    args.extend(access.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(name, &binary("announcer"), &args, dir)
}

/// The state our instance has in the registry (linearizable read), or None if absent.
async fn state_of(client: &client::Client, instance: &str) -> Option<Option<InstanceState>> {
    let s = client.service("web-servers", false).await.ok()?;
    Some(s.instances.iter().find(|i| i.instance == instance).map(|i| i.state))
}

async fn wait_state(client: &client::Client, instance: &str, want: Option<InstanceState>, limit: Duration, what: &str) -> Duration {
    let t = Instant::now();
    wait_for(limit, what, || async { (state_of(client, instance).await == Some(want)).then_some(()) }).await;
    t.elapsed()
}

/// Backup and restore (`registry snapshot save/inspect/restore`): a backup taken while an
/// announcer renews its lease; the whole cluster destroyed (every process killed, every data
/// directory removed); three new nodes seeded from the backup on the same addresses. The
/// announcer, which kept running, re-attaches to its lease with nothing lost, the instance
/// without a lease is back, tokens still work, and revisions go on from the backup's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_backup_keeps_everything_and_the_announcer_reattaches() {
    let mut cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-r");
    let admin = free_port();
    let _a = announcer(dir.path(), "announcer-r", &cluster.urls(), &cluster.access_args("announcer-r", &["announce:web-servers"]).await, &w, admin, &[]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "the instance to be registered").await;
    let fixed = proto::InstanceSpec { address: "10.9.9.9".into(), port: 80, lease_id: None, weight: 7, state: Default::default(), meta: Default::default() };
    client.put_instance("static", "s1", &fixed).await.unwrap();
    let lease = client.service("web-servers", false).await.unwrap().instances[0].lease_id.expect("under a lease");

    let file = dir.path().join("backup.json");
    let file_arg = file.display().to_string();
    let (code, out, err) = cluster.cli(&["snapshot", "save", &file_arg]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, again, _) = cluster.cli(&["snapshot", "save", &file_arg]);
    assert_ne!(code, 0, "a second save overwrote the backup: {again}");
    let (code, out, err) = e2e::registry_cli(&["snapshot", "inspect", &file_arg, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let head: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((head["counts"]["services"].as_u64(), head["counts"]["instances"].as_u64()), (Some(2), Some(2)), "{out}");
    let revision = head["revision"].as_u64().unwrap();

    // Destroyed: every node killed, every data directory gone.
    for n in &mut cluster.nodes {
        n.kill();
    }
    for i in 0..3 {
        std::fs::remove_dir_all(cluster.data_dir(i)).unwrap();
    }
    // Three new nodes seeded from the backup, on the same addresses.
    let peers = cluster.addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    for i in 1..=3 {
        let data = cluster.data_dir(i - 1).display().to_string();
        let (code, out, err) = e2e::registry_cli(&["snapshot", "restore", &file_arg, "--data-dir", &data, "--id", &i.to_string(), "--peers", &peers]);
        assert_eq!(code, 0, "{out}{err}");
    }
    for n in &mut cluster.nodes {
        n.start();
    }
    cluster.wait_leader(Duration::from_secs(15)).await;

    // The announcer's keepalives reach its lease again: the same lease, the instance up, and it
    // stays through three TTLs (2 s) without the lease ever being lost.
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "the instance on the restored cluster").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = client.service("web-servers", false).await.unwrap();
    assert_eq!(s.instances.len(), 1, "{s:?}");
    assert_eq!(s.instances[0].lease_id, Some(lease), "the announcer had to register again: {s:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("announcer_lease_lost_total 0"), "{metrics}");
    let s1 = client.service("static", false).await.unwrap();
    assert_eq!((s1.instances.len(), s1.instances[0].weight), (1, 7), "{s1:?}");
    let w2 = client.put_instance("static", "s2", &fixed).await.unwrap();
    assert!(w2.revision > revision, "revision {} after a backup at {revision}", w2.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_maintenance_and_graceful_stop() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-1");
    let admin = free_port();
    let mut a = announcer(
        dir.path(),
        "announcer-1",
        &cluster.urls(),
        &cluster.access_args("announcer-1", &["announce:web-servers"]).await,
        &w,
        admin,
        &["--drain", "1500ms"],
    );
    let id = format!("127.0.0.1:{}", w.port);

    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "the instance to be registered").await;

    // Failing its check for `fall` checks removes it (the lease stays); passing `rise` brings it back.
    std::fs::write(&w.fail_file, "").unwrap();
    let took = wait_state(&client, &id, None, Duration::from_secs(5), "the failing instance to go").await;
    assert!(took <= Duration::from_millis(2 * 200 + 1000), "gone {took:?} after the check started failing (bound fall*interval + 1s)");
    std::fs::remove_file(&w.fail_file).unwrap();
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(5), "the recovered instance to come back").await;

    // Maintenance through the local control.
    let cli = |on: &str| std::process::Command::new(binary("announcer")).args(["maint", on, "--admin", &format!("127.0.0.1:{admin}")]).output().unwrap();
    assert!(cli("on").status.success());
    wait_state(&client, &id, Some(InstanceState::Maint), Duration::from_secs(5), "maint").await;
    assert!(cli("off").status.success());
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(5), "back up").await;

    // SIGTERM: drain is visible, then the instance is gone and the process exits 0. Its token
    // cannot read the balancers' reports, so the drain lasts the fixed time, and says why.
    a.signal("TERM");
    wait_state(&client, &id, Some(InstanceState::Drain), Duration::from_secs(3), "drain").await;
    let why = wait_for(Duration::from_secs(3), "the status to say the drain cannot follow the balancers", || async {
        let status: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{admin}/v1/status")).await.ok()?.json().await.ok()?;
        (status["drain"]["state"] == "unknown").then(|| status["drain"]["why"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert!(why.contains("read"), "{why}");
    let t = Instant::now();
    wait_state(&client, &id, None, Duration::from_secs(5), "deregistration after the drain").await;
    assert!(t.elapsed() >= Duration::from_millis(800), "removed before the drain period ended");
    let code = wait_for(Duration::from_secs(5), "the announcer to exit", || {
        let code = a.exit_code();
        async move { code }
    })
    .await;
    assert_eq!(code, 0);
    assert_eq!(client.cluster().await.map(|_| ()).ok(), Some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_keeps_the_instance_and_an_announcer_kill_removes_it() {
    let mut cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-2");
    let mut a =
        announcer(dir.path(), "announcer-2", &cluster.urls(), &cluster.access_args("announcer-2", &["announce:web-servers"]).await, &w, free_port(), &[]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;

    // Watch our service from a node that survives, and kill the leader.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let survivor = (leader + 1) % 3;
    let since = client.cluster().await.unwrap().applied_index;
    let watcher = cluster.client_for(&[cluster.urls()[survivor].clone()]);
    let mut stream = watcher.watch(Some("web-servers"), Some(since)).await.unwrap();
    cluster.nodes[leader].kill();
    // Three TTLs of the announcer renewing through a new leader.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            assert!(!matches!(e, WatchEvent::Delete { .. }), "the instance was removed during the leader change: {e:?}");
        }
    }
    assert_eq!(state_of(&client, &id).await, Some(Some(InstanceState::Up)));

    // SIGKILL of the announcer: gone within TTL + 1 s.
    a.kill();
    let took = wait_state(&client, &id, None, Duration::from_secs(6), "expiry after SIGKILL").await;
    assert!(took <= Duration::from_secs(3), "gone {took:?} after SIGKILL (bound TTL 2s + 1s)");
}

#[test]
fn a_bad_config_names_the_field_and_exits_2() {
    let out = std::process::Command::new(binary("announcer"))
        .args([
            "--registry",
            "http://127.0.0.1:1",
            "--service",
            "web servers",
            "--address",
            "127.0.0.1:0",
            "--ttl",
            "1h5m",
            "--rise",
            "0",
            "--check-tcp",
            "x:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["service.name", "service.address", "ttl", "service.check.rise"] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_granted_again_and_a_second_signal_exits_at_once() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-3");
    let admin = free_port();
    let mut a = announcer(
        dir.path(),
        "announcer-3",
        &cluster.urls(),
        &cluster.access_args("announcer-3", &["announce:web-servers"]).await,
        &w,
        admin,
        &["--drain", "30s"],
    );
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;

    // Someone revokes the announcer's lease: its instance goes with it, and the announcer
    // notices (404 on its next keepalive), grants a new lease and registers again.
    let lease = client.service("web-servers", false).await.unwrap().instances[0].lease_id.unwrap();
    client.revoke(lease).await.unwrap();
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(5), "re-registration under a new lease").await;
    let again = client.service("web-servers", false).await.unwrap().instances[0].lease_id.unwrap();
    assert_ne!(again, lease);
    // Both registrations were single calls (`POST /v1/register`: the lease and the instance in
    // one entry), not a grant followed by a put.
    let log = a.log_text();
    assert!(!log.contains("granted a lease"), "the announcer fell back to grant + put:\n{log}");
    for l in [lease, again] {
        assert!(log.contains(&format!("lease={l}")) && log.contains("registered"), "no registration under lease {l} in:\n{log}");
    }

    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("announcer_published_instances 1"), "{metrics}");
    assert!(metrics.contains("announcer_lease_lost_total 1"), "{metrics}");
    assert!(metrics.contains("announcer_build_info{"), "{metrics}");
    // Process metrics, and how long what it waits on took.
    assert!(metrics.contains("process_resident_memory_bytes ") && metrics.contains("process_open_fds "), "{metrics}");
    assert!(metrics.contains("announcer_keepalive_duration_seconds_bucket{le=") && !metrics.contains("announcer_sync_duration_seconds_count 0"), "{metrics}");
    let status: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{admin}/v1/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status["instances"][0]["announced"], "up");

    // First signal: a 30 s drain. Second signal: out at once, status 130.
    a.signal("TERM");
    wait_state(&client, &id, Some(InstanceState::Drain), Duration::from_secs(3), "drain").await;
    a.signal("TERM");
    let t = Instant::now();
    let code = wait_for(Duration::from_secs(3), "the announcer to exit on the second signal", || {
        let code = a.exit_code();
        async move { code }
    })
    .await;
    assert_eq!(code, 130);
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// A write that hangs longer than the TTL (a put behind a stalled leader waits out the server's
/// 5 s write timeout) must not starve the lease of renewals: the announcer keeps renewing on
/// another connection, so the lease and the instance survive and the write lands. Plain HTTP:
/// the proxy picks the request to hold by its request line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_hanging_past_the_ttl_does_not_lose_the_lease() {
    // One node that advertises the proxy as its address: the client follows the leader it is
    // told of, and that must be the proxy for the proxy to see every write.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    // 5 s against a 2 s TTL: without renewals during the write the lease is gone long before.
    let proxy = HoldProxy::start(listen.parse().unwrap(), "PUT /v1/services/", Duration::from_secs(5)).await;
    let secret = e2e::write_cluster_secret(dir.path()).display().to_string();
    let args: Vec<String> =
        ["serve", "--id", "1", "--listen", &listen, "--peers", &format!("1={}", proxy.addr), "--cluster-secret-file", &secret, "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.path().join("data").display().to_string()])
            .collect();
    let _node = Proc::spawn("registry-1", &binary("registry"), &args, dir.path());
    let client = client::Client::new(&[format!("http://{listen}")]).unwrap();
    wait_for(Duration::from_secs(15), "the node to lead", || async { client.cluster().await.ok().filter(|c| c.role == proto::NodeRole::Leader) }).await;
    let w = web(dir.path(), "web-4");
    let admin = free_port();
    let _a = announcer(dir.path(), "announcer-4", &[proxy.url()], &[], &w, admin, &[]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;
    let lease = client.service("web-servers", false).await.unwrap().instances[0].lease_id.unwrap();

    proxy.arm();
    let out = std::process::Command::new(binary("announcer")).args(["maint", "on", "--admin", &format!("127.0.0.1:{admin}")]).output().unwrap();
    assert!(out.status.success());
    wait_state(&client, &id, Some(InstanceState::Maint), Duration::from_secs(10), "the held put to land").await;
    assert_eq!(proxy.holds(), 1, "the maintenance put was not held");
    let now = client.service("web-servers", false).await.unwrap().instances[0].lease_id.unwrap();
    assert_eq!(now, lease, "the lease was lost while the put hung");
    let removals = client.removals(false).await.unwrap().removals;
    assert!(removals.iter().all(|r| r.instance != id), "the instance was removed: {removals:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("announcer_lease_lost_total 0"), "{metrics}");
}

/// SIGHUP never stops the announcer: a config file that gained a service is applied (the new
/// instance appears, the old one keeps its lease), and one that does not parse is refused with
/// the running config kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_services_and_refuses_a_bad_config() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-5");
    let access = cluster.access_args("announcer-5", &["announce:web-servers", "announce:api-servers", "announce:extra-servers"]).await;
    let (ca, token) = (&access[1], &access[3]);
    let service = |name: &str| format!("[[services]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\n", w.port);
    let head = format!("registry = \"{}\"\nca_file = \"{ca}\"\ntoken_file = \"{token}\"\nadmin = \"off\"\n", cluster.urls().join(","));
    let file = dir.path().join("announcer.toml");
    std::fs::write(&file, format!("{head}{}", service("web-servers"))).unwrap();
    let mut a = Proc::spawn("announcer-5", &binary("announcer"), &["--config".into(), file.display().to_string()], dir.path());
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;
    let lease = client.service("web-servers", false).await.unwrap().instances[0].lease_id;

    std::fs::write(&file, format!("{head}{}{}", service("web-servers"), service("api-servers"))).unwrap();
    a.signal("HUP");
    wait_for(Duration::from_secs(10), "the reloaded service to be announced", || async {
        client.service("api-servers", false).await.ok().filter(|s| s.instances.iter().any(|i| i.instance == id))
    })
    .await;
    assert!(a.is_running(), "SIGHUP stopped the announcer");
    assert_eq!(client.service("web-servers", false).await.unwrap().instances[0].lease_id, lease, "the reload replaced the lease");

    // A conf.d directory: a file dropped in is announced on the next SIGHUP; one that lists an
    // instance the config file already has is refused, naming both places.
    let confd = dir.path().join("announcer.d");
    std::fs::create_dir(&confd).unwrap();
    std::fs::write(&file, format!("{head}config_dir = \"{}\"\n{}{}", confd.display(), service("web-servers"), service("api-servers"))).unwrap();
    std::fs::write(confd.join("10-extra.toml"), service("extra-servers")).unwrap();
    std::fs::write(confd.join("README"), "not a .toml file: ignored").unwrap();
    a.signal("HUP");
    wait_for(Duration::from_secs(10), "the conf.d service to be announced", || async {
        client.service("extra-servers", false).await.ok().filter(|s| s.instances.iter().any(|i| i.instance == id))
    })
    .await;
    let twice = confd.join("20-twice.toml");
    std::fs::write(&twice, service("web-servers")).unwrap();
    a.signal("HUP");
    wait_for(Duration::from_secs(5), "the duplicate to be refused", || {
        let log = a.log_text();
        async move { (log.contains("listed twice") && log.contains("20-twice.toml")).then_some(()) }
    })
    .await;
    std::fs::remove_file(&twice).unwrap();
    assert_eq!(state_of_in(&client, "extra-servers", &id).await, Some(Some(InstanceState::Up)), "a refused reload changed the conf.d service");

    std::fs::write(&file, "registry = [this is not toml").unwrap();
    a.signal("HUP");
    wait_for(Duration::from_secs(5), "the bad config to be refused", || {
        let log = a.log_text();
        async move { log.contains("reload refused").then_some(()) }
    })
    .await;
    assert!(a.is_running(), "a bad config on SIGHUP stopped the announcer");
    for s in ["web-servers", "api-servers"] {
        assert_eq!(state_of_in(&client, s, &id).await, Some(Some(InstanceState::Up)), "{s} changed after a refused reload");
    }
}

async fn state_of_in(client: &client::Client, service: &str, instance: &str) -> Option<Option<InstanceState>> {
    let s = client.service(service, false).await.ok()?;
    Some(s.instances.iter().find(|i| i.instance == instance).map(|i| i.state))
}

fn announcer_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("announcer")).args(args).output().unwrap()
}

/// Maintenance of one instance, with a reason: announced as `maint` with `maint.reason` in its
/// meta, shown by `registry ls` (table and JSON), saved in the state directory, and still on
/// after the announcer is killed and started again: the first registration of the new process
/// is already `maint`, never `up`. Host maintenance is separate from the instance's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_maintenance_with_a_reason_survives_a_restart_and_shows_in_ls() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let w = web(dir.path(), "web-6");
    let admin = free_port();
    let admin_arg = format!("127.0.0.1:{admin}");
    let mut a = announcer(dir.path(), "announcer-6", &cluster.urls(), &cluster.access_args("announcer-6", &["announce:web-servers"]).await, &w, admin, &[]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;

    let reason = "disk swap, CHG-1234";
    let out = announcer_cli(&["maint", "on", "--service", "web-servers", "--instance", &id, "--reason", reason, "--admin", &admin_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("web-servers/{id}: maintenance on ({reason})")), "{out:?}");
    let unknown = announcer_cli(&["maint", "on", "--service", "web-servers", "--instance", "nope", "--admin", &admin_arg]);
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("404"), "{unknown:?}");
    wait_state(&client, &id, Some(InstanceState::Maint), Duration::from_secs(5), "maint").await;
    let inst = client.service("web-servers", false).await.unwrap().instances.into_iter().find(|i| i.instance == id).unwrap();
    assert_eq!(inst.meta.get(proto::MAINT_REASON_META).map(String::as_str), Some(reason));
    let saved = std::fs::read_to_string(dir.path().join("announcer-6-state/maint.json")).unwrap();
    assert!(saved.contains(reason), "{saved}");

    let (code, out, err) = cluster.cli(&["ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().ends_with("LAST-RENEWAL  REASON"), "{out}");
    let row = out.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no row in {out}"));
    assert!(row.contains(" maint ") && row.ends_with(reason), "{row}");
    let (code, out, _) = cluster.cli(&["ls", "--service", "web-servers", "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["state"], "maint");
    assert_eq!(v[0]["meta"]["maint.reason"], reason);

    // Killed (no drain, no deregistration): the instance goes with the lease.
    a.kill();
    wait_state(&client, &id, None, Duration::from_secs(10), "the killed announcer's instance to expire").await;
    let since = client.service("web-servers", false).await.unwrap().revision;
    let mut stream = client.watch(Some("web-servers"), Some(since)).await.unwrap();
    a.start();
    // The first put of our instance since the kill; a broken stream is opened again from the
    // same revision (the same events again, so the first put stays the first).
    let first = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.next().await {
                Ok(Some(WatchEvent::Put { instance, .. })) if instance.instance == id => return instance,
                Ok(Some(_)) => {}
                _ => stream = client.watch(Some("web-servers"), Some(since)).await.unwrap(),
            }
        }
    })
    .await
    .expect("no registration by the restarted announcer within 15 s");
    assert_eq!(first.state, InstanceState::Maint, "registered {first:?} after the restart");
    assert_eq!(first.meta.get(proto::MAINT_REASON_META).map(String::as_str), Some(reason));

    // Host maintenance on and off leaves the instance's own on; switching that off brings it up,
    // without the reason.
    assert!(announcer_cli(&["maint", "on", "--reason", "kernel", "--admin", &admin_arg]).status.success());
    let status: serde_json::Value = reqwest::get(format!("http://{admin_arg}/v1/status")).await.unwrap().json().await.unwrap();
    assert_eq!((status["maint"].as_bool(), status["maint_reason"].as_str()), (Some(true), Some("kernel")), "{status}");
    assert_eq!(status["instances"][0]["maint_reason"], reason, "the instance's own reason wins: {status}");
    assert!(announcer_cli(&["maint", "off", "--admin", &admin_arg]).status.success());
    let off = announcer_cli(&["maint", "off", "--service", "web-servers", "--instance", &id, "--admin", &admin_arg]);
    assert!(off.status.success(), "{off:?}");
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(5), "up again").await;
    let inst = client.service("web-servers", false).await.unwrap().instances.into_iter().find(|i| i.instance == id).unwrap();
    assert!(!inst.meta.contains_key(proto::MAINT_REASON_META), "{inst:?}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("announcer-6-state/maint.json")).unwrap()).unwrap();
    assert_eq!(saved, serde_json::json!({"instances": []}), "the file still holds maintenance");
}

/// Writes a syncer's convergence report (`_syncers/NAME`), as a syncer would, through `client`:
/// its backend `be_web` follows `web-servers` and has applied `applied`; `be_api` follows
/// `api-servers` and has applied nothing (it must not hold up a web-servers drain).
async fn report(client: &client::Client, name: &str, applied: u64) {
    let mut r = proto::SyncerReport::default();
    r.backends.insert("be_web".into(), proto::BackendReport { service: "web-servers".into(), applied: Some(applied) });
    r.backends.insert("be_api".into(), proto::BackendReport { service: "api-servers".into(), applied: None });
    let spec = proto::InstanceSpec { address: "127.0.0.1".into(), port: 1, lease_id: None, weight: 0, state: InstanceState::Up, meta: r.to_meta() };
    client.put_instance(proto::SYNCER_SERVICE, name, &spec).await.unwrap();
}

async fn status(admin: u16) -> Option<serde_json::Value> {
    reqwest::get(format!("http://127.0.0.1:{admin}/v1/status")).await.ok()?.json().await.ok()
}

/// The drain on SIGTERM follows the balancers' convergence reports: with a 30 s drain time the
/// instance goes as soon as the report that follows its service shows the drain's revision
/// applied; with a 2 s drain time and a report that never gets there, it waits the whole 2 s
/// and logs which balancer was late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_when_the_balancers_have_applied_it_and_at_the_latest_after_the_drain_time() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let start = client.service("web-servers", false).await.map(|s| s.revision).unwrap_or(1);
    report(&client, "lb-1", start).await;

    // 1. The report catches up: the instance goes long before the 30 s.
    let w = web(dir.path(), "web-7");
    let admin = free_port();
    let access = cluster.access_args("announcer-7", &["announce:web-servers", "read"]).await;
    let mut a = announcer(dir.path(), "announcer-7", &cluster.urls(), &access, &w, admin, &["--drain", "30s"]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;
    a.signal("TERM");
    wait_state(&client, &id, Some(InstanceState::Drain), Duration::from_secs(5), "drain").await;
    let drained_at = client.service("web-servers", false).await.unwrap().instances.into_iter().find(|i| i.instance == id).unwrap().mod_revision;
    let late = wait_for(Duration::from_secs(5), "the announcer to wait for lb-1", || async {
        let s = status(admin).await?;
        (s["drain"]["state"] == "waiting").then(|| s["drain"]["late"].clone())
    })
    .await;
    assert_eq!(late.as_array().map(Vec::len), Some(1), "{late}");
    assert_eq!(
        (late[0]["syncer"].as_str(), late[0]["backend"].as_str(), late[0]["needed"].as_u64()),
        (Some("lb-1"), Some("be_web"), Some(drained_at)),
        "{late}"
    );
    assert_eq!(state_of(&client, &id).await, Some(Some(InstanceState::Drain)), "removed before the balancer applied the drain");
    report(&client, "lb-1", drained_at).await;
    wait_state(&client, &id, None, Duration::from_secs(15), "removal once lb-1 applied the drain (the drain time is 30 s)").await;
    assert_eq!(a.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(a.log_text().contains("every balancer has applied the drain"), "{}", a.log_text());

    // 2. The report never catches up: the whole drain time, and the late balancer named.
    let w = web(dir.path(), "web-8");
    let admin = free_port();
    let access = cluster.access_args("announcer-8", &["announce:web-servers", "read"]).await;
    let mut a = announcer(dir.path(), "announcer-8", &cluster.urls(), &access, &w, admin, &["--drain", "2s"]);
    let id = format!("127.0.0.1:{}", w.port);
    wait_state(&client, &id, Some(InstanceState::Up), Duration::from_secs(10), "registration").await;
    let signalled = Instant::now();
    a.signal("TERM");
    wait_state(&client, &id, None, Duration::from_secs(15), "removal after the drain time").await;
    assert!(signalled.elapsed() >= Duration::from_secs(2), "removed {:?} after SIGTERM, before the 2 s drain time", signalled.elapsed());
    assert_eq!(a.wait_exit(Duration::from_secs(10)).await, Some(0));
    let log = a.log_text();
    let line = log.lines().find(|l| l.contains("drain time is up")).unwrap_or_else(|| panic!("no late-balancer warning in {log}"));
    assert!(line.contains("lb-1/be_web"), "{line}");
}
