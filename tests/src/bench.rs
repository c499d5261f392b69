//! What the benchmark binaries share.

use std::future::Future;
use std::time::Duration;

/// Runs a benchmark's body on a fresh runtime until it finishes or the process gets SIGINT or
/// SIGTERM; dropping the body on a signal drops its processes, which kills them. Returns the
/// exit code, after printing the error prefixed with `name`.
pub fn run_bench<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = body => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); processes killed")),
            _ = term => Err(anyhow::anyhow!("terminated (SIGTERM); processes killed")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
