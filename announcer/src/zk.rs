//! Publishing to ZooKeeper (ZooKeeper stays a first-class backend: docs/announcer.md): one ephemeral
//! znode per instance at `/<service>/<instance id>` (e.g. `/web-servers/10.0.0.5:8080`) holding
//! the announcement as JSON, all under one session per announcer process.
//!
//! The session plays the lease's part: the client library pings in the background, and when
//! the session expires (the process stalled, or ZooKeeper lost it) the server deletes our
//! znodes. We notice (`tick` and `sync` look at the session state), open a new session and
//! answer `Lost`, so the agent publishes everything again.
//!
//! Only this module knows `zookeeper_client`.

use std::time::Duration;

use zookeeper_client as zk;

use crate::publish::{Desired, Key, PublishError, Publisher};

/// How many times one znode is retried when another session races us (it re-creates the node
/// between our delete and our create, or changes its version between read and write).
const RACE_ATTEMPTS: usize = 5;

pub struct ZkPublisher {
    /// Connect string: `HOST:PORT[,HOST:PORT...][/chroot]`.
    connect: String,
    session_timeout: Duration,
    /// `None` until the first successful connect, and after a session was given up.
    client: Option<zk::Client>,
    /// What we believe our current session holds, with the data written. Emptied whenever the
    /// session changes: a new session owns nothing.
    published: Desired,
    /// `--zookeeper-auth-file`: the digest identity our znodes are written under.
    auth: Option<proto::ZkDigest>,
}

impl ZkPublisher {
    /// A publisher that connects on the first `sync`: a ZooKeeper that is down when the
    /// announcer starts is an `Unavailable` to retry, not a startup failure.
    pub fn new(connect: &str, session_timeout: Duration) -> ZkPublisher {
        ZkPublisher { connect: connect.to_string(), session_timeout, client: None, published: Desired::new(), auth: None }
    }

    /// Authenticates every session with this digest identity and writes znodes that only it may
    /// change (anyone may read them, as the syncer and other readers do).
    pub fn with_auth(mut self, auth: Option<proto::ZkDigest>) -> ZkPublisher {
        self.auth = auth;
        self
    }

    /// Connects right away (for callers that want to fail early).
    pub async fn connect(connect: &str, session_timeout: Duration) -> Result<ZkPublisher, PublishError> {
        let mut p = ZkPublisher::new(connect, session_timeout);
        p.open_session().await?;
        Ok(p)
    }

    /// The current session's id, if one is open.
    pub fn session_id(&self) -> Option<i64> {
        self.client.as_ref().map(|c| c.session_id().0)
    }

    async fn open_session(&mut self) -> Result<&zk::Client, PublishError> {
        // Fail eagerly: with every server refusing connections, answer at once instead of
        // retrying for a whole session timeout; the agent retries with backoff anyway.
        let mut connector = zk::Client::connector().with_session_timeout(self.session_timeout).with_fail_eagerly();
        if let Some(a) = &self.auth {
            connector = connector.with_auth("digest", a.as_bytes());
        }
        let connecting = connector.connect(&self.connect);
        // A server that accepts the TCP connection but never answers (stopped, overloaded)
        // would otherwise hold the agent's loop; the library's own limit is about this long.
        let client = match tokio::time::timeout(self.session_timeout + Duration::from_secs(1), connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(PublishError::Unavailable(format!("connecting to ZooKeeper {}: {e}", self.connect))),
            Err(_) => return Err(PublishError::Unavailable(format!("connecting to ZooKeeper {}: no session within {:?}", self.connect, self.session_timeout))),
        };
        // The server clamps the timeout into its [min, max] bounds (2..20 ticks by default);
        // say so, since it is then not the TTL the operator configured.
        if client.session_timeout() != self.session_timeout {
            tracing::warn!(requested = ?self.session_timeout, negotiated = ?client.session_timeout(), "ZooKeeper changed the session timeout");
        }
        tracing::info!(session = %client.session_id(), timeout = ?client.session_timeout(), zookeeper = %self.connect, "ZooKeeper session open");
        self.published.clear();
        Ok(self.client.insert(client))
    }

    /// The session is gone and took our znodes with it: forget it, try to open a new one right
    /// away (so the agent's next `sync` has a session), and tell the agent to publish again.
    async fn lost(&mut self, why: String) -> PublishError {
        tracing::warn!(session = ?self.client.as_ref().map(|c| c.session_id()), "{why}; opening a new session and publishing again");
        self.client = None;
        self.published.clear();
        if let Err(e) = self.open_session().await {
            tracing::warn!(error = %e, "no new ZooKeeper session yet; will retry");
        }
        PublishError::Lost(why)
    }

    /// Classifies a ZooKeeper error. Session-level failures become `Lost` (after opening a new
    /// session), connection-level ones `Unavailable`, the rest `Rejected`.
    async fn fail(&mut self, what: &str, e: zk::Error) -> PublishError {
        match e {
            zk::Error::SessionExpired | zk::Error::SessionMoved => self.lost(format!("{what}: ZooKeeper session ended ({e})")).await,
            zk::Error::ClientClosed => {
                // Our session task ended (expired or closed underneath us): same as expiry.
                self.lost(format!("{what}: ZooKeeper session closed")).await
            }
            zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::NoHosts | zk::Error::Throttled | zk::Error::NotReadOnly => {
                PublishError::Unavailable(format!("{what}: {e}"))
            }
            e => PublishError::Rejected(format!("{what}: {e}")),
        }
    }

    /// A live session, opening one if there is none. An expired or closed one is `Lost`.
    async fn session(&mut self) -> Result<zk::Client, PublishError> {
        match &self.client {
            None => Ok(self.open_session().await?.clone()),
            Some(c) => match c.state() {
                zk::SessionState::Expired => Err(self.lost("ZooKeeper session expired".into()).await),
                zk::SessionState::Closed | zk::SessionState::AuthFailed => {
                    let s = c.state();
                    Err(self.lost(format!("ZooKeeper session ended ({s})")).await)
                }
                _ => Ok(c.clone()),
            },
        }
    }

    async fn sync_all(&mut self, desired: &Desired) -> Result<(), PublishError> {
        let client = self.session().await?;
        let me = client.session_id().0;
        for (key, ann) in desired {
            let path = znode_path(key)?;
            let data = serde_json::to_vec(ann).map_err(|e| PublishError::Rejected(format!("encoding {path}: {e}")))?;
            // Recorded before the request: if the answer is lost, the znode may exist anyway,
            // and removing it later must not be forgotten (removal checks the owner first).
            self.published.insert(key.clone(), ann.clone());
            if let Err(e) = put(&client, me, &path, &data, acls(self.auth.is_some())).await {
                return Err(self.fail(&format!("publishing {path}"), e).await);
            }
        }
        let stale: Vec<Key> = self.published.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        for key in stale {
            let path = znode_path(&key)?;
            if let Err(e) = remove(&client, me, &path).await {
                return Err(self.fail(&format!("removing {path}"), e).await);
            }
            tracing::info!(%path, "znode removed");
            self.published.remove(&key);
        }
        Ok(())
    }

    /// Checks that every znode we published is still there, ours, and holds what we wrote.
    /// Someone deleting or overwriting one (an operator, a script) is repaired by the agent's
    /// next `sync`.
    async fn verify(&mut self, client: &zk::Client) -> Result<(), PublishError> {
        let me = client.session_id().0;
        let mut drift = Vec::new();
        for (key, ann) in &self.published {
            let path = znode_path(key)?;
            let want = serde_json::to_vec(ann).map_err(|e| PublishError::Rejected(e.to_string()))?;
            match client.get_data(&path).await {
                Ok((data, stat)) if stat.ephemeral_owner == me && data == want => {}
                Ok((_, stat)) => drift.push(format!("{path} was changed by another session (owner {:#x})", stat.ephemeral_owner)),
                Err(zk::Error::NoNode) => drift.push(format!("{path} was deleted")),
                Err(e) => return Err(self.fail(&format!("reading {path}"), e).await),
            }
        }
        if drift.is_empty() {
            return Ok(());
        }
        // Make the next sync write them again (it re-checks every node anyway).
        let why = drift.join("; ");
        tracing::warn!("{why}; publishing again");
        Err(PublishError::Lost(why))
    }
}

impl Publisher for ZkPublisher {
    /// A third of the session timeout, like the registry's TTL/3: an expiry is noticed well
    /// before a second one could pass unnoticed. The library pings on its own; `tick` only
    /// looks at the session and our znodes.
    fn tick_interval(&self) -> Duration {
        (self.session_timeout / 3).max(Duration::from_millis(100))
    }

    async fn sync(&mut self, desired: &Desired) -> Result<(), PublishError> {
        // While disconnected the library holds requests until it reconnects or the session
        // expires (up to 1.4 × the timeout); the agent must stay responsive meanwhile.
        let limit = self.session_timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, self.sync_all(desired)).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Unavailable(format!("ZooKeeper did not answer within {limit:?}"))),
        }
    }

    async fn tick(&mut self) -> Result<(), PublishError> {
        let Some(client) = self.client.clone() else {
            // No session: nothing is published, and the agent's retried `sync` connects.
            return Ok(());
        };
        match client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                let limit = self.session_timeout.max(Duration::from_secs(1));
                match tokio::time::timeout(limit, self.verify(&client)).await {
                    Ok(r) => r,
                    Err(_) => Err(PublishError::Unavailable(format!("ZooKeeper did not answer within {limit:?}"))),
                }
            }
            // The library is reconnecting; the session (and our znodes) live on until the
            // server expires it, which the next tick sees.
            zk::SessionState::Disconnected => {
                Err(PublishError::Unavailable(format!("disconnected from ZooKeeper {} (session {})", self.connect, client.session_id())))
            }
            zk::SessionState::Expired => Err(self.lost(format!("ZooKeeper session {} expired", client.session_id())).await),
            s => Err(self.lost(format!("ZooKeeper session {} ended ({s})", client.session_id())).await),
        }
    }

    async fn shutdown(&mut self) -> Result<(), PublishError> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let published = std::mem::take(&mut self.published);
        let mut result = Ok(());
        if !client.state().is_terminated() {
            // Delete explicitly rather than rely on the session close alone: the znodes are
            // gone before we exit, and a failed close cannot leave them for a whole timeout.
            let me = client.session_id().0;
            for key in published.keys() {
                let Ok(path) = znode_path(key) else { continue };
                match tokio::time::timeout(self.session_timeout, remove(&client, me, &path)).await {
                    Ok(Ok(())) => tracing::info!(%path, "znode removed"),
                    Ok(Err(e)) => result = Err(PublishError::Unavailable(format!("removing {path}: {e}"))),
                    Err(_) => result = Err(PublishError::Unavailable(format!("removing {path}: timed out"))),
                }
            }
        }
        // Dropping the last client handle makes the library send CloseSession; wait for it so
        // the process does not exit with the request unsent.
        let mut state = client.state_watcher();
        let id = client.session_id();
        drop(client);
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if state.peek_state().is_terminated() {
                    return;
                }
                state.changed().await;
            }
        })
        .await;
        match closed {
            Ok(()) => tracing::info!(session = %id, "ZooKeeper session closed"),
            Err(_) => tracing::warn!(session = %id, "ZooKeeper session did not close in time; it will expire"),
        }
        result
    }
}

/// `/<service>/<instance id>`. Both parts become single path segments, so they must not be
/// empty, `.`/`..`, or contain `/` (ZooKeeper rejects the first ones; the last would nest).
fn znode_path((service, instance): &Key) -> Result<String, PublishError> {
    for part in [service, instance] {
        if part.is_empty() || part == "." || part == ".." || part.contains('/') || part.contains('\0') {
            return Err(PublishError::Rejected(format!("{part:?} cannot be a ZooKeeper node name")));
        }
    }
    Ok(format!("/{service}/{instance}"))
}

/// With a digest identity: it may do anything, anyone else only read. Without: anyone anything,
/// as ZooKeeper's own default.
static OWNED: [zk::Acl; 2] = [zk::Acl::new_const(zk::Permission::ALL, "auth", ""), zk::Acl::new_const(zk::Permission::READ, "world", "anyone")];

fn acls(authenticated: bool) -> zk::Acls<'static> {
    if authenticated {
        zk::Acls::new(&OWNED)
    } else {
        zk::Acls::anyone_all()
    }
}

fn parent(path: &str) -> &str {
    &path[..path.rfind('/').unwrap_or(0)]
}

/// Makes `path` an ephemeral znode of session `me` holding `data`: creates it (and its
/// parents), updates it if it is ours with other data, and replaces it if another session owns
/// it. That other session is normally our own previous one (the announcer restarted, or its
/// session expired and the server has not removed the node yet): the node names our
/// instance, so it is ours to replace.
async fn put(client: &zk::Client, me: i64, path: &str, data: &[u8], acls: zk::Acls<'static>) -> Result<(), zk::Error> {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(acls);
    let mut last = zk::Error::NodeExists;
    for _ in 0..RACE_ATTEMPTS {
        match client.create(path, data, &ephemeral).await {
            Ok(_) => {
                tracing::info!(%path, session = %client.session_id(), "znode created");
                return Ok(());
            }
            Err(zk::Error::NoNode) => {
                // The service's parent is persistent and shared by every instance; mkdir
                // ignores NodeExists, so announcers racing to create it are fine.
                let persistent = zk::CreateMode::Persistent.with_acls(acls);
                client.mkdir(parent(path), &persistent).await?;
                continue;
            }
            Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
        let (current, stat) = match client.get_data(path).await {
            Ok(v) => v,
            // Deleted between our create and our read: create again.
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        if stat.ephemeral_owner == me {
            if current == data {
                return Ok(());
            }
            match client.set_data(path, data, Some(stat.version)).await {
                Ok(_) => {
                    tracing::info!(%path, "znode updated");
                    return Ok(());
                }
                Err(e @ (zk::Error::BadVersion | zk::Error::NoNode)) => last = e,
                Err(e) => return Err(e),
            }
        } else {
            tracing::warn!(%path, owner = format!("{:#x}", stat.ephemeral_owner), "znode held by another session (a stale one of ours?); replacing it");
            match client.delete(path, Some(stat.version)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e @ zk::Error::BadVersion) => last = e,
                Err(e) => return Err(e),
            }
        }
    }
    Err(last)
}

/// Deletes `path` if session `me` owns it. A node someone else owns now is left alone: it is
/// not ours to remove.
async fn remove(client: &zk::Client, me: i64, path: &str) -> Result<(), zk::Error> {
    for _ in 0..RACE_ATTEMPTS {
        let stat = match client.check_stat(path).await? {
            None => return Ok(()),
            Some(s) => s,
        };
        if stat.ephemeral_owner != me {
            return Ok(());
        }
        match client.delete(path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::BadVersion) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(zk::Error::BadVersion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Announcement;

    fn key(s: &str, i: &str) -> Key {
        (s.to_string(), i.to_string())
    }

    #[test]
    fn paths_follow_the_existing_layout() {
        assert_eq!(znode_path(&key("web-servers", "10.0.0.5:8080")).unwrap(), "/web-servers/10.0.0.5:8080");
        assert_eq!(parent("/web-servers/10.0.0.5:8080"), "/web-servers");
    }

    #[test]
    fn names_that_would_nest_or_break_are_rejected() {
        for (s, i) in [("", "a"), ("web", ""), ("web", ".."), ("a/b", "c"), ("web", "x/y")] {
            assert!(matches!(znode_path(&key(s, i)), Err(PublishError::Rejected(_))), "{s:?} {i:?}");
        }
    }

    #[test]
    fn data_is_the_json_the_syncer_reads() {
        let a = Announcement {
            address: "10.0.0.5".into(),
            port: 8080,
            weight: 100,
            state: proto::InstanceState::Drain,
            meta: [("zone".to_string(), "a".to_string())].into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"host": "10.0.0.5", "port": 8080, "weight": 100, "state": "drain", "meta": {"zone": "a"}}));
    }

    #[tokio::test]
    async fn a_zookeeper_that_is_down_is_retriable_not_fatal() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = ZkPublisher::new(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
        let desired = Desired::new();
        let e = p.sync(&desired).await.unwrap_err();
        assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
        assert!(e.is_retriable());
        // Nothing was published, so there is nothing to keep alive or remove.
        p.tick().await.unwrap();
        p.shutdown().await.unwrap();
    }
}
