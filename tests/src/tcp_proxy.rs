//! A TCP relay that can cut a connection at a chosen point of the answer: the network fault of
//! a stream that breaks in the middle (a proxy restart, a dropped NAT entry).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// How many connections it has cut (0 or 1).
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Relays every connection to `target`. The first answer that carries a line containing
    /// `marker` is cut right after that line: the client gets the line, then the connection
    /// closes mid-answer. Later connections pass untouched.
    pub async fn cut_after_first_line_with(target: SocketAddr, marker: &'static str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(true));
        let c = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, cuts) = (armed.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, marker.as_bytes(), armed, cuts).await;
                    }
                });
            }
        });
        CutProxy { addr, cuts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, marker: &[u8], armed: Arc<AtomicBool>, cuts: Arc<AtomicUsize>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    // Once the marker is seen, bytes up to the end of its line are still sent, then the cut.
    let mut cutting = false;
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if !cutting && armed.load(Ordering::SeqCst) {
            if let Some(at) = find(chunk, marker) {
                if armed.swap(false, Ordering::SeqCst) {
                    cutting = true;
                    let _ = cw.write_all(&chunk[..at]).await;
                    let rest = &chunk[at..];
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(nl) => {
                            let _ = cw.write_all(&rest[..=nl]).await;
                            break;
                        }
                        None => {
                            let _ = cw.write_all(rest).await;
                            continue;
                        }
                    }
                }
            }
        } else if cutting {
            if let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
                let _ = cw.write_all(&chunk[..=nl]).await;
                break;
            }
        }
        if cw.write_all(chunk).await.is_err() {
            break;
        }
    }
    if cutting {
        cuts.fetch_add(1, Ordering::SeqCst);
    }
    let _ = cw.shutdown().await;
    up.abort();
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A TCP relay that, once armed, holds back the next request carrying a marker (say `PUT `)
/// for a while before passing it on: a write stuck behind a stalled leader, as the client sees
/// it. Other connections, and that one after the hold, pass untouched.
pub struct HoldProxy {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    holds: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    pub async fn start(target: SocketAddr, marker: &'static str, hold: std::time::Duration) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let holds = Arc::new(AtomicUsize::new(0));
        let (a, h) = (armed.clone(), holds.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, holds) = (a.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if find(&buf[..n], marker.as_bytes()).is_some() && armed.swap(false, Ordering::SeqCst) {
                            holds.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(hold).await;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                    let _ = down.await;
                });
            }
        });
        HoldProxy { addr, armed, holds, task }
    }

    /// Holds the next request that carries the marker.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn holds(&self) -> usize {
        self.holds.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
