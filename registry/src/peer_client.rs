//! How a node reaches its peers: the scheme of their URLs, and one HTTP client that carries this
//! node's proof of membership (the cluster secret as a header, or under TLS its node
//! certificate, with the cluster CA to verify theirs). Raft RPC, pre-votes, renewal shares,
//! leadership checks and forwarding all go through it, so the rule lives here once.
//!
//! On a certificate reload (`reload`) the client is rebuilt and swapped; requests in flight
//! finish on the old one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::peer_auth::PeerAuth;
use crate::tls::Tls;

#[derive(Clone)]
pub struct PeerClient {
    http: Arc<RwLock<reqwest::Client>>,
    settings: Arc<Settings>,
}

struct Settings {
    auth: PeerAuth,
    tls: Option<Arc<Tls>>,
    source_ip: Option<std::net::IpAddr>,
}

impl PeerClient {
    pub fn new(auth: PeerAuth, tls: Option<Arc<Tls>>, source_ip: Option<std::net::IpAddr>) -> Result<PeerClient, String> {
        let settings = Arc::new(Settings { auth, tls, source_ip });
        let http = settings.build()?;
        Ok(PeerClient { http: Arc::new(RwLock::new(http)), settings })
    }

    /// The client as of the last (re)load; cheap to clone.
    pub fn http(&self) -> reqwest::Client {
        self.http.read().unwrap().clone()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL of a node at `addr` (`HOST:PORT`).
    pub fn base(&self, addr: &str) -> String {
        format!("{}://{addr}", self.scheme())
    }

    /// Whether peers prove themselves with node certificates.
    pub fn uses_tls(&self) -> bool {
        self.settings.tls.is_some()
    }

    /// A registry client that proves this node's membership, for the calls only members may
    /// make (asking to be added back, `--join`).
    pub fn member_client(&self, addrs: &[String]) -> Result<client::Client, client::Error> {
        self.member_client_with(addrs, None)
    }

    /// `member_client` that also sends `token` (`--join-token-file`).
    pub fn member_client_with(&self, addrs: &[String], token: Option<&str>) -> Result<client::Client, client::Error> {
        let urls: Vec<String> = addrs.iter().map(|a| self.base(a)).collect();
        let mut b = client::Client::builder(&urls)?;
        if let Some(secret) = self.settings.auth.outgoing() {
            b = b.cluster_secret(secret)?;
        }
        if let Some(tls) = &self.settings.tls {
            let f = tls.files();
            b = b.tls(&client::TlsFiles { ca: Some(f.ca.clone()), cert: Some(f.cert.clone()), key: Some(f.key.clone()) })?;
        }
        if let Some(t) = token {
            b = b.token(t)?;
        }
        b.build()
    }

    /// Builds the client again from the TLS settings as they are now (after `Tls::reload`).
    pub fn reload(&self) -> Result<(), String> {
        let http = self.settings.build()?;
        *self.http.write().unwrap() = http;
        Ok(())
    }
}

impl Settings {
    fn build(&self) -> Result<reqwest::Client, String> {
        // Every request this client makes goes to a peer, so each carries the cluster's proof.
        let mut proof = reqwest::header::HeaderMap::new();
        if let Some(secret) = self.auth.outgoing() {
            let mut v = reqwest::header::HeaderValue::from_str(secret).map_err(|e| format!("cluster secret: {e}"))?;
            v.set_sensitive(true);
            proof.insert(crate::peer_auth::SECRET_HEADER, v);
        }
        let mut b = reqwest::Client::builder()
            .default_headers(proof)
            // A redirect could carry the cluster secret to another host.
            .redirect(reqwest::redirect::Policy::none())
            .local_address(self.source_ip)
            .pool_idle_timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_millis(500));
        if let Some(tls) = &self.tls {
            b = b.use_preconfigured_tls((*tls.client_config()).clone());
        }
        b.build().map_err(|e| e.to_string())
    }
}
