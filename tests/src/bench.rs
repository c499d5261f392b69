//! What the benchmark binaries share besides the harness itself: how they run, how they write
//! their JSON, one definition of a percentile and of a latency summary, and a
//! monotonic clock that fits in an atomic (resident memory is `procstat`'s).

use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

/// Runs a benchmark's body on a fresh runtime until it finishes or the process gets SIGINT or
/// SIGTERM; dropping the body on a signal drops its processes, which stops them, and should the
/// benchmark be SIGKILLed they die with it (`process::die_with_parent`; the body runs on this
/// thread). Returns the exit code, after printing the error prefixed with `name`.
pub fn run_bench<F>(name: &str, body: F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    crate::process::die_with_parent();
    epoch_ns(Instant::now());
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

/// Percentiles (in milliseconds) of samples taken in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &mut [u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let pick = |q: f64| percentile(samples, q).unwrap_or(0) as f64 / 1e6;
        Summary {
            count: n,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: samples[n - 1] as f64 / 1e6,
            mean: samples.iter().sum::<u64>() as f64 / n as f64 / 1e6,
        }
    }
    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50_ms": r3(self.p50), "p90_ms": r3(self.p90), "p99_ms": r3(self.p99), "max_ms": r3(self.max), "mean_ms": r3(self.mean)})
    }
    pub fn line(&self) -> String {
        format!("p50 {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  (n={})", self.p50, self.p90, self.p99, self.max, self.count)
    }
}

/// Rounded to 3 decimals (for JSON).
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rounded to 1 decimal (for JSON).
pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A duration in nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Monotonic origin of `epoch_ns`, set by its first call (`run_bench` makes that the start).
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `t` as nanoseconds since the benchmark started: a timestamp that fits in an `AtomicU64`.
pub fn epoch_ns(t: Instant) -> u64 {
    nanos(t.saturating_duration_since(*EPOCH.get_or_init(Instant::now)))
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
