//! Where a chunk's events came from, in a form that is the same when they
//! are read again after a restart: this program's extension of the Forward
//! options (spec §Option: "other options MAY be ignored", so fluent-bit and
//! fluentd accept such chunks and ignore it).
//!
//! | key | value |
//! |---|---|
//! | `af_stream` | str: the stream, one per forwarder state directory and output (created once, kept in `state_dir`) |
//! | `af_source` | str: the source file, 32 hex digits of the SHA-256 of its first bytes (the same file after a rename or gzip) |
//! | `af_range` | array `[start, end]`: the byte range of the source file this chunk accounts for, events dropped on purpose included |
//! | `af_ends` | bin: each event's end offset in the file, as unsigned LEB128 deltas from `start`, in entry order |
//! | `af_gap` | map `{path, offset, bytes, why}`: in a chunk without events, a loss the sender reported (a DATA GAP: a file gone before it was read); `bytes` 0 = unknown |
//!
//! A receiver that keeps, per stream and source, the end of what it wrote
//! drops the events of a resent chunk that end at or before it, whatever
//! batch boundaries the sender chose after its restart.

use crate::record::reader::{MsgReader, ReadError};
use crate::record::write::write_str;

/// The identity options of one chunk, borrowed from the frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    pub stream: &'a [u8],
    pub source: &'a [u8],
    pub start: u64,
    pub end: u64,
    /// LEB128 deltas (see the module docs).
    pub ends: &'a [u8],
    /// `af_gap`, raw ([`read_gap`]).
    pub gap: Option<&'a [u8]>,
}

/// Number of option keys [`write`] adds.
pub const KEYS: u32 = 4;

/// Appends the four options (keys and values) to an option map.
pub fn write(out: &mut Vec<u8>, stream: &str, source: &str, start: u64, end: u64, ends: &[u64]) {
    write_str(out, b"af_stream");
    write_str(out, stream.as_bytes());
    write_str(out, b"af_source");
    write_str(out, source.as_bytes());
    write_str(out, b"af_range");
    let _ = rmp::encode::write_array_len(out, 2);
    let _ = rmp::encode::write_uint(out, start);
    let _ = rmp::encode::write_uint(out, end);
    let mut deltas = Vec::with_capacity(ends.len() * 2);
    let mut prev = start;
    for &e in ends {
        leb128(&mut deltas, e.saturating_sub(prev));
        prev = e;
    }
    write_str(out, b"af_ends");
    let _ = rmp::encode::write_bin(out, &deltas);
}

/// Appends the `af_gap` option (key and value).
pub fn write_gap(out: &mut Vec<u8>, gap: &crate::record::origin::Gap) {
    write_str(out, b"af_gap");
    let _ = rmp::encode::write_map_len(out, 4);
    write_str(out, b"path");
    write_str(out, gap.path.as_bytes());
    write_str(out, b"offset");
    let _ = rmp::encode::write_uint(out, gap.offset);
    write_str(out, b"bytes");
    let _ = rmp::encode::write_uint(out, gap.bytes);
    write_str(out, b"why");
    write_str(out, gap.why.as_bytes());
}

/// Reads an `af_gap` value.
pub fn read_gap(raw: &[u8]) -> Option<crate::record::origin::Gap> {
    let mut r = MsgReader::new(raw);
    let mut g = crate::record::origin::Gap {
        path: String::new(),
        offset: 0,
        bytes: 0,
        why: String::new(),
    };
    for _ in 0..r.read_map_len().ok()? {
        match r.read_str_bytes().ok()? {
            b"path" => g.path = String::from_utf8_lossy(r.read_str_bytes().ok()?).into_owned(),
            b"offset" => g.offset = r.read_u64().ok()?,
            b"bytes" => g.bytes = r.read_u64().ok()?,
            b"why" => g.why = String::from_utf8_lossy(r.read_str_bytes().ok()?).into_owned(),
            _ => r.skip_value().ok()?,
        }
    }
    Some(g)
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl<'a> Identity<'a> {
    /// Reads the value of `key` if it is one of the identity options;
    /// `Ok(false)` if it is not (the caller skips it).
    pub fn read_option(&mut self, key: &[u8], r: &mut MsgReader<'a>) -> Result<bool, ReadError> {
        match key {
            b"af_stream" => self.stream = r.read_str_bytes()?,
            b"af_source" => self.source = r.read_str_bytes()?,
            b"af_range" => {
                // Anything but [start, end] leaves the range unset.
                let n = r.read_array_len()?;
                if n == 2 {
                    self.start = r.read_u64()?;
                    self.end = r.read_u64()?;
                } else {
                    for _ in 0..n {
                        r.skip_value()?;
                    }
                }
            }
            b"af_ends" => self.ends = r.read_str_bytes()?,
            b"af_gap" => {
                let at = r.pos();
                r.skip_value()?;
                self.gap = Some(&r.buf()[at..r.pos()]);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Complete enough to act on.
    pub fn is_set(&self) -> bool {
        !self.stream.is_empty() && !self.source.is_empty() && self.end >= self.start
    }

    /// How many of the chunk's first events end at or before `written`
    /// (they were written before); `None` if `af_ends` is malformed.
    pub fn already_written(&self, written: u64) -> Option<u64> {
        let ends = self.event_ends()?;
        Some(ends.iter().take_while(|&&e| e <= written).count() as u64)
    }

    /// The end offsets of the events, in entry order; `None` if `af_ends`
    /// is malformed.
    pub fn event_ends(&self) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(self.ends.len());
        let mut at = self.start;
        let (mut v, mut shift) = (0u64, 0u32);
        for &b in self.ends {
            if shift >= 64 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 != 0 {
                shift += 7;
                continue;
            }
            at = at.checked_add(v)?;
            out.push(at);
            (v, shift) = (0, 0);
        }
        (shift == 0).then_some(out)
    }

    /// The number of events `af_ends` lists.
    pub fn events(&self) -> u64 {
        self.ends.iter().filter(|&&b| b & 0x80 == 0).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &[u8]) -> Identity<'_> {
        let mut r = MsgReader::new(buf);
        let mut id = Identity::default();
        for _ in 0..r.read_map_len().unwrap() {
            let k = r.read_str_bytes().unwrap();
            assert!(id.read_option(k, &mut r).unwrap());
        }
        id
    }

    #[test]
    fn round_trip_and_the_written_prefix() {
        let ends = [1_000, 1_001, 300_000, 300_200];
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, KEYS).unwrap();
        write(&mut buf, "s1", "f1", 900, 300_500, &ends);
        let id = read(&buf);
        assert!(id.is_set());
        assert_eq!((id.stream, id.source), (&b"s1"[..], &b"f1"[..]));
        assert_eq!((id.start, id.end, id.events()), (900, 300_500, 4));
        assert_eq!(id.already_written(0), Some(0));
        assert_eq!(id.already_written(999), Some(0));
        assert_eq!(id.already_written(1_000), Some(1));
        assert_eq!(id.already_written(1_001), Some(2));
        assert_eq!(id.already_written(299_999), Some(2));
        assert_eq!(id.already_written(300_200), Some(4));
        assert_eq!(id.already_written(u64::MAX), Some(4));
        assert_eq!(id.event_ends(), Some(ends.to_vec()));
    }

    #[test]
    fn gap_round_trip() {
        let g = crate::record::origin::Gap {
            path: "/var/log/audit-1.log".into(),
            offset: 7,
            bytes: 0,
            why: "deleted".into(),
        };
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 1).unwrap();
        write_gap(&mut buf, &g);
        let id = read(&buf);
        assert_eq!(read_gap(id.gap.unwrap()), Some(g));
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let id = Identity {
            stream: b"s",
            source: b"f",
            start: 0,
            end: 10,
            ends: &[0x80, 0x80],
            gap: None,
        };
        assert_eq!(id.already_written(100), None);
        let over = Identity {
            ends: &[0xff; 11],
            ..id
        };
        assert_eq!(over.already_written(100), None);
    }
}
