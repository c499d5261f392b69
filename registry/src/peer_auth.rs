//! Who counts as a peer. Every `/raft` request, every membership change, and every request that
//! claims to be forwarded by another node, must prove it comes from a member of the cluster (or
//! an operator holding its secret); anyone else who reaches the port could otherwise force
//! elections, write the log, replace the store, or add a member of their own and be sent the
//! whole log.
//!
//! Without TLS the proof is a shared secret (`--cluster-secret-file`), which every node sends on
//! each peer request in `x-registry-cluster-secret` and which is compared in constant time. Over
//! plain HTTP it can be sniffed by whoever sees the traffic (docs/security.md).
//!
//! Architecture Invariant: this module knows no HTTP framework; `http::peer` applies it.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The header a peer request carries its proof in.
pub const SECRET_HEADER: &str = proto::CLUSTER_SECRET_HEADER;

/// Shortest accepted secret, in characters: 16 random bytes as hex or base64 are more.
pub const MIN_SECRET_LEN: usize = 22;

/// How peers prove they are members.
#[derive(Clone, Debug)]
pub enum PeerAuth {
    /// They send the cluster's shared secret.
    Secret(ClusterSecret),
    /// They connect over TLS with a node certificate the cluster CA signed (`tls`).
    NodeCertificate,
    /// Nothing is asked (`--insecure`): anyone who reaches the port is a peer.
    Insecure,
}

/// Why a request was not taken as coming from a peer; the label of
/// `registry_auth_denied_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No proof at all.
    Missing,
    /// A secret that is not the cluster's.
    WrongSecret,
    /// Under TLS: no certificate, one without the node role, or one for a host that is not a
    /// member's.
    NoNodeCertificate,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing_peer_credentials",
            Denied::WrongSecret => "wrong_cluster_secret",
            Denied::NoNodeCertificate => "no_node_certificate",
        }
    }
}

impl PeerAuth {
    /// Whether a request is a peer's: `offered` is the secret header's bytes, if any, and
    /// `node_certificate` whether its TLS connection showed a verified node certificate for a
    /// member's host.
    pub fn check(&self, offered: Option<&[u8]>, node_certificate: bool) -> Result<(), Denied> {
        match self {
            PeerAuth::Insecure => Ok(()),
            PeerAuth::NodeCertificate if node_certificate => Ok(()),
            PeerAuth::NodeCertificate => Err(Denied::NoNodeCertificate),
            PeerAuth::Secret(s) => match offered {
                None => Err(Denied::Missing),
                Some(o) if s.matches(o) => Ok(()),
                Some(_) => Err(Denied::WrongSecret),
            },
        }
    }

    /// What this node sends on its own peer requests.
    pub fn outgoing(&self) -> Option<&str> {
        match self {
            PeerAuth::Secret(s) => Some(s.expose()),
            PeerAuth::NodeCertificate | PeerAuth::Insecure => None,
        }
    }
}

/// The cluster's shared secret. Its `Debug` does not show it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret from its text, without surrounding whitespace: at least `MIN_SECRET_LEN`
    /// visible ASCII characters (it travels in a header).
    pub fn new(text: &str) -> Result<ClusterSecret, String> {
        let s = text.trim();
        if s.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret is {} characters long; it needs at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom | base64`)",
                s.len()
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the cluster secret must be visible ASCII without spaces (e.g. base64 or hex)".into());
        }
        Ok(ClusterSecret(s.into()))
    }

    /// Reads a secret file. Warns (does not refuse) when others than the owner may read it.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading the cluster secret file {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the cluster secret file can be read by other users; chmod 600 it");
                }
            }
        }
        ClusterSecret::new(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The secret's text, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (for equal lengths; the length is not a secret worth hiding).
    fn matches(&self, offered: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(offered).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clusters_secret_makes_a_peer() {
        let auth = PeerAuth::Secret(ClusterSecret::new("  c2VjcmV0LXNlY3JldC1zZWNyZXQ=\n").unwrap());
        assert_eq!(auth.check(Some(b"c2VjcmV0LXNlY3JldC1zZWNyZXQ="), false), Ok(()), "surrounding whitespace in the file is not part of it");
        assert_eq!(auth.check(None, false), Err(Denied::Missing));
        assert_eq!(auth.check(Some(b"c2VjcmV0LXNlY3JldC1zZWNyZXQ"), false), Err(Denied::WrongSecret), "a prefix is not the secret");
        assert_eq!(auth.check(Some(b""), false), Err(Denied::WrongSecret));
        assert_eq!(PeerAuth::Insecure.check(None, false), Ok(()));
        assert_eq!(PeerAuth::NodeCertificate.check(None, true), Ok(()));
        assert_eq!(
            PeerAuth::NodeCertificate.check(Some(b"c2VjcmV0LXNlY3JldC1zZWNyZXQ="), false),
            Err(Denied::NoNodeCertificate),
            "under TLS a secret proves nothing"
        );
    }

    #[test]
    fn short_or_unprintable_secrets_are_refused() {
        assert!(ClusterSecret::new("short").unwrap_err().contains("at least"));
        assert!(ClusterSecret::new("with a space in the middle of it").unwrap_err().contains("visible ASCII"));
        assert!(!format!("{:?}", ClusterSecret::new("0123456789abcdef0123456789").unwrap()).contains("0123"), "Debug hides it");
    }
}
