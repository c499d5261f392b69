//! What the benchmark binaries share besides the harness itself: how they run, how they write
//! their JSON, and one definition of a percentile.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

/// Runs a benchmark's body on a fresh runtime until it finishes or the process gets SIGINT or
/// SIGTERM; dropping the body on a signal drops its processes, which stops them, and should the
/// benchmark be SIGKILLed they die with it (`process::die_with_parent`; the body runs on this
/// thread). Returns the exit code, after printing the error prefixed with `name`.
pub fn run_bench<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::process::die_with_parent();
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

/// Writes `value` as pretty JSON to `path`, making its directory first.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

/// The `q`-quantile (0 to 1) of `sorted` by nearest rank: the smallest sample with at least a
/// `q` share of the samples at or below it (`q` = 0 is the minimum, 1 the maximum). None when
/// there are no samples.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(5));
        assert_eq!(percentile(&v, 0.9), Some(9));
        assert_eq!(percentile(&v, 0.99), Some(10));
        assert_eq!(percentile(&v, 1.0), Some(10));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
    }
}
