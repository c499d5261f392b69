//! The credentials of a secured test cluster, made as an operator makes them: `registry tls init`
//! writes the CA and the node certificates, a random admin token goes to
//! `--acl-bootstrap-token-file`, and every agent gets a token of its own, minted through the API
//! with the narrowest scope it needs. The end-to-end tests run against such a cluster unless
//! they say otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::binary;

/// TLS files and the admin token of one cluster.
pub struct Secured {
    dir: PathBuf,
    /// The cluster CA, which clients trust alone (`--ca-file`).
    pub ca: PathBuf,
    pub admin_token: String,
    pub admin_token_file: PathBuf,
}

impl Secured {
    /// `registry tls init` into `dir/tls` for nodes at `hosts` (IP addresses here), and a
    /// fresh admin token in `dir/admin-token`.
    pub fn init(dir: &Path, hosts: &[&str]) -> Secured {
        Secured::init_with(&binary("registry"), dir, hosts)
    }

    /// `init` with the `registry` binary at `bin`.
    pub fn init_with(bin: &Path, dir: &Path, hosts: &[&str]) -> Secured {
        let tls = dir.join("tls");
        let out = std::process::Command::new(bin).args(["tls", "init", "--dir"]).arg(&tls).arg("--hosts").arg(hosts.join(",")).output().unwrap();
        assert!(out.status.success(), "registry tls init failed: {}", String::from_utf8_lossy(&out.stderr));
        let admin_token = client::generate_token();
        let admin_token_file = write_secret(&dir.join("admin-token"), &admin_token);
        Secured { ca: tls.join("ca.pem"), dir: dir.to_path_buf(), admin_token, admin_token_file }
    }

    /// The flags of a node reached at `host`: its certificate, the CA, and the ACL bootstrap.
    pub fn node_args(&self, host: &str) -> Vec<String> {
        let tls = self.dir.join("tls");
        vec![
            "--tls-cert".into(),
            tls.join(format!("node-{host}.pem")).display().to_string(),
            "--tls-key".into(),
            tls.join(format!("node-{host}-key.pem")).display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
            "--acl-bootstrap-token-file".into(),
            self.admin_token_file.display().to_string(),
        ]
    }

    /// The flags a client (CLI, announcer, syncer) needs to reach the cluster with `token_file`.
    pub fn client_args(&self, token_file: &Path) -> Vec<String> {
        vec!["--ca-file".into(), self.ca.display().to_string(), "--token-file".into(), token_file.display().to_string()]
    }

    /// A registry client for `urls` with `token`.
    pub fn client<S: AsRef<str>>(&self, urls: &[S], token: &str) -> client::Client {
        let files = client::TlsFiles { ca: Some(self.ca.clone()), cert: None, key: None };
        client::Client::builder(urls).unwrap().tls(&files).unwrap().token(token).unwrap().build().unwrap()
    }

    /// A token with `scopes`, minted through `admin` (a client with the admin token), written
    /// to `dir/token-NAME`; returns that file.
    pub async fn mint(&self, admin: &client::Client, name: &str, scopes: &[&str]) -> PathBuf {
        let token = client::generate_token();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        // As an operator's script would: a cluster still electing its first leader answers 503.
        crate::wait_for(std::time::Duration::from_secs(20), &format!("the {name} token to be minted"), || async {
            match admin.create_token(&token, &scopes, name).await {
                Ok(_) => Some(()),
                Err(e) if e.is_retriable() => None,
                Err(e) => panic!("minting the {name} token: {e}"),
            }
        })
        .await;
        write_secret(&self.dir.join(format!("token-{name}")), &token)
    }

    /// A rustls client configuration that trusts the CA in `ca` alone (ring, as the product).
    pub fn rustls_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("reading {}: {e}", ca.display()))? {
            roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// An HTTP client that trusts the cluster CA, for raw requests.
    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder().use_rustls_tls().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap()).build().unwrap()
    }
}

/// The certificate (DER) a TLS node at `addr` (`127.0.0.1:PORT`) serves to a new connection,
/// verified against the CA in `ca`.
pub async fn served_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::ServerName;
    let config = Secured::rustls_config(ca)?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).to_string();
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or_else(|| "no certificate served".to_string())
}

/// Writes a secret readable by its owner only.
pub fn write_secret(path: &Path, secret: &str) -> PathBuf {
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}
