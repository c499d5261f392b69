//! Serving over TLS with axum: a `Listener` whose connections are TLS streams, handshaken in
//! their own tasks (a slow or silent client never holds up the next one), and `Conn`, the
//! connection facts handlers read through `ConnectInfo`: the client's address, and whether it
//! proved to be a peer with a node certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{node_certificate_hosts, Tls};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at most; a connection beyond that is closed at once (and counted), so
/// a flood of silent connections cannot use up the descriptors peers need.
const MAX_HANDSHAKES: usize = 512;

/// What a handler may know about the connection a request came on.
#[derive(Clone, Debug)]
pub struct Conn {
    pub addr: SocketAddr,
    /// It presented a certificate the cluster CA signed, with the node role: the hosts that
    /// certificate is valid for (`tls::node_certificate_hosts`).
    pub node_hosts: Option<Arc<Vec<String>>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Conn {
        Conn { addr: *stream.remote_addr(), node_hosts: None }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Conn {
        stream.remote_addr().clone()
    }
}

pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Conn)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` and hands out connections whose handshake succeeded, each with the
    /// server settings current when it started (`Tls::reload` applies to the next ones).
    /// `on_failure` hears of every failed handshake (a plain-HTTP client, an unknown CA).
    pub fn new(tcp: TcpListener, tls: Arc<Tls>, on_failure: impl Fn(&'static str) + Send + Sync + 'static) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let on_failure = Arc::new(on_failure);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of descriptors, say: wait instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    on_failure("too_many_handshakes");
                    continue;
                };
                let (tx, acceptor, on_failure) = (tx.clone(), TlsAcceptor::from(tls.server_config()), on_failure.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let node_hosts = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(node_certificate_hosts).map(Arc::new);
                            drop(_slot);
                            let _ = tx.send((tls, Conn { addr, node_hosts })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            on_failure("handshake_failed");
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            on_failure("handshake_timeout");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { local, ready, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Conn) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task ended (it does not while we hold the receiver): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Conn> {
        Ok(Conn { addr: self.local, node_hosts: None })
    }
}
