//! The optional local admin endpoint: health, metrics, status and the maintenance switch.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::agent::{Event, Shared};

#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
}

/// `POST /v1/maint` body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintRequest {
    pub on: bool,
}

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>, events: mpsc::Sender<Event>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/maint", post(maint))
        .with_state(Admin { shared, events });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    });
    Ok(())
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, runtime::metrics::CONTENT_TYPE)], a.shared.metrics.render())
}

async fn status(State(a): State<Admin>) -> impl IntoResponse {
    Json(a.shared.status.lock().unwrap().clone())
}

async fn maint(State(a): State<Admin>, body: Result<Json<MaintRequest>, axum::extract::rejection::JsonRejection>) -> impl IntoResponse {
    match body {
        Ok(Json(req)) => {
            let _ = a.events.send(Event::Maint(req.on)).await;
            (StatusCode::OK, Json(serde_json::json!({ "maint": req.on })))
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "code": "invalid_argument", "message": e.body_text() }))),
    }
}
