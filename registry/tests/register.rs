//! `POST /v1/register`: a lease and its instances in one log entry. All of it applies or
//! none; the lease owns the instances (its revoke or expiry removes them); a retry with the
//! same idempotency key is the same registration.

mod common;

use std::time::Duration;

use common::Cluster;
use proto::RegisterInstance;

fn inst(service: &str, instance: &str, port: u64) -> RegisterInstance {
    RegisterInstance {
        service: service.into(),
        instance: instance.into(),
        address: "10.0.0.5".into(),
        port,
        weight: 100,
        state: Default::default(),
        meta: [("zone".to_string(), "b".to_string())].into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_one_entry_and_its_lease_owns_the_instances() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    // Through a follower: forwarded like any write.
    let follower = c.others(&[leader])[0];
    let client = c.client_for(&[follower]);
    let before = c.applied(leader);

    // One entry: both instances were changed at the lease's own revision (checked below).
    let g = client.register(Duration::from_secs(30), vec![inst("web", "10.0.0.5:80", 80), inst("api", "10.0.0.5:81", 81)]).await.unwrap();
    assert_eq!(g.ttl_ms, 30_000);
    assert!(c.applied(leader) > before);
    let node = &c.nodes[&leader].node;
    node.read_store(|s| {
        let lease = s.lease(g.lease_id).expect("the lease exists");
        assert_eq!(lease.instances.len(), 2, "the lease lists both instances");
        for (service, name, port) in [("web", "10.0.0.5:80", 80), ("api", "10.0.0.5:81", 81)] {
            let i = s.instance(service, name).unwrap_or_else(|| panic!("{service}/{name} is registered"));
            assert_eq!((i.lease_id, i.port, i.mod_revision, i.meta["zone"].as_str()), (Some(g.lease_id), port, g.revision, "b"));
        }
    });

    // The instances live and die with the lease.
    client.keepalive(g.lease_id).await.unwrap();
    client.revoke(g.lease_id).await.unwrap();
    let leader_client = c.client_for(&[leader]);
    assert!(leader_client.service("web", false).await.unwrap().instances.is_empty());
    assert!(leader_client.service("api", false).await.unwrap().instances.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_fails_any_check_writes_nothing() {
    let c = Cluster::start(1).await;
    let url = &c.nodes[&1].url;
    let http = reqwest::Client::new();
    let before = c.applied(1);
    let ok = r#"{"service":"web","instance":"a","address":"10.0.0.1","port":80}"#;
    let cases: Vec<(String, u16)> = vec![
        // One bad instance among good ones: the good one is not registered either.
        (format!(r#"{{"ttl_ms":10000,"instances":[{ok},{{"service":"web","instance":"b","address":"10.0.0.1","port":0}}]}}"#), 400),
        (format!(r#"{{"ttl_ms":10000,"instances":[{ok},{ok}]}}"#), 400),
        (format!(r#"{{"ttl_ms":10000,"instances":[{ok},{{"service":"we b","instance":"b","address":"10.0.0.1","port":80}}]}}"#), 400),
        (format!(r#"{{"ttl_ms":10,"instances":[{ok}]}}"#), 400),
        (format!(r#"{{"ttl_ms":7200000,"instances":[{ok}]}}"#), 400),
        (r#"{"ttl_ms":10000,"instances":[]}"#.into(), 400),
        (format!(r#"{{"ttl_ms":10000,"instances":[{ok}],"colour":"red"}}"#), 400),
        // A lease is the entry's: a body cannot name one.
        (r#"{"ttl_ms":10000,"instances":[{"service":"web","instance":"a","address":"10.0.0.1","port":80,"lease_id":1}]}"#.into(), 400),
        (format!(r#"{{"ttl_ms":10000,"instances":[{}]}}"#, vec![ok; 65].join(",")), 400),
    ];
    for (body, want) in cases {
        let resp = http.post(format!("{url}/v1/register")).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let err: proto::ErrorBody = resp.json().await.unwrap_or_else(|e| panic!("{body:.80}: error body is not JSON: {e}"));
        assert_eq!(status, want, "{body:.100}: {err:?}");
        assert!(!err.message.is_empty());
    }
    assert_eq!(c.applied(1), before, "no rejected registration reached the log");
    c.nodes[&1].node.read_store(|s| {
        assert_eq!(s.instance_count(), 0);
        assert!(s.leases().is_empty(), "no lease was granted for a rejected registration");
    });
}

/// `POST /v1/register` with `body` under the idempotency key `key`.
async fn register_with_key(http: &reqwest::Client, url: &str, key: &str, body: &str) -> reqwest::Response {
    let req = http.post(format!("{url}/v1/register")).header("content-type", "application/json").header(proto::IDEMPOTENCY_KEY_HEADER, key);
    req.body(body.to_string()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_registration_is_the_same_one() {
    let c = Cluster::start(1).await;
    let url = &c.nodes[&1].url;
    let http = reqwest::Client::new();
    let body = r#"{"ttl_ms":10000,"instances":[{"service":"web","instance":"a","address":"10.0.0.1","port":80}]}"#;
    let first: proto::LeaseGrant = register_with_key(&http, url, "reg-1", body).await.json().await.unwrap();
    let applied = c.applied(1);
    let again: proto::LeaseGrant = register_with_key(&http, url, "reg-1", body).await.json().await.unwrap();
    assert_eq!(again, first, "the retry answers the first registration");
    assert_eq!(c.applied(1), applied, "and writes nothing");
    assert_eq!(c.nodes[&1].node.read_store(|s| s.leases().len()), 1);
    // The same key for another registration is refused.
    let other = body.replace("10.0.0.1", "10.0.0.2");
    let resp = register_with_key(&http, url, "reg-1", &other).await;
    assert_eq!(resp.status().as_u16(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_refused_for_a_reused_key_leaves_the_lease_on_its_clock() {
    let c = Cluster::start(1).await;
    let url = &c.nodes[&1].url;
    let http = reqwest::Client::new();
    let body = r#"{"ttl_ms":10000,"instances":[{"service":"web","instance":"a","address":"10.0.0.1","port":80}]}"#;
    let g: proto::LeaseGrant = register_with_key(&http, url, "k-1", body).await.json().await.unwrap();
    let clock = || async { c.client_for(&[1]).service("web", false).await.unwrap().instances[0].lease.clone() };
    assert!(clock().await.is_some(), "the leader keeps the new lease's clock");

    // The key named the registration: the revoke is refused and the lease lives on.
    let resp = http.delete(format!("{url}/v1/leases/{}", g.lease_id)).header(proto::IDEMPOTENCY_KEY_HEADER, "k-1").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert!(c.nodes[&1].node.read_store(|s| s.lease(g.lease_id).is_some()));
    // A live lease without a clock would be expired by no one until the next resync.
    let info = clock().await.expect("the refused revoke left the lease's clock");
    assert_eq!(info.lease_id, g.lease_id);
    assert!(info.remaining_ms > 0 && info.remaining_ms <= 10_000, "{info:?}");

    // A revoke that is applied takes the clock with the lease.
    c.client_for(&[1]).revoke(g.lease_id).await.unwrap();
    assert!(c.nodes[&1].node.read_store(|s| s.lease(g.lease_id).is_none()));
}
