//! The registry: a Raft-replicated store of services, instances and leases.

pub mod command;
pub mod storage;
pub mod types;
pub mod store;
pub mod watch;
pub mod lease;
pub mod state_machine;
pub mod network;
pub mod faults;
pub mod error;
pub mod metrics;
pub mod node;
pub mod http;
pub mod config;
pub mod cli;
pub mod server;
