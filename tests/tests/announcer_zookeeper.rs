//! The announcer in ZooKeeper mode against a real ZooKeeper 3.8 (tests/src/zookeeper.rs): its
//! ephemeral znode appears and vanishes with the process, and survives a session expiry by
//! being re-created under a new session.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use e2e::zookeeper::{four_letter, Zookeeper};
use e2e::{binary, free_port, wait_for};
use serde_json::json;
use tokio::time::Instant;
use zookeeper_client as zk;

/// Session timeout the announcer asks for (its `--ttl`). ZooKeeper's tick in the harness is
/// 200 ms, so this is 10 ticks.
const TTL: Duration = Duration::from_secs(2);

/// A running `announcer` whose exit status the test can check (the harness's `Proc` reaps it
/// without keeping the status). Killed on drop; prints its log if the test panics.
struct Announcer {
    child: Option<Child>,
    log: PathBuf,
}

impl Announcer {
    fn start(zk: &Zookeeper, address: &str, ttl: Duration, log_dir: &Path) -> Announcer {
        Self::start_with(zk, address, ttl, log_dir, &[])
    }

    fn start_with(zk: &Zookeeper, address: &str, ttl: Duration, log_dir: &Path, extra: &[&str]) -> Announcer {
        let log = log_dir.join("announcer.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let ttl = format!("{}ms", ttl.as_millis());
        let child = Command::new(binary("announcer"))
            .args(["--zookeeper", &zk.addr(), "--service", "web-servers", "--address", address])
            .args(["--weight", "7", "--meta", "zone=a", "--ttl", &ttl, "--drain", "0s", "--admin", "off"])
            .args(extra)
            .env("RUST_LOG", std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting announcer");
        Announcer { child: Some(child), log }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("announcer was reaped").id();
        // SAFETY: kill(2) on our own child, which is not reaped yet (so the pid is still ours).
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit and returns its status.
    async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("announcer was reaped");
        let status = wait_for(limit, "the announcer to exit", || {
            let s = child.try_wait().unwrap();
            async move { s }
        })
        .await;
        self.child = None;
        status
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- announcer log ({}) -----\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        if let Some(mut c) = self.child.take() {
            // A SIGSTOPped process still dies of SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn expected(port: u16) -> serde_json::Value {
    json!({"host": "127.0.0.1", "port": port, "weight": 7, "state": "up", "meta": {"zone": "a"}})
}

#[tokio::test]
async fn zookeeper_harness_holds_ephemeral_nodes() {
    let mut zk = Zookeeper::start().await;
    assert_eq!(four_letter(&zk.addr(), "ruok").as_deref(), Some("imok"));

    let session = zk.connect(TTL).await.unwrap();
    // The harness's bounds let a test have the session timeout it asks for.
    assert_eq!(session.session_timeout(), TTL);
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    session.create("/svc", b"", &persistent).await.unwrap();
    session.create("/svc/a:1", br#"{"host":"a","port":1}"#, &ephemeral).await.unwrap();

    assert_eq!(zk.children("/svc").await.unwrap(), vec!["a:1".to_string()]);
    assert_eq!(zk.children("/nothing-here").await.unwrap(), Vec::<String>::new());
    let (v, stat) = zk.get_json("/svc/a:1").await.unwrap().unwrap();
    assert_eq!(v, json!({"host": "a", "port": 1}));
    assert_eq!(stat.ephemeral_owner, session.session_id().0);

    // Closing the session removes its ephemeral node at once.
    drop(session);
    zk.wait_gone(Duration::from_secs(5), "/svc/a:1").await;

    // A crash and restart keeps the persistent tree (same port, same data directory).
    zk.stop();
    assert!(!zk.is_running());
    zk.start_again().await;
    assert!(zk.get("/svc").await.unwrap().is_some(), "persistent /svc lost across a restart");
}

#[tokio::test]
async fn znode_follows_the_announcer_and_survives_a_session_expiry() {
    let zk = Zookeeper::start().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let path = format!("/web-servers/{address}");
    let mut a = Announcer::start(&zk, &address, TTL, logs.path());

    // Appears with the JSON the ZooKeeper-based setups read.
    let (_, first) = zk.wait_json(Duration::from_secs(10), &path, |v, s| *v == expected(port) && s.ephemeral_owner != 0).await;
    assert_eq!(zk.children("/web-servers").await.unwrap(), vec![address.clone()]);

    // Fault: freeze the announcer for longer than its session timeout, so it cannot ping.
    // The server expires the session and deletes the znode while the process is stopped.
    let stopped_for = Duration::from_secs(5);
    let t0 = Instant::now();
    a.signal(libc::SIGSTOP);
    // Expiry is checked every tick; the session dies at TTL plus at most a tick or two.
    zk.wait_gone(stopped_for - Duration::from_millis(500), &path).await;
    assert!(t0.elapsed() < stopped_for, "znode disappeared only after the announcer was resumed");
    // A deliberate fault duration, not a wait for a condition.
    tokio::time::sleep_until(t0 + stopped_for).await;
    a.signal(libc::SIGCONT);

    // It notices the expiry (tick at TTL/3), opens a new session and publishes again.
    let (_, second) = zk.wait_json(Duration::from_secs(10), &path, |v, s| *v == expected(port) && s.ephemeral_owner != first.ephemeral_owner).await;
    assert_ne!(second.ephemeral_owner, 0);

    // SIGTERM with --drain 0s: deregisters, closes the session and exits 0.
    a.signal(libc::SIGTERM);
    let status = a.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "announcer exited with {status}");
    // Deleted before exit, not left to expire.
    assert!(zk.get(&path).await.unwrap().is_none(), "znode still there after a clean exit");
}

#[tokio::test]
async fn sigkill_leaves_the_znode_no_longer_than_the_session_timeout() {
    let zk = Zookeeper::start().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let path = format!("/web-servers/{address}");
    let mut a = Announcer::start(&zk, &address, TTL, logs.path());
    zk.wait_json(Duration::from_secs(10), &path, |v, _| *v == expected(port)).await;

    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    a.exited(Duration::from_secs(5)).await;
    zk.wait_gone(TTL + Duration::from_secs(2), &path).await;
    eprintln!("znode gone {:?} after SIGKILL (session timeout {TTL:?})", killed.elapsed());
}

#[tokio::test]
async fn a_restarted_announcer_replaces_its_stale_znode() {
    // A long session timeout, so the first process's znode is certainly still there (stale)
    // when the second one starts.
    let ttl = Duration::from_secs(10);
    let zk = Zookeeper::start().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let path = format!("/web-servers/{address}");

    let mut first = Announcer::start(&zk, &address, ttl, logs.path());
    let (_, old) = zk.wait_json(Duration::from_secs(10), &path, |v, _| *v == expected(port)).await;
    first.signal(libc::SIGKILL);
    first.exited(Duration::from_secs(5)).await;
    let restarted = Instant::now();
    let _second = Announcer::start(&zk, &address, ttl, logs.path());

    // The new process takes the node over well before the old session could have expired.
    let (_, new) = zk.wait_json(Duration::from_secs(5), &path, |v, s| *v == expected(port) && s.ephemeral_owner != old.ephemeral_owner).await;
    assert!(restarted.elapsed() < ttl, "replaced only after the old session expired");

    // When the server finally expires the old session, the replacement is not taken with it.
    zk.wait_session_expired(ttl + Duration::from_secs(5), old.ephemeral_owner).await;
    let (v, stat) = zk.get_json(&path).await.unwrap().expect("the replacement znode went with the old session");
    assert_eq!(v, expected(port));
    assert_eq!(stat.ephemeral_owner, new.ephemeral_owner);
}

#[tokio::test]
async fn the_announcer_rides_out_zookeeper_being_down() {
    let mut zk = Zookeeper::start().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let path = format!("/web-servers/{address}");

    // ZooKeeper down when the announcer starts: not fatal, it keeps trying.
    zk.stop();
    let mut a = Announcer::start(&zk, &address, TTL, logs.path());
    let log = logs.path().join("announcer.log");
    wait_for(Duration::from_secs(10), "the announcer to report ZooKeeper unavailable", || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("could not publish").then_some(())
    })
    .await;
    assert!(a.child.as_mut().unwrap().try_wait().unwrap().is_none(), "announcer exited while ZooKeeper was down");
    zk.start_again().await;
    let (_, before) = zk.wait_json(Duration::from_secs(10), &path, |v, _| *v == expected(port)).await;

    // Fault: ZooKeeper down for longer than the session timeout. The client gives the session
    // up (1.4 × timeout without an answer); the restarted server still has it, and its
    // znode, until it expires them there, so the announcer finds a stale node and replaces it.
    zk.stop();
    let down_for = TTL * 2;
    let t0 = Instant::now();
    wait_for(down_for, "the announcer to give its session up", || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("expired; opening a new session").then_some(())
    })
    .await;
    // A deliberate fault duration, not a wait for a condition.
    tokio::time::sleep_until(t0 + down_for).await;
    zk.start_again().await;
    let (_, after) = zk.wait_json(Duration::from_secs(10), &path, |v, s| *v == expected(port) && s.ephemeral_owner != before.ephemeral_owner).await;

    // The server expiring the old session leaves the new znode alone.
    zk.wait_session_expired(TTL + Duration::from_secs(5), before.ephemeral_owner).await;
    let (_, stat) = zk.get_json(&path).await.unwrap().expect("znode went with the old session");
    assert_eq!(stat.ephemeral_owner, after.ephemeral_owner);

    a.signal(libc::SIGTERM);
    assert!(a.exited(Duration::from_secs(10)).await.success());
    assert!(zk.get(&path).await.unwrap().is_none());
}

/// `--zookeeper-auth-file`: the announcer's znode can be read by anyone but changed only by its
/// digest identity; an unauthenticated session can neither delete nor overwrite it.
#[tokio::test]
async fn znodes_written_with_a_digest_identity_are_changed_only_by_it() {
    let zk = Zookeeper::start().await;
    let logs = tempfile::tempdir().unwrap();
    let auth = logs.path().join("zk-auth");
    std::fs::write(&auth, "announcer:s3cret-pass\n").unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let path = format!("/web-servers/{address}");
    let _a = Announcer::start_with(&zk, &address, TTL, logs.path(), &["--zookeeper-auth-file", auth.to_str().unwrap()]);
    zk.wait_json(Duration::from_secs(10), &path, |v, _| *v == expected(port)).await;

    let stranger = zk.connect(TTL).await.unwrap();
    assert!(matches!(stranger.delete(&path, None).await, Err(zk::Error::NoAuth)), "an unauthenticated session deleted the znode");
    assert!(matches!(stranger.set_data(&path, b"{}", None).await, Err(zk::Error::NoAuth)), "an unauthenticated session overwrote it");
    let (acl, _) = stranger.get_acl(&path).await.unwrap();
    assert!(acl.iter().any(|a| a.scheme() == "digest" && a.id().starts_with("announcer:")), "{acl:?}");
    // Still there, as the announcer wrote it.
    assert_eq!(zk.get_json(&path).await.unwrap().unwrap().0, expected(port));
}
