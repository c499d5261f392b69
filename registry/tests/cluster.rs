//! In-process clusters on port 0, with faults injected at the test seam (`Faults`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{spec, Cluster};
use proto::WatchEvent;
use registry::faults::Faults;
use registry::node::NodeConfig;
use testkit::wait_for as wait_until;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_a_leader_and_replicates_writes_sent_to_any_node() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let follower = *c.nodes.keys().find(|i| **i != leader).unwrap();
    let via_follower = c.client_for(&[follower]);
    let w = via_follower.put_instance("web", "a", &spec(8080, None)).await.unwrap();
    wait_until(Duration::from_secs(5), "every node applied the write", || async { c.nodes.keys().all(|i| c.applied(*i) >= w.revision).then_some(()) }).await;
    for id in c.nodes.keys() {
        let s = c.client_for(&[*id]).service("web", true).await.unwrap();
        assert_eq!(s.instances.len(), 1, "node {id} has the instance");
    }
    assert!(c.nodes[&follower].node.metrics().forwarded.get() >= 1, "the follower forwarded the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_delayed_and_dropped_rpcs() {
    let c = Cluster::start(3).await;
    c.faults.drop_one_in(4);
    for id in c.nodes.keys() {
        c.faults.delay_to(*id, Duration::from_millis(15));
    }
    let client = c.client();
    let mut last = 0;
    for i in 0..20 {
        last = loop {
            match client.put_instance("web", &format!("i{i}"), &spec(8000 + i, None)).await {
                Ok(w) => break w.revision,
                Err(e) if e.is_retriable() => continue,
                Err(e) => panic!("{e}"),
            }
        };
    }
    c.faults.heal();
    wait_until(Duration::from_secs(10), "all nodes converge", || async { c.nodes.keys().all(|i| c.applied(*i) >= last).then_some(()) }).await;
    let counts: Vec<usize> = c.nodes.values().map(|n| n.node.read_store(|s| s.instance_count())).collect();
    assert_eq!(counts, vec![20, 20, 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_leader_is_replaced() {
    let c = Cluster::start(3).await;
    let old = c.wait_leader(None).await;
    c.faults.isolate(old);
    let rest: Vec<u64> = c.nodes.keys().copied().filter(|i| *i != old).collect();
    let new = c.wait_leader(Some(&rest)).await;
    assert_ne!(new, old);
    let w = c.client_for(&rest).put_instance("web", "after", &spec(1, None)).await.unwrap();
    c.faults.heal();
    wait_until(Duration::from_secs(10), "the old leader catches up as a follower", || async {
        (c.applied(old) >= w.revision && c.leader_of(old) == Some(new)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_and_shrinks_at_runtime() {
    let mut c = Cluster::start(3).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // No peers: the new node waits to be added.
    let n4 = Cluster::spawn(l, NodeConfig::new(4, addr.clone(), dir.path().to_path_buf(), BTreeMap::new()), c.faults.clone()).await;
    c.nodes.insert(4, n4);
    let client = c.client_for(&[1, 2, 3]);
    c.operator_client_for(&[1, 2, 3]).add_member(4, &addr).await.unwrap();
    let info = client.cluster().await.unwrap();
    assert_eq!(info.members.iter().filter(|m| m.voter).count(), 4, "{info:?}");
    let w = client.put_instance("web", "x", &spec(1, None)).await.unwrap();
    wait_until(Duration::from_secs(5), "node 4 applies new writes", || async { (c.applied(4) >= w.revision).then_some(()) }).await;
    c.operator_client_for(&[1, 2, 3]).remove_member(4).await.unwrap();
    let info = client.cluster().await.unwrap();
    assert!(info.members.iter().all(|m| m.id != 4), "{info:?}");
    c.stop(4).await;
    client.put_instance("web", "y", &spec(2, None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_after_renewals_stop() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let lease = client.grant(Duration::from_secs(1)).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    for _ in 0..8 {
        client.keepalive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(client.service("web", false).await.unwrap().instances.len(), 1, "renewed lease still alive");
    let stopped = Instant::now();
    wait_until(Duration::from_secs(3), "the instance to go", || async {
        client.service("web", false).await.ok().filter(|s| s.instances.is_empty()).map(|_| ())
    })
    .await;
    let took = stopped.elapsed();
    assert!(took <= Duration::from_secs(2), "expired {took:?} after the last keepalive, bound is TTL + 1s");
    assert!(client.keepalive(lease).await.unwrap_err().is_not_found());
}

/// Renews `lease` every `every` through `client` until told to stop; counts failures.
fn renew(client: client::Client, lease: u64, every: Duration) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<usize>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut failures = 0;
        loop {
            match client.keepalive(lease).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => panic!("lease {lease} expired while being renewed"),
                Err(_) => failures += 1,
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stopped => return failures,
            }
        }
    });
    (stop, task)
}

/// Delete events in `node`'s history up to its current revision.
async fn deletes_seen(c: &Cluster, node: u64) -> usize {
    let client = c.client_for(&[node]);
    let mut w = client.watch(None, Some(0)).await.unwrap();
    let head = c.applied(node);
    let mut deletes = 0;
    loop {
        let e = w.next().await.unwrap().unwrap();
        match e {
            WatchEvent::Compacted { .. } => panic!("history compacted"),
            WatchEvent::Progress { revision } if revision >= head => return deletes,
            e if e.revision() > head => return deletes,
            WatchEvent::Delete { .. } => deletes += 1,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_survives_a_forced_leader_change() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let lease = client.grant(Duration::from_secs(1)).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    let (stop, renewer) = renew(c.client(), lease, Duration::from_millis(200));
    for _ in 0..2 {
        let old = c.wait_leader(None).await;
        c.faults.isolate(old);
        let rest: Vec<u64> = c.nodes.keys().copied().filter(|i| *i != old).collect();
        c.wait_leader(Some(&rest)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await; // longer than the TTL, on purpose
        c.faults.heal();
        c.wait_leader(None).await;
    }
    stop.send(()).unwrap();
    renewer.await.unwrap();
    let s = client.service("web", false).await.unwrap();
    assert_eq!(s.instances.len(), 1, "a renewed lease was expired across leader changes");
    let expiries: u64 = c.nodes.values().map(|n| n.node.metrics().lease_expiries.get()).sum();
    assert_eq!(expiries, 0);
    let leader = c.wait_leader(None).await;
    assert_eq!(deletes_seen(&c, leader).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_cannot_revoke_anything() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let lease = client.grant(Duration::from_secs(1)).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    let old = c.wait_leader(None).await;
    let rest: Vec<u64> = c.nodes.keys().copied().filter(|i| *i != old).collect();
    // Renewals reach only the majority side; the cut-off leader sees none and its clock runs out.
    let (stop, renewer) = renew(c.client_for(&rest), lease, Duration::from_millis(200));
    c.faults.isolate(old);
    c.wait_leader(Some(&rest)).await;
    let stale = &c.nodes[&old].node;
    wait_until(Duration::from_secs(10), "the stale leader to try and fail to expire", || async { (stale.metrics().expiry_refused.get() > 0).then_some(()) })
        .await;
    c.faults.heal();
    wait_until(Duration::from_secs(10), "the stale leader steps down", || async { (!stale.is_leader()).then_some(()) }).await;
    stop.send(()).unwrap();
    renewer.await.unwrap();
    assert_eq!(stale.metrics().lease_expiries.get(), 0);
    assert_eq!(client.service("web", false).await.unwrap().instances.len(), 1);
    let leader = c.wait_leader(None).await;
    assert_eq!(deletes_seen(&c, leader).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_resumes_sees_every_event_once_in_order() {
    let c = Cluster::start(3).await;
    let client = Arc::new(c.client());
    let leader = c.wait_leader(None).await;
    let follower = *c.nodes.keys().find(|i| **i != leader).unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..150u64 {
                revs.push(client.put_instance("web", &format!("i{}", i % 40), &spec(1000 + i, None)).await.unwrap().revision);
            }
            revs
        })
    };
    let watcher = c.client_for(&[follower]);
    let mut seen: Vec<u64> = Vec::new();
    let mut since = 0;
    // Disconnect after every 20 events and resume from the last revision seen.
    while seen.len() < 150 {
        let mut w = watcher.watch(Some("web"), Some(since)).await.unwrap();
        let mut got = 0;
        while got < 20 && seen.len() < 150 {
            match w.next().await.unwrap().expect("stream open") {
                WatchEvent::Put { revision, .. } => {
                    seen.push(revision);
                    since = revision;
                    got += 1;
                }
                WatchEvent::Progress { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let written = writer.await.unwrap();
    assert_eq!(seen, written, "every write seen exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_without_changing_state() {
    let c = Cluster::start(1).await;
    let url = &c.nodes[&1].url;
    let http = reqwest::Client::new();
    let before = c.applied(1);
    let cases: Vec<(&str, String, String, u16)> = vec![
        ("PUT", "/v1/services/web/instances/a".into(), "{not json".into(), 400),
        ("PUT", "/v1/services/web/instances/a".into(), r#"{"address":"10.0.0.1","port":80,"colour":"red"}"#.into(), 400),
        ("PUT", "/v1/services/web/instances/a".into(), r#"{"address":"10.0.0.1","port":0}"#.into(), 400),
        ("PUT", "/v1/services/web/instances/a".into(), r#"{"address":"10.0.0.1","port":65536}"#.into(), 400),
        ("PUT", "/v1/services/web/instances/a".into(), r#"{"address":"not an address","port":80}"#.into(), 400),
        ("PUT", format!("/v1/services/{}/instances/a", "s".repeat(129)), r#"{"address":"10.0.0.1","port":80}"#.into(), 400),
        ("PUT", "/v1/services/we%20b/instances/a".into(), r#"{"address":"10.0.0.1","port":80}"#.into(), 400),
        ("PUT", "/v1/services/web/instances/a".into(), format!(r#"{{"address":"10.0.0.1","port":80,"meta":{{"k":"{}"}}}}"#, "x".repeat(70_000)), 413),
        ("PUT", "/v1/services/web/instances/a".into(), r#"{"address":"10.0.0.1","port":80,"lease_id":424242}"#.into(), 404),
        ("POST", "/v1/leases".into(), r#"{"ttl_ms":10}"#.into(), 400),
        ("POST", "/v1/leases".into(), r#"{"ttl_ms":7200000}"#.into(), 400),
        ("POST", "/v1/leases".into(), "".into(), 400),
        ("POST", "/v1/leases/99999/keepalive".into(), "".into(), 404),
        ("POST", "/v1/leases/abc/keepalive".into(), "".into(), 400),
        ("DELETE", "/v1/services/web/instances/nope".into(), "".into(), 404),
        ("GET", "/v1/nothing".into(), "".into(), 404),
        ("GET", "/v1/services/web?wait=forever&index=1".into(), "".into(), 400),
        ("GET", "/v1/services?colour=red".into(), "".into(), 400),
        ("PATCH", "/v1/leases".into(), "".into(), 405),
    ];
    for (method, path, body, want) in cases {
        let resp = http.request(method.parse().unwrap(), format!("{url}{path}")).body(body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let err: proto::ErrorBody = resp.json().await.unwrap_or_else(|e| panic!("{method} {path}: error body is not JSON: {e}"));
        assert_eq!(status, want, "{method} {path} {body:.60}: {err:?}");
        assert!(err.code != proto::ErrorCode::Unknown && !err.message.is_empty());
    }
    // Rejected requests never reach the log: the only entries since are none.
    assert_eq!(c.applied(1), before);
    assert_eq!(c.nodes[&1].node.read_store(|s| s.instance_count()), 0);
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_bring_a_new_member_up() {
    fn small(c: &mut NodeConfig) {
        c.snapshot_every = 100;
        c.keep_after_snapshot = 10;
        c.history = 50;
        c.segment_bytes = 16 * 1024;
    }
    let mut c = Cluster::start_with(3, small).await;
    let client = c.client();
    let mut last = 0;
    // Rewrite the same 20 instances many times: the data stays small, the log would not.
    for i in 0..600u64 {
        last = client.put_instance("web", &format!("i{}", i % 20), &spec(1000 + i, None)).await.unwrap().revision;
    }
    wait_until(Duration::from_secs(10), "every node snapshotted and purged its log", || async {
        c.nodes
            .values()
            .all(|n| {
                let m = n.node.raft_metrics();
                m.snapshot.map(|s| s.index).unwrap_or(0) >= 400 && m.purged.map(|p| p.index).unwrap_or(0) >= 300
            })
            .then_some(())
    })
    .await;
    let wal = c._dir.path().join("n1/raft/log");
    let size = dir_size(&wal);
    // 600 entries are ~135 KB; the compacted log keeps what followed the last snapshot plus
    // at most one partly purged segment.
    assert!(size < 80_000, "log directory holds {size} bytes after compaction");

    // A new member far behind the purged log catches up from a snapshot.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(4, addr.clone(), dir.path().to_path_buf(), BTreeMap::new());
    small(&mut cfg);
    c.nodes.insert(4, Cluster::spawn(l, cfg, c.faults.clone()).await);
    c.operator_client_for(&[1, 2, 3]).add_member(4, &addr).await.unwrap();
    wait_until(Duration::from_secs(10), "node 4 caught up and current", || async {
        (c.applied(4) >= last && c.nodes[&4].node.serving_current().is_ok()).then_some(())
    })
    .await;
    assert_eq!(c.nodes[&4].node.read_store(|s| s.instance_count()), 20);
    // Its watch history starts at the snapshot: resuming from before it says `compacted`.
    let mut w = c.client_for(&[4]).watch(None, Some(1)).await.unwrap();
    match w.next().await.unwrap().unwrap() {
        WatchEvent::Compacted { compact_revision, .. } => assert!(compact_revision > 1),
        other => panic!("expected compacted, got {other:?}"),
    }
    c.stop(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_returns_when_the_service_changes() {
    let c = Cluster::start(3).await;
    let client = Arc::new(c.client());
    let first = client.put_instance("web", "a", &spec(1, None)).await.unwrap();
    let index = client.service("web", false).await.unwrap().index;
    assert_eq!(index, first.revision);
    // Nothing changes: the query waits out its `wait`.
    let t = Instant::now();
    let s = client.service_after("web", index, Duration::from_millis(300)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300) && s.index == index);
    // A change to another service does not wake it; a change to this one does.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.service_after("web", index, Duration::from_secs(20)).await.unwrap() })
    };
    client.put_instance("api", "x", &spec(2, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "woke up for another service");
    let second = client.put_instance("web", "b", &spec(3, None)).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("blocking query did not return").unwrap();
    assert_eq!(s.index, second.revision);
    assert_eq!(s.instances.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let lease = client.grant(Duration::from_secs(5)).await.unwrap().lease_id;
    client.keepalive(lease).await.unwrap();
    let leader = c.wait_leader(None).await;
    let http = reqwest::Client::new();
    for (id, n) in &c.nodes {
        assert_eq!(http.get(format!("{}/healthz", n.url)).send().await.unwrap().status(), 200);
        assert_eq!(http.get(format!("{}/readyz", n.url)).send().await.unwrap().status(), 200, "node {id}");
        let text = http.get(format!("{}/metrics", n.url)).send().await.unwrap().text().await.unwrap();
        for name in [
            "registry_leader_changes_total",
            "registry_applied_entries_total",
            "registry_applied_index",
            "registry_leases_live 1",
            "registry_keepalives_total",
            "registry_lease_expiries_total",
            "registry_watch_clients",
            "registry_term",
        ] {
            assert!(text.contains(name), "node {id} lacks {name}:\n{text}");
        }
        if *id == leader {
            assert!(text.contains("registry_is_leader 1"), "{text}");
            assert!(!text.contains("registry_keepalives_total 0\n"), "{text}");
        }
    }
    // A node that is not in any cluster is alive but not ready.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lone = Cluster::spawn(l, NodeConfig::new(9, "127.0.0.1:1".into(), dir.path().to_path_buf(), BTreeMap::new()), Faults::default()).await;
    assert_eq!(http.get(format!("{}/healthz", lone.url)).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/readyz", lone.url)).send().await.unwrap().status(), 503);
    lone.http.abort();
    lone.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_watch_gets_progress_while_other_services_change() {
    let c = Cluster::start(1).await;
    let client = Arc::new(c.client());
    let busy = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..40u64 {
                client.put_instance("busy", "x", &spec(1 + i, None)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut w = client.watch(Some("quiet"), None).await.unwrap();
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(4), w.next()).await {
        Ok(Ok(Some(WatchEvent::Progress { revision }))) => assert!(revision > 0),
        other => panic!("no progress on a quiet service within 4 s ({:?}): {other:?}", t.elapsed()),
    }
    busy.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_list_blocks_until_any_service_changes() {
    let c = Cluster::start(1).await;
    let client = Arc::new(c.client());
    client.put_instance("web", "a", &spec(1, None)).await.unwrap();
    let list = client.services(false).await.unwrap();
    let waiter = {
        let client = client.clone();
        let path_index = list.index;
        tokio::spawn(async move {
            let url = format!("{}/v1/services?index={path_index}&wait=20s", client.urls()[0]);
            reqwest::get(url).await.unwrap().json::<proto::ServiceList>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let w = client.put_instance("api", "b", &spec(2, None)).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("did not wake").unwrap();
    assert_eq!(after.index, w.revision);
    assert_eq!(after.services.len(), 2);
}

/// Group commit (`node::batch`): writes that arrive together share log entries, and each still
/// gets its own answer: distinct lease ids, a put that sees its own grant, the same state on
/// every node. The 200 writes fired at once cannot all go alone: the first ones hold the
/// pipeline while the others queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let client = c.client_for(&[leader]);
    let before = c.applied(leader);
    const N: usize = 200;
    let writes: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let g = client.grant(Duration::from_secs(60)).await.unwrap();
                let w = client.put_instance("web", &format!("i{i}"), &spec(1000 + i as u64, Some(g.lease_id))).await.unwrap();
                (g.lease_id, w.revision)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.unwrap());
    }
    let ids: std::collections::BTreeSet<u64> = answers.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), N, "every grant got its own lease id");
    let last = answers.iter().map(|(_, rev)| *rev).max().unwrap();
    wait_until(Duration::from_secs(10), "every node applied every write", || async { c.nodes.keys().all(|i| c.applied(*i) >= last).then_some(()) }).await;
    let entries = c.applied(leader) - before;
    assert!(entries < 2 * N as u64, "{} writes took {entries} log entries: none shared one", 2 * N);
    assert!(c.nodes[&leader].node.metrics().batched_writes.get() > 0);
    for (id, n) in &c.nodes {
        n.node.read_store(|s| {
            assert_eq!(s.leases().keys().copied().collect::<std::collections::BTreeSet<_>>(), ids, "node {id}'s leases");
            for (i, (lease, _)) in answers.iter().enumerate() {
                assert_eq!(s.instance("web", &format!("i{i}")).and_then(|x| x.lease_id), Some(*lease), "node {id}: i{i} under its own lease");
            }
        });
    }
}

/// A 3-node cluster for the relay tests: its leader, a follower, a client of the leader, and
/// `n` leases of 60 s granted through it.
async fn relay_cluster(n: usize) -> (Cluster, u64, u64, client::Client, Vec<u64>) {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let direct = c.client_for(&[leader]);
    let mut leases = Vec::new();
    for _ in 0..n {
        leases.push(direct.grant(Duration::from_secs(60)).await.unwrap().lease_id);
    }
    (c, leader, follower, direct, leases)
}

/// Keepalives a follower gets are relayed to the leader in batches (`http::relay`), and each is
/// answered on its own: an unknown or revoked lease is a 404 for that keepalive alone, and the
/// others renew on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_relayed_in_batches_are_answered_each_alone() {
    let (c, leader, follower, direct, leases) = relay_cluster(100).await;
    let revoked = direct.grant(Duration::from_secs(60)).await.unwrap().lease_id;
    direct.revoke(revoked).await.unwrap();
    let unknown = 987_654_321;
    let via_follower = c.client_for(&[follower]);
    let renewed_before = c.nodes[&leader].node.metrics().keepalives.get();
    let (forwarded_before, batches_before) = (c.nodes[&follower].node.metrics().forwarded.get(), c.nodes[&follower].node.metrics().relayed_batches.get());

    let mut ids = leases.clone();
    ids.insert(50, unknown);
    ids.push(revoked);
    let calls: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, id) = (via_follower.clone(), *id);
            tokio::spawn(async move { (id, client.keepalive(id).await) })
        })
        .collect();
    for call in calls {
        let (id, answer) = call.await.unwrap();
        match answer {
            Ok(k) if id != unknown && id != revoked => assert_eq!((k.lease_id, k.ttl_ms), (id, 60_000)),
            Err(client::Error::Api { status: 404, body, .. }) if id == unknown || id == revoked => {
                assert_eq!(body.code, proto::ErrorCode::LeaseNotFound, "lease {id}")
            }
            other => panic!("lease {id}: {other:?}"),
        }
    }
    let follower_metrics = c.nodes[&follower].node.metrics();
    let relayed = follower_metrics.forwarded.get() - forwarded_before;
    let batches = follower_metrics.relayed_batches.get() - batches_before;
    // A follower answers no keepalive itself (it is not a ready leader): all were relayed.
    assert_eq!(relayed, 102, "keepalives relayed");
    assert!(batches >= 1 && batches < relayed, "{relayed} keepalives took {batches} relayed requests: none shared one");
    assert_eq!(c.nodes[&leader].node.metrics().keepalives.get() - renewed_before, 100, "the leader renewed each known lease once");
}

/// A follower's batches to its leader that fail (the follower cannot reach it) give their
/// slots back: once the path is back, keepalives through that follower go through the same
/// leader's batches again. Every keepalive sent meanwhile was answered, none left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_batches_failed_carries_keepalives_again() {
    let (c, leader, follower, _, leases) = relay_cluster(50).await;
    let round = |what: &'static str| {
        let calls: Vec<_> = leases
            .iter()
            .map(|id| {
                // A client of its own for each: one that was told the leader would go there.
                let (client, id) = (c.client_for(&[follower]), *id);
                // A deadline far past any answer's, so a keepalive left waiting fails the test.
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(30), client.keepalive(id)).await.unwrap_or_else(|_| panic!("{what}: lease {id} got no answer"))
                })
            })
            .collect::<Vec<_>>();
        async move {
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap());
            }
            answers
        }
    };
    // The follower still hears from its leader (appends flow the other way), so it keeps
    // relaying to the same leader, and every batch fails.
    c.faults.cut(follower, leader);
    let batches_before = c.nodes[&follower].node.metrics().relayed_batches.get();
    for answer in round("while cut").await {
        match answer {
            Err(e) if e.is_retriable() => {}
            other => panic!("a keepalive the follower could not relay: {other:?}"),
        }
    }
    assert!(c.nodes[&follower].node.metrics().relayed_batches.get() > batches_before, "the keepalives went in batches");
    assert_eq!(c.leader_of(follower), Some(leader), "the follower still follows the same leader");
    c.faults.heal();
    let renewed_before = c.nodes[&leader].node.metrics().keepalives.get();
    let batches_before = c.nodes[&follower].node.metrics().relayed_batches.get();
    for answer in round("after the cut").await {
        let k = answer.unwrap();
        assert_eq!(k.ttl_ms, 60_000);
    }
    // At least: a keepalive the client gave up on after its 1 s and sent again is renewed twice.
    let renewed = c.nodes[&leader].node.metrics().keepalives.get() - renewed_before;
    assert!(renewed >= leases.len() as u64, "the leader renewed {renewed} of {} leases", leases.len());
    assert!(c.nodes[&follower].node.metrics().relayed_batches.get() > batches_before, "through the follower's batches");
}

/// A leader slower to answer relayed keepalives than a client waits: the follower answers
/// each one `503 unavailable` itself, none renewed behind the client's back or left waiting,
/// so the client tries another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_relayed_to_a_slow_leader_are_answered_unavailable() {
    let (c, leader, follower, _, leases) = relay_cluster(20).await;
    // Only requests to the leader are slowed: its heartbeats to the others are not.
    c.faults.delay_to(leader, Duration::from_secs(5));
    let renewed_before = c.nodes[&leader].node.metrics().keepalives.get();
    let http = reqwest::Client::new();
    let url = &c.nodes[&follower].url;
    let calls: Vec<_> = leases.iter().map(|id| http.post(format!("{url}/v1/leases/{id}/keepalive")).send()).collect();
    for (id, resp) in leases.iter().zip(futures::future::join_all(calls).await) {
        let resp = resp.unwrap();
        assert_eq!(resp.status().as_u16(), 503, "lease {id}");
        assert_eq!(resp.json::<proto::ErrorBody>().await.unwrap().code, proto::ErrorCode::Unavailable, "lease {id}");
    }
    assert_eq!(c.nodes[&leader].node.metrics().keepalives.get(), renewed_before, "no keepalive reached the leader");
    assert_eq!(c.leader_of(follower), Some(leader), "the follower still follows the same leader");
    // Once the leader answers in time again, they renew (the first through the follower).
    let client = c.client_for(&[follower]);
    c.faults.heal();
    for id in &leases {
        assert_eq!(client.keepalive(*id).await.unwrap().lease_id, *id);
    }
}
