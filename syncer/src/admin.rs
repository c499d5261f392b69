//! The optional admin endpoint: `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// `/healthz`: 200 `ok`, or 503 with the state and why (`health.rs` says what each means).
async fn healthz(State(m): State<Arc<Metrics>>) -> axum::response::Response {
    let v = m.health.lock().unwrap().verdict(tokio::time::Instant::now());
    let code = if v.state == "ok" { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(v)).into_response()
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app =
        Router::new()
            .route("/healthz", get(healthz))
            .route(
                "/metrics",
                get(|State(m): State<Arc<Metrics>>| async move {
                    ([(axum::http::header::CONTENT_TYPE, runtime::metrics::CONTENT_TYPE)], m.render()).into_response()
                }),
            )
            .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(())
}
