//! A minimal HTTP/1.1 keep-alive client for the benchmarks' load generators: one connection,
//! one request at a time, TLS and a bearer token when the cluster is secured. Cheaper than a
//! general client, which matters because the load generator shares the machine's cores with the
//! nodes it measures. It can also hold a streamed answer open (`Conn::stream`: a watch) and
//! read it line by line.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// How long one request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_LINES: usize = 64;
const MAX_LINE: u64 = 16 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A node the load generator talks to, and the TLS and token it uses (none on a plain cluster).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub secure: Option<Arc<ConnSecurity>>,
    /// The local address to connect from (a loopback address of its own, as if from another
    /// host); the OS picks one when `None`.
    pub source: Option<IpAddr>,
}

impl Target {
    /// The same node, reached from `source`.
    pub fn from_source(&self, source: IpAddr) -> Target {
        Target { source: Some(source), ..self.clone() }
    }
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

type Reader = BufReader<Box<dyn Io>>;

/// One keep-alive connection, opened on the first request and again after an error.
pub struct Conn {
    target: Target,
    host: String,
    io: Option<Reader>,
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

/// How the body of an answer is framed.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    pub fn new(target: &Target) -> Conn {
        Conn { target: target.clone(), host: target.addr.to_string(), io: None, req: Vec::with_capacity(512) }
    }

    /// Sends one request and reads the whole answer, within `REQUEST_TIMEOUT`.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<RawResp> {
        self.request_keyed(method, path, body, None).await
    }

    /// `request` with an `Idempotency-Key` (as the client library sends with every write, so a
    /// retry applies once).
    pub async fn request_keyed(&mut self, method: &str, path: &str, body: &[u8], key: Option<&str>) -> Result<RawResp> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body, key)).await {
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

    async fn connect(&mut self) -> Result<()> {
        if self.io.is_some() {
            return Ok(());
        }
        let addr = self.target.addr;
        let s = match self.target.source {
            None => TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?,
            Some(ip) => {
                let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding to {ip}"))?;
                socket.connect(addr).await.with_context(|| format!("connecting to {addr} from {ip}"))?
            }
        };
        s.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.target.secure {
            Some(sec) => Box::new(sec.tls.connect(rustls::pki_types::ServerName::IpAddress(addr.ip().into()), s).await.context("TLS handshake")?),
            None => Box::new(s),
        };
        self.io = Some(BufReader::with_capacity(16 * 1024, io));
        Ok(())
    }

    /// Writes the request and reads the status line and headers.
    async fn send_head(&mut self, method: &str, path: &str, body: &[u8], key: Option<&str>) -> Result<(u16, Framing, bool)> {
        self.connect().await?;
        self.req.clear();
        let auth = self.target.secure.as_ref().map(|s| s.auth.as_str()).unwrap_or("");
        let _ = write!(StrBuf(&mut self.req), "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}", self.host);
        if let Some(k) = key {
            let _ = write!(StrBuf(&mut self.req), "{}: {k}\r\n", proto::IDEMPOTENCY_KEY_HEADER);
        }
        let _ = write!(StrBuf(&mut self.req), "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
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
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        };
        Ok((status, framing, close))
    }

    async fn exchange(&mut self, method: &str, path: &str, body: &[u8], key: Option<&str>) -> Result<RawResp> {
        let (status, framing, mut close) = self.send_head(method, path, body, key).await?;
        let io = self.io.as_mut().expect("connected");
        let mut line = Vec::with_capacity(128);
        let mut body = Vec::new();
        match framing {
            Framing::Chunked => {
                for _ in 0..1_000_000 {
                    let size = read_chunk_size(io, &mut line).await?;
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
            }
            Framing::Length(n) => {
                ensure!(n <= MAX_BODY, "answer too large");
                body.resize(n, 0);
                io.read_exact(&mut body).await?;
            }
            Framing::UntilClose => {
                close = true;
                io.take(MAX_BODY as u64).read_to_end(&mut body).await?;
            }
        }
        if close {
            self.io = None;
        }
        Ok(RawResp { status, body })
    }

    /// Sends a GET whose answer is a stream (`/v1/watch`), within `REQUEST_TIMEOUT`, and hands
    /// over the connection to read its body line by line. A status other than 200 is an error
    /// carrying the answer's start.
    pub async fn stream(mut self, path: &str) -> Result<LineStream> {
        let (status, framing, _) = match tokio::time::timeout(REQUEST_TIMEOUT, self.send_head("GET", path, b"", None)).await {
            Ok(r) => r?,
            Err(_) => bail!("GET {path}: no answer within {REQUEST_TIMEOUT:?}"),
        };
        let io = self.io.take().expect("connected");
        let mut s = LineStream { io, framing, left: 0, buf: Vec::new(), done: false };
        if status != 200 {
            let mut text = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.next_line(&mut text)).await;
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(s)
    }
}

/// The body of a streamed answer, read line by line across chunks.
pub struct LineStream {
    io: Reader,
    framing: Framing,
    /// Bytes left in the current chunk (or of the whole body, for a length).
    left: usize,
    buf: Vec<u8>,
    done: bool,
}

impl LineStream {
    /// The next line of the body (without its `\n`) into `line`; `false` at the end of the body.
    pub async fn next_line(&mut self, line: &mut Vec<u8>) -> Result<bool> {
        line.clear();
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&self.buf[..pos]);
                self.buf.drain(..=pos);
                return Ok(true);
            }
            ensure!(self.buf.len() <= MAX_LINE as usize * 64, "line too long");
            if self.done || !self.fill().await? {
                self.done = true;
                if self.buf.is_empty() {
                    return Ok(false);
                }
                line.append(&mut self.buf);
                return Ok(true);
            }
        }
    }

    /// Reads more of the body into `buf`; `false` at its end.
    async fn fill(&mut self) -> Result<bool> {
        let mut scratch = Vec::with_capacity(128);
        if self.left == 0 {
            match self.framing {
                Framing::Chunked => {
                    let size = read_chunk_size(&mut self.io, &mut scratch).await?;
                    if size == 0 {
                        return Ok(false);
                    }
                    self.left = size;
                }
                Framing::Length(n) => {
                    if n == 0 {
                        return Ok(false);
                    }
                    self.left = n;
                    self.framing = Framing::Length(0);
                }
                Framing::UntilClose => self.left = usize::MAX,
            }
        }
        let available = self.io.fill_buf().await?;
        if available.is_empty() {
            ensure!(matches!(self.framing, Framing::UntilClose), "connection closed in the middle of the answer");
            return Ok(false);
        }
        let n = available.len().min(self.left);
        self.buf.extend_from_slice(&available[..n]);
        self.io.consume(n);
        if !matches!(self.framing, Framing::UntilClose) {
            self.left -= n;
            if self.left == 0 && matches!(self.framing, Framing::Chunked) {
                read_line(&mut self.io, &mut scratch).await?; // the CRLF after the chunk's data
            }
        }
        Ok(true)
    }
}

/// A chunk-size line: the size in hex, perhaps with extensions after `;`.
async fn read_chunk_size(io: &mut Reader, line: &mut Vec<u8>) -> Result<usize> {
    read_line(io, line).await?;
    let text = String::from_utf8_lossy(line);
    Ok(usize::from_str_radix(text.trim().split(';').next().unwrap_or(""), 16)?)
}

async fn read_line(io: &mut Reader, line: &mut Vec<u8>) -> Result<()> {
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
/// until `deadline`, with the same `key` each time. A 4xx answer is final.
pub async fn write_retry(conn: &mut Conn, method: &str, path: &str, body: &[u8], key: Option<&str>, deadline: Instant) -> Result<Value> {
    let mut last = String::new();
    for attempt in 0u32.. {
        if Instant::now() >= deadline {
            bail!("{method} {path}: gave up after {attempt} attempts: {last}");
        }
        match conn.request_keyed(method, path, body, key).await {
            Ok(r) if (200..300).contains(&r.status) => return r.json(),
            Ok(r) if r.status < 500 => bail!("{method} {path}: {}: {}", r.status, r.text()),
            Ok(r) => last = format!("{}: {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)) + 10)).await;
    }
    unreachable!()
}
