//! A minimal HTTP/1.1 keep-alive client for the benchmarks' load generators: one connection, one
//! request at a time, TLS and a bearer token when the cluster is secured. Cheaper than a general
//! client, which matters because the load generator shares the machine's cores with the nodes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_LINES: usize = 64;
const MAX_LINE: u64 = 16 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A node the load generator talks to, and the TLS and token it uses (none on a plain cluster).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub secure: Option<Arc<ConnSecurity>>,
}

/// TLS that trusts the cluster CA alone, and the `Authorization` header line to send.
pub struct ConnSecurity {
    tls: tokio_rustls::TlsConnector,
    auth: String,
}

impl ConnSecurity {
    pub fn new(ca: &Path, token: &str) -> Result<ConnSecurity> {
        let config = crate::secure::Secured::rustls_config(ca).map_err(|e| anyhow!(e))?;
        Ok(ConnSecurity { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), auth: format!("Authorization: Bearer {token}\r\n") })
    }
}

/// A TCP or TLS stream.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub struct Conn {
    target: Target,
    host: String,
    io: Option<BufReader<Box<dyn Io>>>,
    req: Vec<u8>,
}

pub struct RawResp {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("bad JSON answer: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    pub fn new(target: &Target) -> Conn {
        Conn { target: target.clone(), host: target.addr.to_string(), io: None, req: Vec::with_capacity(512) }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<RawResp> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.io = None;
                Err(e)
            }
            Err(_) => {
                self.io = None;
                bail!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    async fn exchange(&mut self, method: &str, path: &str, body: &[u8]) -> Result<RawResp> {
        if self.io.is_none() {
            let addr = self.target.addr;
            let s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
            s.set_nodelay(true)?;
            let io: Box<dyn Io> = match &self.target.secure {
                Some(sec) => Box::new(sec.tls.connect(rustls::pki_types::ServerName::IpAddress(addr.ip().into()), s).await.context("TLS handshake")?),
                None => Box::new(s),
            };
            self.io = Some(BufReader::with_capacity(16 * 1024, io));
        }
        self.req.clear();
        let auth = self.target.secure.as_ref().map(|s| s.auth.as_str()).unwrap_or("");
        let _ = write!(
            StrBuf(&mut self.req),
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.req.extend_from_slice(body);
        let io = self.io.as_mut().expect("connected");
        io.get_mut().write_all(&self.req).await?;
        io.get_mut().flush().await?;

        let mut line = Vec::with_capacity(128);
        read_line(io, &mut line).await?;
        let status_line = String::from_utf8_lossy(&line);
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        for i in 0.. {
            ensure!(i < MAX_HEADER_LINES, "too many header lines");
            read_line(io, &mut line).await?;
            let l = String::from_utf8_lossy(&line);
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = Some(v.parse::<usize>()?),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            for _ in 0..1_000_000 {
                read_line(io, &mut line).await?;
                let size_str = String::from_utf8_lossy(&line);
                let size = usize::from_str_radix(size_str.trim().split(';').next().unwrap_or(""), 16)?;
                if size == 0 {
                    read_line(io, &mut line).await?; // the empty line after the last chunk
                    break;
                }
                ensure!(body.len() + size <= MAX_BODY, "answer too large");
                let start = body.len();
                body.resize(start + size, 0);
                io.read_exact(&mut body[start..]).await?;
                read_line(io, &mut line).await?;
            }
        } else if let Some(n) = length {
            ensure!(n <= MAX_BODY, "answer too large");
            body.resize(n, 0);
            io.read_exact(&mut body).await?;
        } else {
            close = true;
            io.take(MAX_BODY as u64).read_to_end(&mut body).await?;
        }
        if close {
            self.io = None;
        }
        Ok(RawResp { status, body })
    }
}

async fn read_line(io: &mut BufReader<Box<dyn Io>>, line: &mut Vec<u8>) -> Result<()> {
    line.clear();
    let n = (&mut *io).take(MAX_LINE).read_until(b'\n', line).await?;
    ensure!(n > 0, "connection closed by the server");
    ensure!(line.ends_with(b"\n"), "line too long or cut short");
    Ok(())
}

/// `fmt::Write` into a byte buffer.
struct StrBuf<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Sends a write until it is answered with success, retrying retriable failures (5xx, I/O)
/// until `deadline`. A 4xx answer is final.
pub async fn write_retry(conn: &mut Conn, method: &str, path: &str, body: &[u8], deadline: Instant) -> Result<Value> {
    let mut last = String::new();
    for attempt in 0u32.. {
        if Instant::now() >= deadline {
            bail!("{method} {path}: gave up after {attempt} attempts: {last}");
        }
        match conn.request(method, path, body).await {
            Ok(r) if (200..300).contains(&r.status) => return r.json(),
            Ok(r) if r.status < 500 => bail!("{method} {path}: {}: {}", r.status, r.text()),
            Ok(r) => last = format!("{}: {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)) + 10)).await;
    }
    unreachable!()
}
