//! Heap the registry's in-memory state takes per registered instance: the store, a store clone
//! (what a snapshot build takes), the encoded snapshot, the watch history, and the lease clocks
//! a leader keeps besides.
//!
//! `cargo run --release -p registry --example store_memory -- 100000`
//!
//! Each registration is one `Cmd::Register` (one lease, one instance with one meta entry), as
//! `scripts/bench scale` loads them, with an idempotency key as the announcer sends.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use registry::command::{Cmd, Named, Proposal};
use registry::lease::{LeaseKeeper, Renewals};
use registry::store::Store;
use registry::watch::WatchHub;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().expect("a count")).unwrap_or(100_000);
    let spec = |k: usize| proto::InstanceSpec {
        address: format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255),
        port: 8080,
        lease_id: None,
        weight: 100,
        state: proto::InstanceState::Up,
        meta: if std::env::var("NOMETA").is_ok() { Default::default() } else { [("zone".to_string(), format!("z{}", k % 3))].into() },
    };
    let hub = WatchHub::new(100_000);
    let mut store = Store::default();
    let base = live();
    let t = Instant::now();
    for k in 0..n {
        let named =
            Named { service: format!("svc-{:03}", k % 100), instance: format!("web-{k:06}"), registration: proto::validate::instance_spec(&spec(k)).unwrap() };
        let cmd = Cmd::Register {
            ttl_ms: 300_000,
            owner: Some(format!("127.77.{}.{}", k / 250 % 250, k % 250 + 1)),
            token: Some(7),
            instances: vec![named],
            takeover: false,
        };
        let p = Proposal::new(cmd, std::env::var("NOKEY").is_err().then(|| format!("{:032x}", k as u128 * 0x9e37_79b9_7f4a_7c15)));
        let (_, events) = store.apply(k as u64 + 10, 1, &p);
        hub.publish(k as u64 + 10, events);
    }
    let total = live() - base;
    println!("{n} registrations applied in {:?}", t.elapsed());
    println!("store + history: {} ({} bytes per instance)", mib(total), total / n);
    let before = live();
    let t = Instant::now();
    let copy = store.clone();
    println!("store clone: {} in {:?}", mib(live() - before), t.elapsed());
    drop(copy);
    let t = Instant::now();
    let json = serde_json::to_vec(&store).unwrap();
    println!("snapshot JSON: {} in {:?}", mib(json.len()), t.elapsed());
    drop(json);
    let before = live();
    let mut keeper = LeaseKeeper::new();
    keeper.start_term(1, store.leases().values(), &Renewals::default(), tokio::time::Instant::now(), Duration::from_secs(2));
    println!("lease clocks (the leader's): {} for {} leases", mib(live() - before), keeper.len());
    drop(keeper);
    let before = live();
    drop(hub);
    println!("history: {}", mib(before - live()));
    let before = live();
    drop(store);
    println!("store alone: {}", mib(before - live()));
}
