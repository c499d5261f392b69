//! TLS for the client API and peer RPC, on the node's one address (rustls with ring; no
//! OpenSSL). A node serves its certificate, asks every client for one but does not require it
//! (announcers and the CLI may come without), and verifies any it gets against the cluster CA.
//! A verified certificate whose role is `node` (a URI SAN, `NODE_ROLE_URI`, as `tls init`
//! writes) and that names the host of a current member makes its connection a peer's: that is
//! how peers prove membership under TLS.
//!
//! The files are read at start and again on `reload` (SIGHUP): new connections get the new
//! certificate, CA and key; open ones keep what they were set up with.
//!
//! Architecture Invariant: this module and `peer_auth` know no HTTP framework; `tls::listener`
//! is the only place that ties TLS to axum's serving loop.

pub mod init;
pub mod listener;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The URI SAN that marks a node certificate: a client presenting one (verified against the CA)
/// is a peer.
pub const NODE_ROLE_URI: &str = "urn:registry:role:node";
/// The URI SAN of a client certificate (`tls init`'s `client.pem`): verified, but not a peer.
pub const CLIENT_ROLE_URI: &str = "urn:registry:role:client";

/// `--tls-cert`, `--tls-key`, `--tls-ca`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The node's TLS settings as last loaded; `reload` swaps them whole.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads and checks the three files; every problem is named with its file.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let loaded = Loaded::read(&files)?;
        Ok(Arc::new(Tls { files, current: RwLock::new(loaded) }))
    }

    /// Reads the files again. On any error the old settings stay and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = Loaded::read(&self.files)?;
        *self.current.write().unwrap() = loaded;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// What the next handshake a client makes with this node is set up with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().server.clone()
    }

    /// What this node's own requests to its peers are set up with: the CA to verify them
    /// against, and this node's certificate to prove it is one of them.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.read().unwrap().client.clone()
    }
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Loaded, String> {
        let roots = Arc::new(read_roots(&files.ca)?);
        let chain = read_chain(&files.cert)?;
        let key = read_key(&files.key)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            // The client API takes clients without certificates; only peers must show one.
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{} and {} do not make a usable certificate: {e}", files.cert.display(), files.key.display()))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Without the role its peers would refuse this node: say so now, not as a silent
        // partition after a reload.
        if !is_node_certificate(&chain[0]) {
            return Err(format!(
                "{}: not a node certificate (no {NODE_ROLE_URI} URI SAN), so peers would refuse this node; make node certificates with `registry tls init`",
                files.cert.display()
            ));
        }
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", files.key.display()))?;
        Ok(Loaded { server: Arc::new(server), client: Arc::new(client) })
    }
}

pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(chain)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the TLS key file can be read by other users; chmod 600 it");
            }
        }
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no usable PEM private key: {e}", path.display()))
}

/// Whether a certificate carries the node role.
pub fn is_node_certificate(cert: &CertificateDer<'_>) -> bool {
    node_certificate_hosts(cert).is_some()
}

/// For a certificate with the node role: the host names and IP addresses it is valid for (its
/// DNS and IP SANs), which a peer's certificate must share with a current member's address.
/// `None` for any other certificate.
pub fn node_certificate_hosts(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    if !names.iter().any(|n| matches!(n, GeneralName::URI(u) if *u == NODE_ROLE_URI)) {
        return None;
    }
    Some(
        names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

/// The host part of a member's `HOST:PORT` address, as a certificate names it (no brackets
/// around an IPv6 address, lower case).
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}
