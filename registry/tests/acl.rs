//! Tokens and scopes (`acl`, `http::acl`): default deny once ACLs are on, each scope allows
//! what it names and nothing else, a lease belongs to the token that granted it, and a revoked
//! token is refused everywhere within a second.

mod common;

use std::time::Duration;

use common::{spec, Cluster};
use registry::acl::TokenHash;
use testkit::wait_for as wait_until;

const BOOT: &str = "Ym9vdHN0cmFwLXRva2VuLWZvci10aGUtYWNsLXRlc3Rz";

fn with_acl(c: &mut registry::node::NodeConfig) {
    c.acl_bootstrap = Some(TokenHash::of(BOOT));
}

/// A cluster with ACLs on in every node's store, its node ids, and an admin client.
async fn acl_cluster() -> (Cluster, Vec<u64>, client::Client) {
    let c = Cluster::start_defaults_with(3, with_acl).await;
    let all: Vec<u64> = c.nodes.keys().copied().collect();
    let admin = as_token(&c, &all, BOOT);
    wait_until(Duration::from_secs(10), "ACLs on in every node's store", || async {
        c.nodes.values().all(|n| n.node.read_store(|s| s.acl().enabled)).then_some(())
    })
    .await;
    (c, all, admin)
}

fn as_token(c: &Cluster, ids: &[u64], token: &str) -> client::Client {
    let urls: Vec<String> = ids.iter().map(|i| c.nodes[i].url.clone()).collect();
    client::Client::builder(&urls).unwrap().token(token).unwrap().build().unwrap()
}

async fn make_token(admin: &client::Client, token: &str, scopes: &[&str]) -> u64 {
    admin.create_token(token, &scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "test").await.unwrap().id
}

fn status(e: &client::Error) -> u16 {
    match e {
        client::Error::Api { status, .. } => *status,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_allow_what_they_name_and_leases_belong_to_their_token() {
    let (c, all, admin) = acl_cluster().await;

    // Default deny: no token, or an unknown one, is 401; health stays open.
    assert_eq!(status(&c.client().services(false).await.unwrap_err()), 401);
    assert_eq!(status(&as_token(&c, &all, &"u".repeat(40)).services(false).await.unwrap_err()), 401);
    assert_eq!(reqwest::get(format!("{}/healthz", c.nodes[&1].url)).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{}/metrics", c.nodes[&1].url)).await.unwrap().status(), 401);

    let (web_t, api_t, read_t) = ("w".repeat(40), "a".repeat(40), "r".repeat(40));
    make_token(&admin, &web_t, &["announce:web-*"]).await;
    make_token(&admin, &api_t, &["announce:api-*"]).await;
    let read_id = make_token(&admin, &read_t, &["read"]).await;
    // Every node must know the tokens before they are used through it.
    wait_until(Duration::from_secs(5), "the tokens on every node", || async {
        c.nodes.values().all(|n| n.node.read_store(|s| s.acl().tokens.len() == 4)).then_some(())
    })
    .await;

    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    // Through a follower: the token is checked there and again on the leader.
    let web = as_token(&c, &[follower], &web_t);
    let lease = web.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    web.put_instance("web-servers", "a", &spec(80, Some(lease))).await.unwrap();
    assert_eq!(status(&web.put_instance("api-servers", "a", &spec(81, None)).await.unwrap_err()), 403, "web-* cannot touch api-servers");
    assert_eq!(status(&web.services(false).await.unwrap_err()), 403, "announce does not read");

    let read = as_token(&c, &[follower], &read_t);
    assert_eq!(read.services(false).await.unwrap().services.len(), 1);
    assert_eq!(status(&read.put_instance("web-servers", "b", &spec(82, None)).await.unwrap_err()), 403, "read cannot write");
    assert_eq!(status(&read.grant(Duration::from_secs(30)).await.unwrap_err()), 403);

    // Another announce token can neither renew, revoke nor hang instances off web's lease.
    let api = as_token(&c, &all, &api_t);
    assert_eq!(status(&api.keepalive(lease).await.unwrap_err()), 403);
    assert_eq!(status(&api.revoke(lease).await.unwrap_err()), 403);
    assert_eq!(status(&api.put_instance("api-servers", "x", &spec(83, Some(lease))).await.unwrap_err()), 403);
    web.keepalive(lease).await.unwrap();
    admin.keepalive(lease).await.unwrap();
    // Relayed by a follower (in a batch), a keepalive is checked on the leader with its own
    // token: one token's refusal is that keepalive's alone.
    let (api_via, web_via) = (as_token(&c, &[follower], &api_t), as_token(&c, &[follower], &web_t));
    let (refused, renewed) = tokio::join!(api_via.keepalive(lease), web_via.keepalive(lease));
    assert_eq!(status(&refused.unwrap_err()), 403);
    renewed.unwrap();

    // A revoked token is refused on every node within a second.
    admin.revoke_token(read_id).await.unwrap();
    let t = tokio::time::Instant::now();
    wait_until(Duration::from_secs(1), "every node to refuse the revoked token", || async {
        for id in &all {
            match as_token(&c, &[*id], &read_t).services(true).await {
                Err(e) if status(&e) == 401 => {}
                _ => return None,
            }
        }
        Some(())
    })
    .await;
    eprintln!("the revoked token was refused on every node {:?} after the revoke was acknowledged", t.elapsed());
    let listed = admin.tokens().await.unwrap();
    assert!(listed.enabled && listed.tokens.iter().all(|t| t.id != read_id));
    assert!(!serde_json::to_string(&listed).unwrap().contains(&web_t), "a listing never shows a secret");
}

/// `POST /v1/register` names its services in the body: each must be in the token's scope, and
/// an instance on another token's lease is not taken over; a refused registration writes
/// nothing, not even its allowed part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_needs_every_service_in_scope_and_takes_over_nothing() {
    let (c, all, admin) = acl_cluster().await;
    let (web_t, other_t) = ("w".repeat(40), "o".repeat(40));
    let web_id = make_token(&admin, &web_t, &["announce:web-*"]).await;
    make_token(&admin, &other_t, &["announce:*"]).await;
    wait_until(Duration::from_secs(5), "the tokens on every node", || async {
        c.nodes.values().all(|n| n.node.read_store(|s| s.acl().tokens.len() == 3)).then_some(())
    })
    .await;
    let inst = |service: &str, name: &str| proto::RegisterInstance {
        service: service.into(),
        instance: name.into(),
        address: "10.0.0.9".into(),
        port: 80,
        weight: 100,
        state: Default::default(),
        meta: Default::default(),
    };
    let (web, other) = (as_token(&c, &all, &web_t), as_token(&c, &all, &other_t));
    let ttl = Duration::from_secs(30);

    let e = web.register(ttl, vec![inst("web-servers", "a"), inst("api-servers", "b")]).await.unwrap_err();
    assert_eq!(status(&e), 403, "api-servers is outside web-*: {e}");
    let held = other.register(ttl, vec![inst("web-servers", "held")]).await.unwrap();
    let e = web.register(ttl, vec![inst("web-servers", "held")]).await.unwrap_err();
    assert_eq!(status(&e), 403, "another token's instance: {e}");
    let mine = web.register(ttl, vec![inst("web-servers", "a")]).await.unwrap();
    assert_eq!(status(&other.keepalive(mine.lease_id).await.unwrap_err()), 403, "the lease is the registering token's");

    let leader = c.wait_leader(None).await;
    c.nodes[&leader].node.read_store(|s| {
        assert_eq!(s.leases().len(), 2, "only the two allowed registrations granted leases");
        assert_eq!(s.lease(mine.lease_id).unwrap().token, Some(web_id));
        assert_eq!(s.instance("web-servers", "a").unwrap().lease_id, Some(mine.lease_id));
        assert_eq!(s.instance("web-servers", "held").unwrap().lease_id, Some(held.lease_id));
        assert!(s.instance("api-servers", "b").is_none());
    });
}

/// `--metrics-open`: Prometheus scrapes without a token; every other route still needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_open_lets_a_scraper_in_and_nothing_else() {
    let c = Cluster::start_defaults_with(1, |n| {
        with_acl(n);
        n.metrics_open = true;
    })
    .await;
    let url = &c.nodes[&1].url;
    wait_until(Duration::from_secs(10), "ACLs on", || async { c.nodes[&1].node.read_store(|s| s.acl().enabled).then_some(()) }).await;
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("registry_"), "not the metrics");
    assert_eq!(reqwest::get(format!("{url}/v1/services")).await.unwrap().status(), 401);
    assert_eq!(reqwest::get(format!("{url}/v1/cluster")).await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_manages_tokens() {
    let (c, all, admin) = acl_cluster().await;
    let web_t = "w".repeat(40);
    make_token(&admin, &web_t, &["announce:*"]).await;
    let web = as_token(&c, &all, &web_t);
    assert_eq!(status(&web.create_token(&"z".repeat(40), &["admin".into()], "escalate").await.unwrap_err()), 403);
    assert_eq!(status(&web.tokens().await.unwrap_err()), 403);
    assert_eq!(status(&admin.create_token("short", &["read".into()], "").await.unwrap_err()), 400);
    assert_eq!(status(&admin.create_token(&"q".repeat(40), &["write".into()], "").await.unwrap_err()), 400);
    assert_eq!(status(&admin.create_token(&web_t, &["read".into()], "").await.unwrap_err()), 409);
}

/// What a token may not do to another token's registrations, and the long reads that must end
/// when their token is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tokens_instances_stay_its_own_and_a_revoked_watch_ends() {
    let (c, all, admin) = acl_cluster().await;
    let (owner_t, other_t, read_t) = ("o".repeat(40), "t".repeat(40), "r".repeat(40));
    make_token(&admin, &owner_t, &["announce:web-*"]).await;
    make_token(&admin, &other_t, &["announce:*"]).await;
    let read_id = make_token(&admin, &read_t, &["read"]).await;
    let owner = as_token(&c, &all, &owner_t);
    let other = as_token(&c, &all, &other_t);
    let lease = owner.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    owner.put_instance("web-servers", "a", &spec(80, Some(lease))).await.unwrap();
    // A wider glob does not make another token's instance yours: no delete, no overwrite
    // (which would detach it from its lease).
    assert_eq!(status(&other.delete_instance("web-servers", "a").await.unwrap_err()), 403);
    assert_eq!(status(&other.put_instance("web-servers", "a", &spec(81, None)).await.unwrap_err()), 403);
    // The last admin token cannot be revoked: nothing could make another.
    let boot_id = admin.tokens().await.unwrap().tokens.iter().find(|t| t.scopes == ["admin"]).unwrap().id;
    assert_eq!(status(&admin.revoke_token(boot_id).await.unwrap_err()), 400);

    // A watch whose token is revoked ends with an error, within a second or so.
    let follower = c.others(&[c.wait_leader(None).await])[0];
    let mut watch = as_token(&c, &[follower], &read_t).watch(None, None).await.unwrap();
    admin.revoke_token(read_id).await.unwrap();
    let t = tokio::time::Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(3), watch.next()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other.map(|_| ()),
            Err(_) => panic!("the revoked token's watch went on"),
        }
    };
    assert!(ended.is_err() || t.elapsed() < Duration::from_secs(3), "{ended:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "the watch ended only after {:?}", t.elapsed());
}

/// Tokens cannot be made while the cluster is open: one made then would survive ACLs coming on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_made_while_acls_are_off() {
    let c = Cluster::start(3).await;
    let e = c.client().create_token(&"e".repeat(40), &["admin".into()], "early").await.unwrap_err();
    assert_eq!(status(&e), 400, "{e}");
}

/// Thousands of random and malformed requests at every route, without a token, with garbage,
/// and with a wrong one: no panic (every request gets an HTTP answer), no 5xx but 503, and no
/// change to services, leases, tokens or removals on any node. The control at the end shows the
/// same requests with an admin token do change things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_requests_change_nothing_without_a_valid_token() {
    use rand::{Rng, SeedableRng};
    let (c, all, admin) = acl_cluster().await;
    let web_t = "w".repeat(40);
    make_token(&admin, &web_t, &["announce:web-*"]).await;
    // A valid `read` token too: it may read, and must change nothing either.
    let read_t = "r".repeat(40);
    make_token(&admin, &read_t, &["read"]).await;
    let lease = as_token(&c, &all, &web_t).grant(Duration::from_secs(60)).await.unwrap().lease_id;
    as_token(&c, &all, &web_t).put_instance("web-servers", "a", &spec(80, Some(lease))).await.unwrap();
    // Quiet: the leader has recorded every member as started (its own entries, a second apart,
    // would otherwise move the log during the run) and every node applied the same.
    wait_until(Duration::from_secs(10), "every member recorded and every node current", || async {
        let r: Vec<u64> = all.iter().map(|i| c.applied(*i)).collect();
        let recorded = all.iter().all(|i| c.nodes[i].node.read_store(|s| s.started().len()) == all.len());
        (recorded && r.windows(2).all(|w| w[0] == w[1])).then_some(())
    })
    .await;
    let state = |id: u64| {
        let node = &c.nodes[&id].node;
        // The membership too: a member added or removed without a 2xx answer counts.
        let m = node.raft_metrics();
        let members: Vec<(u64, String)> = m.membership_config.membership().nodes().map(|(i, n)| (*i, n.addr.clone())).collect();
        node.read_store(|s| serde_json::to_string(&(s.services(), s.leases(), s.acl(), s.removals(), &members)).unwrap())
    };
    let before: Vec<String> = all.iter().map(|i| state(*i)).collect();

    // Seeded: a failure names the seed, and the same run can be had again.
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let long = "x".repeat(300);
    let names: Vec<&str> = vec!["web-servers", "api-servers", "a", "", "..", "%2e%2e", "web%20servers", &long, "web-servers/instances/a", "\u{e9}", "-"];
    let ids = ["1", "0", "-1", "18446744073709551616", "abc", "", "9999999"];
    let templates = [
        "/v1/leases",
        "/v1/register",
        "/v1/leases/{id}/keepalive",
        "/v1/leases/{id}",
        "/v1/services",
        "/v1/services/{name}",
        "/v1/services/{name}/instances/{name}",
        "/v1/removals",
        "/v1/watch?service={name}&since={id}",
        "/v1/cluster",
        "/v1/cluster/members",
        "/v1/cluster/members/{id}",
        "/v1/acl/tokens",
        "/v1/acl/tokens/{id}",
        "/v1/services/{name}?index={id}&wait=1s",
        "/metrics",
        "/v1/snapshot",
        "/raft/append",
        "/raft/vote",
        "/raft/prevote",
        "/raft/renewals",
        "/raft/timeout_now",
        "/raft/snapshot",
        "/raft/keepalives",
        "/healthz",
        "/readyz",
        "/ui",
        "/ui/app.js",
        "/nope/{name}",
    ];
    // The routes anyone may read (docs/security.md): a 2xx there is no leak.
    let open = |path: &str| ["/healthz", "/readyz", "/ui"].iter().any(|p| path == *p || path.starts_with(&format!("{p}/")));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        br#"{"ttl_ms": 5000}"#.to_vec(),
        br#"{"ttl_ms":5000,"instances":[{"service":"web-servers","instance":"z","address":"10.0.0.9","port":80}]}"#.to_vec(),
        br#"{"address":"10.0.0.9","port":80,"weight":1}"#.to_vec(),
        br#"{"token":"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz","scopes":["admin"]}"#.to_vec(),
        br#"{"id":9,"addr":"127.0.0.1:1"}"#.to_vec(),
        // Peer RPC bodies from a node 9 that does not exist, at a term far ahead: each would
        // move the term, the vote or the leader if it got through.
        br#"{"vote":{"leader_id":{"term":100,"node_id":9},"committed":false},"last_log_id":null}"#.to_vec(),
        br#"{"vote":{"leader_id":{"term":100,"node_id":9},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}"#.to_vec(),
        br#"{"candidate":9,"term":100,"last_log_id":null}"#.to_vec(),
        br#"{"leader":9,"term":100,"last_log_id":null}"#.to_vec(),
        br#"{"leader":9,"term":100,"renewals":[[1,0]]}"#.to_vec(),
        vec![0xff; 70_000],
    ];
    let read_bearer = format!("Bearer {read_t}");
    let auths = [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        Some("bearer \u{1}"),
        Some(read_bearer.as_str()),
    ];
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    // A connection per request: a node closes a connection whose oversized body it refused
    // unread, and a pooled client would send the next request into that closing connection.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap();
    let mut requests = Vec::new();
    for _ in 0..3000 {
        let node = &c.nodes[&all[rng.gen_range(0..all.len())]].url;
        let mut path = templates[rng.gen_range(0..templates.len())].to_string();
        while path.contains("{name}") {
            path = path.replacen("{name}", names[rng.gen_range(0..names.len())], 1);
        }
        while path.contains("{id}") {
            path = path.replacen("{id}", ids[rng.gen_range(0..ids.len())], 1);
        }
        let method = reqwest::Method::from_bytes(methods[rng.gen_range(0..methods.len())].as_bytes()).unwrap();
        let body = bodies[rng.gen_range(0..bodies.len())].clone();
        let body_len = body.len();
        let mut req = http.request(method, format!("{node}{path}")).body(body);
        if rng.gen_bool(0.7) {
            req = req.header("content-type", "application/json");
        }
        if let Some(a) = auths[rng.gen_range(0..auths.len())] {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(a) {
                req = req.header("authorization", v);
            }
        }
        if rng.gen_bool(0.3) {
            req = req.header(proto::IDEMPOTENCY_KEY_HEADER, format!("k{}", rng.gen_range(0..50)));
        }
        requests.push((req, body_len));
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for chunk in requests.chunks(32) {
        let answers = futures::future::join_all(chunk.iter().map(|(r, _)| r.try_clone().unwrap().send())).await;
        for (a, (req, body_len)) in answers.into_iter().zip(chunk) {
            let built = req.try_clone().unwrap().build().unwrap();
            let read_only = matches!(built.method().as_str(), "GET" | "HEAD");
            let reader = built.headers().get("authorization").is_some_and(|v| v.as_bytes() == read_bearer.as_bytes());
            // A node may refuse an oversized body before reading it and close the connection
            // while the client is still sending: that is an answer too, not a crash.
            let resp = match a {
                Ok(r) => r,
                Err(_) if *body_len > registry::http::API_BODY_LIMIT => continue,
                Err(e) => panic!("a request got no HTTP answer (seed {seed}, body {body_len} bytes): {e:?}"),
            };
            let s = resp.status().as_u16();
            assert!(s < 500 || s == 503, "status {s} (seed {seed})");
            assert!(read_only || !(200..300).contains(&s), "a write succeeded without an allowing token: {s} (seed {seed})");
            // Beyond the open routes, a read answered without the read token is a leak.
            let path = built.url().path();
            assert!(reader || open(path) || !(200..300).contains(&s), "{} {path} answered {s} without a token (seed {seed})", built.method());
            *statuses.entry(s).or_default() += 1;
        }
    }
    eprintln!("fuzz seed {seed}: statuses {statuses:?}");
    // Every node still answers: nothing took one down.
    for id in &all {
        assert_eq!(reqwest::get(format!("{}/healthz", c.nodes[id].url)).await.unwrap().status(), 200);
    }
    let after: Vec<String> = all.iter().map(|i| state(*i)).collect();
    assert_eq!(after, before, "a request without a valid token changed the state (seed {seed})");
    // Raft's own state: the forged bodies speak for node 9 at term 100. A real election under
    // load may move the term a little, and the leader among the members; a forged vote,
    // append or hand-off that got through would show node 9 or term 100.
    for id in &all {
        let m = c.nodes[id].node.raft_metrics();
        let voted_for = m.vote.leader_id().voted_for();
        assert!(m.current_term < 100, "node {id} took term {} from a forged request (seed {seed})", m.current_term);
        assert!(
            voted_for.is_none_or(|v| all.contains(&v)) && m.current_leader.is_none_or(|l| all.contains(&l)),
            "node {id}: vote {} leader {:?} (seed {seed})",
            m.vote,
            m.current_leader
        );
    }

    // The control: with the admin token, a write of the same kind does change it.
    admin.put_instance("api-servers", "z", &spec(81, None)).await.unwrap();
    let leader = c.wait_leader(None).await;
    assert_ne!(state(leader), before[all.iter().position(|i| *i == leader).unwrap()]);
}

fn with_acl_and_audit(c: &mut registry::node::NodeConfig) {
    with_acl(c);
    c.audit_log = Some(c.data_dir.join("audit.log"));
}

/// The audit log (`--audit-log`): each write a client sends is one line on the node it sent it
/// to, with the token's id and the answer, accepted or refused; reads and accepted keepalives
/// are not logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_who_wrote_what_and_the_answer() {
    let c = Cluster::start_defaults_with(3, with_acl_and_audit).await;
    let all: Vec<u64> = c.nodes.keys().copied().collect();
    let admin = as_token(&c, &all, BOOT);
    wait_until(Duration::from_secs(10), "ACLs on in every node's store", || async {
        c.nodes.values().all(|n| n.node.read_store(|s| s.acl().enabled)).then_some(())
    })
    .await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let web_t = "w".repeat(40);
    let web_id = make_token(&admin, &web_t, &["announce:web-*"]).await;
    // A follower checks the token at its door: it must have applied its creation.
    wait_until(Duration::from_secs(5), "the token on every node", || async {
        c.nodes.values().all(|n| n.node.read_store(|s| s.acl().tokens.len() == 2)).then_some(())
    })
    .await;
    // Sent to a follower: relayed to the leader, logged once, on the follower.
    let web = as_token(&c, &[follower], &web_t);
    let lease = web.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    web.put_instance("web-a", "i1", &spec(80, Some(lease))).await.unwrap();
    web.keepalive(lease).await.unwrap();
    web.services(false).await.unwrap_err(); // a read, refused: not a write, not logged
    assert_eq!(status(&web.put_instance("api-a", "i1", &spec(80, None)).await.unwrap_err()), 403);
    assert_eq!(status(&as_token(&c, &[follower], &"u".repeat(40)).delete_instance("web-a", "i1").await.unwrap_err()), 401);

    // An instance named like the keepalive route is still a write to log.
    web.put_instance("web-a", "keepalive", &spec(81, Some(lease))).await.unwrap();
    // A membership change refused at the door (a wrong cluster secret), before any token check.
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/cluster/members", c.nodes[&follower].url))
        .header(registry::peer_auth::SECRET_HEADER, "not-the-cluster-secret-not-the-cluster-secret")
        .json(&serde_json::json!({"id": 9, "addr": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // Every node's log: each request is on exactly one of them.
    let all_lines = || -> Vec<serde_json::Value> {
        c.nodes
            .values()
            .flat_map(|n| {
                std::fs::read_to_string(n.node.config().data_dir.join("audit.log"))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let ours = |l: &serde_json::Value| l["path"] == "/v1/leases" || l["path"] == "/v1/cluster/members" || l["path"].as_str().unwrap().contains("-a/");
    let lines = wait_until(Duration::from_secs(5), "six audit lines", || async {
        let lines: Vec<serde_json::Value> = all_lines().into_iter().filter(ours).collect();
        (lines.len() >= 6).then_some(lines)
    })
    .await;
    let find = |method: &str, path: &str| {
        let found: Vec<&serde_json::Value> = lines.iter().filter(|l| l["method"] == method && l["path"] == path).collect();
        assert_eq!(found.len(), 1, "{method} {path} is not logged exactly once: {lines:#?}");
        found[0].clone()
    };
    // The grant went to the follower (the only node the client knew), which relayed it.
    let grant = find("POST", "/v1/leases");
    assert_eq!((grant["token"].as_u64(), grant["status"].as_u64(), grant["result"].as_str()), (Some(web_id), Some(200), Some("ok")), "{grant}");
    assert_eq!((grant["node"].as_u64(), grant["leader"].as_u64()), (Some(follower), Some(leader)), "{grant}");
    assert_eq!(grant["client"], "127.0.0.1", "{grant}");
    let put = find("PUT", "/v1/services/web-a/instances/i1");
    assert_eq!((put["token"].as_u64(), put["status"].as_u64()), (Some(web_id), Some(200)), "{put}");
    let denied = find("PUT", "/v1/services/api-a/instances/i1");
    assert_eq!((denied["token"].as_u64(), denied["status"].as_u64(), denied["result"].as_str()), (Some(web_id), Some(403), Some("denied")), "{denied}");
    assert_eq!(denied["code"], "forbidden", "{denied}");
    let unknown = find("DELETE", "/v1/services/web-a/instances/i1");
    assert_eq!((unknown["token"].as_u64(), unknown["status"].as_u64(), unknown["code"].as_str()), (None, Some(401), Some("unauthenticated")), "{unknown}");
    let named = find("PUT", "/v1/services/web-a/instances/keepalive");
    assert_eq!(named["status"].as_u64(), Some(200), "{named}");
    let door = find("POST", "/v1/cluster/members");
    assert_eq!((door["status"].as_u64(), door["code"].as_str(), door["node"].as_u64()), (Some(403), Some("forbidden"), Some(follower)), "{door}");
    let everything = all_lines();
    assert!(!everything.iter().any(|l| l["path"].as_str().unwrap().starts_with("/v1/leases/")), "an accepted keepalive was logged: {everything:#?}");
    assert!(!everything.iter().any(|l| l["method"] == "GET"), "a read was logged: {everything:#?}");
}

/// A write whose path cannot be read (a parameter that is not UTF-8 once decoded) is refused
/// with 400 before the token check, and that refusal is a write to log like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_its_path_is_logged() {
    let c = Cluster::start_defaults_with(3, with_acl_and_audit).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let path = "/v1/services/%FF-a/instances/i1";
    let resp = reqwest::Client::new().delete(format!("{}{path}", c.nodes[&follower].url)).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let log = c.nodes[&follower].node.config().data_dir.join("audit.log");
    let line = wait_until(Duration::from_secs(5), "the refusal in the follower's audit log", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|l| l["path"] == path)
    })
    .await;
    assert_eq!((line["method"].as_str(), line["status"].as_u64()), (Some("DELETE"), Some(400)), "{line}");
}
