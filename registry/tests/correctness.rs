//! The failure modes etcd learned in production, each as an in-process cluster test named for
//! what it prevents. Faults come through the shared `Faults` seam: network cuts, a stalled
//! disk, a slow state machine. These tests use the default timings unless they say otherwise.

mod common;

use std::time::Duration;

use client::{Update, Watcher};
use common::{spec, Cluster};
use testkit::wait_for as wait_until;
use tokio::time::Instant;

/// Keeps renewing `lease` through `client` every `every`; returns how many renewals said the
/// lease was gone (404), which a live client must never see.
fn renewer(client: client::Client, lease: u64, every: Duration) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<usize>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut gone = 0;
        loop {
            if let Err(e) = client.keepalive(lease).await {
                if e.is_not_found() {
                    gone += 1;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stopped => return gone,
            }
        }
    });
    (stop, task)
}

/// etcd #15247. The leader's volume hangs: openraft's core waits on the fsync and stops
/// publishing metrics, which froze `millis_since_quorum_ack` at a fresh value. The node kept
/// acknowledging keepalives and naming itself leader, so clients stayed on it while the
/// followers elected a new leader that saw no renewals and expired the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_stalled_disk_stops_renewing_so_the_renewed_lease_survives() {
    let c = Cluster::start_defaults(3).await;
    let client = c.client();
    let ttl = Duration::from_secs(3);
    let lease = client.grant(ttl).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    let (stop, renewals) = renewer(c.client(), lease, ttl / 3);
    let old = c.wait_leader(None).await;
    let old_url = c.nodes[&old].url.clone();

    c.faults.stall_disk(old);
    // The next append reaches the stalled log and blocks the old leader's core.
    let stuck = {
        let to_old = c.client_for(&[old]);
        tokio::spawn(async move { to_old.put_instance("web", "stuck", &spec(81, None)).await })
    };
    let stall_started = Instant::now();
    let rest = c.others(&[old]);
    let new = c.wait_leader(Some(&rest)).await;
    assert_ne!(new, old);
    // The stalled node neither renews nor sends clients its way.
    let direct = reqwest::Client::new();
    wait_until(Duration::from_secs(5), "the stalled leader to refuse keepalives and name no leader", || async {
        let r = direct.post(format!("{old_url}/v1/leases/{lease}/keepalive")).timeout(Duration::from_secs(1)).send().await.ok()?;
        (r.status() == 503 && !r.headers().contains_key(proto::LEADER_HEADER)).then_some(())
    })
    .await;
    // Hold the stall for TTL + 3 s in all, long enough for the new leader to expire the lease
    // if renewals did not reach it, checking on the majority throughout that it has not.
    let majority = c.client_for(&rest);
    let stall_ends = stall_started + ttl + Duration::from_secs(3);
    while Instant::now() < stall_ends {
        if let Ok(s) = majority.service("web", false).await {
            assert!(s.instances.iter().any(|i| i.instance == "a"), "the new leader dropped the renewed instance during the stall: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.faults.unstall_disk(old);

    wait_until(Duration::from_secs(10), "the old leader to step down", || async { (!c.nodes[&old].node.is_leader()).then_some(()) }).await;
    stop.send(()).unwrap();
    assert_eq!(renewals.await.unwrap(), 0, "a renewal was told the lease was gone");
    let s = client.service("web", false).await.unwrap();
    assert!(s.instances.iter().any(|i| i.instance == "a"), "the renewed instance was dropped: {s:?}");
    client.keepalive(lease).await.expect("the lease is alive after the stall");
    let _ = stuck.await;
}

/// A watcher on a node that is cut off used to get `progress` at a frozen revision forever
/// and look healthy. The node now ends the stream; the watcher resumes on a current node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_cut_off_node_moves_to_a_current_one() {
    let c = Cluster::start_defaults(3).await;
    let leader = c.wait_leader(None).await;
    let cut = c.others(&[leader])[0];
    let majority = c.others(&[cut]);
    let since = c.client().put_instance("web", "before", &spec(1, None)).await.unwrap().revision;
    wait_until(Duration::from_secs(5), "the node to be cut off applied the write", || async { (c.applied(cut) >= since).then_some(()) }).await;
    // The cut-off node first, so the watch starts there.
    let mut order = vec![cut];
    order.extend(&majority);
    let mut w = Watcher::new(c.client_for(&order), Some("web".into()), since);
    match w.next().await.unwrap() {
        Update::Progress { .. } => {}
        other => panic!("expected progress, got {other:?}"),
    }
    assert_eq!(w.url(), Some(c.nodes[&cut].url.as_str()));

    c.faults.isolate(cut);
    let written = c.client_for(&majority).put_instance("web", "after", &spec(2, None)).await.unwrap().revision;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    let seen_at = loop {
        assert!(Instant::now() < deadline, "the watcher did not see the write from a current node within 8 s");
        match tokio::time::timeout(Duration::from_secs(1), w.next()).await {
            Ok(Ok(Update::Changes { revision, .. })) if revision >= written => break w.url().map(str::to_string),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {}
        }
    };
    assert_ne!(seen_at.as_deref(), Some(c.nodes[&cut].url.as_str()), "the change came from the cut-off node");
    eprintln!("watcher moved and saw the write {:?} after the cut", started.elapsed());
    // New watches on the cut-off node are refused.
    let r = reqwest::get(format!("{}/v1/watch?since={since}", c.nodes[&cut].url)).await.unwrap();
    assert_eq!(r.status(), 503);
    c.faults.heal();
}

/// etcd #6978. A just-elected leader that has not applied its predecessor's tail answered
/// 404 for a lease granted just before the change; the announcer then re-registers, and a 404
/// on delete leaves a zombie instance. Until it has applied an entry of its own term, the
/// leader answers 503 (or waits), never 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_behind_on_apply_never_answers_not_found() {
    let c = Cluster::start_defaults(3).await;
    let old = c.wait_leader(None).await;
    let rest = c.others(&[old]);
    let (next, other) = (rest[0], rest[1]);
    // The next leader applies everything 3 s late; it still stores and acknowledges entries.
    c.faults.delay_apply(next, Duration::from_secs(3));
    let client = c.client_for(&[old]);
    let lease = client.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    assert!(c.nodes[&next].node.read_store(|s| s.lease(lease).is_none()), "the next leader has not applied the grant yet");

    // Move leadership to `next`: cut off the old leader, and keep `other` from winning.
    c.faults.isolate(old);
    c.faults.cut(other, next);
    c.nodes[&next].node.campaign().await.unwrap();
    wait_until(Duration::from_secs(15), "the slow node to become leader", || async { c.nodes[&next].node.is_leader().then_some(()) }).await;
    let on_next = c.client_for(&[next]);
    let mut answers = Vec::new();
    let mut not_found = Vec::new();
    let mut renewed = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !renewed {
        match on_next.keepalive(lease).await {
            Ok(_) => renewed = true,
            Err(e) => {
                if e.is_not_found() {
                    not_found.push(e.to_string());
                }
                answers.push(e.to_string())
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_found.is_empty(), "a keepalive was answered 404: {not_found:?}");
    assert!(renewed, "the lease was never renewed on the new leader: {answers:?}");
    assert!(!answers.is_empty(), "the test did not catch the new leader before it applied; nothing was checked");
    // And the instance under it is there to delete.
    on_next.delete_instance("web", "a").await.expect("the instance exists on the new leader");
    c.faults.heal();
}

/// The forward timeout (3 s) was shorter than the leader's own wait (5 s), and the client
/// retried any 503 on another node: a grant that took 4 s was granted twice. The forward
/// budget now covers the leader's, and every write carries a request id that applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_forwarded_by_a_follower_grants_exactly_one_lease() {
    let c = Cluster::start_defaults(3).await;
    let leader = c.wait_leader(None).await;
    let followers = c.others(&[leader]);
    // Warm up the followers' view of the leader, then slow the leader's apply to 4 s.
    c.client_for(&followers).put_instance("web", "warm", &spec(1, None)).await.unwrap();
    c.faults.delay_apply(leader, Duration::from_secs(4));
    let granted = c.client_for(&followers).grant(Duration::from_secs(30)).await.expect("the grant answers");
    c.faults.heal();
    let rev = c.client().put_instance("web", "after", &spec(2, None)).await.unwrap().revision;
    wait_until(Duration::from_secs(10), "every node applied everything", || async { c.nodes.keys().all(|i| c.applied(*i) >= rev).then_some(()) }).await;
    for (id, n) in &c.nodes {
        let leases: Vec<u64> = n.node.read_store(|s| s.leases().keys().copied().collect());
        assert_eq!(leases, vec![granted.lease_id], "node {id} holds {leases:?}");
    }
}

/// openraft's default `install_snapshot_timeout` (200 ms per chunk) is too short for a large
/// store: each 3 MiB chunk travels as about 10 MiB of JSON, the send times out, and a new
/// member retries forever. A store of about 50 MB must reach a new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_receives_a_50_mb_snapshot() {
    fn compact(c: &mut registry::node::NodeConfig) {
        // One snapshot near the end of the writes below, then the log behind it is purged.
        c.snapshot_every = 900;
        c.keep_after_snapshot = 10;
    }
    let mut c = Cluster::start_defaults_with(3, compact).await;
    let client = c.client();
    // 64 meta values of 900 bytes: about 58 KB per instance, 1000 instances.
    let meta: std::collections::BTreeMap<String, String> = (0..64).map(|k| (format!("k{k:02}"), "x".repeat(900))).collect();
    let mut last = 0;
    for i in 0..1000u64 {
        let mut s = spec(1000 + i, None);
        s.meta = meta.clone();
        last = client.put_instance("web", &format!("i{i:03}"), &s).await.unwrap().revision;
    }
    let leader = c.wait_leader(None).await;
    wait_until(Duration::from_secs(60), "the leader snapshotted and purged its log", || async {
        let m = c.nodes[&leader].node.raft_metrics();
        (m.purged.map(|p| p.index).unwrap_or(0) >= 800).then_some(())
    })
    .await;
    let size = std::fs::metadata(c._dir.path().join(format!("n{leader}/state/snapshot"))).unwrap().len();
    assert!(size > 50_000_000, "the snapshot is only {size} bytes");

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = registry::node::NodeConfig::new(4, addr.clone(), dir.path().to_path_buf(), Default::default());
    compact(&mut cfg);
    c.nodes.insert(4, Cluster::spawn(l, cfg, c.faults.clone()).await);
    let started = Instant::now();
    c.operator_client_for(&[1, 2, 3]).add_member(4, &addr).await.unwrap();
    wait_until(Duration::from_secs(120), "node 4 caught up from the snapshot", || async { (c.applied(4) >= last).then_some(()) }).await;
    eprintln!("a {size}-byte snapshot reached the new member in {:?}", started.elapsed());
    assert_eq!(c.nodes[&4].node.read_store(|s| s.instance_count()), 1000);
    c.stop(4).await;
}

/// openraft 0.9 has no check-quorum: a leader cut off together with one follower keeps
/// sending it appends. That follower must not count as current: its watches end and move
/// to the majority, which has a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_with_its_old_leader_stops_serving_watches() {
    let c = Cluster::start_defaults(5).await;
    let old = c.wait_leader(None).await;
    let buddy = c.others(&[old])[0];
    let majority = c.others(&[old, buddy]);
    for a in [old, buddy] {
        for b in &majority {
            c.faults.cut(a, *b);
            c.faults.cut(*b, a);
        }
    }
    let new = c.wait_leader(Some(&majority)).await;
    assert!(majority.contains(&new));
    let url = &c.nodes[&buddy].url;
    wait_until(Duration::from_secs(5), "the follower of the cut-off leader to refuse watches", || async {
        let r = reqwest::get(format!("{url}/v1/watch")).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let r = reqwest::get(format!("{url}/v1/services?stale=true")).await.unwrap();
    assert_eq!(r.headers().get(proto::KNOWN_LEADER_HEADER).and_then(|v| v.to_str().ok()), Some("false"), "a stale read says it may be stale");
    c.faults.heal();
}

/// openraft writes a snapshot chunk wherever its offset says, into memory: a peer RPC with a
/// huge offset would allocate up to it, and one past what has arrived would leave a hole.
/// Chunks must stay under the size limit and continue the snapshot being received without a
/// gap; a chunk of a snapshot never started is openraft's to refuse (`SnapshotMismatch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_with_a_bogus_offset_is_refused() {
    use registry::types::TypeConfig;
    let c = Cluster::start_defaults(3).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let vote = c.nodes[&leader].node.raft_metrics().vote;
    let url = format!("{}/raft/snapshot", c.nodes[&follower].url);
    let chunk = |id: &str, offset: u64| openraft::raft::InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: openraft::SnapshotMeta { last_log_id: None, last_membership: Default::default(), snapshot_id: id.into() },
        offset,
        data: vec![b'x'; 10],
        done: false,
    };
    // As a peer: the checks under test come after peer authentication.
    let mut proof = reqwest::header::HeaderMap::new();
    proof.insert(registry::peer_auth::SECRET_HEADER, common::CLUSTER_SECRET.parse().unwrap());
    let http = reqwest::Client::builder().default_headers(proof).build().unwrap();
    let r = http.post(&url).json(&chunk("s1", 1 << 40)).send().await.unwrap();
    assert_eq!(r.status(), 400, "past the limit");
    let r = http.post(&url).json(&chunk("s2", 100)).send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("Err"), "a chunk of a snapshot never started is refused by openraft: {body}");
    let r = http.post(&url).json(&chunk("s3", 0)).send().await.unwrap();
    assert_eq!(r.status(), 200, "a first chunk passes");
    let r = http.post(&url).json(&chunk("s3", 10)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the next chunk passes");
    let r = http.post(&url).json(&chunk("s3", 1000)).send().await.unwrap();
    assert_eq!(r.status(), 400, "a gap after what has arrived");
    // The node is unharmed.
    c.client_for(&[follower]).put_instance("web", "a", &spec(1, None)).await.unwrap();
}

/// What one client can make a node hold is bounded, each by a setting; past it, 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_blocking_queries_and_leases_per_client_are_limited() {
    fn small(c: &mut registry::node::NodeConfig) {
        c.limits.max_watches = 2;
        c.limits.max_blocking_queries = 1;
        c.limits.max_leases_per_client = 3;
    }
    let c = Cluster::start_defaults_with(3, small).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let client = c.client_for(&[follower]);
    for _ in 0..3 {
        client.grant(Duration::from_secs(30)).await.unwrap();
    }
    let e = client.grant(Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(&e, client::Error::Api { status: 429, .. }), "{e}");

    let url = &c.nodes[&follower].url;
    let w1 = reqwest::get(format!("{url}/v1/watch")).await.unwrap();
    let w2 = reqwest::get(format!("{url}/v1/watch")).await.unwrap();
    assert_eq!((w1.status(), w2.status()), (reqwest::StatusCode::OK, reqwest::StatusCode::OK));
    assert_eq!(reqwest::get(format!("{url}/v1/watch")).await.unwrap().status(), 429);
    drop((w1, w2));
    wait_until(Duration::from_secs(5), "closed watches to free their places", || async {
        (reqwest::get(format!("{url}/v1/watch")).await.ok()?.status() == 200).then_some(())
    })
    .await;

    let index = client.put_instance("web", "a", &spec(1, None)).await.unwrap().revision;
    let on = format!("{}/v1/services/web?stale=true&index={index}&wait=20s", c.nodes[&follower].url);
    // One query holds the only place; a probe must then be refused. A probe that got there
    // first holds the place itself (the holder was refused): it gives up after 2 s, and a new
    // holder tries again, rather than the probe blocking for the query's whole 20 s. A holder
    // just started gets its turn until the next poll.
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let holder: std::sync::Mutex<Option<tokio::task::JoinHandle<_>>> = std::sync::Mutex::new(None);
    wait_until(Duration::from_secs(15), "a second blocking query to be refused", || async {
        {
            let mut h = holder.lock().unwrap();
            if h.as_ref().is_none_or(|h| h.is_finished()) {
                *h = Some(tokio::spawn(reqwest::get(on.clone())));
                return None;
            }
        }
        probe.get(&on).send().await.ok().filter(|r| r.status() == 429).map(|_| ())
    })
    .await;
    let last = holder.lock().unwrap().take();
    if let Some(h) = last {
        h.abort();
    }
}

/// Expiry confirms leadership with a quorum round before it proposes; under a steady write
/// load that confirmation must still succeed in time, so dead leases go within TTL + 1 s and
/// no expiry is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_on_time_under_write_load() {
    let c = Cluster::start_defaults(3).await;
    let client = c.client();
    // The announcer's default TTL.
    let ttl = Duration::from_secs(3);
    let lease = client.grant(ttl).await.unwrap().lease_id;
    client.put_instance("web", "dead", &spec(1, Some(lease))).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|w| {
            let (client, stop) = (c.client(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.put_instance("load", &format!("w{w}-{}", i % 50), &spec(1000 + i, None)).await;
                    i += 1;
                }
            })
        })
        .collect();
    let granted = Instant::now();
    wait_until(ttl + Duration::from_secs(5), "the unrenewed instance to go", || async {
        client.service("web", false).await.ok().filter(|s| s.instances.is_empty()).map(|_| ())
    })
    .await;
    let took = granted.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(took <= ttl + Duration::from_secs(1), "expired {took:?} after its grant under load (bound TTL + 1 s)");
    let refused: u64 = c.nodes.values().map(|n| n.node.metrics().expiry_refused.get()).sum();
    assert_eq!(refused, 0, "expiries were refused under load");
}
