//! Harness for end-to-end tests: starts the real binaries as processes on free loopback ports,
//! waits on conditions with deadlines, and prints every process's log when a test fails.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod dataplane_double;
pub mod haproxy;
pub mod process;
pub mod secure;
pub mod tcp_proxy;
pub mod zookeeper;

pub use bench::run_bench;
pub use cluster::{registry_cli, write_cluster_secret, RegistryCluster};
pub use process::{binary, free_port, Proc};
pub use secure::served_certificate;
pub use testkit::wait_for;
