//! The ZooKeeper side of the contract: what an ephemeral znode `/<service>/<host:port>` holds.
//! The announcer writes it and the syncer reads it; other writers' plain `host:port` names with
//! no data are read too (by the syncer, from the name).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::InstanceState;

/// The data of one znode: `{"host": "10.0.0.5", "port": 8080, "weight": 100, "state": "up",
/// "meta": {}}`; `weight`, `state` and `meta` may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZnodeData {
    /// IP address or host name the balancer should connect to (`host` on the wire).
    #[serde(rename = "host")]
    pub address: String,
    pub port: u16,
    #[serde(default = "crate::instance::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: InstanceState,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// A ZooKeeper digest identity, `USER:PASSWORD` (`--zookeeper-auth-file`): the announcer writes
/// its znodes so that only this identity may change them, and the syncer reads with it. Its
/// `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkDigest(String);

impl ZkDigest {
    /// From a file's text, without surrounding whitespace.
    pub fn parse(text: &str) -> Result<ZkDigest, String> {
        let t = text.trim();
        match t.split_once(':') {
            Some((user, pass)) if !user.is_empty() && !pass.is_empty() && !t.contains(char::is_whitespace) => Ok(ZkDigest(t.to_string())),
            _ => Err("expected USER:PASSWORD on one line".into()),
        }
    }

    /// What the digest scheme's `addauth` takes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn user(&self) -> &str {
        self.0.split_once(':').map_or("", |(u, _)| u)
    }
}

impl std::fmt::Debug for ZkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZkDigest({}:..)", self.user())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_shape_is_the_contract() {
        let d = ZnodeData {
            address: "10.0.0.5".into(),
            port: 8080,
            weight: 100,
            state: InstanceState::Drain,
            meta: [("zone".to_string(), "a".to_string())].into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v, serde_json::json!({"host": "10.0.0.5", "port": 8080, "weight": 100, "state": "drain", "meta": {"zone": "a"}}));
        let minimal: ZnodeData = serde_json::from_str(r#"{"host": "10.0.0.5", "port": 8080}"#).unwrap();
        assert_eq!((minimal.weight, minimal.state), (100, InstanceState::Up));
    }

    #[test]
    fn a_digest_identity_parses_and_hides_its_password() {
        let d = ZkDigest::parse("announcer:s3cret\n").unwrap();
        assert_eq!(d.as_bytes(), b"announcer:s3cret");
        assert!(!format!("{d:?}").contains("s3cret"));
        for bad in ["", "nouser", ":x", "u:", "u:p q"] {
            assert!(ZkDigest::parse(bad).is_err(), "{bad:?}");
        }
    }
}
