//! A tiny web server for tests and the demo: answers `/` with its name and port, and `/health`
//! with 200 `ok`, or 503 while the `--fail-file` exists (so a test can make it unhealthy
//! without stopping it).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Demo web server: / says who answered, /health is 200 unless --fail-file exists")]
struct Args {
    /// Address to serve on; repeat to serve on several ports (a web VM with two services).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Name to put in answers.
    #[arg(long, default_value = "demo-web")]
    name: String,
    /// While this file exists, /health answers 503.
    #[arg(long)]
    fail_file: Option<PathBuf>,
}

#[derive(Clone)]
struct App {
    name: String,
    port: u16,
    fail_file: Option<PathBuf>,
}

async fn hello(State(a): State<App>) -> String {
    format!("hello from {} on port {}\n", a.name, a.port)
}

async fn health(State(a): State<App>) -> (StatusCode, &'static str) {
    match &a.fail_file {
        Some(f) if f.exists() => (StatusCode::SERVICE_UNAVAILABLE, "failing\n"),
        _ => (StatusCode::OK, "ok\n"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tasks = Vec::new();
    for addr in args.listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = App { name: args.name.clone(), port: listener.local_addr()?.port(), fail_file: args.fail_file.clone() };
        let router = Router::new().route("/", get(hello)).route("/health", get(health)).with_state(app);
        eprintln!("{} listening on {}", args.name, listener.local_addr()?);
        tasks.push(tokio::spawn(async move { axum::serve(listener, router).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
