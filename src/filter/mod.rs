//! The filter stage: Kubernetes audit Policy per output ([`policy`]), the
//! decision applied to the encoded record ([`apply`]), then the output's
//! WebAssembly filters ([`wasm`]) run as a [`chain`] over [`item`]s, whose
//! verdicts [`verdict`] applies and whose failures [`on_error`] handles.

pub mod apply;
pub mod chain;
pub mod item;
pub mod on_error;
pub mod policy;
pub mod verdict;
pub mod wasm;
