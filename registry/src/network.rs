//! Peer RPC, client side: openraft's messages as JSON over HTTP to the peer's single address.
//!
//! Every RPC first asks `Faults` (the test seam) whether it may pass.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::faults::Faults;
use crate::types::{Entry, NodeId, SnapshotMeta, TypeConfig, Vote};

/// Creates one connection per peer; all share one HTTP connection pool.
#[derive(Clone)]
pub struct Network {
    pub from: NodeId,
    pub peers: crate::peer_client::PeerClient,
    pub faults: Faults,
}

pub struct Connection {
    net: Network,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection { net: self.clone(), target, addr: node.addr.clone() }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn call<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(path, body, option).await
    }

    /// Posts a JSON body already encoded.
    async fn send<Resp, E>(&self, path: &str, body: Vec<u8>, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let delay = self.net.faults.check(self.net.from, self.target).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let url = format!("{}/raft/{path}", self.net.peers.base(&self.addr));
        let request = self.net.peers.http().post(url).timeout(option.hard_ttl()).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        let body: Result<Resp, RaftError<NodeId, E>> = resp.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The most entry bytes (as JSON) one append carries, unless a single entry is larger.
pub const APPEND_BYTES: usize = 256 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes of JSON (at least one).
fn entries_within(entries: &[Entry], budget: usize) -> usize {
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        let mut size = ByteCount(0);
        let _ = serde_json::to_writer(&mut size, e);
        used += size.0;
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// Counts what is written to it: the size of a JSON encoding without keeping it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A snapshot chunk as it travels: openraft's `InstallSnapshotRequest`, with the data as
/// base64 instead of serde's JSON array of numbers (a third larger instead of about four
/// times, and far cheaper to encode and parse). An array of numbers is still accepted.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotChunk {
    vote: Vote,
    meta: SnapshotMeta,
    offset: u64,
    #[serde(serialize_with = "as_base64", deserialize_with = "base64_or_numbers")]
    data: Vec<u8>,
    done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> SnapshotChunk {
        SnapshotChunk { vote: r.vote, meta: r.meta, offset: r.offset, data: r.data, done: r.done }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest { vote: c.vote, meta: c.meta, offset: c.offset, data: c.data, done: c.done }
    }
}

fn as_base64<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
}

fn base64_or_numbers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("base64 text or an array of bytes")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(v).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Bytes)
}

impl RaftNetwork<TypeConfig> for Connection {
    /// openraft 0.9 gives an append `node::append_timeout` to arrive and be stored, and bounds it by a
    /// count of entries only. An append is cut to `APPEND_BYTES` here (at least one entry), and
    /// a cut append that succeeds is reported as `PartialSuccess` up to its last entry, so
    /// openraft sends the rest next. Large entries then catch up in several quick appends
    /// instead of one that never arrives in time.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let keep = entries_within(&rpc.entries, APPEND_BYTES);
        if keep == rpc.entries.len() {
            return self.call("append", &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.call("append", &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        // A chunk is megabytes: encode it off the async threads, so heartbeats keep going.
        let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&SnapshotChunk::from(rpc)))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send("snapshot", body, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Cmd, Proposal};

    fn entry(index: u64, cluster_id: &str) -> Entry {
        let p: Proposal = Cmd::InitCluster { cluster_id: cluster_id.into() }.into();
        Entry { log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index), payload: openraft::EntryPayload::Normal(p) }
    }

    #[test]
    fn appends_are_cut_to_the_byte_budget_but_carry_at_least_one_entry() {
        let small: Vec<Entry> = (1..=16).map(|i| entry(i, "c")).collect();
        assert_eq!(entries_within(&small, APPEND_BYTES), 16);
        let big: Vec<Entry> = (1..=16).map(|i| entry(i, &"x".repeat(60_000))).collect();
        assert_eq!(entries_within(&big, APPEND_BYTES), 4, "four 60 KB entries fit in 256 KiB");
        let huge = vec![entry(1, &"x".repeat(APPEND_BYTES * 2)), entry(2, "c")];
        assert_eq!(entries_within(&huge, APPEND_BYTES), 1);
        assert_eq!(entries_within(&[], APPEND_BYTES), 0);
    }

    #[test]
    fn snapshot_chunks_travel_as_base64_and_old_number_arrays_still_parse() {
        let chunk = SnapshotChunk { vote: Vote::new(3, 1), meta: SnapshotMeta::default(), offset: 7, data: vec![0, 1, 254, 255], done: true };
        let json = serde_json::to_value(&chunk).unwrap();
        assert_eq!(json["data"], "AAH+/w==");
        let back: SnapshotChunk = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.data, vec![0, 1, 254, 255]);
        let mut old = json;
        old["data"] = serde_json::json!([0, 1, 254, 255]);
        let back: SnapshotChunk = serde_json::from_value(old).unwrap();
        assert_eq!((back.data, back.offset, back.done), (vec![0, 1, 254, 255], 7, true));
    }
}
