//! The syncer: keeps HAProxy backends equal to the live set of services from the registry or
//! ZooKeeper, through the Runtime API (no reloads) or the Data Plane API.

pub mod admin;
pub mod breaker;
pub mod config;
pub mod driver;
pub mod dry_run;
pub mod health;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod reload;
pub mod report;
pub mod source;
pub mod state;
