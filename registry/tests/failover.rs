//! Leader changes with the timings a user gets: elections behind a pre-vote
//! (`node/election.rs`), and lease clocks that carry over to the next leader
//! (`node/handover.rs`, `lease::inherited`).
//!
//! These run in real time: the nodes talk HTTP over loopback, which paused tokio time would
//! race. The clock rule itself is tested with paused time beside it, in `lease.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spec, Cluster};
use testkit::wait_for as wait_until;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(3);

/// Renews `lease` through `client` every TTL/3 and, after a failure, every 100 ms, as the
/// announcer does. Records every answer that says the lease is gone.
fn renew(client: client::Client, lease: u64, ttl: Duration) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let seen = lost.clone();
    let task = tokio::spawn(async move {
        loop {
            match client.keepalive(lease).await {
                Ok(_) => tokio::time::sleep(ttl / 3).await,
                // The structured status, not the text: a port number like 40455 in an
                // error naming the nodes tried once passed for a 404.
                Err(e) if e.is_not_found() => {
                    seen.lock().unwrap().push(e.to_string());
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (task, lost)
}

/// A leader other than `old` that every node but `old` agrees on.
async fn new_leader(c: &Cluster, old: u64) -> u64 {
    let rest = c.others(&[old]);
    c.wait_leader(Some(&rest)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_survives_three_leader_changes_in_a_row() {
    let c = Cluster::start(3).await;
    let client = c.client();
    let lease = client.grant(TTL).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    let (renewer, lost) = renew(c.client(), lease, TTL);
    let mut terms = Vec::new();
    for _ in 0..3 {
        let old = c.wait_leader(None).await;
        // Let a few renewals and shares go by, then cut the leader off: the others elect.
        tokio::time::sleep(TTL / 2).await;
        c.faults.isolate(old);
        let next = new_leader(&c, old).await;
        terms.push(c.nodes[&next].node.raft_metrics().current_term);
        c.faults.heal();
    }
    let leader = c.wait_leader(None).await;
    // One more full TTL under the last leader.
    tokio::time::sleep(TTL).await;
    renewer.abort();
    assert!(lost.lock().unwrap().is_empty(), "a renewal was told the lease was gone: {:?}", lost.lock().unwrap());
    assert!(c.nodes[&leader].node.read_store(|s| s.lease(lease).is_some()), "the renewed lease expired across the changes (terms {terms:?})");
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "three changes, three terms: {terms:?}");
}

/// The holder renews every TTL/3, stops, and the leader dies right after. The new leader runs
/// the lease from the last renewal it was told of. The leader shares renewals once a heartbeat,
/// so when it dies a heartbeat after the last renewal the lease ends a TTL after that renewal;
/// when it dies at once, the renewal before counts, a renewal period earlier. Either way the
/// lease is gone within TTL + 500 ms of the last renewal, and it is never cut short for a holder
/// that keeps renewing every TTL/3 (the other tests).
async fn holder_and_leader_die(leader_dies_after: Duration, not_before: Duration) {
    let c = Cluster::start(3).await;
    let old = c.wait_leader(None).await;
    let client = c.client();
    let lease = client.grant(TTL).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(TTL / 3).await;
        client.keepalive(lease).await.unwrap();
    }
    // The last renewal: the leader takes it after this send.
    let sent = Instant::now();
    client.keepalive(lease).await.unwrap();
    // The holder stops; the leader dies (is cut off for good).
    tokio::time::sleep_until(sent + leader_dies_after).await;
    c.faults.isolate(old);
    let next = new_leader(&c, old).await;
    let elected = sent.elapsed();
    let gone = wait_until(TTL + Duration::from_secs(5), "the lease to expire on the new leader", || async {
        c.nodes[&next].node.read_store(|s| s.lease(lease).is_none()).then(|| sent.elapsed())
    })
    .await;
    eprintln!("leader cut {leader_dies_after:?} after the last renewal; new leader after {elected:?}; lease gone {gone:?} after the last renewal was sent");
    assert!(gone >= not_before, "expired {gone:?} after its last renewal, before {not_before:?}");
    assert!(gone <= TTL + Duration::from_millis(500), "expired {gone:?} after its last renewal; the bound is TTL + 500 ms");
    // The operator can tell why it went: expired, by the new leader's term.
    let term = c.nodes[&next].node.raft_metrics().current_term;
    let removals = c.client_for(&[next]).removals(false).await.unwrap().removals;
    let r = removals.iter().find(|r| r.instance == "a").expect("the removal is listed");
    assert_eq!(r.cause, proto::RemovalCause::Expired { lease_id: lease, term });
    assert!(r.at_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_holder_stopped_before_the_leader_died_expires_a_ttl_after_its_last_renewal() {
    // Three heartbeats: the last renewal has been shared.
    holder_and_leader_die(Duration::from_millis(150), TTL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_the_dying_leader_never_shared_costs_at_most_one_renewal_period() {
    holder_and_leader_die(Duration::ZERO, TTL - TTL / 3 - Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_old_leaders_renewals_do_not_count() {
    let c = Cluster::start(3).await;
    let old = c.wait_leader(None).await;
    let lease = c.client().grant(TTL).await.unwrap().lease_id;
    // The holder can reach only the old leader, and keeps renewing through it.
    let through_old = c.client_for(&[old]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let cut = Instant::now() + TTL / 2;
    let renewer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                let sent = Instant::now();
                if through_old.keepalive(lease).await.is_ok() {
                    acked.lock().unwrap().push(sent);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep_until(cut).await;
    c.faults.isolate(old);
    let next = new_leader(&c, old).await;
    let gone = wait_until(TTL + Duration::from_secs(5), "the lease to expire on the majority's leader", || async {
        c.nodes[&next].node.read_store(|s| s.lease(lease).is_none()).then(|| cut.elapsed())
    })
    .await;
    renewer.abort();
    let after_cut: Vec<Duration> = acked.lock().unwrap().iter().filter(|t| **t > cut).map(|t| *t - cut).collect();
    eprintln!("old leader acknowledged {} renewals sent after the cut ({after_cut:?}); lease gone {gone:?} after the cut", after_cut.len());
    // The old leader stops acknowledging within its lease (election-timeout-max - heartbeat,
    // 250 ms, counted from an append sent before the cut), and whatever it acknowledged
    // meanwhile never reached the majority.
    assert!(after_cut.iter().all(|d| *d <= Duration::from_millis(250)), "the cut-off leader kept acknowledging renewals: {after_cut:?}");
    assert!(gone <= TTL + Duration::from_millis(500), "the lease lived {gone:?} past the cut: the cut-off leader's renewals counted");
    // Healed, the old leader follows; it neither revives the lease nor changes the leader.
    c.faults.heal();
    assert_eq!(c.wait_leader(None).await, next);
    // Current again is not caught up yet: wait until it applied what the leader has.
    let target = c.applied(next);
    wait_until(Duration::from_secs(5), "the old leader to catch up", || async { (c.applied(old) >= target).then_some(()) }).await;
    assert!(c.nodes[&old].node.read_store(|s| s.lease(lease).is_none()), "the healed old leader still holds the expired lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_just_before_the_change_is_not_expired_early() {
    let c = Cluster::start(3).await;
    let old = c.wait_leader(None).await;
    // The shortest TTL the registry allows, so an early expiry would show.
    let ttl = Duration::from_secs(1);
    let lease = c.client_for(&[old]).grant(ttl).await.unwrap().lease_id;
    c.faults.isolate(old);
    let rest = c.others(&[old]);
    let (renewer, lost) = renew(c.client_for(&rest), lease, ttl);
    let next = new_leader(&c, old).await;
    // Three TTLs under the new leader.
    tokio::time::sleep(ttl * 3).await;
    renewer.abort();
    assert!(lost.lock().unwrap().is_empty(), "a renewal was told the lease was gone: {:?}", lost.lock().unwrap());
    assert!(c.nodes[&next].node.read_store(|s| s.lease(lease).is_some()), "the lease granted just before the change expired");
}

/// Pre-vote: a follower cut off for many election timeouts does not raise its term, so when
/// it comes back the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_back_does_not_disrupt_the_leader() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let term = c.nodes[&leader].node.raft_metrics().current_term;
    let follower = c.others(&[leader])[0];
    c.faults.isolate(follower);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.nodes[&follower].node.raft_metrics().current_term, term, "the cut-off follower raised its term without a pre-vote majority");
    c.faults.heal();
    assert_eq!(c.wait_leader(None).await, leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = c.nodes[&leader].node.raft_metrics();
    assert_eq!((after.current_leader, after.current_term), (Some(leader), term), "the returning follower disturbed the leader");
}

/// A node restarted while the leader is healthy rejoins as a follower, in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_disrupt_a_healthy_leader() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let term = c.nodes[&leader].node.raft_metrics().current_term;
    let id = c.others(&[leader])[0];
    let cfg = c.nodes[&id].node.config().clone();
    let addr = c.nodes[&id].url.trim_start_matches("http://").to_string();
    c.stop(id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The same address and data directory, as a restarted process would have.
    let l = wait_until(Duration::from_secs(5), "the old port to be free", || async { tokio::net::TcpListener::bind(&addr).await.ok() }).await;
    let back = Cluster::spawn(l, cfg, c.faults.clone()).await;
    c.nodes.insert(id, back);
    assert_eq!(c.wait_leader(None).await, leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = c.nodes[&leader].node.raft_metrics();
    assert_eq!((after.current_leader, after.current_term), (Some(leader), term), "the restarted node disturbed the leader");
}

/// A grant whose first answer was lost (it timed out on a leader that then stalled) is sent
/// again with the same idempotency key and answered from the replay window, maybe seconds
/// later. The client learns of the lease only then, so its clock must run from then: before,
/// the replay handed out a lease already near its deadline, and the first keepalive got 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_grant_gives_its_lease_a_fresh_ttl() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let http = reqwest::Client::new();
    let grant = || {
        http.post(format!("{}/v1/leases", c.nodes[&leader].url))
            .header(proto::IDEMPOTENCY_KEY_HEADER, "grant-whose-answer-was-lost")
            .json(&serde_json::json!({ "ttl_ms": TTL.as_millis() as u64 }))
            .send()
    };
    let first: proto::LeaseGrant = grant().await.unwrap().json().await.unwrap();
    // The test watches the lease's clock through an instance on it (a put does not renew).
    let client = c.client();
    client.put_instance("web", "observer", &spec(1, Some(first.lease_id))).await.unwrap();
    let left_of = |name: &'static str| {
        let client = client.clone();
        async move {
            let s = client.service("web", false).await.ok()?;
            s.instances.iter().find(|i| i.instance == name)?.lease.as_ref().map(|l| l.remaining_ms)
        }
    };
    let ttl_ms = TTL.as_millis() as u64;
    // The client never saw that answer; once two thirds of a TTL have run, it sends the grant
    // again.
    wait_until(TTL, "two thirds of the first grant's TTL to run", || async { left_of("observer").await.filter(|l| *l <= ttl_ms / 3) }).await;
    let again: proto::LeaseGrant = grant().await.unwrap().json().await.unwrap();
    assert_eq!(again.lease_id, first.lease_id, "the retry is answered from the replay window");
    client.put_instance("web", "replayed", &spec(1, Some(again.lease_id))).await.unwrap();
    let left = left_of("replayed").await.unwrap();
    assert!(left > (TTL.as_millis() as u64) * 3 / 4, "the replayed lease has {left} ms left of {TTL:?}: its clock still runs from the first grant");
    // And it outlives the first grant's deadline without a renewal: half a TTL after the
    // replay (by the registry's clock), well past that deadline.
    wait_until(TTL, "half a TTL to run since the replay", || async { left_of("replayed").await.filter(|l| *l <= ttl_ms / 2) }).await;
    client.keepalive(again.lease_id).await.expect("the lease lives a TTL from the replay");
}

/// A leader stopped gracefully hands off first (`node/transfer.rs`): a follower leads in the
/// very next term while the old leader is still up, so the survivors agree on a leader before
/// it stops and no write waits for an election timeout. A write sent to the old leader during
/// the hand-off is relayed, not refused, and a renewed lease keeps its clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopping_gracefully_hands_off_to_a_follower_first() {
    let mut c = Cluster::start(3).await;
    let old = c.wait_leader(None).await;
    let term = c.nodes[&old].node.raft_metrics().current_term;
    let client = c.client();
    let lease = client.grant(TTL).await.unwrap().lease_id;
    client.put_instance("web", "a", &spec(80, Some(lease))).await.unwrap();
    let (renewer, lost) = renew(c.client(), lease, TTL);
    // Writes to the old leader alone, one after another, while it hands off: none may fail.
    let on_old = c.client_for(&[old]);
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (writing, acked) = (writing.clone(), acked.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                if let Err(e) = on_old.put_instance("web", &format!("w{}", n % 8), &spec(81, None)).await {
                    return Err(format!("write {n} failed: {e}"));
                }
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(n)
        })
    };
    let acked_past = |n: u64| {
        let acked = acked.clone();
        async move { (acked.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(()) }
    };
    wait_until(Duration::from_secs(5), "writes to the old leader going through", || acked_past(3)).await;
    let out = c.nodes[&old].node.hand_off().await;
    let registry::node::Transfer::Done { to, term: next_term } = out else { panic!("no hand-off: {out:?}") };
    assert_ne!(to, old);
    assert_eq!(next_term, term + 1, "one election, the one the hand-off started");
    assert_eq!(c.wait_leader(Some(&c.others(&[old]))).await, to);
    // Writes sent to the old leader after the hand-off go through too (relayed).
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "writes to the old leader after the hand-off", || acked_past(before + 3)).await;
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap().expect("a write to the old leader failed during the hand-off");
    assert!(written > 1, "the writer made {written} writes");
    c.stop(old).await;
    // The survivors need no election: the next write goes through at once.
    let m = c.nodes[&to].node.raft_metrics();
    assert_eq!((m.current_leader, m.current_term), (Some(to), next_term), "the new leader changed after the old one stopped");
    c.client_for(&c.others(&[old])).put_instance("web", "b", &spec(82, None)).await.unwrap();
    // The lease, renewed through any node, lives on under the new leader.
    tokio::time::sleep(TTL).await;
    renewer.abort();
    assert!(lost.lock().unwrap().is_empty(), "a renewal was told the lease was gone: {:?}", lost.lock().unwrap());
    assert!(c.nodes[&to].node.read_store(|s| s.lease(lease).is_some()), "the lease expired across the hand-off");
}

/// With five voters a hand-off cannot win (two votes are not a majority, and the others hold to
/// their lease), so none is tried: the leader says so and stops as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_voter_leader_does_not_try_a_hand_off_it_cannot_win() {
    let c = Cluster::start(5).await;
    let old = c.wait_leader(None).await;
    let term = c.nodes[&old].node.raft_metrics().current_term;
    let out = c.nodes[&old].node.hand_off().await;
    assert!(matches!(&out, registry::node::Transfer::Failed(why) if why.contains("majority")), "{out:?}");
    let m = c.nodes[&old].node.raft_metrics();
    assert_eq!((m.current_leader, m.current_term), (Some(old), term), "a refused hand-off changed the leader");
    c.client().put_instance("web", "a", &spec(80, None)).await.unwrap();
}
