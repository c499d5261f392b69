//! `registry tls init`: a cluster CA and the certificates signed by it, so an operator needs no
//! OpenSSL recipe (compare `consul tls ca create` / `consul tls cert create`).
//!
//! Into one directory: `ca.pem` and `ca-key.pem` (made once, reused on later runs), for each
//! host `node-HOST.pem` and `node-HOST-key.pem` (valid for that host, with the node role, so the
//! node serves with it and proves to its peers that it is one), and `client.pem` /
//! `client-key.pem` for the CLI, announcers and syncers that want mutual TLS. Files that exist
//! are kept, so running it again with a new host adds that host's certificate only.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

use super::{CLIENT_ROLE_URI, NODE_ROLE_URI};

/// How long the CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long node and client certificates are valid. To renew one, move it and its key away
/// and run `tls init` again in the same directory (the CA is reused), then SIGHUP the node.
const CERT_DAYS: i64 = 2 * 365;

/// What `init` did, file by file, for the operator to read.
#[derive(Debug, Default)]
pub struct Written {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

pub fn init(dir: &Path, hosts: &[String]) -> Result<Written, String> {
    if hosts.is_empty() {
        return Err("--hosts: give at least one host name or IP address the nodes are reached at".into());
    }
    for h in hosts {
        if h.is_empty() || h.contains(['/', ' ', ':']) && h.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("--hosts: {h:?} is not a host name or IP address"));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut out = Written::default();
    let (ca_cert, ca_key) = ca(dir, &mut out)?;
    for host in hosts {
        let name = format!("node-{host}");
        leaf(dir, &name, &ca_cert, &ca_key, &mut out, |p| {
            p.subject_alt_names = vec![san(host)?, uri(NODE_ROLE_URI)?];
            p.distinguished_name.push(DnType::CommonName, format!("registry node {host}"));
            // A node serves with it and uses it as a client of its peers.
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            Ok(())
        })?;
    }
    leaf(dir, "client", &ca_cert, &ca_key, &mut out, |p| {
        p.subject_alt_names = vec![uri(CLIENT_ROLE_URI)?];
        p.distinguished_name.push(DnType::CommonName, "registry client");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(())
    })?;
    Ok(out)
}

fn san(host: &str) -> Result<SanType, String> {
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(|e| format!("{host}: {e}"))?),
    })
}

fn uri(u: &str) -> Result<SanType, String> {
    Ok(SanType::URI(u.try_into().map_err(|e| format!("{u}: {e}"))?))
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// The CA: read back if it exists, else made.
fn ca(dir: &Path, out: &mut Written) -> Result<(rcgen::Certificate, KeyPair), String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let params = CertificateParams::from_ca_cert_pem(&read(&cert_path)?).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        // Re-signing the parsed parameters gives a certificate with the same subject and key,
        // which is all a signature by it needs; the file on disk stays as it is.
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        out.kept.extend([cert_path, key_path]);
        return Ok((cert, key));
    }
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "registry cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, CA_DAYS);
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    write(&cert_path, &cert.pem(), 0o644)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    out.created.extend([cert_path, key_path]);
    Ok((cert, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    out: &mut Written,
    shape: impl FnOnce(&mut CertificateParams) -> Result<(), String>,
) -> Result<(), String> {
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    if cert_path.exists() && key_path.exists() {
        out.kept.extend([cert_path, key_path]);
        return Ok(());
    }
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, CERT_DAYS);
    shape(&mut p)?;
    let cert = p.signed_by(&key, ca_cert, ca_key).map_err(|e| e.to_string())?;
    write(&cert_path, &cert.pem(), 0o644)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    out.created.extend([cert_path, key_path]);
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Writes a new file with `mode` from the start (a key is never readable by others, not even
/// for a moment).
fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| match e.kind() {
        // A certificate without its key (or the reverse), from an interrupted run or a lost file.
        std::io::ErrorKind::AlreadyExists => format!("{} exists without its pair; move it away and run again", path.display()),
        _ => format!("creating {}: {e}", path.display()),
    })?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_node_and_client_certificates_and_keeps_them_on_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let w = init(dir.path(), &["127.0.0.1".into(), "node-b.example".into()]).unwrap();
        assert_eq!(w.created.len(), 8, "{w:?}");
        for f in ["ca.pem", "ca-key.pem", "node-127.0.0.1.pem", "node-node-b.example-key.pem", "client.pem", "client-key.pem"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let node = crate::tls::read_chain(&dir.path().join("node-127.0.0.1.pem")).unwrap();
        assert!(crate::tls::is_node_certificate(&node[0]));
        let client = crate::tls::read_chain(&dir.path().join("client.pem")).unwrap();
        assert!(!crate::tls::is_node_certificate(&client[0]));
        // The files load as a node's TLS settings.
        let files =
            crate::tls::TlsFiles { cert: dir.path().join("node-127.0.0.1.pem"), key: dir.path().join("node-127.0.0.1-key.pem"), ca: dir.path().join("ca.pem") };
        crate::tls::Tls::load(files).unwrap();
        // A certificate without the node role is refused as a node's: its peers would refuse it.
        let client_files = crate::tls::TlsFiles { cert: dir.path().join("client.pem"), key: dir.path().join("client-key.pem"), ca: dir.path().join("ca.pem") };
        assert!(crate::tls::Tls::load(client_files).unwrap_err().contains("not a node certificate"));
        assert_eq!(crate::tls::node_certificate_hosts(&node[0]), Some(vec!["127.0.0.1".to_string()]));
        assert_eq!(crate::tls::host_of("[::1]:7401"), "::1");

        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let w = init(dir.path(), &["127.0.0.1".into(), "10.0.0.3".into()]).unwrap();
        assert_eq!(w.created, vec![dir.path().join("node-10.0.0.3.pem"), dir.path().join("node-10.0.0.3-key.pem")]);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before, "the CA is reused");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("ca-key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(init(dir.path(), &[]).is_err());
    }
}
