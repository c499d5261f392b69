//! Harness for end-to-end tests: starts the real binaries as processes on free loopback ports,
//! waits on conditions with deadlines, and prints every process's log when a test fails.

pub mod bench;
pub mod bench_cluster;
pub mod chaos;
pub mod cluster;
pub mod dataplane_double;
pub mod etcd;
pub mod failover;
pub mod haproxy;
pub mod http1;
pub mod lease;
pub mod load;
pub mod metrics;
pub mod process;
pub mod procstat;
pub mod secure;
pub mod tcp_proxy;
pub mod zookeeper;

pub use bench::run_bench;
pub use cluster::{registry_cli, write_cluster_secret, ClusterOptions, RegistryCluster};
pub use process::{binary, free_port, Proc};
pub use secure::served_certificate;
pub use testkit::wait_for;

/// `wait_for` that returns the timeout as an error instead of failing the test, for the
/// benchmarks (which report it) and the harness's own fallible starts.
pub async fn until<T, F, Fut>(limit: std::time::Duration, what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    testkit::poll_until(limit, what, f).await.map_err(anyhow::Error::msg)
}
