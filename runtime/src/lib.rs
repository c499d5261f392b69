//! What the three binaries (`registry`, `announcer`, `syncer`) share at run time, so that each
//! rule lives in one place: how config files read, how they log, how they serve metrics and
//! name their version, how they talk to systemd, and the completions and man pages they print.

pub mod config;
pub mod docs;
pub mod logs;
pub mod metrics;
pub mod notify;
