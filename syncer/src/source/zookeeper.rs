//! ZooKeeper as a source: the children of `/<service>` are the instances, as the setups that
//! already use ZooKeeper lay them out. A child named `host:port` is an endpoint; a child whose
//! data is JSON `{"host": ..., "port": ..., "weight"?: ..., "state"?: ...}` is one too (the data
//! wins over the name). Anything else is skipped with a warning.
//!
//! Level-triggered: any watch firing (children or data of any watched node) re-reads every
//! service in full; a periodic re-read covers a watch lost with a connection.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use proto::InstanceState;
use zookeeper_client as zk;

use super::{Backoff, Discovery, Endpoint, Feed, Snapshot, Tx};

/// Re-read everything at least this often.
const RESYNC: Duration = Duration::from_secs(5);

/// After a failed connection: 200 ms, doubling to 1.6 s, no jitter.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(1600), 0.0);

/// After a failed read within a session.
const READ_RETRY: Duration = Duration::from_millis(200);

/// Reads one child: its data if that is our JSON, else its name if that is `host:port`.
pub fn parse_child(name: &str, data: &[u8]) -> Result<Endpoint, String> {
    if let Ok(j) = serde_json::from_slice::<proto::ZnodeData>(data) {
        if proto::validate::address(&j.address).is_ok() && j.port > 0 {
            return Ok(Endpoint { address: j.address, port: j.port, weight: j.weight.min(proto::validate::MAX_WEIGHT), state: j.state });
        }
    }
    if let Some((host, port)) = name.rsplit_once(':') {
        if let (Ok(()), Ok(port)) = (proto::validate::address(host), port.parse::<u16>()) {
            if port > 0 {
                return Ok(Endpoint { address: host.to_string(), port, weight: 100, state: InstanceState::Up });
            }
        }
    }
    Err(format!("neither a host:port name nor JSON data with host and port ({} bytes of data)", data.len()))
}

type Watches = FuturesUnordered<futures::future::BoxFuture<'static, ()>>;

async fn read_all(client: &zk::Client, services: &[String], watches: &mut Watches) -> Result<Snapshot, zk::Error> {
    let mut snap = Snapshot::default();
    for service in services {
        let path = format!("/{service}");
        let mut endpoints = BTreeMap::new();
        match client.get_and_watch_children(&path).await {
            Ok((children, stat, watcher)) => {
                snap.revision = snap.revision.max(stat.pzxid as u64);
                watches.push(Box::pin(async move {
                    watcher.changed().await;
                }));
                for child in children {
                    let child_path = format!("{path}/{child}");
                    match client.get_and_watch_data(&child_path).await {
                        Ok((data, stat, watcher)) => {
                            snap.revision = snap.revision.max(stat.mzxid as u64);
                            watches.push(Box::pin(async move {
                                watcher.changed().await;
                            }));
                            match parse_child(&child, &data) {
                                Ok(e) => {
                                    endpoints.insert(child, e);
                                }
                                Err(why) => tracing::warn!(path = %child_path, %why, "skipping znode"),
                            }
                        }
                        // Gone between the listing and the read: the children watch fires.
                        Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(zk::Error::NoNode) => {
                // No such service yet: watch for its creation.
                let (_, watcher) = client.check_and_watch_stat(&path).await?;
                watches.push(Box::pin(async move {
                    watcher.changed().await;
                }));
            }
            Err(e) => return Err(e),
        }
        snap.services.insert(service.clone(), endpoints);
    }
    Ok(snap)
}

/// Runs forever, keeping `tx` current. Each full read is one `Discovery::Reset`.
/// `auth` is the digest identity to read with (`--zookeeper-auth-file`).
pub async fn run(connect: String, session_timeout: Duration, auth: Option<proto::ZkDigest>, services: Vec<String>, tx: Tx) {
    let mut feed = Feed::new(tx, "zookeeper", BACKOFF);
    loop {
        let mut connector = zk::Client::connector().with_session_timeout(session_timeout).with_fail_eagerly();
        if let Some(a) = &auth {
            connector = connector.with_auth("digest", a.as_bytes());
        }
        let connecting = connector.connect(&connect);
        let client = match tokio::time::timeout(session_timeout + Duration::from_secs(1), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tokio::time::sleep(feed.failed(format!("connecting to ZooKeeper {connect}: {e}"))).await;
                continue;
            }
            Err(_) => {
                // The timeout was the wait; the attempt still counts.
                feed.failed(format!("connecting to ZooKeeper {connect}: timed out"));
                continue;
            }
        };
        feed.reset_backoff();
        tracing::info!(session = %client.session_id(), zookeeper = %connect, "ZooKeeper session open");
        let mut state = client.state_watcher();
        loop {
            let mut watches = Watches::new();
            match read_all(&client, &services, &mut watches).await {
                Ok(snap) => feed.publish([Discovery::Reset(snap)]),
                Err(e) => {
                    feed.mark_down(format!("reading ZooKeeper: {e}"));
                    if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed) {
                        break;
                    }
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
            }
            tokio::select! {
                _ = watches.next() => {}
                _ = tokio::time::sleep(RESYNC) => {}
                s = state.changed() => {
                    if s.is_terminated() {
                        feed.mark_down(format!("ZooKeeper session ended: {s:?}"));
                        break;
                    }
                    if s == zk::SessionState::Disconnected {
                        feed.mark_down("ZooKeeper disconnected".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_by_name_or_json_data() {
        let e = parse_child("10.0.0.5:8080", b"").unwrap();
        assert_eq!((e.address.as_str(), e.port, e.weight), ("10.0.0.5", 8080, 100));
        let e = parse_child("member_0000000001", br#"{"host": "10.0.0.6", "port": 9090, "weight": 5, "state": "drain"}"#).unwrap();
        assert_eq!((e.address.as_str(), e.port, e.weight, e.state), ("10.0.0.6", 9090, 5, InstanceState::Drain));
        let e = parse_child("10.0.0.7:80", br#"{"host": "10.0.0.7", "port": 80, "meta": {"zone": "a"}}"#).unwrap();
        assert_eq!(e.port, 80);
        assert!(parse_child("member_1", b"\x00\x01binary").is_err());
        assert!(parse_child("web-1", br#"{"name": "x"}"#).is_err());
        assert_eq!(parse_child("10.0.0.8:81", b"not json").unwrap().port, 81, "unknown data, usable name");
    }
}
