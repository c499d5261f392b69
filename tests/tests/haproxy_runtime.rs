//! The syncer's Runtime API driver (`syncer::driver::runtime::RuntimeApi`) against a real
//! HAProxy 2.6 (tests/src/haproxy.rs) and real HTTP servers started in the test process.
//! Each test asserts that its changes needed no HAProxy reload (the master's reload counter).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use e2e::haproxy::{Haproxy, StaticServer};
use e2e::wait_for;
use syncer::driver::runtime::{Endpoint, RuntimeApi, DEFAULT_SERVER_OPTIONS};
use syncer::driver::{Driver, DriverError};
use syncer::model::{is_managed, server_name, ActualServer, AdminState, DesiredServer, Op};

const BACKEND: &str = "web-servers";

/// A tiny HTTP server on a free loopback port: `/` answers its name, `/slow` holds the request
/// open for a minute (so a test can see a session on the server). Stops with the test's runtime.
async fn web(name: &str) -> u16 {
    async fn hello(State(name): State<String>) -> String {
        name
    }
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(60)).await;
        "slow"
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/", get(hello)).route("/slow", get(slow)).with_state(name.to_string());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn desired(instance: &str, port: u16, weight: u32, state: AdminState) -> DesiredServer {
    DesiredServer { name: server_name(instance), address: "127.0.0.1".into(), port, weight, state }
}

fn driver(h: &Haproxy) -> RuntimeApi {
    RuntimeApi::new(Endpoint::Unix(h.socket_path()), DEFAULT_SERVER_OPTIONS)
}

fn http() -> reqwest::Client {
    // No pooled connections: every request is a new connection that HAProxy balances afresh.
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap()
}

/// Sends `n` requests through the frontend and counts which server answered (errors as "error").
async fn spread(client: &reqwest::Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_else(|_| "error".into()),
            Ok(r) => format!("status {}", r.status()),
            Err(_) => "error".into(),
        };
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

fn by_name(servers: Vec<ActualServer>) -> BTreeMap<String, ActualServer> {
    servers.into_iter().map(|s| (s.name.clone(), s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_weight_state_remove_through_runtime_api_without_reloads() {
    let h = Haproxy::start(&[BACKEND]).await;
    let reloads_before = h.reloads().await;
    let mut d = driver(&h);
    let ports = [web("a").await, web("b").await, web("c").await];

    // Add three servers, ready, equal weights.
    let adds: Vec<Op> = ["a", "b", "c"].iter().zip(ports).map(|(n, p)| Op::Add(desired(n, p, 100, AdminState::Ready))).collect();
    d.apply(BACKEND, &adds).await.unwrap();

    let servers = by_name(d.servers(BACKEND).await.unwrap());
    assert_eq!(servers.keys().cloned().collect::<Vec<_>>(), vec!["sd-a", "sd-b", "sd-c"]);
    for (n, p) in ["a", "b", "c"].iter().zip(ports) {
        let s = &servers[&server_name(n)];
        assert_eq!((s.address.as_str(), s.port, s.weight, s.state, s.sessions), ("127.0.0.1", p, 100, AdminState::Ready, 0), "{s:?}");
        assert!(is_managed(&s.name));
    }

    // Requests reach all three once the first health checks have passed (rise 1, inter 1s).
    let client = http();
    let url = h.frontend_url();
    wait_for(Duration::from_secs(5), "requests through HAProxy to reach a, b and c", || async {
        let seen = spread(&client, &url, 6).await;
        (["a", "b", "c"].iter().all(|n| seen.contains_key(*n)) && !seen.contains_key("error")).then_some(())
    })
    .await;
    // Round robin with equal weights: 30 requests, 10 each.
    let seen = spread(&client, &url, 30).await;
    assert_eq!(seen, BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]), "round robin");

    // Weight and state.
    d.apply(
        BACKEND,
        &[
            Op::SetWeight { name: server_name("a"), weight: 7 },
            Op::SetState { name: server_name("b"), state: AdminState::Drain },
            Op::SetState { name: server_name("c"), state: AdminState::Maint },
        ],
    )
    .await
    .unwrap();
    let servers = by_name(d.servers(BACKEND).await.unwrap());
    assert_eq!((servers["sd-a"].weight, servers["sd-a"].state), (7, AdminState::Ready));
    assert_eq!(servers["sd-b"].state, AdminState::Drain);
    assert_eq!(servers["sd-c"].state, AdminState::Maint);
    // Drained and maintenance servers get no new requests.
    assert_eq!(spread(&client, &url, 10).await, BTreeMap::from([("a".into(), 10)]));

    d.apply(
        BACKEND,
        &[
            Op::SetState { name: server_name("b"), state: AdminState::Ready },
            Op::SetState { name: server_name("c"), state: AdminState::Ready },
            Op::SetWeight { name: server_name("a"), weight: 100 },
        ],
    )
    .await
    .unwrap();
    let servers = by_name(d.servers(BACKEND).await.unwrap());
    assert!(servers.values().all(|s| s.state == AdminState::Ready && s.weight == 100), "{servers:?}");

    // Remove c (it has served requests, so HAProxy may keep idle connections to it).
    d.apply(BACKEND, &[Op::Remove { name: server_name("c") }]).await.unwrap();
    let servers = by_name(d.servers(BACKEND).await.unwrap());
    assert_eq!(servers.keys().cloned().collect::<Vec<_>>(), vec!["sd-a", "sd-b"]);
    // Not an exact split: right after a weight change roundrobin still places a server by its
    // old weight for a while (seen: 1 and 15 of 16 just after a went from 7 back to 100).
    let seen = spread(&client, &url, 40).await;
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), vec!["a", "b"], "{seen:?}");
    // Removing what is already gone is done, not an error (level-triggered callers retry).
    d.apply(BACKEND, &[Op::Remove { name: server_name("c") }]).await.unwrap();

    assert_eq!(h.reloads().await, reloads_before, "the Runtime API driver must not reload HAProxy");
    assert_eq!(h.loads(), 1, "HAProxy loaded its config more than once:\n{}", h.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_stop_the_batch_and_say_how_far_it_got() {
    let h = Haproxy::start(&[BACKEND]).await;
    let mut d = driver(&h);
    let port = web("a").await;

    let ops = [
        Op::Add(desired("a", port, 10, AdminState::Ready)),
        Op::SetWeight { name: server_name("a"), weight: 20 },
        // Already there.
        Op::Add(desired("a", port, 10, AdminState::Ready)),
        Op::SetWeight { name: server_name("a"), weight: 30 },
    ];
    match d.apply(BACKEND, &ops).await {
        Err((2, DriverError::Refused(m))) => assert!(m.contains("Already exists a server with the same name"), "{m}"),
        other => panic!("expected the third op to be refused, got {other:?}"),
    }
    // The op after the failure was not applied.
    assert_eq!(d.servers(BACKEND).await.unwrap()[0].weight, 20);

    match d.apply(BACKEND, &[Op::SetWeight { name: server_name("nope"), weight: 1 }]).await {
        Err((0, DriverError::Refused(m))) => assert!(m.contains("No such server."), "{m}"),
        other => panic!("{other:?}"),
    }
    match d.apply(BACKEND, &[Op::SetWeight { name: server_name("a"), weight: 1000 }]).await {
        Err((0, DriverError::Refused(m))) => assert!(m.contains("weight"), "{m}"),
        other => panic!("{other:?}"),
    }
    match d.servers("no-such-backend").await {
        Err(DriverError::Refused(m)) => assert!(m.contains("Can't find backend."), "{m}"),
        other => panic!("{other:?}"),
    }
    match d.apply("no-such-backend", &[Op::Add(desired("x", port, 1, AdminState::Ready))]).await {
        Err((0, DriverError::Refused(m))) => assert!(m.contains("No such backend."), "{m}"),
        other => panic!("{other:?}"),
    }
    // A value that would smuggle a second command in is refused before anything is sent.
    let mut evil = desired("x", port, 1, AdminState::Ready);
    evil.address = "127.0.0.1;shutdown".into();
    assert!(matches!(d.apply(BACKEND, &[Op::Add(evil)]).await, Err((0, DriverError::Refused(_)))));

    // Nothing listening: unreachable, and retriable.
    let gone = RuntimeApi::new(Endpoint::Unix(h.socket_path().with_file_name("missing.sock")), DEFAULT_SERVER_OPTIONS).with_timeout(Duration::from_secs(1));
    let mut gone = gone;
    match gone.generation().await {
        Err(e @ DriverError::Unreachable(_)) => assert!(e.is_retriable()),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.reloads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_ends_remaining_sessions_and_deletes() {
    let h = Haproxy::start(&[BACKEND]).await;
    let mut d = driver(&h);
    let port = web("slow").await;
    d.apply(BACKEND, &[Op::Add(desired("slow", port, 10, AdminState::Ready))]).await.unwrap();

    // A request the server holds open: one session on sd-slow.
    let url = format!("{}/slow", h.frontend_url());
    let client = http();
    let pending = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    let sessions = wait_for(Duration::from_secs(5), "a session on sd-slow", || {
        let mut d = d.clone();
        async move { d.servers(BACKEND).await.ok()?.into_iter().find(|s| s.name == "sd-slow" && s.sessions > 0).map(|s| s.sessions) }
    })
    .await;
    assert_eq!(sessions, 1);

    // maint, `del server` refused (connections), `shutdown sessions server`, delete.
    let started = tokio::time::Instant::now();
    d.apply(BACKEND, &[Op::Remove { name: server_name("slow") }]).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "removal took {:?}", started.elapsed());
    assert!(d.servers(BACKEND).await.unwrap().is_empty());
    // The held request ended (with an error or a 5xx) instead of waiting a minute.
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("the cut request is still pending").unwrap();
    assert!(!matches!(outcome, Ok(s) if s.is_success()), "{outcome:?}");
    assert!(h.log_text().contains("Server deleted."));
    assert_eq!(h.reloads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_declared_servers_are_reported_but_not_managed() {
    let static_port = web("static").await;
    let h =
        Haproxy::start_with(&[BACKEND], &[StaticServer { backend: BACKEND.into(), name: "static1".into(), addr: format!("127.0.0.1:{static_port}") }]).await;
    // Over TCP this time (the same API on `stats socket ipv4@127.0.0.1:PORT`).
    let mut d = RuntimeApi::new(Endpoint::Tcp(h.tcp_address()), DEFAULT_SERVER_OPTIONS);
    let port = web("a").await;
    d.apply(BACKEND, &[Op::Add(desired("a", port, 100, AdminState::Ready))]).await.unwrap();

    let servers = by_name(d.servers(BACKEND).await.unwrap());
    assert_eq!(servers.keys().cloned().collect::<Vec<_>>(), vec!["sd-a", "static1"]);
    let s = &servers["static1"];
    assert!(!is_managed(&s.name));
    // A config server without a weight has weight 1, and is ready.
    assert_eq!((s.address.as_str(), s.port, s.weight, s.state), ("127.0.0.1", static_port, 1, AdminState::Ready));
    assert!(is_managed(&servers["sd-a"].name));
    assert_eq!(h.reloads().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_changes_on_reload_and_restart_and_dynamic_servers_are_lost() {
    let mut h = Haproxy::start(&[BACKEND]).await;
    let mut d = driver(&h);
    let port = web("a").await;

    let g0 = d.generation().await.unwrap();
    assert_eq!(d.generation().await.unwrap(), g0, "generation must be stable while HAProxy runs");
    d.apply(BACKEND, &[Op::Add(desired("a", port, 100, AdminState::Ready))]).await.unwrap();
    assert_eq!(d.generation().await.unwrap(), g0, "adding a server is not a new generation");
    assert_eq!(h.reloads().await, 0);

    h.reload().await;
    assert_eq!(h.reloads().await, 1, "the reload counter must see the reload");
    let g1 = d.generation().await.unwrap();
    assert_ne!(g1, g0, "a reload must change the generation");
    assert!(d.servers(BACKEND).await.unwrap().is_empty(), "dynamic servers do not survive a reload");

    d.apply(BACKEND, &[Op::Add(desired("a", port, 100, AdminState::Ready))]).await.unwrap();
    assert_eq!(d.servers(BACKEND).await.unwrap().len(), 1);
    h.restart().await;
    let g2 = d.generation().await.unwrap();
    assert_ne!(g2, g1, "a restart must change the generation");
    assert_ne!(g2, g0);
    assert!(d.servers(BACKEND).await.unwrap().is_empty(), "dynamic servers do not survive a restart");
    // The counter keeps the reload of the first master; the restart itself is not a reload.
    assert_eq!(h.reloads().await, 1);
    assert_eq!(h.loads(), 3, "start + reload + restart:\n{}", h.log_text());
}
