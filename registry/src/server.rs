//! Runs one node until SIGINT/SIGTERM: binds the listener, starts the node, serves HTTP.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Serve;
use crate::faults::Faults;
use crate::node::Node;

/// Starts a node on an already bound listener (tests bind port 0 first).
pub async fn start(
    listener: tokio::net::TcpListener,
    config: crate::node::NodeConfig,
    faults: Faults,
) -> anyhow::Result<(Arc<Node>, tokio::task::JoinHandle<()>)> {
    let node = Node::start(config, faults).await.context("starting the node")?;
    let app = crate::http::router(node.clone());
    let task = tokio::spawn(async move {
        // The peer address feeds the per-client lease limit.
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok((node, task))
}

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
        tokio::spawn(warn_insecure());
    }
    let (node, http) = start(listener, config, Faults::from_stall_file(serve.fault_disk_stall_file)).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        e = fatal => {
            http.abort();
            anyhow::bail!("raft stopped: {e}");
        }
    }
    tracing::info!("shutting down");
    http.abort();
    node.shutdown().await;
    Ok(())
}

/// `--insecure`: said at startup and every minute, so it is not lost in old logs.
async fn warn_insecure() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every.tick().await;
        tracing::warn!(
            "running with --insecure: peer RPC is not authenticated; anyone who can reach this port can force elections, write the log and replace the store"
        );
    }
}
