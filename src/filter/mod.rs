//! The filter stage: Kubernetes audit Policy per output, then the decision
//! applied to the encoded record.

pub mod apply;
pub mod policy;
