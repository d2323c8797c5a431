//! Fluent Forward protocol v1: the wire forms both sides speak.
//!
//! Spec sections cited as "spec §X" refer to
//! <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>.

pub mod frame;
pub mod handshake;
pub mod identity;
use crate::record::reader::{MsgReader, ReadError};
use crate::record::write::write_str;

/// The `option` map of Forward, PackedForward and Message modes (spec §Option).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options<'a> {
    /// `chunk`: the id the client wants acknowledged.
    pub chunk: Option<&'a [u8]>,
    /// `size`: number of events the client says the message holds.
    pub size: Option<u64>,
    /// `compressed`: `"gzip"` for CompressedPackedForward.
    pub compressed: Option<&'a [u8]>,
    /// `metadata`: a record's metadata map (msgpack bytes), as fluent-bit
    /// sends it in Message mode (plugins/out_forward/forward_format.c,
    /// `append_options`); not in the spec.
    pub metadata: Option<&'a [u8]>,
    /// This program's source identity (`af_*`, [`identity`]).
    pub identity: identity::Identity<'a>,
}

impl<'a> Options<'a> {
    /// Reads the option map; unknown keys are skipped (spec §Option: "other
    /// options MAY be ignored").
    /// A nil option (sent by old Docker fluentd log drivers) is no option.
    pub fn read(r: &mut MsgReader<'a>) -> Result<Self, ReadError> {
        if r.peek_marker()? == rmp::Marker::Null {
            r.skip_value()?;
            return Ok(Options::default());
        }
        let n = r.read_map_len()?;
        let mut o = Options::default();
        for _ in 0..n {
            let key = r.read_str_bytes()?;
            match key {
                b"chunk" => o.chunk = Some(r.read_str_bytes()?),
                b"size" => o.size = Some(r.read_u64()?),
                b"compressed" => o.compressed = Some(r.read_str_bytes()?),
                b"metadata" => {
                    let at = r.pos();
                    r.skip_value()?;
                    let raw = &r.buf()[at..r.pos()];
                    // A map, else ignored like an unknown option.
                    if MsgReader::new(raw).read_map_len().is_ok() {
                        o.metadata = Some(raw);
                    }
                }
                k if o.identity.read_option(k, r)? => {}
                _ => r.skip_value()?,
            }
        }
        Ok(o)
    }
}

/// Encodes the server's acknowledgement `{"ack": <chunk>}` (spec §Response).
pub fn encode_ack(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 8);
    let _ = rmp::encode::write_map_len(&mut out, 1);
    write_str(&mut out, b"ack");
    write_str(&mut out, chunk);
    out
}

/// Decodes a server response map and returns the `ack` value, if present
/// (spec §Response).
pub fn decode_ack(frame: &[u8]) -> Result<Option<&[u8]>, ReadError> {
    let mut r = MsgReader::new(frame);
    let n = r.read_map_len()?;
    let mut ack = None;
    for _ in 0..n {
        let key = r.read_str_bytes()?;
        if key == b"ack" {
            ack = Some(r.read_str_bytes()?);
        } else {
            r.skip_value()?;
        }
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trip() {
        let a = encode_ack(b"abc=");
        // fixmap(1) fixstr(3) "ack" fixstr(4) "abc="
        assert_eq!(a, b"\x81\xa3ack\xa4abc=");
        assert_eq!(decode_ack(&a).unwrap(), Some(&b"abc="[..]));
        assert_eq!(decode_ack(b"\x80").unwrap(), None);
        assert!(decode_ack(b"\x91\x01").is_err());
    }

    #[test]
    fn options_skip_unknown_keys() {
        let mut m = Vec::new();
        rmp::encode::write_map_len(&mut m, 3).unwrap();
        write_str(&mut m, b"x");
        rmp::encode::write_array_len(&mut m, 1).unwrap();
        m.push(0xc0);
        write_str(&mut m, b"chunk");
        write_str(&mut m, b"id1");
        write_str(&mut m, b"size");
        m.push(0x05);
        let mut r = MsgReader::new(&m);
        let o = Options::read(&mut r).unwrap();
        assert_eq!(o.chunk, Some(&b"id1"[..]));
        assert_eq!(o.size, Some(5));
        assert_eq!(o.compressed, None);
    }

    proptest::proptest! {
        /// The frame measurer, the message decoder and the handshake
        /// decoders never panic on garbage.
        #[test]
        fn receiver_decoding_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            use crate::forward::protocol::handshake::{Helo, Ping, Pong};
            let _ = crate::forward::protocol::frame::measure(&bytes, 1 << 20);
            let mut out = Vec::new();
            let _ = crate::forward::server::message::decode(&bytes, 1 << 20, &mut out);
            let _ = Helo::decode(&bytes);
            let _ = Ping::decode(&bytes);
            let _ = Pong::decode(&bytes);
            let _ = crate::forward::protocol::decode_ack(&bytes);
        }
    }
}
