//! Tokens and scopes, default deny (`--acl-bootstrap-token-file`). The rules, in one place:
//!
//! - A token is a random string a client sends as `Authorization: Bearer TOKEN`. The store keeps
//!   only its SHA-256 (`TokenHash`), its scopes and a description, replicated like everything
//!   else, so every node checks every request itself and a revoked token stops working on a node
//!   as soon as that node applies the revocation.
//! - Scopes: `read` (lists, gets, watches, cluster status, metrics), `announce:GLOB` (grant
//!   leases; put and delete instances of services matching GLOB; keep alive and revoke the
//!   leases it granted), `admin` (everything, members and tokens included).
//! - Membership changes take an `admin` token or a member's proof (`Need::AdminOrPeer`): the
//!   operator's way and a joining node's way. Without ACLs only the proof works. The cluster's
//!   state takes `read` or the proof (`Need::ReadOrPeer`): a starting node asks its peers.
//! - What a route needs is `need` below: one table keyed by method and route template, and any
//!   route it does not name needs `admin`.
//!
//! Architecture Invariant: this module knows no HTTP framework; `http::acl` applies it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A token's id: the index of the log entry that created it. Never secret.
pub type TokenId = u64;

/// Shortest accepted token, in characters (`registry token create` makes 43).
pub const MIN_TOKEN_LEN: usize = 32;

/// SHA-256 of a token: what the store keeps; the token itself is never stored. Its wire and
/// JSON form is the digest in lowercase hex (64 characters), as it always was; in memory it is
/// the 32 bytes, so the check on every request neither formats nor allocates.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// The digest in lowercase hex. Byte order and hex order agree, so a map keyed by
    /// `TokenHash` lists tokens in the order its JSON keys sort.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 bytes hold 32 in hex");
        s.serialize_str(std::str::from_utf8(&buf).expect("hex is ASCII"))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TokenHash, D::Error> {
        let s = String::deserialize(d)?;
        let mut bytes = [0u8; 32];
        // Upper-case hex was never written; refusing it keeps one spelling per hash.
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(format!("a token hash is 64 lowercase hex digits, not {s:?}")));
        }
        hex::decode_to_slice(s.as_bytes(), &mut bytes).map_err(|e| serde::de::Error::custom(format!("token hash {s:?}: {e}")))?;
        Ok(TokenHash(bytes))
    }
}

/// Checks a token's form before it is hashed and stored: long enough to be unguessable, and
/// sendable in a header.
pub fn check_token(token: &str) -> Result<(), String> {
    let t = token.trim();
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!("a token needs at least {MIN_TOKEN_LEN} characters; this one has {}", t.len()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token must be visible ASCII without spaces".into());
    }
    Ok(())
}

/// One permission a token may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    Read,
    Admin,
    /// Services whose names match the glob (`*` any run of characters, `?` one).
    Announce(String),
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            _ => match s.strip_prefix("announce:") {
                Some(glob)
                    if !glob.is_empty() && glob.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-*?".contains(&b)) && glob::Pattern::new(glob).is_ok() =>
                {
                    Ok(Scope::Announce(glob.into()))
                }
                Some(glob) => Err(format!("announce:{glob}: the glob may hold letters, digits, `.`, `_`, `-`, `*` and `?`")),
                None => Err(format!("{s:?} is not a scope: read, admin or announce:SERVICE-GLOB")),
            },
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Scope, String> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Admin => f.write_str("admin"),
            Scope::Announce(g) => write!(f, "announce:{g}"),
        }
    }
}

/// Whether `name` matches `glob` (`*`: any run, `?`: one character).
fn glob_matches(glob: &str, name: &str) -> bool {
    // The glob is short and made of ASCII (checked at parse); `glob::Pattern` does this matching.
    glob::Pattern::new(glob).is_ok_and(|p| p.matches(name))
}

/// A token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: TokenId,
    pub scopes: Vec<Scope>,
    pub description: String,
    /// When the leader proposed it (ms since the Unix epoch), for `token list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
}

impl Token {
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Whether this token may do what `need` asks; `lease_owner` is the token that granted the
    /// lease a `Need::LeaseOwner` route names (`None`: no such lease, or granted without one).
    pub fn allows(&self, need: &Need) -> bool {
        if self.is_admin() {
            return true;
        }
        let announces = || self.scopes.iter().any(|s| matches!(s, Scope::Announce(_)));
        match need {
            Need::Open => true,
            Need::Read | Need::ReadOrPeer => self.scopes.contains(&Scope::Read),
            Need::Admin | Need::AdminOrPeer => false,
            Need::Grant => announces(),
            Need::Service(name) => self.scopes.iter().any(|s| matches!(s, Scope::Announce(g) if glob_matches(g, name))),
            // The owner is checked against the store by the caller (`Acl::owns`); the scope is
            // what is needed here.
            Need::LeaseOwner => announces(),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing (health, readiness).
    Open,
    Read,
    /// Any `announce:` scope: granting a lease.
    Grant,
    /// `announce:` matching this service.
    Service(String),
    /// An `announce:` scope, and the lease must be one this token granted.
    LeaseOwner,
    Admin,
    /// `admin`, or a member's proof (the cluster secret, or a node certificate for a member's
    /// host), which `http::peer` has checked: membership changes.
    AdminOrPeer,
    /// `read`, or a member's proof: the cluster's state.
    ReadOrPeer,
}

/// What `method` on the route `template` (axum's matched path, e.g.
/// `/v1/services/{service}/instances/{instance}`) needs; `service` is its `{service}` path
/// parameter, if it has one.
/// Default deny: a route not named here needs `admin`. `metrics_open` is `--metrics-open`.
pub fn need(method: &str, template: &str, service: Option<&str>, metrics_open: bool) -> Need {
    // HEAD is a GET without the body.
    let method = if method == "HEAD" { "GET" } else { method };
    match (method, template) {
        (_, "/healthz" | "/readyz") => Need::Open,
        // The status page's own files; what it shows it reads with the viewer's token.
        ("GET", "/ui" | "/ui/app.js" | "/ui/style.css") => Need::Open,
        ("GET", "/metrics") if metrics_open => Need::Open,
        // A node asks its peers here before it bootstraps (is it a wiped member?).
        ("GET", "/v1/cluster") => Need::ReadOrPeer,
        ("GET", "/metrics" | "/v1/services" | "/v1/services/{service}" | "/v1/removals" | "/v1/watch") => Need::Read,
        ("POST", "/v1/leases") => Need::Grant,
        // Each instance's service is checked against the token's scopes by `Node::register`.
        ("POST", "/v1/register") => Need::Grant,
        ("POST", "/v1/leases/{id}/keepalive") | ("DELETE", "/v1/leases/{id}") => Need::LeaseOwner,
        ("PUT" | "DELETE", "/v1/services/{service}/instances/{instance}") => match service {
            Some(s) => Need::Service(s.to_string()),
            None => Need::Admin,
        },
        ("POST", "/v1/cluster/members") | ("DELETE", "/v1/cluster/members/{id}") => Need::AdminOrPeer,
        // Named so the table is the whole list; the default would give the same.
        ("GET", "/v1/snapshot") | ("GET" | "POST", "/v1/acl/tokens") | ("DELETE", "/v1/acl/tokens/{id}") => Need::Admin,
        _ => Need::Admin,
    }
}

/// Who is asking, once `http::acl` has checked the token: what handlers pass on to `Node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id; `None` while ACLs are off (or for the bootstrap token before it applies).
    pub token: Option<TokenId>,
    /// An `admin` token, or ACLs off: not bound to lease ownership.
    pub admin: bool,
    /// The token's hash, to check again that it is still live (a long watch or blocking
    /// query must end when its token is revoked).
    pub hash: Option<TokenHash>,
}

impl Caller {
    /// ACLs off: anyone may do anything, as before ACLs existed.
    pub const UNRESTRICTED: Caller = Caller { token: None, admin: true, hash: None };

    /// Whether this caller may renew, revoke or attach instances to a lease granted by `owner`.
    pub fn may_use_lease(&self, owner: Option<TokenId>) -> bool {
        self.admin || owner == self.token
    }
}

/// The replicated ACL state: whether ACLs are on, and the live tokens by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    /// Set by the first `AclBootstrap`; never unset.
    pub enabled: bool,
    pub tokens: BTreeMap<TokenHash, Token>,
}

impl Acl {
    pub fn by_hash(&self, hash: &TokenHash) -> Option<&Token> {
        self.tokens.get(hash)
    }

    pub fn by_id(&self, id: TokenId) -> Option<(&TokenHash, &Token)> {
        self.tokens.iter().find(|(_, t)| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[&str]) -> Token {
        Token { id: 1, scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(), description: String::new(), created_ms: None }
    }

    #[test]
    fn scopes_parse_and_print_back() {
        for s in ["read", "admin", "announce:web-*", "announce:api?.x_y"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for bad in ["", "write", "announce:", "announce:a/b", "announce:web servers", "Admin", "announce:web-**"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_route_needs_its_scope_and_unknown_routes_need_admin() {
        let put = need("PUT", "/v1/services/{service}/instances/{instance}", Some("web-servers"), false);
        assert_eq!(put, Need::Service("web-servers".into()));
        let web = token(&["announce:web-*"]);
        assert!(web.allows(&put));
        assert!(!web.allows(&need("DELETE", "/v1/services/{service}/instances/{instance}", Some("api-servers"), false)), "another service");
        assert!(!web.allows(&Need::Read), "announce does not read");
        assert!(web.allows(&need("POST", "/v1/leases", None, false)));
        let read = token(&["read"]);
        assert_eq!(need("GET", "/v1/cluster", None, false), Need::ReadOrPeer);
        assert!(!token(&["announce:*"]).allows(&Need::ReadOrPeer));
        for (m, t) in [("GET", "/v1/services"), ("GET", "/v1/watch"), ("GET", "/v1/cluster"), ("GET", "/metrics")] {
            assert!(read.allows(&need(m, t, None, false)), "{m} {t}");
        }
        assert!(!read.allows(&put), "read cannot write");
        assert!(!read.allows(&need("POST", "/v1/leases", None, false)));
        for (m, t) in [("POST", "/v1/cluster/members"), ("DELETE", "/v1/cluster/members/{id}")] {
            assert_eq!(need(m, t, None, false), Need::AdminOrPeer, "{m} {t}");
            assert!(token(&["admin"]).allows(&need(m, t, None, false)));
            assert!(!token(&["read", "announce:*"]).allows(&need(m, t, None, false)));
        }
        for (m, t) in [("POST", "/v1/acl/tokens"), ("PATCH", "/v1/services"), ("GET", "/v1/new-route")] {
            assert_eq!(need(m, t, None, false), Need::Admin, "{m} {t}");
            assert!(token(&["admin"]).allows(&need(m, t, None, false)));
        }
        assert_eq!(need("GET", "/healthz", None, false), Need::Open);
        assert_eq!(need("GET", "/metrics", None, true), Need::Open);
    }

    /// Every route the router serves, with what it needs: the table docs/security.md gives. A
    /// route added to `http::router` fails this until it is placed here (and in the docs).
    #[test]
    fn every_route_of_the_router_has_the_need_the_docs_give() {
        let expected: BTreeMap<(&str, &str), Need> = [
            (("GET", "/healthz"), Need::Open),
            (("GET", "/readyz"), Need::Open),
            (("GET", "/ui"), Need::Open),
            (("GET", "/ui/app.js"), Need::Open),
            (("GET", "/ui/style.css"), Need::Open),
            (("GET", "/metrics"), Need::Read),
            (("GET", "/v1/services"), Need::Read),
            (("GET", "/v1/services/{service}"), Need::Read),
            (("GET", "/v1/removals"), Need::Read),
            (("GET", "/v1/watch"), Need::Read),
            (("GET", "/v1/cluster"), Need::ReadOrPeer),
            (("POST", "/v1/leases"), Need::Grant),
            (("POST", "/v1/register"), Need::Grant),
            (("POST", "/v1/leases/{id}/keepalive"), Need::LeaseOwner),
            (("DELETE", "/v1/leases/{id}"), Need::LeaseOwner),
            (("PUT", "/v1/services/{service}/instances/{instance}"), Need::Service("web".into())),
            (("DELETE", "/v1/services/{service}/instances/{instance}"), Need::Service("web".into())),
            (("POST", "/v1/cluster/members"), Need::AdminOrPeer),
            (("DELETE", "/v1/cluster/members/{id}"), Need::AdminOrPeer),
            (("GET", "/v1/snapshot"), Need::Admin),
            (("GET", "/v1/acl/tokens"), Need::Admin),
            (("POST", "/v1/acl/tokens"), Need::Admin),
            (("DELETE", "/v1/acl/tokens/{id}"), Need::Admin),
        ]
        .into_iter()
        .collect();
        // The routes as `http::router` declares them: `.route("PATH", get(..).post(..))`.
        let source = include_str!("http/mod.rs");
        let mut served = std::collections::BTreeSet::new();
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
            let path = line.split('"').nth(1).unwrap();
            for (word, method) in [("get(", "GET"), ("post(", "POST"), ("put(", "PUT"), ("delete(", "DELETE")] {
                if line.contains(word) {
                    served.insert((method, path));
                }
            }
        }
        assert!(served.len() > 20, "the route lines were not found: {served:?}");
        let client: Vec<(&str, &str)> = served.iter().copied().filter(|(_, p)| !p.starts_with("/raft/")).collect();
        let expected_routes: Vec<(&str, &str)> = expected.keys().copied().collect();
        assert_eq!(client, expected_routes, "a route was added or removed: place it in this table and in docs/security.md");
        for ((m, t), want) in &expected {
            assert_eq!(&need(m, t, Some("web"), false), want, "{m} {t}");
        }
        // docs/security.md's table lists the same routes, each with what it needs.
        let doc = include_str!("../../docs/security.md");
        let table = doc.split("**Every route and what it needs.**").nth(1).expect("the route table in docs/security.md");
        let mut documented = std::collections::BTreeSet::new();
        for row in table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (routes, needs) = (cells[1], cells[2]);
            let mut method = "";
            for span in routes.split('`').skip(1).step_by(2) {
                let (m, path) = match span.split_once(' ') {
                    Some((m, p)) => (m, p),
                    // `/raft/vote` after `POST /raft/append`: the same method.
                    None => (method, span),
                };
                // Other code in the cell (`?index=`) is not a route.
                if !path.starts_with('/') {
                    continue;
                }
                method = m;
                documented.insert((method, path));
                if let Some(want) = expected.get(&(method, path)) {
                    let says = match want {
                        Need::Open => "nothing",
                        Need::Read => "`read`",
                        Need::ReadOrPeer => "`read`, or the peer proof",
                        Need::Grant => "any `announce:` scope",
                        Need::LeaseOwner => "an `announce:` scope, and the token that granted",
                        Need::Service(_) => "`announce:GLOB`",
                        Need::Admin => "`admin`",
                        Need::AdminOrPeer => "`admin`, or the peer proof",
                    };
                    assert!(needs.starts_with(says), "docs/security.md: {method} {path} needs {needs:?}, the code says {want:?}");
                }
            }
        }
        assert_eq!(documented, served, "docs/security.md's route table and http::router list different routes");
        // Peer RPC takes no token at all: `http::peer` admits only members (tested there).
        assert!(served.iter().filter(|(_, p)| p.starts_with("/raft/")).all(|(m, _)| *m == "POST"));
    }

    #[test]
    fn a_token_hash_is_hex_on_the_wire_as_before() {
        let t = "x".repeat(43);
        let h = TokenHash::of(&t);
        // What the `String` form held: the digest, each byte as two lowercase hex digits.
        let old: String = Sha256::digest(t.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{old}\""));
        assert_eq!(serde_json::from_str::<TokenHash>(&format!("\"{old}\"")).unwrap(), h);
        // As map keys (the store's `Acl`), in the order the hex strings sort.
        let acl = Acl {
            enabled: true,
            tokens: ["a", "b", "c", "d"]
                .iter()
                .enumerate()
                .map(|(i, c)| (TokenHash::of(&c.repeat(40)), Token { id: i as u64, scopes: vec![Scope::Read], description: String::new(), created_ms: None }))
                .collect(),
        };
        let json = serde_json::to_value(&acl).unwrap();
        let keys: Vec<&String> = json["tokens"].as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(serde_json::from_value::<Acl>(json).unwrap(), acl);
        for bad in ["\"abc\"", &format!("\"{}\"", old.to_uppercase()), &format!("\"{}zz\"", &old[2..])] {
            assert!(serde_json::from_str::<TokenHash>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_hash_is_kept_and_tokens_must_be_long() {
        let t = "x".repeat(43);
        assert_eq!(TokenHash::of(&t).to_hex().len(), 64);
        assert_ne!(TokenHash::of(&t).to_hex(), t);
        assert_eq!(TokenHash::of(&format!(" {t}\n")), TokenHash::of(&t), "whitespace from a file is not part of it");
        assert!(check_token("short").is_err());
        assert!(check_token(&"y".repeat(40)).is_ok());
    }
}
