//! What the three binaries (`registry`, `announcer`, `syncer`) share at run time, so that each
//! rule lives in one place: how they log.

pub mod logs;
