//! Fluent Forward protocol v1: the wire forms both sides speak.
//!
//! Spec sections cited as "spec §X" refer to
//! <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>.

pub mod frame;
pub mod handshake;
pub mod reader;

use reader::{MsgReader, ReadError};

/// msgpack extension type of EventTime (spec §EventTime Ext Format).
pub const EVENT_TIME_EXT: i8 = 0;

/// An event timestamp with nanosecond precision (spec §EventTime Ext Format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventTime {
    pub secs: u32,
    pub nanos: u32,
}

impl EventTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        EventTime {
            secs: d.as_secs() as u32,
            nanos: d.subsec_nanos(),
        }
    }

    /// Parses an RFC 3339 timestamp such as the audit event's `stageTimestamp`
    /// (`2026-11-23T18:57:52.123456Z`).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        let secs = u32::try_from(t.timestamp()).ok()?;
        Some(EventTime {
            secs,
            nanos: t.timestamp_subsec_nanos(),
        })
    }

    /// Appends the EventTime as `fixext8` type 0: seconds and nanoseconds as
    /// big-endian u32 (spec §EventTime Ext Format).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0xd7, EVENT_TIME_EXT as u8]);
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.nanos.to_be_bytes());
    }

    /// Seconds since the epoch as a float.
    pub fn as_f64(&self) -> f64 {
        self.secs as f64 + self.nanos as f64 / 1e9
    }
}

/// The `option` map of Forward, PackedForward and Message modes (spec §Option).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options<'a> {
    /// `chunk`: the id the client wants acknowledged.
    pub chunk: Option<&'a [u8]>,
    /// `size`: number of events the client says the message holds.
    pub size: Option<u64>,
    /// `compressed`: `"gzip"` for CompressedPackedForward.
    pub compressed: Option<&'a [u8]>,
}

impl<'a> Options<'a> {
    /// Reads the option map; unknown keys are skipped (spec §Option: "other
    /// options MAY be ignored").
    pub fn read(r: &mut MsgReader<'a>) -> Result<Self, ReadError> {
        let n = r.read_map_len()?;
        let mut o = Options::default();
        for _ in 0..n {
            let key = r.read_str_bytes()?;
            match key {
                b"chunk" => o.chunk = Some(r.read_str_bytes()?),
                b"size" => o.size = Some(r.read_u64()?),
                b"compressed" => o.compressed = Some(r.read_str_bytes()?),
                _ => r.skip_value()?,
            }
        }
        Ok(o)
    }
}

/// Appends a msgpack str header for `len` bytes (spec: msgpack str family).
pub fn write_str_header(out: &mut Vec<u8>, len: usize) {
    // Vec<u8> as a writer cannot fail.
    let _ = rmp::encode::write_str_len(out, len as u32);
}

/// Appends a msgpack str.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    write_str_header(out, s.len());
    out.extend_from_slice(s);
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
    fn event_time_is_fixext8_type_0() {
        let mut out = Vec::new();
        EventTime {
            secs: 0x5a5b5c5d,
            nanos: 0x01020304,
        }
        .write(&mut out);
        assert_eq!(
            out,
            [0xd7, 0x00, 0x5a, 0x5b, 0x5c, 0x5d, 0x01, 0x02, 0x03, 0x04]
        );
    }

    #[test]
    fn parses_stage_timestamp() {
        let t = EventTime::parse_rfc3339("2026-11-23T18:57:52.123456Z").unwrap();
        assert_eq!(t.secs, 1795460272);
        assert_eq!(t.nanos, 123_456_000);
        assert!(EventTime::parse_rfc3339("yesterday").is_none());
    }

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
}
