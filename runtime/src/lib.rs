//! What the three binaries (`registry`, `announcer`, `syncer`) share at run time, so that each
//! rule lives in one place: how config files read, how they log, how they serve metrics and
//! name their version, and how they talk to systemd.

pub mod config;
pub mod logs;
pub mod metrics;
pub mod notify;
