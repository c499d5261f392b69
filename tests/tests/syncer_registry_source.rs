//! The syncer's registry source against real registry processes, with the network between
//! them broken on purpose.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::tcp_proxy::CutProxy;
use e2e::{wait_for, RegistryCluster};
use proto::InstanceSpec;

fn spec(port: u64, lease: u64) -> InstanceSpec {
    InstanceSpec { address: "10.0.0.5".into(), port, lease_id: Some(lease), weight: 100, state: Default::default(), meta: Default::default() }
}

/// A revoke removes every instance of a lease at one revision. The syncer used to advance its
/// resume point on each event, so a stream cut after the first delete resumed past the
/// revision and kept the other 49 dead servers in HAProxy until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_inside_a_revoke_still_removes_every_instance() {
    // Plain HTTP: the relay finds the answer to cut by reading it.
    let cluster = RegistryCluster::start_plain(3).await;
    let client = cluster.client();
    let lease = client.grant(Duration::from_secs(60)).await.unwrap().lease_id;
    for i in 0..50 {
        client.put_instance("web", &format!("i{i}"), &spec(8000 + i, lease)).await.unwrap();
    }
    // The source reaches one node through a relay that cuts the first answer carrying a delete
    // right after that line.
    let target: SocketAddr = cluster.addrs[0].parse().unwrap();
    let proxy = CutProxy::cut_after_first_line_with(target, "\"type\":\"delete\"").await;
    let source = cluster.client_for(&[proxy.url()]);
    let (tx, mut rx) = syncer::source::channel();
    let task = tokio::spawn(syncer::source::registry::run(source, vec!["web".to_string()], tx));
    wait_for(Duration::from_secs(10), "the source to list all 50 instances", || {
        let n = rx.borrow_and_update().snapshot.as_ref().map(|s| s.services.get("web").map_or(0, |m| m.len()));
        async move { (n == Some(50)).then_some(()) }
    })
    .await;

    client.revoke(lease).await.unwrap();
    wait_for(Duration::from_secs(10), "the source to end with no instance", || {
        let n = rx.borrow().snapshot.as_ref().map(|s| s.services.get("web").map_or(0, |m| m.len()));
        async move { (n == Some(0)).then_some(()) }
    })
    .await;
    assert_eq!(proxy.cuts(), 1, "the stream was not cut inside the revision; nothing was tested");
    task.abort();
}
