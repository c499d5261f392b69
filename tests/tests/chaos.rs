//! The chaos test: real registry nodes are killed, paused, cut off and have their disks stall,
//! web hosts die, while HTTP load flows through a real HAProxy kept by a real syncer.
//! `CHAOS_DURATION=10m` for a long run (default 90 s of faults).

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::chaos::fault::{self, Event};
use e2e::chaos::topology::Topology;
use e2e::chaos::validate::{self, HostPorts};
use e2e::chaos::workload::Workload;
use e2e::{registry_cli, wait_for};
use rand::Rng;
use tokio::time::Instant;

const HOSTS: usize = 11;

/// Every host's two servers are in HAProxy.
async fn all_hosts_served(t: &Topology) -> Option<()> {
    let (web, api) = (t.haproxy.managed_ports("web-servers").await, t.haproxy.managed_ports("api-servers").await);
    t.hosts.iter().all(|h| web.contains(&h.web_port) && api.contains(&h.api_port)).then_some(())
}

/// Instances of each service as one node holds them (stale read), to compare nodes.
async fn node_data(t: &Topology, url: &str) -> Option<Vec<(String, String, u64)>> {
    let c = t.client_for(&[url]);
    let mut out = Vec::new();
    for s in ["web-servers", "api-servers", "churn", proto::SYNCER_SERVICE] {
        for i in c.service(s, true).await.ok()?.instances {
            out.push((i.service, i.instance, i.mod_revision));
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let duration = e2e::chaos::duration_from_env();
    let partitions = fault::can_partition();
    if !partitions {
        eprintln!("[chaos] cannot install firewall rules (needs root and iptables): partitions are skipped");
    }
    let net: u8 = rand::thread_rng().gen_range(20..250);
    let mut t = Topology::start(HOSTS, net).await;
    wait_for(Duration::from_secs(60), "every host in HAProxy before the faults", || all_hosts_served(&t)).await;
    let hosts: Vec<HostPorts> = t.hosts.iter().map(|h| HostPorts { web: h.web_port, api: h.api_port }).collect();
    eprintln!("[chaos] {} instances across web-servers and api-servers; faults for {duration:?}", 2 * HOSTS);

    let frontends = vec![t.haproxy.frontend_url_for("web-servers"), t.haproxy.frontend_url_for("api-servers")];
    let workload = Workload::start(frontends, t.haproxy.socket_path(), t.minted_client("workload", &["announce:churn", "announce:write-probe"]).await);
    let start = Instant::now();
    let log = fault::run(&mut t, start + duration, partitions).await;
    let faults_end = Instant::now();
    // Let the last restarted hosts come back before the books close.
    let _ = tokio::time::timeout(Duration::from_secs(15), wait_for(Duration::from_secs(15), "hosts back", || all_hosts_served(&t))).await;
    let record = workload.stop().await;
    // Out of the mutex: the validation below awaits.
    let record = std::mem::take(&mut *record.lock().unwrap());

    // 2: read right away, before the churn leases (no longer renewed) run out.
    let client = t.client();
    let churn: BTreeSet<String> = client.service("churn", false).await.map(|s| s.instances.into_iter().map(|i| i.instance).collect()).unwrap_or_default();

    // 4: wait until every node has applied the same entries, then compare their data.
    let urls = t.urls();
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut revs = Vec::new();
            for n in &t.nodes {
                revs.push(client.cluster_at(&n.addr).await.map(|c| c.applied_index).unwrap_or(0));
            }
            if revs.windows(2).all(|w| w[0] == w[1]) {
                let mut data = Vec::new();
                for u in &urls {
                    data.push(node_data(&t, u).await);
                }
                let mut again = Vec::new();
                for n in &t.nodes {
                    again.push(client.cluster_at(&n.addr).await.map(|c| c.applied_index).unwrap_or(0));
                }
                if again == revs {
                    let same = data.iter().all(|d| d.is_some() && *d == data[0]);
                    return (revs, same);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| (vec![], false));
    let mut status_args: Vec<String> = ["status", "--output", "json", "--registry", &urls.join(",")].iter().map(|s| s.to_string()).collect();
    status_args.extend(t.admin_args());
    let (code, out, _) = registry_cli(&status_args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let members = status["members"].as_array().map(|m| m.len()).unwrap_or(0);
    let healthy = status["members"].as_array().map(|m| m.iter().filter(|m| m["reachable"] == true).count()).unwrap_or(0);

    // For a churn lease dropped while renewed: what the registry recorded about its removal
    // (expired in which term, or revoked), to tell which leader dropped it.
    let dropped: Vec<&str> =
        record.churned.iter().filter(|c| c.expired_after.is_some_and(|gap| gap < e2e::chaos::workload::CHURN_TTL)).map(|c| c.name.as_str()).collect();
    if !dropped.is_empty() {
        if let Ok(list) = client.removals(false).await {
            for r in list.removals.iter().filter(|r| r.service == "churn" && dropped.contains(&r.instance.as_str())) {
                eprintln!("[chaos] removal of {} at revision {} (leader's clock {:?} ms): {:?}", r.instance, r.revision, r.at_ms, r.cause);
            }
        }
    }

    let verdicts = vec![
        validate::no_live_instance_dropped(&record, &log, &hosts, start),
        validate::nothing_acknowledged_lost(&record, &log, &churn, &converged.0),
        validate::dead_instances_removed_in_time(&record, &log, &hosts),
        validate::nodes_converge(&converged.0, converged.1, if code == 0 { healthy } else { 0 }, members),
        validate::success_rate(&record),
        validate::writes_available(&record, &log, start, faults_end),
    ];
    let count = |f: fn(&Event) -> bool| log.count(f);
    eprintln!("\n[chaos] faults over {:?}:", start.elapsed());
    eprintln!(
        "  registry kills {} (leader {}), pauses {} (leader {}), partitions {} (leader {}), disk stalls {} (leader {}), host kills {} (with the leader {})",
        count(|e| matches!(e, Event::RegistryKilled { .. })),
        count(|e| matches!(e, Event::RegistryKilled { leader: true, .. })),
        count(|e| matches!(e, Event::RegistryPaused { .. })),
        count(|e| matches!(e, Event::RegistryPaused { leader: true, .. })),
        count(|e| matches!(e, Event::Partitioned { .. })),
        count(|e| matches!(e, Event::Partitioned { leader: true, .. })),
        count(|e| matches!(e, Event::DiskStalled { .. })),
        count(|e| matches!(e, Event::DiskStalled { leader: true, .. })),
        count(|e| matches!(e, Event::HostKilled { .. })),
        count(|e| matches!(e, Event::HostKilled { with_leader: true, .. })),
    );
    eprintln!("[chaos] validators:");
    for v in &verdicts {
        eprintln!("  {v}");
    }
    assert_eq!(t.haproxy.reloads().await, 0, "HAProxy was reloaded");
    let failed: Vec<&str> = verdicts.iter().filter(|v| !v.passed).map(|v| v.name).collect();
    assert!(failed.is_empty(), "validators failed: {failed:?}");
}
