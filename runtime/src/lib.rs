//! What the three binaries (`registry`, `announcer`, `syncer`) share at run time, so that each
//! rule lives in one place: how they log, and how they serve metrics and name their version.

pub mod logs;
pub mod metrics;
