//! `GET /ui`: the status page. Three static files compiled into the binary (no build step, no
//! CDN, works offline); the page reads the cluster through the public API with the viewer's
//! token, so serving it needs none (`acl::need` lists it as open) and it shows nothing without
//! one on a cluster with ACLs.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const APP: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// Only the page's own files may load, and nothing inline runs: names and meta on the page come
/// from clients.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CONTENT_SECURITY_POLICY, CSP), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub async fn app() -> Response {
    file("text/javascript; charset=utf-8", APP)
}

pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
