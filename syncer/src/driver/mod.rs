pub mod runtime;
pub mod dataplane;
