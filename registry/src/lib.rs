//! The registry: a Raft-replicated store of services, instances and leases.

pub mod acl;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod command;
pub mod config;
pub mod error;
pub mod faults;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peer_auth;
pub mod peer_client;
pub mod server;
pub mod state_machine;
pub mod storage;
pub mod store;
pub mod tls;
pub mod types;
pub mod watch;
