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
        if let Some(t) = Self::parse_utc(s.as_bytes()) {
            return Some(t);
        }
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        let secs = u32::try_from(t.timestamp()).ok()?;
        Some(EventTime {
            secs,
            nanos: t.timestamp_subsec_nanos(),
        })
    }

    /// The form the apiserver writes, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`
    /// (RFC 3339 in UTC), without chrono; `None` for anything else (the
    /// caller then asks chrono).
    fn parse_utc(b: &[u8]) -> Option<Self> {
        fn num(b: &[u8]) -> Option<u32> {
            b.iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + (c - b'0') as u32)
            })
        }
        if b.len() < 20 || b.len() > 30 || *b.last()? != b'Z' {
            return None;
        }
        if (b[4], b[7], b[10], b[13], b[16]) != (b'-', b'-', b'T', b':', b':') {
            return None;
        }
        let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
        let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
        let frac = &b[19..b.len() - 1];
        let nanos = match frac {
            [] => 0,
            [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
                num(digits)? * 10u32.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let mdays = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&mo) || d == 0 || d > mdays[mo as usize - 1] {
            return None;
        }
        // Second 60 (a leap second) is left to chrono.
        if h > 23 || mi > 59 || sec > 59 || y < 1970 {
            return None;
        }
        // Days since 1970-01-01 (H. Hinnant's days_from_civil).
        let (y, mo, d) = (y as i64, mo as i64, d as i64);
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
        Some(EventTime {
            secs: u32::try_from(secs).ok()?,
            nanos,
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
#[inline]
pub fn write_str_header(out: &mut Vec<u8>, len: usize) {
    // msgpack spec, "str format family": fixstr, str 8, str 16, str 32.
    match len {
        0..=31 => out.push(0xa0 | len as u8),
        32..=0xff => out.extend_from_slice(&[0xd9, len as u8]),
        0x100..=0xffff => {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

/// Appends a msgpack str.
#[inline]
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
    fn str_headers_match_rmp_at_every_boundary() {
        for len in [0, 1, 31, 32, 255, 256, 65535, 65536, 1 << 20] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            write_str_header(&mut ours, len);
            rmp::encode::write_str_len(&mut theirs, len as u32).unwrap();
            assert_eq!(ours, theirs, "len {len}");
        }
    }

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

    proptest::proptest! {
        /// The chrono-free path agrees with chrono on every form it takes,
        /// and leaves the rest (offsets, leap seconds) to chrono.
        #[test]
        fn utc_fast_path_agrees_with_chrono(
            secs in 0i64..4_294_967_295,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..=9,
            offset in proptest::option::of(-50_000i32..50_000),
        ) {
            use chrono::{SecondsFormat, TimeZone};
            let t = chrono::Utc.timestamp_opt(secs, nanos).unwrap();
            let text = match offset {
                Some(o) => t.with_timezone(&chrono::FixedOffset::east_opt(o / 60 * 60).unwrap())
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
                None => {
                    let f = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                    let frac = format!("{:09}", nanos);
                    if digits == 0 { format!("{f}Z") } else { format!("{f}.{}Z", &frac[..digits]) }
                }
            };
            let chrono = chrono::DateTime::parse_from_rfc3339(&text).ok().and_then(|t| {
                Some(EventTime { secs: u32::try_from(t.timestamp()).ok()?, nanos: t.timestamp_subsec_nanos() })
            });
            proptest::prop_assert_eq!(EventTime::parse_rfc3339(&text), chrono, "{}", text);
        }
    }

    #[test]
    fn utc_fast_path_rejects_what_chrono_rejects() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T00:00:00.Z",
            "2026-11-24T00:00:00.1234567890Z",
            "2026-11-24T00:00:0xZ",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(EventTime::parse_utc(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            EventTime::parse_rfc3339("2024-02-29T12:00:00Z").map(|t| t.secs),
            Some(1_709_208_000)
        );
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
