//! Real `registry serve` processes on loopback: leader loss, lease expiry, restart and catch-up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::lease::Renewer;
use e2e::{binary, registry_cli, wait_for, Proc, RegistryCluster};
use proto::InstanceSpec;
use tokio::time::Instant;

fn spec(port: u64, lease: u64) -> InstanceSpec {
    InstanceSpec { address: "127.0.0.1".into(), port, lease_id: Some(lease), weight: 100, state: Default::default(), meta: Default::default() }
}

/// Retries retriable errors (no leader yet, node down) until `limit`.
async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, client::Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_retriable() && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("gave up after {limit:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_keeps_renewed_instances_and_the_node_rejoins() {
    let mut cluster = RegistryCluster::start(3).await;
    let client = Arc::new(cluster.client());
    let ttl = Duration::from_secs(3);

    // 100 instances, each under its own lease.
    let mut leases = Vec::new();
    for i in 0..100u64 {
        let lease = retry(Duration::from_secs(5), || client.grant(ttl)).await.lease_id;
        let (name, sp) = (format!("127.0.0.1:{}", 20000 + i), spec(20000 + i, lease));
        retry(Duration::from_secs(5), || client.put_instance("web-servers", &name, &sp)).await;
        leases.push(lease);
    }

    // Renew every lease at TTL/3, the way the announcer will.
    let renewer = Renewer::start(client.clone(), leases.clone(), ttl / 3);

    // SIGKILL the leader; writes must succeed again within 2 s.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.nodes[leader].kill();
    let killed = Instant::now();
    let probe = InstanceSpec { lease_id: None, ..spec(1, 0) };
    let w = retry(Duration::from_secs(10), || client.put_instance("probe", "after-kill", &probe)).await;
    let recovered = killed.elapsed();
    assert!(recovered <= Duration::from_secs(2), "writes came back {recovered:?} after the leader died (bound 2 s)");
    eprintln!("writes succeeded again {recovered:?} after SIGKILL of the leader (revision {})", w.revision);

    // Keep renewing through a few more TTLs: nothing may be lost.
    tokio::time::sleep(ttl * 2).await;
    let s = retry(Duration::from_secs(5), || client.service("web-servers", false)).await;
    assert_eq!(s.instances.len(), 100, "instances lost across the leader change");
    assert_eq!(renewer.renewals().not_found, 0, "a keepalive found its lease expired");

    // Stop renewing: all gone within TTL + 1 s of the last keepalive round.
    renewer.stop().await;
    let stopped = Instant::now();
    wait_for(ttl + Duration::from_secs(3), "all instances to expire", || async {
        client.service("web-servers", false).await.ok().filter(|s| s.instances.is_empty()).map(|_| ())
    })
    .await;
    let gone = stopped.elapsed();
    assert!(gone <= ttl + Duration::from_secs(1), "instances gone {gone:?} after renewals stopped (bound TTL + 1 s)");
    eprintln!("all 100 instances gone {gone:?} after renewals stopped (TTL {ttl:?})");
    // And the operator can see why: `registry ls --removed`.
    let (code, out, err) = cluster.cli(&["ls", "--removed", "--service", "web-servers", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let removed: Vec<proto::Removal> = serde_json::from_str(&out).unwrap();
    assert_eq!(removed.len(), 100, "{out}");
    assert!(removed.iter().all(|r| matches!(r.cause, proto::RemovalCause::Expired { .. }) && r.at_ms.is_some()), "{out}");
    let (code, out, err) = cluster.cli(&["ls", "--removed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().is_some_and(|h| h.contains("CAUSE")) && out.contains("expired (lease "), "{out}");

    // Restart the killed node: it catches up and status shows three healthy members.
    cluster.nodes[leader].start();
    let urls = cluster.urls();
    let target = retry(Duration::from_secs(5), || client.cluster()).await.applied_index;
    wait_for(Duration::from_secs(15), "the restarted node to catch up", || async {
        client.cluster_at(&urls[leader]).await.ok().filter(|c| c.applied_index >= target).map(|_| ())
    })
    .await;
    let (code, out, err) = cluster.cli(&["status", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{out}");
    assert!(members.iter().all(|m| m["reachable"] == true), "{out}");
    let roles: BTreeMap<String, usize> = members.iter().fold(BTreeMap::new(), |mut acc, m| {
        *acc.entry(m["role"].as_str().unwrap().to_string()).or_default() += 1;
        acc
    });
    assert_eq!(roles.get("leader"), Some(&1), "{out}");
    assert_eq!(roles.get("follower"), Some(&2), "{out}");
}

/// SIGTERM to the leader: it hands leadership to a follower before it exits, so by the time it
/// has exited the survivors already agree on a leader elected in the very next term, and the
/// next write needs no election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_leadership_off_before_it_exits() {
    let mut cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let probe = InstanceSpec { lease_id: None, ..spec(1, 0) };
    retry(Duration::from_secs(5), || client.put_instance("probe", "before", &probe)).await;
    let urls = cluster.urls();
    let term = client.cluster_at(&urls[leader]).await.unwrap().term;
    // Writes keep coming, first to the old leader, throughout the stop: none may fail, not even
    // one held during the hand-off and relayed as the process exits.
    let writing = Arc::new(AtomicBool::new(true));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (client, writing, probe, acked) =
            (cluster.client_for(&[urls[leader].clone()].iter().chain(urls.iter()).cloned().collect::<Vec<_>>()), writing.clone(), probe.clone(), acked.clone());
        tokio::spawn(async move {
            let (mut done, mut failed) = (0u64, Vec::new());
            while writing.load(Ordering::SeqCst) {
                match client.put_instance("probe", &format!("w{}", done % 8), &probe).await {
                    Ok(_) => {
                        done += 1;
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (done, failed)
        })
    };
    let acked_past = |n: usize| {
        let acked = acked.clone();
        async move { (acked.load(Ordering::SeqCst) >= n).then_some(()) }
    };
    wait_for(Duration::from_secs(5), "writes going through before the stop", || acked_past(3)).await;
    let code = cluster.nodes[leader].terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "the old leader's exit after SIGTERM: {}", cluster.nodes[leader].log_text());
    assert!(cluster.nodes[leader].log_text().contains("leadership handed off"), "{}", cluster.nodes[leader].log_text());
    // Asked right after the exit: no survivor is still waiting out an election timeout.
    let mut seen = Vec::new();
    for (i, url) in urls.iter().enumerate().filter(|(i, _)| *i != leader) {
        let info = client.cluster_at(url).await.unwrap();
        seen.push((i, info.leader, info.term));
    }
    assert!(seen.iter().all(|(_, l, t)| l.is_some() && *l == seen[0].1 && *t == term + 1), "survivors right after the exit (term before {term}): {seen:?}");
    let survivors: Vec<String> = urls.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, u)| u.clone()).collect();
    cluster.client_for(&survivors).put_instance("probe", "after", &probe).await.expect("the first write after the exit");
    let before = acked.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(5), "writes going through after the exit", || acked_past(before + 3)).await;
    writing.store(false, Ordering::SeqCst);
    let (done, failed) = writer.await.unwrap();
    assert!(failed.is_empty(), "writes failed across the stop ({done} went through): {failed:?}");
}

/// Under systemd (`Type=notify`): `registry serve` says READY=1 on the notify socket once it
/// serves, then who leads in its status line, and STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_ready_and_the_leader_through_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let secret = e2e::write_cluster_secret(dir.path());
    let mut node = std::process::Command::new(binary("registry"))
        .args(["serve", "--id", "1", "--listen", &addr, "--peers", &format!("1={addr}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--cluster-secret-file")
        .arg(&secret)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(said.contains("READY=1") && said.contains("STATUS=leader is node 1")) {
        assert!(Instant::now() < deadline, "no READY=1 and leader status within 15 s; got {said:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
            said.push('\n');
        }
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !said.contains("STOPPING=1") {
        assert!(Instant::now() < deadline, "no STOPPING=1 after SIGTERM; got {said:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(node.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_single_node_keeps_every_acknowledged_write() {
    let mut cluster = RegistryCluster::start(1).await;
    let client = cluster.client();
    let mut acked = Vec::new();
    for i in 0..50u64 {
        let spec = InstanceSpec { lease_id: None, ..spec(30000 + i, 0) };
        acked.push(client.put_instance("api-servers", &format!("i{i}"), &spec).await.unwrap().revision);
    }
    cluster.nodes[0].kill();
    cluster.nodes[0].start();
    cluster.wait_leader(Duration::from_secs(10)).await;
    let s = retry(Duration::from_secs(10), || client.service("api-servers", false)).await;
    assert_eq!(s.instances.len(), 50, "acknowledged writes lost across SIGKILL");
    assert!(s.revision >= *acked.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_shows_lease_timings_and_json() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let lease = retry(Duration::from_secs(5), || client.grant(Duration::from_secs(30))).await.lease_id;
    let sp = spec(8081, lease);
    retry(Duration::from_secs(5), || client.put_instance("web-servers", "127.0.0.1:8081", &sp)).await;
    let (code, out, err) = cluster.cli(&["ls"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("web-servers")).unwrap_or_else(|| panic!("no row in {out}"));
    assert!(row.contains("127.0.0.1:8081") && row.contains("up") && row.contains(&lease.to_string()), "{row}");
    assert!(row.contains("s ago"), "last renewal missing: {row}");
    let (code, out, _) = cluster.cli(&["ls", "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["lease"]["lease_id"], lease);
    assert!(v[0]["lease"]["remaining_ms"].as_u64().unwrap() > 20_000);
}

/// `ls` filters: a service by name, a state, and the internal `_` services hidden unless
/// --all or named. `ls --watch` redraws on each change, from the watch stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_filters_and_watch_redraws_on_each_change() {
    let cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let up = InstanceSpec { lease_id: None, ..spec(8081, 0) };
    let drain = InstanceSpec { state: proto::InstanceState::Drain, ..InstanceSpec { lease_id: None, ..spec(8082, 0) } };
    retry(Duration::from_secs(5), || client.put_instance("web-servers", "w1", &up)).await;
    retry(Duration::from_secs(5), || client.put_instance("web-servers", "w2", &drain)).await;
    retry(Duration::from_secs(5), || client.put_instance("api-servers", "a1", &up)).await;
    retry(Duration::from_secs(5), || client.put_instance(proto::SYNCER_SERVICE, "lb-1", &up)).await;
    let rows = |args: &[&str]| -> Vec<String> {
        let (code, out, err) = cluster.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out.lines().skip(1).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("/")).collect()
    };
    assert_eq!(rows(&["ls"]), ["api-servers/a1", "web-servers/w1", "web-servers/w2"], "the internal service is hidden");
    assert_eq!(rows(&["ls", "--all"]), ["_syncers/lb-1", "api-servers/a1", "web-servers/w1", "web-servers/w2"]);
    assert_eq!(rows(&["ls", "_syncers"]), ["_syncers/lb-1"], "a service named is shown");
    assert_eq!(rows(&["ls", "web-servers"]), ["web-servers/w1", "web-servers/w2"]);
    assert_eq!(rows(&["ls", "--state", "drain"]), ["web-servers/w2"]);
    assert_eq!(rows(&["ls", "--service", "api-servers"]), ["api-servers/a1"], "the old flag still works");

    // --watch, piped: a frame per change, each after a blank line and a header.
    let mut args: Vec<String> = ["ls", "web-servers", "--watch", "--registry", &cluster.urls().join(",")].iter().map(|s| s.to_string()).collect();
    args.extend(cluster.admin_args());
    let dir = tempfile::tempdir().unwrap();
    let mut watch = Proc::spawn("ls-watch", &binary("registry"), &args, dir.path());
    let frames = |p: &Proc| -> Vec<String> { p.log_text().split("\n\n").filter(|f| f.contains("revision")).map(str::to_string).collect() };
    wait_for(Duration::from_secs(10), "the first frame", || async { (!frames(&watch).is_empty()).then_some(()) }).await;
    assert!(frames(&watch)[0].contains("w1") && !frames(&watch)[0].contains("w3"), "{}", watch.log_text());
    let w3 = InstanceSpec { lease_id: None, ..spec(8083, 0) };
    retry(Duration::from_secs(5), || client.put_instance("web-servers", "w3", &w3)).await;
    let added = wait_for(Duration::from_secs(10), "a frame with w3", || async { frames(&watch).into_iter().find(|f| f.contains("w3")) }).await;
    assert!(added.contains("3 instances"), "{added}");
    let before = frames(&watch).len();
    retry(Duration::from_secs(5), || client.delete_instance("web-servers", "w1")).await;
    let removed =
        wait_for(Duration::from_secs(10), "a frame without w1", || async { frames(&watch).into_iter().skip(before).find(|f| !f.contains("w1")) }).await;
    assert!(removed.contains("w2") && removed.contains("w3") && removed.contains("2 instances"), "{removed}");
    assert!(watch.is_running(), "{}", watch.log_text());
    watch.kill();
}

/// Without ACLs, `registry members` changes the membership only with the cluster secret, and
/// says which flag is missing without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_remove_needs_the_cluster_secret() {
    let cluster = RegistryCluster::start_plain(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let id = ((leader + 1) % 3 + 1).to_string();
    let urls = cluster.urls().join(",");
    let (code, _, err) = registry_cli(&["members", "remove", "--id", &id, "--registry", &urls]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") && err.contains("--cluster-secret-file"), "{err}");
    let secret = cluster.secret_file.display().to_string();
    let (code, out, err) = registry_cli(&["members", "remove", "--id", &id, "--registry", &urls, "--cluster-secret-file", &secret]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("node {id} removed")), "{out}");
}

/// With ACLs on, an admin token alone changes the membership (the operator holds no node
/// certificate), and a token without `admin` cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_remove_on_a_secured_cluster_takes_an_admin_token() {
    let cluster = RegistryCluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let id = ((leader + 1) % 3 + 1).to_string();
    let urls = cluster.urls().join(",");
    let mut reader: Vec<String> = ["members", "remove", "--id", &id, "--registry", &urls].iter().map(|s| s.to_string()).collect();
    reader.extend(cluster.access_args("reader", &["read", "announce:*"]).await);
    let (code, _, err) = registry_cli(&reader.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("403") && err.contains("admin"), "{err}");
    assert_eq!(cluster.client().cluster().await.unwrap().members.len(), 3);
    let (code, out, err) = cluster.cli(&["members", "remove", "--id", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("node {id} removed")), "{out}");
}

/// The whole TLS path as an operator takes it: `registry tls init`, a node on `--tls-*`, the CLI
/// with `--ca-file`, and a certificate replaced on disk and picked up on SIGHUP without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_serves_https_and_sighup_picks_up_a_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("tls");
    let (code, out, err) = registry_cli(&["tls", "init", "--dir", certs.to_str().unwrap(), "--hosts", "127.0.0.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--tls-cert"), "{out}");
    let (served, served_key, ca) = (dir.path().join("served.pem"), dir.path().join("served-key.pem"), certs.join("ca.pem"));
    std::fs::copy(certs.join("node-127.0.0.1.pem"), &served).unwrap();
    std::fs::copy(certs.join("node-127.0.0.1-key.pem"), &served_key).unwrap();
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let args: Vec<String> = [
        "serve",
        "--id",
        "1",
        "--listen",
        &addr,
        "--peers",
        &format!("1={addr}"),
        "--tls-cert",
        served.to_str().unwrap(),
        "--tls-key",
        served_key.to_str().unwrap(),
        "--tls-ca",
        ca.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut node = e2e::Proc::spawn("registry-tls", &e2e::binary("registry"), &args, dir.path());
    let client = client::Client::builder(std::slice::from_ref(&addr))
        .unwrap()
        .tls(&client::TlsFiles { ca: Some(ca.clone()), cert: None, key: None })
        .unwrap()
        .build()
        .unwrap();
    wait_for(Duration::from_secs(15), "the TLS node to lead", || async { client.cluster().await.ok().filter(|c| c.role == proto::NodeRole::Leader) }).await;
    let (code, out, err) = registry_cli(&["status", "--registry", &addr, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leader"), "{out}");
    let before = e2e::served_certificate(&addr, &ca).await.unwrap();
    assert_eq!(before, first_der(&served));

    // A new certificate from the same CA, swapped in on disk (rename: never half written).
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    std::fs::copy(&ca, next.join("ca.pem")).unwrap();
    std::fs::copy(certs.join("ca-key.pem"), next.join("ca-key.pem")).unwrap();
    let (code, _, err) = registry_cli(&["tls", "init", "--dir", next.to_str().unwrap(), "--hosts", "127.0.0.1"]);
    assert_eq!(code, 0, "{err}");
    std::fs::rename(next.join("node-127.0.0.1-key.pem"), &served_key).unwrap();
    std::fs::rename(next.join("node-127.0.0.1.pem"), &served).unwrap();
    let after = first_der(&served);
    assert_ne!(after, before);
    node.signal("HUP");
    wait_for(Duration::from_secs(5), "the node to serve the new certificate", || {
        let (addr, ca, after) = (addr.clone(), ca.clone(), after.clone());
        async move { (e2e::served_certificate(&addr, &ca).await.ok() == Some(after)).then_some(()) }
    })
    .await;
    assert!(node.is_running(), "SIGHUP stopped the node");
    client.grant(Duration::from_secs(5)).await.unwrap();
}

fn first_der(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem).unwrap().next().unwrap().unwrap().to_vec()
}

/// ACLs as an operator turns them on: `--acl-bootstrap-token-file`, then `registry token
/// create` for an announcer, which registers with `--token-file`; without a token the CLI is
/// refused, and `token list` never shows a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_with_the_cli_and_an_announcer() {
    let cluster = RegistryCluster::start(3).await;
    let urls = cluster.urls().join(",");
    let secured = cluster.secured.as_ref().unwrap();
    let admin = secured.admin_token_file.to_str().unwrap();
    let ca = secured.ca.to_str().unwrap();
    let (code, _, err) = registry_cli(&["ls", "--registry", &urls, "--ca-file", ca]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let (code, out, err) = registry_cli(&[
        "token",
        "create",
        "--scope",
        "announce:web-*",
        "--description",
        "web announcers",
        "--registry",
        &urls,
        "--token-file",
        admin,
        "--ca-file",
        ca,
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let web_token = created["token"].as_str().unwrap().to_string();
    let web_file = cluster.dir.path().join("web-token");
    std::fs::write(&web_file, &web_token).unwrap();

    let web_port = e2e::free_port();
    let _web =
        Proc::spawn("web", &binary("demo_web"), &["--listen".into(), format!("127.0.0.1:{web_port}"), "--name".into(), "web".into()], cluster.dir.path());
    let _announcer = Proc::spawn(
        "announcer",
        &binary("announcer"),
        &[
            "--registry".into(),
            urls.clone(),
            "--token-file".into(),
            web_file.display().to_string(),
            "--ca-file".into(),
            ca.into(),
            "--service".into(),
            "web-servers".into(),
            "--address".into(),
            format!("127.0.0.1:{web_port}"),
            "--admin".into(),
            format!("127.0.0.1:{}", e2e::free_port()),
        ],
        cluster.dir.path(),
    );
    let client = cluster.client();
    wait_for(Duration::from_secs(10), "the announcer to register with its token", || async {
        client.service("web-servers", false).await.ok().filter(|s| !s.instances.is_empty())
    })
    .await;
    let (code, out, err) = registry_cli(&["token", "list", "--registry", &urls, "--token-file", admin, "--ca-file", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("announce:web-*") && out.contains("web announcers"), "{out}");
    assert!(!out.contains(&web_token), "token list showed a secret: {out}");

    // `token revoke`: the announcer's token stops working on every node, and the list drops it.
    let id = created["id"].as_u64().unwrap().to_string();
    let (code, out, err) = registry_cli(&["token", "revoke", &id, "--registry", &urls, "--token-file", admin, "--ca-file", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("token {id} revoked")), "{out}");
    // Asked of each node on its own (a stale read, so no node relays it to the leader).
    for url in cluster.urls() {
        let one = secured.client(std::slice::from_ref(&url), &web_token);
        wait_for(Duration::from_secs(1), &format!("the revoked token refused by {url}"), || async {
            matches!(one.services(true).await, Err(client::Error::Api { status: 401, .. })).then_some(())
        })
        .await;
    }
    let (code, out, err) = registry_cli(&["token", "list", "--registry", &urls, "--token-file", admin, "--ca-file", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("web announcers") && out.contains("ID"), "{out}");
}

#[test]
fn bad_serve_config_names_every_field_and_exits_2() {
    let (code, _, err) = registry_cli(&["serve", "--peers", "1=nohost,x=127.0.0.1:1", "--heartbeat", "2s"]);
    assert_eq!(code, 2, "{err}");
    for field in ["id:", "listen:", "data-dir:", "peers:", "heartbeat:", "peer authentication:"] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
}

/// Without a cluster secret (or TLS, later) a node would take peer RPC from anyone: it does
/// not start unless told `--insecure`, and says how to fix it.
#[test]
fn a_node_without_peer_credentials_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let data = dir.path().join("data");
    let (code, _, err) = registry_cli(&["serve", "--id", "1", "--listen", &addr, "--data-dir", data.to_str().unwrap(), "--peers", &format!("1={addr}")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cluster-secret-file") && err.contains("--insecure"), "the refusal does not say what to do: {err}");
    assert!(!data.exists(), "it touched the data directory before refusing");
}

/// `--insecure` starts the node, and it says at once what that gives up (then every minute:
/// `server::tests`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_node_starts_and_warns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let args: Vec<String> =
        ["serve", "--id", "1", "--listen", &addr, "--data-dir", dir.path().join("data").to_str().unwrap(), "--peers", &format!("1={addr}"), "--insecure"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let node = Proc::spawn("insecure", &binary("registry"), &args, dir.path());
    wait_for(Duration::from_secs(10), "the node ready", || async { (reqwest::get(format!("http://{addr}/readyz")).await.ok()?.status() == 200).then_some(()) })
        .await;
    let log = node.log_text();
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains("--insecure") && l.contains("not authenticated")), "{log}");
}

#[test]
fn client_commands_without_a_registry_explain_what_is_missing() {
    let out = std::process::Command::new(e2e::binary("registry")).args(["ls"]).env_remove("REGISTRY_ADDR").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--registry"));
}

fn wal_segment(cluster: &RegistryCluster) -> std::path::PathBuf {
    let dir = cluster.data_dir(0).join("raft/log");
    let mut segs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    segs.sort();
    segs.pop().unwrap_or_else(|| panic!("no WAL segment in {}", dir.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_dropped_and_corruption_stops_the_node_naming_the_file() {
    let mut cluster = RegistryCluster::start(1).await;
    let client = cluster.client();
    for i in 0..20u64 {
        let spec = InstanceSpec { lease_id: None, ..spec(31000 + i, 0) };
        client.put_instance("api-servers", &format!("i{i}"), &spec).await.unwrap();
    }
    cluster.nodes[0].kill();
    let seg = wal_segment(&cluster);

    // A torn write: half a frame at the end. The node drops it and keeps every whole entry.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0x5f, 0xa7, 0x57, 0xfe, 200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']);
    std::fs::write(&seg, &bytes).unwrap();
    cluster.nodes[0].start();
    cluster.wait_leader(Duration::from_secs(10)).await;
    let s = retry(Duration::from_secs(10), || client.service("api-servers", false)).await;
    assert_eq!(s.instances.len(), 20);
    assert!(cluster.nodes[0].log_text().contains("torn"), "the truncation is logged");
    cluster.nodes[0].kill();

    // A flipped bit early in the segment, with good entries after it, is corruption.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    cluster.nodes[0].start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[0].is_running() {
        assert!(Instant::now() < deadline, "a node with a corrupt log kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = cluster.nodes[0].log_text();
    assert!(log.contains(&seg.display().to_string()) && log.contains("corrupt"), "error does not name the file:\n{log}");
}

/// Raft amnesia: a voter whose disk was wiped used to bootstrap again from `--peers` and vote
/// with an empty log, which can lose committed entries after one more failure. It now refuses
/// to start, saying what to do, and `--join` brings it back as a new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_refuses_to_bootstrap_and_rejoins_with_join() {
    let mut cluster = RegistryCluster::start(3).await;
    let client = cluster.client();
    let probe = InstanceSpec { lease_id: None, ..spec(1, 0) };
    retry(Duration::from_secs(5), || client.put_instance("web", "before", &probe)).await;
    wait_for(Duration::from_secs(10), "every member to be recorded as started", || async {
        client.cluster().await.ok().filter(|c| c.cluster_id.is_some() && c.members.iter().all(|m| m.started)).map(|_| ())
    })
    .await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let victim = (leader + 1) % 3;
    cluster.nodes[victim].kill();
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();

    cluster.nodes[victim].start();
    let code = wait_for(Duration::from_secs(15), "the wiped node to refuse to start", || {
        let code = cluster.nodes[victim].exit_code();
        async move { code }
    })
    .await;
    assert_ne!(code, 0);
    let log = cluster.nodes[victim].log_text();
    assert!(log.contains("is empty") && log.contains("--join"), "the refusal does not say what to do:\n{log}");

    cluster.nodes[victim].push_arg("--join");
    cluster.nodes[victim].start();
    let w = retry(Duration::from_secs(5), || client.put_instance("web", "after", &probe)).await;
    wait_rejoined(&cluster, victim, w.revision).await;
    let s = client.service("web", false).await.unwrap();
    assert_eq!(s.instances.len(), 2, "{s:?}");
}

/// Under TLS with a host per node, as in production, a node certificate vouches only for a
/// member's host: a wiped node that removed its old self could not add itself back. Without an
/// admin token `--join` says so and changes nothing; with `--join-token-file` it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_on_its_own_host_rejoins_under_tls_with_a_join_token() {
    let mut cluster = RegistryCluster::start_on_own_hosts(3).await;
    let client = cluster.client();
    let probe = InstanceSpec { lease_id: None, ..spec(1, 0) };
    retry(Duration::from_secs(5), || client.put_instance("web", "before", &probe)).await;
    wait_for(Duration::from_secs(10), "every member to be recorded as started", || async {
        client.cluster().await.ok().filter(|c| c.members.iter().all(|m| m.started)).map(|_| ())
    })
    .await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let victim = (leader + 1) % 3;
    cluster.nodes[victim].kill();
    std::fs::remove_dir_all(cluster.data_dir(victim)).unwrap();

    cluster.nodes[victim].push_arg("--join");
    cluster.nodes[victim].start();
    wait_for(Duration::from_secs(15), "the joining node to say it needs a token", || {
        let log = cluster.nodes[victim].log_text();
        async move { log.contains("--join-token-file").then_some(()) }
    })
    .await;
    let members = client.cluster().await.unwrap().members;
    assert!(members.iter().any(|m| m.id == victim as u64 + 1 && m.voter), "the old self was removed without a way back: {members:?}");

    cluster.nodes[victim].kill();
    let token = cluster.secured.as_ref().unwrap().admin_token_file.display().to_string();
    cluster.nodes[victim].push_arg("--join-token-file");
    cluster.nodes[victim].push_arg(&token);
    cluster.nodes[victim].start();
    let w = retry(Duration::from_secs(5), || client.put_instance("web", "after", &probe)).await;
    wait_rejoined(&cluster, victim, w.revision).await;
}

/// Waits until node `victim` (an index) is a voter again, in a 3-member cluster, and has
/// applied `revision`.
async fn wait_rejoined(cluster: &RegistryCluster, victim: usize, revision: u64) {
    let client = cluster.client();
    let url = cluster.urls()[victim].clone();
    wait_for(Duration::from_secs(30), "the rejoined node to be a voter and caught up", || async {
        let info = client.cluster().await.ok()?;
        let me = info.members.iter().find(|m| m.id == victim as u64 + 1)?;
        let applied = client.cluster_at(&url).await.ok()?.applied_index;
        (me.voter && info.members.len() == 3 && applied >= revision).then_some(())
    })
    .await;
}
