pub mod dataplane;
pub mod runtime;
