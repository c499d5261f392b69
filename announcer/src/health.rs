//! Local health checks and the rise/fall rule that turns their results into up/down.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::Command;

/// HAProxy's rule: `rise` consecutive successes to become healthy, `fall` consecutive failures
/// to become unhealthy. Starts unhealthy, so an instance is announced only once it has passed.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall { rise: rise.max(1), fall: fall.max(1), healthy: false, streak: 0 }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; returns the new state when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// How an `https://` check verifies the server's certificate.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum HttpTls {
    /// Against the system's roots (`SSL_CERT_FILE`, else the distribution's CA bundle; the
    /// Mozilla roots built into the binary if there is none).
    #[default]
    SystemRoots,
    /// Against this CA alone (`ca_file`): its path, and the PEM read from it when the config
    /// was resolved (so a reload that changes the file changes the check).
    CaFile { path: PathBuf, pem: Vec<u8> },
    /// Not at all (`tls_skip_verify`, explicit, warned about at start).
    SkipVerify,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpTls::SystemRoots => f.write_str("SystemRoots"),
            HttpTls::CaFile { path, .. } => write!(f, "CaFile({})", path.display()),
            HttpTls::SkipVerify => f.write_str("SkipVerify"),
        }
    }
}

/// One kind of check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET; healthy on 2xx/3xx and, if set, a body containing `expect`.
    Http { url: String, expect: Option<String>, tls: HttpTls },
    /// A TCP connect.
    Tcp { addr: String },
    /// `sh -c COMMAND`; healthy on exit status 0.
    Exec { command: String },
}

pub struct Checker {
    check: Check,
    timeout: Duration,
    /// The HTTP client, or why it could not be made (every run then fails with that).
    http: Result<reqwest::Client, String>,
}

/// Where distributions keep their CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine/BSD).
const CA_BUNDLES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem"];

/// The system's roots, read once: `SSL_CERT_FILE`, else the first CA bundle found; `None`
/// (use the built-in Mozilla roots) if there is none.
fn system_roots() -> Option<&'static [reqwest::Certificate]> {
    static ROOTS: OnceLock<Option<Vec<reqwest::Certificate>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            env.into_iter().chain(CA_BUNDLES.iter().map(PathBuf::from)).find_map(|p| {
                let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(&p).ok()?).ok().filter(|c| !c.is_empty());
                if certs.is_none() {
                    tracing::warn!(file = %p.display(), "no CA certificates in this bundle; trying the next");
                }
                certs
            })
        })
        .as_deref()
}

/// reqwest's message and its root cause (the TLS error, "connection refused").
fn why(e: &reqwest::Error) -> String {
    let mut deepest: &dyn std::error::Error = e;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    if std::ptr::addr_eq(deepest, e as &dyn std::error::Error) {
        e.to_string()
    } else {
        format!("{e}: {deepest}")
    }
}

/// The HTTP client of one check.
fn http_client(timeout: Duration, tls: &HttpTls) -> Result<reqwest::Client, String> {
    // Redirects are not followed: a 3xx is itself a healthy answer.
    let b = reqwest::Client::builder().use_rustls_tls().redirect(reqwest::redirect::Policy::none()).timeout(timeout);
    let b = match tls {
        HttpTls::SystemRoots => match system_roots() {
            Some(roots) => roots.iter().cloned().fold(b.tls_built_in_root_certs(false), |b, c| b.add_root_certificate(c)),
            None => b,
        },
        HttpTls::CaFile { path, pem } => {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            certs.into_iter().fold(b.tls_built_in_root_certs(false), |b, c| b.add_root_certificate(c))
        }
        HttpTls::SkipVerify => b.danger_accept_invalid_certs(true),
    };
    b.build().map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

impl Checker {
    pub fn new(check: Check, timeout: Duration) -> Checker {
        let http = match &check {
            Check::Http { tls, .. } => http_client(timeout, tls),
            _ => Err("not an http check".into()),
        };
        Checker { check, timeout, http }
    }

    /// Runs the check once; `Err` says why it failed.
    pub async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.run_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    async fn run_inner(&self) -> Result<(), String> {
        match &self.check {
            Check::Http { url, expect, .. } => {
                let http = self.http.as_ref().map_err(Clone::clone)?;
                let resp = http.get(url).send().await.map_err(|e| why(&e))?;
                let status = resp.status();
                if !(status.is_success() || status.is_redirection()) {
                    return Err(format!("HTTP status {status}"));
                }
                if let Some(want) = expect {
                    let body = resp.text().await.map_err(|e| e.to_string())?;
                    if !body.contains(want.as_str()) {
                        return Err(format!("body does not contain {want:?}"));
                    }
                }
                Ok(())
            }
            Check::Tcp { addr } => TcpStream::connect(addr).await.map(|_| ()).map_err(|e| e.to_string()),
            Check::Exec { command } => {
                let status = Command::new("sh").arg("-c").arg(command).kill_on_drop(true).status().await.map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("command exited with {status}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_down_and_needs_rise_successes() {
        let mut h = RiseFall::new(2, 3);
        assert!(!h.healthy());
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert!(h.healthy());
    }

    #[test]
    fn needs_fall_consecutive_failures() {
        let mut h = RiseFall::new(1, 3);
        h.observe(true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None, "a success resets the failure streak");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.healthy());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut h = RiseFall::new(1, 1);
        assert_eq!(h.observe(true), Some(true));
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(false), None);
    }

    #[tokio::test]
    async fn exec_and_tcp_checks() {
        assert!(Checker::new(Check::Exec { command: "true".into() }, Duration::from_secs(5)).run().await.is_ok());
        assert!(Checker::new(Check::Exec { command: "exit 3".into() }, Duration::from_secs(5)).run().await.is_err());
        let slow = Checker::new(Check::Exec { command: "sleep 5".into() }, Duration::from_millis(100)).run().await;
        assert!(slow.unwrap_err().contains("timed out"));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(Checker::new(Check::Tcp { addr: addr.clone() }, Duration::from_secs(1)).run().await.is_ok());
        drop(l);
        assert!(Checker::new(Check::Tcp { addr }, Duration::from_secs(1)).run().await.is_err());
    }

    #[tokio::test]
    async fn http_check_wants_2xx_3xx_and_the_expected_body() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "all good" }))
            .route("/moved", get(|| async { axum::response::Redirect::temporary("/elsewhere") }))
            .route("/bad", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let check = |path: &str, expect: Option<&str>| {
            Checker::new(Check::Http { url: format!("{base}{path}"), expect: expect.map(str::to_string), tls: HttpTls::SystemRoots }, Duration::from_secs(2))
        };
        assert!(check("/ok", None).run().await.is_ok());
        assert!(check("/ok", Some("good")).run().await.is_ok());
        assert!(check("/ok", Some("bad")).run().await.is_err());
        assert!(check("/moved", None).run().await.is_ok());
        assert!(check("/bad", None).run().await.unwrap_err().contains("500"));
    }

    /// A test CA, and a local HTTPS server whose certificate (for 127.0.0.1) it signed, answering
    /// every request with 200 "ok". Returns the CA's PEM and the server's base URL.
    async fn https_server() -> (String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A refused handshake (the client did not trust us) just ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (ca.pem(), base)
    }

    #[tokio::test]
    async fn https_check_trusts_its_ca_file_or_skips_verification_only_when_told() {
        let (ca_pem, base) = https_server().await;
        let url = format!("{base}/health");
        let check = |tls: HttpTls| Checker::new(Check::Http { url: url.clone(), expect: Some("ok".into()), tls }, Duration::from_secs(5));
        let with_ca = check(HttpTls::CaFile { path: "test-ca.pem".into(), pem: ca_pem.into_bytes() }).run().await;
        assert_eq!(with_ca, Ok(()), "the check with the test CA as ca_file failed");
        let system = check(HttpTls::SystemRoots).run().await.unwrap_err();
        assert!(system.to_lowercase().contains("certificate") || system.contains("UnknownIssuer"), "not a certificate error: {system}");
        assert_eq!(check(HttpTls::SkipVerify).run().await, Ok(()), "tls_skip_verify did not skip verification");
        // Another CA's certificate is not trusted through ca_file either.
        let (other_ca, _) = https_server().await;
        let wrong = check(HttpTls::CaFile { path: "other-ca.pem".into(), pem: other_ca.into_bytes() }).run().await;
        assert!(wrong.is_err(), "a server certificate from another CA passed");
    }
}
