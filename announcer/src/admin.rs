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

use crate::agent::{Event, MaintError, Shared};
use crate::maint::{Change, ChangeError, Target};

#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
}

/// `POST /v1/maint` body: the whole host, every instance of `service`, or one `instance` of
/// it; a `reason` goes with `on`. The answer is the maintenance state after it
/// (`maint::MaintState`, as saved).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintRequest {
    pub on: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl MaintRequest {
    pub fn change(self) -> Result<Change, String> {
        let target = match (self.service, self.instance) {
            (None, None) => Target::Host,
            (Some(s), None) => Target::Service(s),
            (Some(s), Some(i)) => Target::Instance(s, i),
            (None, Some(_)) => return Err("an instance needs its service".into()),
        };
        Ok(Change { on: self.on, target, reason: self.reason })
    }
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

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> (StatusCode, Json<serde_json::Value>) {
    (status, Json(serde_json::json!({ "code": code, "message": message.to_string() })))
}

/// 200 with the state after the change; 400/404 when refused; 500 `not_saved` when applied but
/// not written to the maintenance file; 503 when the agent is gone (shutting down).
async fn maint(State(a): State<Admin>, body: Result<Json<MaintRequest>, axum::extract::rejection::JsonRejection>) -> (StatusCode, Json<serde_json::Value>) {
    let change = match body.map_err(|e| e.body_text()).and_then(|Json(req)| req.change()) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_argument", e),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if a.events.send(Event::Maint(change, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the announcer is stopping");
    }
    match rx.await {
        Ok(Ok(state)) => (StatusCode::OK, Json(serde_json::to_value(state).expect("serializable"))),
        Ok(Err(MaintError::Refused(ChangeError::NotFound(m)))) => error(StatusCode::NOT_FOUND, "not_found", m),
        Ok(Err(MaintError::Refused(ChangeError::Invalid(m)))) => error(StatusCode::BAD_REQUEST, "invalid_argument", m),
        Ok(Err(MaintError::NotSaved { error: e, .. })) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "not_saved", format!("the change applies now but could not be saved ({e}); it will not survive a restart"))
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the announcer is stopping"),
    }
}
