//! The announcer: keeps this host's web server(s) registered while alive and healthy, and
//! removes them quickly and cleanly when not.

pub mod admin;
pub mod agent;
pub mod config;
pub mod health;
pub mod maint;
pub mod metrics;
pub mod publish;
pub mod registry;
pub mod reload;
pub mod zk;
