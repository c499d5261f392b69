//! ACL tokens on the wire (`/v1/acl/tokens`). Scopes travel as their text (`read`, `admin`,
//! `announce:GLOB`); the registry parses and checks them. A token's secret crosses the wire
//! once, in the create request; answers never carry it.

use serde::{Deserialize, Serialize};

use crate::Revision;

/// `POST /v1/acl/tokens`: the client makes the secret (`registry token create` does), so a
/// retried create sends the same one; the registry keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub token: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    pub id: u64,
    pub revision: Revision,
}

/// One token as `GET /v1/acl/tokens` lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfo {
    pub id: u64,
    pub scopes: Vec<String>,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// Whether ACLs are on in this cluster.
    pub enabled: bool,
    pub tokens: Vec<TokenInfo>,
}
