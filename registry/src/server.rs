//! Runs one node until SIGINT/SIGTERM: binds the listener, starts the node, serves HTTP.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Serve;
use crate::faults::Faults;
use crate::metrics::ReasonLabels;
use crate::node::Node;
use crate::tls::listener::{Conn, TlsListener};

/// Starts a node on an already bound listener (tests bind port 0 first).
pub async fn start(
    listener: tokio::net::TcpListener,
    config: crate::node::NodeConfig,
    faults: Faults,
) -> anyhow::Result<(Arc<Node>, tokio::task::JoinHandle<()>)> {
    let tls = config.tls.clone();
    let node = Node::start(config, faults).await.context("starting the node")?;
    let app = crate::http::router(node.clone());
    // The connection's facts (`Conn`: the client's address, whether it showed a node
    // certificate) feed the per-client lease limit and peer authentication.
    let app = app.into_make_service_with_connect_info::<Conn>();
    let task = match tls {
        Some(tls) => {
            let n = node.clone();
            let listener = TlsListener::new(listener, tls, move |reason| {
                n.metrics().tls_handshake_failures.get_or_create(&ReasonLabels { reason }).inc();
            })
            .context("serving TLS")?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "https server stopped");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "http server stopped");
            }
        }),
    };
    Ok((node, task))
}

/// How long a stopping node waits for the client writes it is answering.
const WRITES_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(serve: Serve) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(serve.listen).await.with_context(|| format!("binding {}", serve.listen))?;
    tracing::info!(id = serve.node.id, listen = %serve.listen, advertise = %serve.node.advertise, data_dir = %serve.node.data_dir.display(), "starting registry node");
    let mut config = serve.node;
    if !serve.listen.ip().is_unspecified() {
        config.source_ip = Some(serve.listen.ip());
    }
    if let Some(f) = &serve.fault_disk_stall_file {
        tracing::warn!(file = %f.display(), "test fault hook enabled: the Raft log stalls while this file exists");
    }
    if matches!(config.peer_auth, crate::peer_auth::PeerAuth::Insecure) {
        tokio::spawn(every(INSECURE_WARNING_EVERY, || {
            tracing::warn!(
                "running with --insecure: peer RPC is not authenticated; anyone who can reach this port can force elections, write the log and replace the store"
            )
        }));
    }
    // Installed first: a SIGHUP during a long start (a large log to read) must not kill the node.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let (node, http) = start(listener, config, Faults::from_stall_file(serve.fault_disk_stall_file)).await?;
    // Up and serving; the cluster's state (is there a leader?) is the status line and /readyz.
    runtime::notify::ready(&format!("node {} serving on {}", node.id(), serve.listen));
    tokio::spawn(notify_leader(node.watch_metrics()));
    let mut metrics = node.watch_metrics();
    // A storage error stops Raft for good; exit rather than linger half alive.
    let fatal = async move {
        loop {
            if let Err(e) = &metrics.borrow_and_update().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    };
    tokio::pin!(fatal);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                runtime::notify::reloading();
                reload(&node);
                runtime::notify::ready("reloaded");
            }
            e = &mut fatal => {
                http.abort();
                anyhow::bail!("raft stopped: {e}");
            }
        }
    }
    tracing::info!("shutting down");
    runtime::notify::stopping();
    // Before the HTTP server goes: the successor's vote request comes through it.
    node.hand_off().await;
    // No new connections; requests on open ones are still answered (each connection is a task
    // of its own), and writes held during the hand-off, now relayed, get their answers first.
    http.abort();
    if !node.writes_settled(WRITES_SETTLE).await {
        tracing::warn!("stopping with client writes still unanswered after {WRITES_SETTLE:?}; their clients will retry");
    }
    node.shutdown().await;
    Ok(())
}

/// Keeps systemd's status line (`systemctl status`) saying who leads, as it changes.
async fn notify_leader(mut metrics: tokio::sync::watch::Receiver<crate::types::RaftMetrics>) {
    let mut said = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if said != Some(now) {
            said = Some(now);
            match now.0 {
                Some(l) => runtime::notify::status(&format!("leader is node {l}, term {}", now.1)),
                None => runtime::notify::status(&format!("no leader known (term {})", now.1)),
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// SIGHUP: reads the TLS files again. A reload that fails keeps the old settings, so a
/// half-copied certificate never takes a node off the network; the signal never stops it.
fn reload(node: &Node) {
    if let Some(log) = node.audit() {
        log.reopen();
        tracing::info!(path = %log.path().display(), "SIGHUP: reopening the audit log");
    }
    let Some(tls) = node.config().tls.clone() else {
        tracing::info!("SIGHUP: nothing to reload (TLS is off)");
        return;
    };
    if let Err(e) = tls.reload() {
        tracing::error!(error = %e, "SIGHUP: could not reload TLS; keeping the previous certificate, key and CA");
        return;
    }
    // Built from what was just loaded, so it cannot fail on the files; should it fail anyway,
    // peer requests go on with the previous identity until the next reload.
    match node.peers().reload() {
        Ok(()) => {
            tracing::info!(cert = %tls.files().cert.display(), ca = %tls.files().ca.display(), "SIGHUP: reloaded the TLS certificate, key and CA; new connections use them")
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: serving the new certificate, but peer requests still use the previous one"),
    }
}

/// How often a node started with `--insecure` says so again (and once at startup), so it is
/// not lost in old logs.
const INSECURE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `f` now and then once per `period`, for as long as the task lives.
async fn every(period: std::time::Duration, f: impl Fn()) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        f();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn the_insecure_warning_comes_at_once_and_then_every_minute() {
        let n = Arc::new(AtomicUsize::new(0));
        let counted = n.clone();
        let task = tokio::spawn(super::every(super::INSECURE_WARNING_EVERY, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        // The clock stands still: the task runs only when it is let (a yield) or the clock is
        // moved (`advance`), so each count is read once the task has caught up with it.
        let reached = |want: usize| {
            let n = n.clone();
            async move {
                for _ in 0..1000 {
                    if n.load(Ordering::SeqCst) >= want {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                n.load(Ordering::SeqCst)
            }
        };
        assert_eq!(reached(1).await, 1, "not at startup");
        tokio::time::advance(3 * super::INSECURE_WARNING_EVERY).await;
        assert_eq!(reached(4).await, 4, "not once a minute");
        task.abort();
    }
}
