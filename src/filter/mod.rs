//! The filter stage: Kubernetes audit Policy per output, the decision
//! applied to the encoded record, then the output's WebAssembly filters.

pub mod apply;
pub mod chain;
pub mod policy;
pub mod wasm;
