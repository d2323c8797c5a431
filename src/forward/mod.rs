//! The Fluent Forward protocol, and nothing else: its wire forms
//! ([`protocol`]: messages, frames, handshake), authentication ([`auth`]),
//! batching records into PackedForward chunks ([`batch`]), the client that
//! sends them with acknowledgements (sidecar side) and the server that
//! receives them (the in-cluster receiver).

pub mod auth;
pub mod batch;
pub mod client;
pub mod protocol;
pub mod server;
