pub mod frame;
pub mod log_store;
