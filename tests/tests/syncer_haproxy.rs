//! The real syncer between a real registry (or ZooKeeper) and real HAProxy 2.6, with real web
//! servers announced by real announcers.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::haproxy::Haproxy;
use e2e::{binary, free_port, wait_for, Proc, RegistryCluster};
use tokio::time::Instant;

/// A demo web server and the announcer that registers it.
struct Host {
    web: Proc,
    announcer: Proc,
    port: u16,
}

/// `access`: the flags that reach the cluster (`RegistryCluster::access_args`).
fn host(dir: &Path, name: &str, registry: &[String], access: &[String]) -> Host {
    let port = free_port();
    let web = Proc::spawn(&format!("{name}-web"), &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{port}"), "--name".into(), name.into()], dir);
    let args: Vec<String> = [
        "--registry",
        &registry.join(","),
        "--service",
        "web-servers",
        "--address",
        &format!("127.0.0.1:{port}"),
        "--check-http",
        &format!("http://127.0.0.1:{port}/health"),
        "--check-interval",
        "200ms",
        "--rise",
        "1",
        "--ttl",
        "2s",
        "--drain",
        "0s",
        // Several on one machine: no admin endpoint (the default port is one per host).
        "--admin",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(access.iter().cloned())
    .collect();
    let announcer = Proc::spawn(&format!("{name}-announcer"), &binary("announcer"), &args, dir);
    Host { web, announcer, port }
}

fn syncer<S: AsRef<str>>(dir: &Path, name: &str, source: &[S], haproxy: &Haproxy, state_dir: &Path) -> Proc {
    let mut args: Vec<String> = source.iter().map(|s| s.as_ref().to_string()).collect();
    if !args.iter().any(|a| a.starts_with("--admin")) {
        // Several on one machine: each its own port (the default is one per host).
        args.push(format!("--admin=127.0.0.1:{}", free_port()));
    }
    args.extend(
        [
            "--haproxy-socket",
            &haproxy.socket_path().display().to_string(),
            "--backend",
            "web-servers",
            "--state-dir",
            &state_dir.display().to_string(),
            "--id",
            name,
            "--drain-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Proc::spawn(name, &binary("syncer"), &args, dir)
}

/// A secured 3-node registry, HAProxy with a `web-servers` backend, and syncer `lb-1` keeping
/// it, with a token that reads and reports (`_syncers`).
struct Balanced {
    cluster: RegistryCluster,
    dir: tempfile::TempDir,
    haproxy: Haproxy,
    syncer: Proc,
}

async fn balanced() -> Balanced {
    let cluster = RegistryCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let haproxy = Haproxy::start(&["web-servers"]).await;
    let mut reg = vec![format!("--registry={}", cluster.urls().join(","))];
    reg.extend(cluster.access_args("lb-1", &["read", "announce:_syncers"]).await);
    let syncer = syncer(dir.path(), "lb-1", &reg, &haproxy, &dir.path().join("syncer-state"));
    Balanced { cluster, dir, haproxy, syncer }
}

/// `managed_ports` for an assertion that something is absent: HAProxy must answer (an empty
/// set from a socket error would pass it vacuously).
async fn managed_ports_answered(h: &Haproxy) -> BTreeSet<u16> {
    e2e::haproxy::managed_servers(&h.socket_path(), "web-servers").await.expect("HAProxy answers").into_iter().map(|s| s.port).collect()
}

async fn managed_ports(h: &Haproxy) -> BTreeSet<u16> {
    h.managed_ports("web-servers").await
}

/// The names of the web servers that answered `n` requests through HAProxy.
async fn reached(url: &str, n: usize) -> BTreeSet<String> {
    let http = reqwest::Client::new();
    let mut names = BTreeSet::new();
    for _ in 0..n {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await {
            if r.status().is_success() {
                if let Ok(t) = r.text().await {
                    names.insert(t.split_whitespace().nth(2).unwrap_or("").to_string());
                }
            }
        }
    }
    names
}

/// Sends a request through HAProxy every 10 ms until stopped; counts outcomes.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn load(url: String) -> Load {
    let (ok, failed, running) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(true)));
    let task = {
        let (ok, failed, running) = (ok.clone(), failed.clone(), running.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Bounded: at most 10 minutes of requests even if never stopped.
            let end = Instant::now() + Duration::from_secs(600);
            while running.load(Ordering::SeqCst) && Instant::now() < end {
                match http.get(&url).timeout(Duration::from_secs(5)).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    Load { ok, failed, running, task }
}

impl Load {
    /// Waits until `n` more requests have been answered, whatever the outcome.
    async fn wait_answers(&self, n: u64) {
        let done = || self.ok.load(Ordering::SeqCst) + self.failed.load(Ordering::SeqCst);
        let target = done() + n;
        wait_for(Duration::from_secs(10), "requests through HAProxy", || async { (done() >= target).then_some(()) }).await;
    }

    async fn stop(self) -> (u64, u64) {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.unwrap();
        (self.ok.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_to_haproxy_end_to_end() {
    let mut cluster = RegistryCluster::start(3).await;
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::start(&["web-servers"]).await;
    let state = dir.path().join("syncer-state");
    let mut reg = vec![format!("--registry={}", urls.join(","))];
    reg.extend(cluster.access_args("lb-1", &["read", "announce:_syncers"]).await);
    let mut sync = syncer(dir.path(), "lb-1", &reg, &haproxy, &state);
    let client = cluster.client();

    // Three web servers announce themselves; HAProxy reaches all three within 1 s of the
    // registry having them.
    let web_access = cluster.access_args("web", &["announce:web-servers"]).await;
    let mut hosts: Vec<Host> = (1..=3).map(|i| host(dir.path(), &format!("web-{i}"), &urls, &web_access)).collect();
    let ports: BTreeSet<u16> = hosts.iter().map(|h| h.port).collect();
    wait_for(Duration::from_secs(15), "3 registered instances", || async {
        client.service("web-servers", false).await.ok().filter(|s| s.instances.len() == 3).map(|_| ())
    })
    .await;
    let registered = Instant::now();
    let frontend = haproxy.frontend_url();
    wait_for(Duration::from_secs(5), "requests through HAProxy to reach all 3", || async { (reached(&frontend, 9).await.len() == 3).then_some(()) }).await;
    let took = registered.elapsed();
    eprintln!("registered -> served by HAProxy: {took:?}");
    assert!(took <= Duration::from_secs(1), "HAProxy reached all 3 servers {took:?} after registration (target 1 s)");
    assert_eq!(managed_ports(&haproxy).await, ports);

    // The convergence report shows lb-1 in sync.
    let status = wait_for(Duration::from_secs(10), "lb-1 reported in sync", || async {
        let (code, out, _) = cluster.cli(&["status", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let b = v["balancers"].as_array()?.iter().find(|b| b["syncer"] == "lb-1")?.clone();
        (code == 0 && b["behind"] == 0).then_some(b)
    })
    .await;
    eprintln!("registry status balancer: {status}");

    // Kill one host (announcer and server) under steady load: it leaves within TTL + 1 s.
    let traffic = load(frontend.clone());
    traffic.wait_answers(10).await;
    let victim = hosts.pop().unwrap();
    let (mut a, mut w) = (victim.announcer, victim.web);
    a.kill();
    w.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(6), "the killed server to leave HAProxy", || async { (!managed_ports(&haproxy).await.contains(&victim.port)).then_some(()) })
        .await;
    let gone = killed.elapsed();
    // Keep the load on a little longer: requests right after the removal count too.
    traffic.wait_answers(10).await;
    let (ok, failed) = traffic.stop().await;
    eprintln!("killed server left HAProxy after {gone:?}; requests meanwhile: {ok} ok, {failed} failed");
    assert!(gone <= Duration::from_secs(3), "left after {gone:?} (bound TTL 2 s + 1 s)");
    assert_eq!(failed, 0, "requests failed while a server died (retries 3 + option redispatch should hide it)");

    // HAProxy restarts (dynamic servers are lost): back within 1 s.
    haproxy.restart().await;
    let restarted = Instant::now();
    let live: BTreeSet<u16> = hosts.iter().map(|h| h.port).collect();
    wait_for(Duration::from_secs(5), "servers back after an HAProxy restart", || async { (managed_ports(&haproxy).await == live).then_some(()) }).await;
    let back = restarted.elapsed();
    eprintln!("servers back {back:?} after the HAProxy restart");
    assert!(back <= Duration::from_secs(1), "servers back {back:?} after restart (target 1 s)");

    // The whole registry stops: HAProxy keeps serving the last set.
    for n in cluster.nodes.iter_mut() {
        n.kill();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(managed_ports(&haproxy).await, live, "servers changed while the registry was down");
    assert_eq!(reached(&frontend, 6).await.len(), 2, "HAProxy stopped serving the last set");

    // Restart the syncer (and HAProxy, empty) while the registry is down: the saved state comes back.
    sync.kill();
    haproxy.restart().await;
    assert!(managed_ports(&haproxy).await.is_empty());
    let mut sync = syncer(dir.path(), "lb-1", &reg, &haproxy, &state);
    wait_for(Duration::from_secs(10), "the saved state applied with the registry down", || async { (managed_ports(&haproxy).await == live).then_some(()) })
        .await;
    assert_eq!(reached(&frontend, 6).await.len(), 2);

    assert_eq!(haproxy.reloads().await, 0, "the syncer must not reload HAProxy");
    sync.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_passive_pair_converges_to_the_same_servers() {
    let cluster = RegistryCluster::start(3).await;
    let urls = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Haproxy::start(&["web-servers"]).await, Haproxy::start(&["web-servers"]).await);
    let mut reg = vec![format!("--registry={}", urls.join(","))];
    reg.extend(cluster.access_args("lb", &["read", "announce:_syncers"]).await);
    let admin = free_port();
    let mut sa_args = reg.clone();
    sa_args.push(format!("--admin=127.0.0.1:{admin}"));
    let _sa = syncer(dir.path(), "lb-a", &sa_args, &a, &dir.path().join("sa"));
    let mut sb = syncer(dir.path(), "lb-b", &reg, &b, &dir.path().join("sb"));
    let web_access = cluster.access_args("web", &["announce:web-servers"]).await;
    let mut hosts: Vec<Host> = (1..=4).map(|i| host(dir.path(), &format!("pair-{i}"), &urls, &web_access)).collect();
    let all: BTreeSet<u16> = hosts.iter().map(|h| h.port).collect();
    wait_for(Duration::from_secs(15), "both balancers to have all 4", || async {
        (managed_ports(&a).await == all && managed_ports(&b).await == all).then_some(())
    })
    .await;
    // SIGHUP (a logrotate hook, `systemctl reload`) never stops a syncer: lb-b reloads, finds
    // nothing to change, and goes on converging below.
    sb.signal("HUP");
    wait_for(Duration::from_secs(5), "lb-b to log the reload", || {
        let log = sb.log_text();
        async move { log.contains("reload: no change").then_some(()) }
    })
    .await;
    assert!(sb.is_running(), "SIGHUP stopped the syncer");
    let gone = hosts.remove(0);
    gone.announcer.signal("TERM");
    let left: BTreeSet<u16> = hosts.iter().map(|h| h.port).collect();
    wait_for(Duration::from_secs(10), "both balancers to drop the stopped host", || async {
        (managed_ports(&a).await == left && managed_ports(&b).await == left).then_some(())
    })
    .await;
    assert_eq!(a.reloads().await + b.reloads().await, 0);
    // The convergence report keeps one lease and writes only when a backend moves: over more
    // than its 10 s TTL with nothing changing, neither its lease nor its revision changes.
    let client = cluster.client();
    let report = || async { client.service(proto::SYNCER_SERVICE, false).await.unwrap().instances.into_iter().find(|i| i.instance == "lb-a").unwrap() };
    let before = wait_for(Duration::from_secs(5), "lb-a's report to catch up", || async {
        let r = report().await;
        (r.meta.get("rev.web-servers").map(|v| v.parse::<u64>().unwrap()) >= Some(client.service("web-servers", false).await.unwrap().index)).then_some(r)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after = report().await;
    assert_eq!((after.lease_id, after.mod_revision), (before.lease_id, before.mod_revision), "the report lost its lease or kept rewriting itself");
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap().text().await.unwrap();
    for needle in
        ["syncer_applied_revision{backend=\"web-servers\"}", "syncer_ops_total{kind=\"add\"} 4", "syncer_source_up 1", "syncer_haproxy_restarts_total 0"]
    {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_znodes_from_another_client_reach_haproxy() {
    use zookeeper_client as zk;
    let zoo = e2e::zookeeper::Zookeeper::start().await;
    let dir = tempfile::tempdir().unwrap();
    let haproxy = Haproxy::start(&["web-servers"]).await;
    let zk_flag = format!("--zookeeper={}", zoo.addr());
    let _sync = syncer(dir.path(), "lb-zk", &[zk_flag.as_str(), "--zookeeper-session-timeout=4s", "--min-servers=0"], &haproxy, &dir.path().join("s"));
    let (p1, p2) = (free_port(), free_port());
    let _w1 = Proc::spawn("zk-web-1", &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{p1}"), "--name".into(), "zk1".into()], dir.path());
    let _w2 = Proc::spawn("zk-web-2", &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{p2}"), "--name".into(), "zk2".into()], dir.path());

    // The other client: the layout a script-based setup uses. One node named host:port with no
    // data, one with JSON data, and one with data we do not understand.
    let other = zoo.connect(Duration::from_secs(4)).await.unwrap();
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let _ = other.create("/web-servers", b"", &persistent).await;
    other.create(&format!("/web-servers/127.0.0.1:{p1}"), b"", &ephemeral).await.unwrap();
    let json = format!(r#"{{"host": "127.0.0.1", "port": {p2}}}"#);
    other.create("/web-servers/member_0001", json.as_bytes(), &ephemeral).await.unwrap();
    other.create("/web-servers/garbage", b"\x00\x01", &ephemeral).await.unwrap();
    let both: BTreeSet<u16> = [p1, p2].into();
    wait_for(Duration::from_secs(10), "both znodes in HAProxy", || async { (managed_ports(&haproxy).await == both).then_some(()) }).await;
    assert_eq!(reached(&haproxy.frontend_url(), 6).await.len(), 2);

    // The other client's session ends: its ephemeral nodes, and the servers, go.
    drop(other);
    // (--min-servers=0 lets this backend go empty; by default the breaker keeps one.)
    wait_for(Duration::from_secs(15), "the servers to leave with the session", || async { managed_ports(&haproxy).await.is_empty().then_some(()) }).await;
    assert_eq!(haproxy.reloads().await, 0);
}

/// `--zookeeper-auth-file` on the syncer: where the znodes are readable by one digest identity
/// only, a syncer with that identity brings them to HAProxy and one without it brings nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syncer_reads_znodes_only_its_digest_identity_may_read() {
    use zookeeper_client as zk;
    let zoo = e2e::zookeeper::Zookeeper::start().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = "lb:s3cret-pass";
    let auth_file = dir.path().join("zk-auth");
    std::fs::write(&auth_file, format!("{identity}\n")).unwrap();
    // The writer: the same identity, and nothing for anyone else (`auth` = the session's own
    // identities; no world READ).
    let connector = zk::Client::connector().with_session_timeout(Duration::from_secs(4)).with_auth("digest", identity.as_bytes());
    let writer = connector.connect(&zoo.addr()).await.unwrap();
    static ONLY_US: [zk::Acl; 1] = [zk::Acl::new_const(zk::Permission::ALL, "auth", "")];
    writer.create("/web-servers", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&ONLY_US))).await.unwrap();
    let port = free_port();
    let _web = Proc::spawn("zk-auth-web", &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{port}"), "--name".into(), "zka".into()], dir.path());
    writer.create(&format!("/web-servers/127.0.0.1:{port}"), b"", &zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&ONLY_US))).await.unwrap();
    let stranger = zoo.connect(Duration::from_secs(4)).await.unwrap();
    assert!(matches!(stranger.list_children("/web-servers").await, Err(zk::Error::NoAuth)), "the znodes are readable without the identity");

    let zk_flag = format!("--zookeeper={}", zoo.addr());
    let with = Haproxy::start(&["web-servers"]).await;
    let auth_flag = format!("--zookeeper-auth-file={}", auth_file.display());
    let _lb = syncer(dir.path(), "lb-auth", &[zk_flag.as_str(), auth_flag.as_str()], &with, &dir.path().join("s1"));
    wait_for(Duration::from_secs(10), "the server in HAProxy", || async { (managed_ports(&with).await == BTreeSet::from([port])).then_some(()) }).await;

    let without = Haproxy::start(&["web-servers"]).await;
    let no_auth = syncer(dir.path(), "lb-noauth", &[zk_flag.as_str()], &without, &dir.path().join("s2"));
    wait_for(Duration::from_secs(10), "the unauthenticated syncer to say it may not read", || async {
        let log = no_auth.log_text();
        (log.contains("NoAuth") || log.to_lowercase().contains("not authorized") || log.contains("no auth")).then_some(())
    })
    .await;
    assert!(managed_ports_answered(&without).await.is_empty(), "a syncer without the identity read the znodes");
}

#[test]
fn a_bad_syncer_config_names_every_field_and_exits_2() {
    let out = std::process::Command::new(binary("syncer")).args(["--backend", "web servers", "--max-remove-fraction", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["registry:", "haproxy-socket:", "backend:", "max-remove-fraction:"] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
}

/// The syncer's /healthz means something: 200 while it keeps HAProxy right, 503
/// `haproxy_unreachable` once HAProxy is gone, and 200 again when HAProxy is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_goes_unhealthy_while_haproxy_is_away() {
    let cluster = RegistryCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::start(&["web-servers"]).await;
    let mut args = vec![format!("--registry={}", cluster.urls().join(","))];
    args.extend(cluster.access_args("lb-h", &["read", "announce:_syncers"]).await);
    let admin = free_port();
    args.push(format!("--admin=127.0.0.1:{admin}"));
    let sync = syncer(dir.path(), "lb-h", &args, &haproxy, &dir.path().join("s"));
    let health = || async move {
        let r = reqwest::get(format!("http://127.0.0.1:{admin}/healthz")).await.ok()?;
        let code = r.status().as_u16();
        let v: serde_json::Value = r.json().await.ok()?;
        Some((code, v["state"].as_str().unwrap_or("").to_string()))
    };
    wait_for(Duration::from_secs(15), "healthz 200 ok", || async { health().await.filter(|h| h.0 == 200 && h.1 == "ok") }).await;
    haproxy.stop().await;
    wait_for(Duration::from_secs(10), "healthz 503 haproxy_unreachable", || async { health().await.filter(|h| h.0 == 503 && h.1 == "haproxy_unreachable") })
        .await;
    // Several passes fail while it is away (one per 250 ms resync): the log says so once.
    let errors = || async move {
        let m = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.ok()?.text().await.ok()?;
        m.lines().find_map(|l| l.strip_prefix("syncer_errors_total ")).and_then(|v| v.trim().parse::<f64>().ok())
    };
    wait_for(Duration::from_secs(10), "5 failed passes", || async { errors().await.filter(|n| *n >= 5.0) }).await;
    haproxy.start_again().await;
    wait_for(Duration::from_secs(10), "healthz 200 again", || async { health().await.filter(|h| h.0 == 200) }).await;
    let log = sync.log_text();
    assert_eq!(log.matches("HAProxy unreachable").count(), 1, "a repeated warning was not held back:\n{log}");
    assert_eq!(log.matches("HAProxy reachable again").count(), 1, "{log}");

    // /metrics says what its body is (OpenMetrics text) and which build this is.
    let r = reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await.unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(ct.starts_with("application/openmetrics-text") && body.ends_with("# EOF\n"), "{ct}: {body}");
    assert!(body.contains("syncer_build_info{") && body.contains("revision="), "{body}");
    assert!(body.contains("process_cpu_seconds_total ") && body.contains("process_threads "), "{body}");
    assert!(body.contains("syncer_read_duration_seconds_bucket{"), "{body}");
}

/// `syncer plan` prints what the syncer would do to a real HAProxy and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_the_operations_and_changes_nothing() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let haproxy = Haproxy::start(&["web-servers"]).await;
    let lease = client.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    for port in [18081u64, 18082] {
        let spec =
            proto::InstanceSpec { address: "127.0.0.1".into(), port, lease_id: Some(lease), weight: 100, state: Default::default(), meta: Default::default() };
        client.put_instance("web-servers", &format!("127.0.0.1:{port}"), &spec).await.unwrap();
    }
    let mut args = vec![
        "plan".to_string(),
        format!("--registry={}", cluster.urls().join(",")),
        format!("--haproxy-socket={}", haproxy.socket_path().display()),
        "--backend=web-servers".into(),
        "--admin=off".into(),
    ];
    args.extend(cluster.access_args("planner", &["read"]).await);
    let out = std::process::Command::new(binary("syncer")).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    for port in [18081, 18082] {
        assert!(text.contains(&format!("add sd-127.0.0.1:{port} 127.0.0.1:{port} weight 100")), "{text}");
    }
    assert!(text.contains("2 desired, 0 managed now; 2 to apply"), "{text}");
    assert!(haproxy.managed_ports("web-servers").await.is_empty(), "plan changed HAProxy");
    assert_eq!(haproxy.reloads().await, 0);
}

/// HAProxy's prerequisites are checked at startup against the real thing: a backend the
/// config does not declare is named, and the syncer does not start.
#[test]
fn a_backend_haproxy_does_not_declare_is_named_at_startup() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let haproxy = rt.block_on(Haproxy::start(&["web-servers"]));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary("syncer"))
        .args(["--registry", "http://127.0.0.1:1", "--backend", "web-servers", "--backend", "api-servers", "--admin", "off", "--state-dir"])
        .arg(dir.path())
        .arg("--haproxy-socket")
        .arg(haproxy.socket_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("backend \"api-servers\" is not declared") && !err.contains("backend \"web-servers\" is not"), "{err}");
    assert!(!err.contains("level"), "the test HAProxy's socket is level admin: {err}");
}

/// A stopping announcer whose token can read the balancers' reports deregisters as soon as the
/// real syncer reports that HAProxy has the drain (`set server ... state drain` applied), not
/// after its 30 s drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcer_drain_ends_once_the_syncer_has_applied_it() {
    let Balanced { cluster, dir, haproxy, syncer: _sync } = balanced().await;
    let urls = cluster.urls();
    let client = cluster.client();

    let port = free_port();
    let _web =
        Proc::spawn("drain-web", &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{port}"), "--name".into(), "drain-web".into()], dir.path());
    let mut args: Vec<String> = [
        "--registry",
        &urls.join(","),
        "--service",
        "web-servers",
        "--address",
        &format!("127.0.0.1:{port}"),
        "--check-http",
        &format!("http://127.0.0.1:{port}/health"),
        "--check-interval",
        "200ms",
        "--rise",
        "1",
        "--ttl",
        "2s",
        "--drain",
        "30s",
        "--admin",
        "off",
        "--state-dir",
        &dir.path().join("announcer-state").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(cluster.access_args("drain-web", &["announce:web-servers", "read"]).await);
    let mut announcer = Proc::spawn("drain-announcer", &binary("announcer"), &args, dir.path());
    wait_for(Duration::from_secs(15), "the server in HAProxy", || async { managed_ports(&haproxy).await.contains(&port).then_some(()) }).await;

    let signalled = Instant::now();
    announcer.signal("TERM");
    wait_for(Duration::from_secs(15), "the instance to be deregistered (the drain time is 30 s)", || async {
        let s = client.service("web-servers", false).await.ok()?;
        s.instances.iter().all(|i| i.instance != format!("127.0.0.1:{port}")).then_some(())
    })
    .await;
    eprintln!("deregistered {:?} after SIGTERM", signalled.elapsed());
    assert_eq!(announcer.wait_exit(Duration::from_secs(10)).await, Some(0));
    let log = announcer.log_text();
    let line = log.lines().find(|l| l.contains("every balancer has applied the drain")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("lb-1/web-servers"), "{line}");
    // (The server stays in HAProxy: the breaker's floor keeps a backend's last server.)
}

/// The operator's view of the balancers: `registry balancers` shows lb-1 in sync, `ls` hides
/// its `_syncers` report unless --all, and `registry deregister --wait` returns only once
/// HAProxy no longer has the server, or, with the syncer paused, names it as late and exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_wait_returns_once_haproxy_has_applied_the_removal() {
    let Balanced { cluster, dir: _dir, haproxy, syncer: sync } = balanced().await;
    let client = cluster.client();
    // Five, so that two removals stay under the breaker's default (half a backend per window).
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        let spec = proto::InstanceSpec {
            address: "127.0.0.1".into(),
            port: *port as u64,
            lease_id: None,
            weight: 100,
            state: Default::default(),
            meta: Default::default(),
        };
        client.put_instance("web-servers", &format!("web-{i}"), &spec).await.unwrap();
    }
    let all: BTreeSet<u16> = ports.iter().copied().collect();
    wait_for(Duration::from_secs(15), "the five servers in HAProxy", || async { (managed_ports(&haproxy).await == all).then_some(()) }).await;

    let table = wait_for(Duration::from_secs(10), "lb-1 in sync in `registry balancers`", || async {
        let (code, out, _) = cluster.cli(&["balancers"]);
        (code == 0 && out.lines().any(|l| l.starts_with("lb-1") && l.contains("web-servers") && l.contains("in sync"))).then_some(out)
    })
    .await;
    eprintln!("registry balancers:\n{table}");
    let (_, ls, _) = cluster.cli(&["ls"]);
    assert!(!ls.contains(proto::SYNCER_SERVICE) && ls.contains("web-0"), "{ls}");
    let (_, ls_all, _) = cluster.cli(&["ls", "--all"]);
    assert!(ls_all.lines().any(|l| l.starts_with(proto::SYNCER_SERVICE) && l.contains("lb-1")), "{ls_all}");

    let (code, out, err) = cluster.cli(&["deregister", "web-servers", "web-0", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied by every balancer") && out.contains("lb-1/web-servers"), "{out}");
    // Asked the moment the command returned: HAProxy has already dropped the server.
    assert!(!managed_ports_answered(&haproxy).await.contains(&ports[0]), "--wait returned before HAProxy applied the removal: {out}");

    // A paused syncer still holds its report (its lease is 10 s) but applies nothing: late.
    sync.signal("STOP");
    let (code, out, err) = cluster.cli(&["deregister", "web-servers", "web-1", "--wait", "--timeout", "2s"]);
    sync.signal("CONT");
    assert_eq!(code, 3, "removed but not confirmed: {out}{err}");
    assert!(
        out.contains("not applied within 2s") && out.lines().any(|l| l.contains("lb-1/web-servers") && l.contains("web-servers: applied revision")),
        "{out}"
    );
    wait_for(Duration::from_secs(10), "the resumed syncer to apply the removal", || async {
        (!managed_ports(&haproxy).await.contains(&ports[1])).then_some(())
    })
    .await;

    // An instance that is not there: one short line, exit 1.
    let (code, _, err) = cluster.cli(&["deregister", "web-servers", "web-0"]);
    assert_eq!(code, 1);
    assert!(err.lines().count() == 1 && err.contains("404"), "{err}");
}
