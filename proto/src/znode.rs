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
}
