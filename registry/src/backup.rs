//! Backups: the snapshot document (`GET /v1/snapshot`, `registry snapshot save`), its check
//! (`inspect`), and seeding a new cluster's data directory from one (`restore`).
//!
//! A restored node starts from a state machine snapshot at the document's revision, whose
//! membership is the new cluster's `--peers`, with an empty log and no vote: every node of the
//! new cluster is seeded from the same document, so their logs agree, and they elect a leader
//! as after any restart. Revisions go on from the document's, so a watcher's next revision is
//! later than anything it saw. The old cluster's own records do not carry over: its id, which
//! members had started, and the request-replay window. Leases do, with their ids, and get a
//! fresh TTL from the new leader (it knows of no renewal), so announcers that keep renewing
//! them re-attach with nothing lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{BasicNode, CommittedLeaderId, Membership};
use proto::{SnapshotCounts, SnapshotDocument, SNAPSHOT_FORMAT, SNAPSHOT_VERSION};
use sha2::{Digest, Sha256};

use crate::state_machine::{Applied, StateMachine};
use crate::store::Store;
use crate::types::{LogId, NodeId, SnapshotMeta, StoredMembership};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The checksum of a document's `store`: over the JSON value as it is in the file (keys
/// sorted), not over a re-encoding of the registry's `Store`, so a later version that adds a
/// field to `Store` still reads old backups as intact.
fn checksum(store: &serde_json::Value) -> String {
    sha256_hex(&serde_json::to_vec(store).expect("a JSON value serializes"))
}

/// The document for `store`, taken at `taken_at_ms`.
pub fn document(store: &Store, taken_at_ms: u64) -> SnapshotDocument {
    let value = serde_json::to_value(store).expect("the store serializes");
    SnapshotDocument {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        cluster_id: store.cluster_id().map(str::to_string),
        revision: store.revision(),
        taken_at_ms,
        counts: counts(store),
        sha256: checksum(&value),
        store: value,
    }
}

fn counts(store: &Store) -> SnapshotCounts {
    SnapshotCounts { services: store.services().len(), instances: store.instance_count(), leases: store.leases().len(), tokens: store.acl().tokens.len() }
}

/// Reads and checks a snapshot file: its format and version, that the store decodes, that its
/// checksum and counts match. Returns the document and its store.
pub fn read(path: &Path) -> Result<(SnapshotDocument, Store), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let doc: SnapshotDocument = serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a registry snapshot: {e}", path.display()))?;
    if doc.format != SNAPSHOT_FORMAT {
        return Err(format!("{}: format {:?}, expected {SNAPSHOT_FORMAT:?}", path.display(), doc.format));
    }
    if doc.version != SNAPSHOT_VERSION {
        return Err(format!("{}: snapshot version {} is not one this registry reads ({SNAPSHOT_VERSION})", path.display(), doc.version));
    }
    let sum = checksum(&doc.store);
    if sum != doc.sha256 {
        return Err(format!("{}: checksum mismatch (file says {}, content is {sum}): the file is damaged", path.display(), doc.sha256));
    }
    let store: Store = serde_json::from_value(doc.store.clone()).map_err(|e| format!("{}: the store does not decode: {e}", path.display()))?;
    if counts(&store) != doc.counts || store.revision() != doc.revision {
        return Err(format!("{}: the header does not match the content", path.display()));
    }
    Ok((doc, store))
}

/// Seeds `data_dir` (which must be missing or empty) for node `id` of a new cluster of
/// `peers`, from a checked snapshot.
/// How far past the backup's revision a restored cluster starts, unless told otherwise: far more
/// writes than the old cluster could have made between the backup and its loss, so no revision,
/// lease id or token id it handed out is handed out again, and every watcher re-lists.
pub const DEFAULT_BUMP: u64 = 1_000_000_000;

pub fn restore(store: Store, data_dir: &Path, id: NodeId, peers: &BTreeMap<NodeId, String>, bump: u64) -> Result<(), String> {
    if !peers.contains_key(&id) {
        return Err(format!("--id {id} is not one of --peers ({:?})", peers.keys().collect::<Vec<_>>()));
    }
    match std::fs::read_dir(data_dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(format!("{} is not empty: restore seeds a new data directory only", data_dir.display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", data_dir.display())),
    }
    let store = store.restored(bump);
    // Term 0, as the entries before a cluster's first election: the new cluster's terms start
    // at 1 and are always later.
    let log_id = LogId::new(CommittedLeaderId::new(0, 0), store.revision());
    let voters: BTreeSet<NodeId> = peers.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes));
    let meta = SnapshotMeta { last_log_id: Some(log_id), last_membership: membership.clone(), snapshot_id: format!("restored-{}", store.revision()) };
    let applied = Applied { last_applied: Some(log_id), membership, store };
    StateMachine::seed(&data_dir.join("state"), &meta, &applied).map_err(|e| format!("writing {}: {e}", data_dir.display()))?;
    // The seed holds token hashes and every instance's meta: the node's user only.
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(data_dir.to_path_buf(), 0o700), (data_dir.join("state"), 0o700), (data_dir.join("state/snapshot"), 0o600)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// `registry snapshot save FILE`: the backup from the leader, written to a new file (0600).
pub async fn save(client: &client::Client, path: &Path) -> Result<String, String> {
    // Refused before anything is fetched if the file exists.
    if path.symlink_metadata().is_ok() {
        return Err(format!("{} exists; not overwriting it", path.display()));
    }
    let doc = client.snapshot().await.map_err(|e| e.to_string())?;
    let json = serde_json::to_string(&doc).expect("a document serializes");
    crate::cli::stage_secret(path, &json)?.commit()?;
    Ok(format!("{}\nsaved to {}\n", summary(&doc), path.display()))
}

/// `registry snapshot inspect FILE`: checks it and says what it holds.
pub fn inspect(path: &Path, json: bool) -> Result<String, String> {
    let (doc, _) = read(path)?;
    if json {
        let mut head = serde_json::to_value(&doc).expect("a document serializes");
        head.as_object_mut().expect("an object").remove("store");
        return Ok(format!("{}\n", serde_json::to_string_pretty(&head).expect("serializes")));
    }
    Ok(format!("{}\nchecksum: ok (sha256 {})\n", summary(&doc), doc.sha256))
}

fn summary(doc: &SnapshotDocument) -> String {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(doc.taken_at_ms);
    format!(
        "revision {} of cluster {}, taken {}: {} services, {} instances, {} leases, {} tokens",
        doc.revision,
        doc.cluster_id.as_deref().unwrap_or("(unnamed)"),
        humantime::format_rfc3339_seconds(when),
        doc.counts.services,
        doc.counts.instances,
        doc.counts.leases,
        doc.counts.tokens
    )
}

/// `registry snapshot restore FILE --data-dir DIR --id N --peers ...`.
pub fn restore_command(path: &Path, data_dir: &Path, id: NodeId, peers: &str, bump: u64) -> Result<String, String> {
    let peers = crate::config::parse_peers(peers).map_err(|e| e.join("; "))?;
    let (doc, store) = read(path)?;
    restore(store, data_dir, id, &peers, bump)?;
    Ok(format!(
        "{}\nseeded {} for node {id} of a new cluster of {} nodes; start it with\n  registry serve --id {id} --data-dir {} --peers {} ...\n",
        summary(&doc),
        data_dir.display(),
        peers.len(),
        data_dir.display(),
        peers.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Cmd;

    fn sample() -> Store {
        let mut s = Store::default();
        s.apply(1, 1, &Cmd::InitCluster { cluster_id: "old".into() }.into());
        s.apply(2, 1, &Cmd::GrantLease { ttl_ms: 3000, owner: None, token: None }.into());
        s
    }

    #[test]
    fn a_document_reads_back_and_a_changed_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.json");
        let doc = document(&sample(), 7);
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let (back, store) = read(&path).unwrap();
        assert_eq!((back.revision, back.counts.leases, store.revision()), (2, 1, 2));
        // A lease TTL changed in the file: still valid JSON, but not what was saved.
        let tampered = String::from_utf8(std::fs::read(&path).unwrap()).unwrap().replace("3000", "3001");
        std::fs::write(&path, tampered).unwrap();
        assert!(read(&path).unwrap_err().contains("checksum mismatch"));
    }

    /// A backup written before a field was added to `Store` (one with a default) still reads:
    /// the checksum is over the file's own value, not over a re-encoding.
    #[test]
    fn a_backup_without_a_later_field_still_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        let mut doc = document(&sample(), 7);
        doc.store.as_object_mut().unwrap().remove("removals").expect("the store has removals");
        doc.sha256 = checksum(&doc.store);
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let (_, store) = read(&path).unwrap();
        assert_eq!(store.revision(), 2);
    }

    #[test]
    fn restore_refuses_a_used_directory_and_an_id_outside_the_peers() {
        let dir = tempfile::tempdir().unwrap();
        let peers: BTreeMap<NodeId, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
        assert!(restore(sample(), dir.path(), 3, &peers, 0).unwrap_err().contains("--id 3"));
        std::fs::write(dir.path().join("x"), b"").unwrap();
        assert!(restore(sample(), dir.path(), 1, &peers, 0).unwrap_err().contains("not empty"));
        assert!(restore(sample(), &dir.path().join("x"), 1, &peers, 0).is_err(), "a file is not an empty directory");
        let fresh = dir.path().join("new");
        restore(sample(), &fresh, 1, &peers, 1000).unwrap();
        let sm = StateMachine::open(&fresh.join("state"), 10, 1 << 20).unwrap();
        let d = sm.shared();
        let d = d.read();
        assert_eq!(d.store.revision(), 1002, "revisions go on past the bump");
        assert_eq!(d.store.cluster_id(), None, "the old cluster's id does not carry over");
        assert_eq!(d.membership.membership().voter_ids().collect::<Vec<_>>(), vec![1, 2]);
    }
}
