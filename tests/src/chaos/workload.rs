//! The workload: steady HTTP load through HAProxy, registration churn through the registry,
//! and a sampler of what HAProxy holds. Everything observed is recorded for the validators.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::InstanceSpec;
use syncer::driver::runtime::{Endpoint, RuntimeApi};
use syncer::driver::Driver;
use syncer::model::is_managed;
use tokio::time::Instant;

/// `(backend, port)` of every managed server in one sample.
pub type Servers = BTreeSet<(String, u16)>;

#[derive(Debug, Default)]
pub struct Record {
    pub samples: Vec<(Instant, Servers)>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub failures: Vec<(Instant, String)>,
    /// Churn registrations acknowledged by the registry: (instance, revision, lease).
    pub acked: Vec<(String, u64, u64)>,
    /// Churn instances revoked on purpose.
    pub revoked: BTreeSet<String>,
    pub churned: Vec<Churned>,
    /// Probe writes: (issued, acknowledged), for write availability.
    pub writes: Vec<(Instant, Instant)>,
}

pub struct Workload {
    pub record: Arc<Mutex<Record>>,
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `registry`: a client whose token may announce `churn` and `write-probe`.
    pub fn start(frontends: Vec<String>, socket: PathBuf, registry: client::Client) -> Workload {
        let record = Arc::new(Mutex::new(Record::default()));
        let running = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();
        for url in frontends {
            tasks.push(tokio::spawn(http_load(url, record.clone(), running.clone())));
        }
        tasks.push(tokio::spawn(sample(socket, record.clone(), running.clone())));
        tasks.push(tokio::spawn(churn(registry.clone(), record.clone(), running.clone())));
        tasks.push(tokio::spawn(probe_writes(registry, record.clone(), running.clone())));
        Workload { record, running, tasks }
    }

    pub async fn stop(self) -> Arc<Mutex<Record>> {
        self.running.store(false, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.record
    }
}

/// A request every 20 ms through one HAProxy frontend.
async fn http_load(url: String, record: Arc<Mutex<Record>>, running: Arc<AtomicBool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let end = Instant::now() + Duration::from_secs(3 * 3600);
    while running.load(Ordering::SeqCst) && Instant::now() < end {
        let failure = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("{url}: {}", r.status())),
            Err(e) => Some(format!("{url}: {e}")),
        };
        {
            let mut rec = record.lock().unwrap();
            match failure {
                None => rec.requests_ok += 1,
                Some(f) => {
                    rec.requests_failed += 1;
                    rec.failures.push((Instant::now(), f));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What HAProxy holds, every 50 ms.
async fn sample(socket: PathBuf, record: Arc<Mutex<Record>>, running: Arc<AtomicBool>) {
    let mut api = RuntimeApi::new(Endpoint::Unix(socket), "");
    while running.load(Ordering::SeqCst) {
        let mut servers = Servers::new();
        let mut complete = true;
        for backend in ["web-servers", "api-servers"] {
            match api.servers(backend).await {
                Ok(list) => servers.extend(list.into_iter().filter(|s| is_managed(&s.name)).map(|s| (backend.to_string(), s.port))),
                Err(_) => complete = false,
            }
        }
        // A sample HAProxy did not answer in full says nothing about its servers.
        if complete {
            record.lock().unwrap().samples.push((Instant::now(), servers));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Service the write probe writes to; its few instances are overwritten again and again.
pub const PROBE_SERVICE: &str = "write-probe";

/// A write every 20 ms through a client that knows every node, each in its own task so a
/// write stuck on a dead node does not hold back the next. Acknowledged ones are recorded.
async fn probe_writes(client: client::Client, record: Arc<Mutex<Record>>, running: Arc<AtomicBool>) {
    let client = Arc::new(client);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut writes = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while running.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        let (client, record) = (client.clone(), record.clone());
        writes.spawn(async move {
            let spec =
                InstanceSpec { address: "127.0.0.1".into(), port: 1 + n % 8, lease_id: None, weight: 1, state: Default::default(), meta: Default::default() };
            let issued = Instant::now();
            if client.put_instance(PROBE_SERVICE, &format!("w{}", n % 8), &spec).await.is_ok() {
                record.lock().unwrap().writes.push((issued, Instant::now()));
            }
        });
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
}

/// One churn registration and how its lease fared.
#[derive(Debug, Clone)]
pub struct Churned {
    pub name: String,
    pub lease: u64,
    /// The put was acknowledged: the instance is expected at the end unless its lease went.
    pub registered: bool,
    /// From the grant's acknowledgement on: the lease is renewed while its put is pending, as
    /// the announcer does, since a put stuck on a stalled leader can outlast the TTL.
    pub last_renewed: Instant,
    /// The registry answered 404 to a keepalive: `Some(gap)` since the last successful one.
    pub expired_after: Option<Duration>,
    /// When the 404 came, and what it said (which node answered, why).
    pub expired_answer: Option<(Instant, String)>,
    pub revoked: bool,
}

pub const CHURN_TTL: Duration = Duration::from_secs(5);

/// Registration churn in service `churn`: keeps five instances alive under renewed leases,
/// retiring the oldest and registering a new one every 150 ms. Renewal runs in its own task so
/// a slow registration never delays it, and starts at the grant; every lease's fate is recorded.
async fn churn(client: client::Client, record: Arc<Mutex<Record>>, running: Arc<AtomicBool>) {
    let client = Arc::new(client);
    let leases: Arc<Mutex<Vec<Churned>>> = Arc::default();
    let renewer = {
        let (client, leases, running) = (client.clone(), leases.clone(), running.clone());
        tokio::spawn(async move {
            loop {
                let live: Vec<(usize, u64)> =
                    leases.lock().unwrap().iter().enumerate().filter(|(_, c)| !c.revoked && c.expired_after.is_none()).map(|(i, c)| (i, c.lease)).collect();
                for (i, lease) in live {
                    let result = client.keepalive(lease).await;
                    let mut l = leases.lock().unwrap();
                    match result {
                        Ok(_) => l[i].last_renewed = Instant::now(),
                        Err(e) if e.is_not_found() && !l[i].revoked => {
                            l[i].expired_after = Some(l[i].last_renewed.elapsed());
                            l[i].expired_answer = Some((Instant::now(), e.to_string()));
                        }
                        Err(_) => {}
                    }
                }
                if !running.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut n = 0u64;
    while running.load(Ordering::SeqCst) {
        let oldest = {
            let l = leases.lock().unwrap();
            let live: Vec<usize> = (0..l.len()).filter(|i| !l[*i].revoked && l[*i].expired_after.is_none()).collect();
            (live.len() >= 5).then(|| (live[0], l[live[0]].lease))
        };
        if let Some((i, lease)) = oldest {
            // Marked before the request: a keepalive racing the revoke would see a 404 that is
            // ours, not the registry's. A revoke that failed may still have been applied (the
            // answer was lost with a node), so it stays marked: its fate is unknown, and the
            // validator neither expects the instance nor counts its 404 as a loss.
            leases.lock().unwrap()[i].revoked = true;
            let _ = client.revoke(lease).await;
        }
        n += 1;
        let name = format!("churn-{n}");
        if let Ok(g) = client.grant(CHURN_TTL).await {
            let i = {
                let mut l = leases.lock().unwrap();
                l.push(Churned {
                    name: name.clone(),
                    lease: g.lease_id,
                    registered: false,
                    last_renewed: Instant::now(),
                    expired_after: None,
                    expired_answer: None,
                    revoked: false,
                });
                l.len() - 1
            };
            let spec = InstanceSpec {
                address: "127.0.0.1".into(),
                port: 1 + n % 60000,
                lease_id: Some(g.lease_id),
                weight: 1,
                state: Default::default(),
                meta: Default::default(),
            };
            match client.put_instance("churn", &name, &spec).await {
                Ok(w) => {
                    record.lock().unwrap().acked.push((name.clone(), w.revision, g.lease_id));
                    leases.lock().unwrap()[i].registered = true;
                }
                // The put may still have been applied; the revoke removes it either way, and
                // the mark keeps the validator from expecting it (or counting its 404).
                Err(_) => {
                    leases.lock().unwrap()[i].revoked = true;
                    let _ = client.revoke(g.lease_id).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let _ = renewer.await;
    let l = leases.lock().unwrap();
    let mut rec = record.lock().unwrap();
    rec.revoked = l.iter().filter(|c| c.revoked).map(|c| c.name.clone()).collect();
    rec.churned = l.clone();
}
