//! The event codec every stage shares, with no dependency on any of them:
//! audit JSON → msgpack record in one pass ([`encode`], with the field
//! scanner [`scan`]), the msgpack [`reader`] and [`write`]rs, msgpack →
//! JSON text ([`json`]), setting top-level fields in place ([`splice`]),
//! the event [`time`], and where a record came from ([`origin`]).

pub mod buf;
pub mod encode;
pub mod json;
pub mod origin;
pub mod reader;
pub mod scan;
pub mod splice;
pub mod time;
pub mod write;
