//! The Fluent Forward protocol: wire forms, the encoder and batcher, the
//! client (sidecar side) and the server (in-cluster receiver).

pub mod auth;
pub mod batch;
pub mod client;
pub mod encode;
pub mod protocol;
pub mod scan;
pub mod server;
