//! Peer authentication (`peer_auth`, `http/peer.rs`): a request to `/raft/*` without the
//! cluster's secret changes nothing, and a client cannot pass itself off as a forwarding peer.

mod common;

use std::time::Duration;

use common::{Cluster, CLUSTER_SECRET};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use registry::peer_auth::SECRET_HEADER;
use registry::types::TypeConfig;
use testkit::wait_for as wait_until;

/// Every node's (leader, term).
fn views(c: &Cluster) -> Vec<(Option<u64>, u64)> {
    c.nodes.values().map(|n| n.node.raft_metrics()).map(|m| (m.current_leader, m.current_term)).collect()
}

/// What an outsider would send to take over: a vote and an append for term 100 from a node 9
/// that does not exist.
fn takeover() -> (serde_json::Value, serde_json::Value) {
    let append = AppendEntriesRequest::<TypeConfig> { vote: Vote::new_committed(100, 9), prev_log_id: None, leader_commit: None, entries: vec![] };
    let vote = VoteRequest::<u64>::new(Vote::new(100, 9), None);
    (serde_json::to_value(append).unwrap(), serde_json::to_value(vote).unwrap())
}

/// A well-formed snapshot chunk from that node 9 at term 100: installed, it would replace the
/// whole store and move the vote.
fn forged_snapshot() -> String {
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership};
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(100, 9), 1000)),
        last_membership: StoredMembership::default(),
        snapshot_id: "forged".into(),
    };
    let req = openraft::raft::InstallSnapshotRequest::<TypeConfig> { vote: Vote::new_committed(100, 9), meta, offset: 0, data: b"{}".to_vec(), done: true };
    serde_json::to_string(&registry::network::SnapshotChunk::from(req)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_rpc_without_the_cluster_secret_changes_no_vote_term_or_log() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let before = views(&c);
    let http = reqwest::Client::new();
    let (append, vote) = takeover();
    for n in c.nodes.values() {
        for (path, body, secret, status) in [
            ("/raft/append", append.to_string(), None, 401),
            ("/raft/vote", vote.to_string(), None, 401),
            ("/raft/snapshot", forged_snapshot(), None, 401),
            ("/raft/timeout_now", r#"{"leader":9,"term":100,"last_log_id":null}"#.to_string(), None, 401),
            ("/raft/prevote", r#"{"candidate":9,"term":100,"last_log_id":null}"#.to_string(), None, 401),
            ("/raft/append", append.to_string(), Some("d3JvbmctZ3Vlc3MtYXQtdGhlLXNlY3JldA=="), 403),
            ("/raft/vote", vote.to_string(), Some(""), 403),
        ] {
            let mut req = http.post(format!("{}{path}", n.url)).header("content-type", "application/json").body(body);
            if let Some(s) = secret {
                req = req.header(SECRET_HEADER, s);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path} with {secret:?} on {}", n.url);
            // Answered at the door, before anything else: not even the leader is named.
            assert!(!resp.headers().contains_key(proto::LEADER_HEADER), "{path} with {secret:?} on {} named the leader", n.url);
            let body: proto::ErrorBody = resp.json().await.unwrap();
            let code = if status == 401 { proto::ErrorCode::Unauthenticated } else { proto::ErrorCode::Forbidden };
            assert_eq!(body.code, code);
        }
    }
    // Nothing may move: watch every node for three election timeouts.
    let until = tokio::time::Instant::now() + 3 * registry::node::DEFAULT_ELECTION_TIMEOUT.1;
    while tokio::time::Instant::now() < until {
        assert_eq!(views(&c), before, "a refused request changed a vote, term or leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.wait_leader(None).await, leader);
    for n in c.nodes.values() {
        let text = reqwest::get(format!("{}/metrics", n.url)).await.unwrap().text().await.unwrap();
        assert!(text.contains(r#"registry_auth_denied_total{reason="missing_peer_credentials"} 5"#), "{text}");
        assert!(text.contains(r#"registry_auth_denied_total{reason="wrong_cluster_secret"} 2"#), "{text}");
    }

    // The control: the same append with the secret does reach Raft (the follower takes term
    // 100, as it did for anyone before), so what kept the term still above was the check, not a
    // malformed request.
    let follower = c.others(&[leader])[0];
    let resp = http.post(format!("{}/raft/append", c.nodes[&follower].url)).header(SECRET_HEADER, CLUSTER_SECRET).json(&append).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    wait_until(Duration::from_secs(5), "the follower to take term 100", || async {
        (c.nodes[&follower].node.raft_metrics().current_term >= 100).then_some(())
    })
    .await;
}

/// A client that says it was forwarded (so a follower would not relay it) and speaks for
/// another address is treated as the client it is: its grant is relayed to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pose_as_a_forwarding_peer() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/leases", c.nodes[&follower].url))
        .header(registry::http::FORWARDED_HEADER, "2")
        .header("x-registry-client-addr", "10.9.9.9")
        .json(&serde_json::json!({ "ttl_ms": 5000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await.unwrap());
    let (spoofed, real) = c.nodes[&leader].node.read_store(|s| (s.leases_of("10.9.9.9"), s.leases_of("127.0.0.1")));
    assert_eq!((spoofed, real), (0, 1), "the lease must count against the client's real address");
}

/// Membership changes are members-only too: an outsider who could add a node of its own would be
/// sent the whole log (and then the cluster secret on every peer request), and one who could
/// remove voters would cost the quorum its margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_the_cluster_secret() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let members = |c: &Cluster| c.nodes[&leader].node.raft_metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect::<Vec<_>>();
    let before = members(&c);
    let http = reqwest::Client::new();
    for id in [leader, follower] {
        let url = &c.nodes[&id].url;
        for (secret, status) in [(None, 401), (Some("d3JvbmctZ3Vlc3MtYXQtdGhlLXNlY3JldA=="), 403)] {
            let add = http.post(format!("{url}/v1/cluster/members")).json(&serde_json::json!({ "id": 9, "addr": "127.0.0.1:1" }));
            let remove = http.delete(format!("{url}/v1/cluster/members/{follower}"));
            for req in [add, remove] {
                let req = match secret {
                    Some(s) => req.header(SECRET_HEADER, s),
                    None => req,
                };
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status().as_u16(), status, "node {id}, secret {secret:?}");
            }
        }
    }
    // The client says why, without the secret.
    let err = c.client().remove_member(follower).await.unwrap_err();
    assert!(matches!(&err, client::Error::Api { status: 401, body, .. } if body.message.contains("cluster-secret-file")), "{err}");
    // An admitted change answers only once committed, so the membership is final here.
    assert_eq!(members(&c), before, "a refused request changed the membership");
    let mut missing = 0;
    for n in c.nodes.values() {
        let text = reqwest::get(format!("{}/metrics", n.url)).await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with(r#"registry_auth_denied_total{reason="missing_peer_credentials"} "#));
        missing += line.and_then(|l| l.rsplit(' ').next()).map(|v| v.parse::<u64>().unwrap()).unwrap_or(0);
    }
    assert_eq!(missing, 5, "two nodes refused two requests each, one node the client's");

    // The control: with the secret, through a follower (which forwards it with its own), the
    // request reaches the leader's membership code: member 9 does not exist.
    let err = c.operator_client_for(&[follower]).remove_member(9).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // And an operator removes a real member.
    let removed = c.others(&[leader, follower])[0];
    c.operator_client_for(&[follower]).remove_member(removed).await.unwrap();
    assert!(!members(&c).contains(&removed));
}
