//! TLS (`tls`, `--tls-*`): the client API and peer RPC over HTTPS on one address; peers are
//! the connections that show a node certificate from the cluster CA, and nothing else is.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Cluster;
use openraft::raft::AppendEntriesRequest;
use openraft::Vote;
use registry::types::TypeConfig;
use testkit::wait_for as wait_until;

fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let mut b =
        reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(key).unwrap();
        pem.extend(std::fs::read(cert).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.timeout(Duration::from_secs(5)).build().unwrap()
}

fn counter(text: &str, line_start: &str) -> u64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).map(|v| v.parse().unwrap()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_over_https_and_refuses_plain_http_and_unknown_cas() {
    let c = Cluster::start_tls(3).await;
    let client = c.client();
    let lease = client.grant(Duration::from_secs(10)).await.unwrap().lease_id;
    let w = client.put_instance("web", "a", &common::spec(80, Some(lease))).await.unwrap();
    assert!(w.revision > 0);
    // A follower forwards to the leader over HTTPS, with its node certificate.
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    c.client_for(&[follower]).put_instance("web", "b", &common::spec(81, Some(lease))).await.unwrap();
    assert_eq!(c.client_for(&[follower]).service("web", false).await.unwrap().instances.len(), 2);

    let addr = c.nodes[&follower].url.trim_start_matches("https://").to_string();
    // Plain HTTP against a TLS node: no answer, and counted.
    let plain = reqwest::Client::new().get(format!("http://{addr}/v1/services")).timeout(Duration::from_secs(5)).send().await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // A client trusting another CA does not accept the node.
    let other = tempfile::tempdir().unwrap();
    registry::tls::init::init(other.path(), &["127.0.0.1".to_string()]).unwrap();
    let wrong_ca = https_client(&other.path().join("ca.pem"), None).get(format!("https://{addr}/v1/services")).send().await;
    assert!(wrong_ca.is_err(), "a client trusting another CA accepted the node: {wrong_ca:?}");
    // A client certificate from another CA is refused in the handshake.
    let certs = c.tls_dir.clone().unwrap();
    let foreign = https_client(&certs.join("ca.pem"), Some((&other.path().join("node-127.0.0.1.pem"), &other.path().join("node-127.0.0.1-key.pem"))))
        .get(format!("https://{addr}/v1/services"))
        .send()
        .await;
    assert!(foreign.is_err(), "a certificate from another CA was accepted: {foreign:?}");
    let metrics = https_client(&certs.join("ca.pem"), None).get(format!("https://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(counter(&metrics, r#"registry_tls_handshake_failures_total{reason="handshake_failed"}"#) >= 2, "{metrics}");
}

/// Peers verify each other against the cluster CA in both directions: a member whose node
/// certificate comes from another CA (same host, same membership) is refused by the others when
/// it calls them, and refuses their certificates when they call it. The other two keep the
/// quorum and serve; it never learns a leader and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holding_another_cas_certificate_is_kept_out() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    registry::tls::init::init(ours.path(), &["127.0.0.1".to_string()]).unwrap();
    registry::tls::init::init(theirs.path(), &["127.0.0.1".to_string()]).unwrap();
    let (a, b) = (common::node_tls_files(ours.path()), common::node_tls_files(theirs.path()));
    let c = Cluster::start_tls_by(3, move |id| if id == 3 { b.clone() } else { a.clone() }, &[1, 2]).await;
    c.wait_leader(Some(&[1, 2])).await;
    let good = |id: u64| c.nodes[&id].url.clone();
    let client = client::Client::builder(&[good(1), good(2)])
        .unwrap()
        .tls(&client::TlsFiles { ca: Some(ours.path().join("ca.pem")), cert: None, key: None })
        .unwrap()
        .build()
        .unwrap();
    client.put_instance("web", "a", &common::spec(80, None)).await.unwrap();
    let failures = |id: u64, ca: &Path| {
        let (url, http) = (c.nodes[&id].url.clone(), https_client(ca, None));
        async move {
            let text = http.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
            Some(counter(&text, r#"registry_tls_handshake_failures_total{reason="handshake_failed"}"#))
        }
    };
    // Both directions refused: node 3 turns away the leader's appends, and the others turn away
    // node 3's own requests once it tries to campaign.
    wait_until(Duration::from_secs(15), "handshake failures on node 3 and on a right node", || async {
        let on_3 = failures(3, &theirs.path().join("ca.pem")).await?;
        let on_ours = failures(1, &ours.path().join("ca.pem")).await? + failures(2, &ours.path().join("ca.pem")).await?;
        (on_3 > 0 && on_ours > 0).then_some(())
    })
    .await;
    let m3 = c.nodes[&3].node.raft_metrics();
    assert_eq!((m3.current_leader, m3.last_applied), (None, None), "node 3 followed a cluster whose CA it does not trust");
    // None of node 3's requests lands (it asks for pre-votes no one can answer): nodes 1 and
    // 2 never vote for it or name it leader.
    c.wait_leader(Some(&[1, 2])).await;
    for id in [1, 2] {
        let m = c.nodes[&id].node.raft_metrics();
        assert!(m.vote.leader_id().voted_for() != Some(3) && m.current_leader != Some(3), "node {id}: {}", m.vote);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_only_a_node_certificate_makes_a_peer() {
    let c = Cluster::start_tls(3).await;
    let leader = c.wait_leader(None).await;
    let follower = c.others(&[leader])[0];
    let term = c.nodes[&follower].node.raft_metrics().current_term;
    let certs = c.tls_dir.clone().unwrap();
    let ca = certs.join("ca.pem");
    let append =
        serde_json::to_value(AppendEntriesRequest::<TypeConfig> { vote: Vote::new_committed(100, 9), prev_log_id: None, leader_commit: None, entries: vec![] })
            .unwrap();
    let url = format!("{}/raft/append", c.nodes[&follower].url);
    // The CA signs a node certificate for a host that is no member's (127.0.0.2).
    registry::tls::init::init(&certs, &["127.0.0.2".to_string()]).unwrap();
    // No certificate, a client one, or a node one for a non-member host: refused, and the
    // cluster secret proves nothing here.
    for (who, http) in [
        ("no certificate", https_client(&ca, None)),
        ("a client certificate", https_client(&ca, Some((&certs.join("client.pem"), &certs.join("client-key.pem"))))),
        ("a node certificate for another host", https_client(&ca, Some((&certs.join("node-127.0.0.2.pem"), &certs.join("node-127.0.0.2-key.pem"))))),
    ] {
        let resp = http.post(&url).header(proto::CLUSTER_SECRET_HEADER, common::CLUSTER_SECRET).json(&append).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{who}");
        let body: proto::ErrorBody = resp.json().await.unwrap();
        assert_eq!(body.code, proto::ErrorCode::Forbidden, "{who}");
        let resp = http
            .post(format!("{}/v1/cluster/members", c.nodes[&leader].url))
            .json(&serde_json::json!({ "id": 9, "addr": "127.0.0.1:1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{who}: membership change");
    }
    assert_eq!(c.nodes[&follower].node.raft_metrics().current_term, term, "a refused append moved the term");
    let metrics = https_client(&ca, None).get(format!("{}/metrics", c.nodes[&follower].url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(counter(&metrics, r#"registry_auth_denied_total{reason="no_node_certificate"}"#), 3, "{metrics}");

    // The control: with the node certificate the same append reaches Raft.
    let node = https_client(&ca, Some((&certs.join("node-127.0.0.1.pem"), &certs.join("node-127.0.0.1-key.pem"))));
    let resp = node.post(&url).json(&append).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    testkit::wait_for(Duration::from_secs(5), "the follower to take term 100", || async {
        (c.nodes[&follower].node.raft_metrics().current_term >= 100).then_some(())
    })
    .await;
}

/// The client crate: a CA makes scheme-less addresses https, and refuses plain http beside it;
/// an https address without a CA is refused.
#[test]
fn client_tls_settings_decide_the_scheme_and_refuse_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    registry::tls::init::init(dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let tls = client::TlsFiles { ca: Some(dir.path().join("ca.pem")), cert: None, key: None };
    let c = client::Client::builder(&["127.0.0.1:7401"]).unwrap().tls(&tls).unwrap().build().unwrap();
    assert_eq!(c.urls(), ["https://127.0.0.1:7401"]);
    let err = client::Client::builder(&["http://127.0.0.1:7401"]).unwrap().tls(&tls).unwrap().build().err().unwrap();
    assert!(err.to_string().contains("plain http://"), "{err}");
    let err = client::Client::builder(&["https://127.0.0.1:7401"]).unwrap().build().err().unwrap();
    assert!(err.to_string().contains("--ca-file"), "{err}");
    let half = client::TlsFiles { cert: Some(dir.path().join("client.pem")), ..tls };
    assert!(client::Client::builder(&["127.0.0.1:7401"]).unwrap().tls(&half).is_err(), "--cert without --key");
}
