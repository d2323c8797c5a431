//! Decoding one Forward message into JSON lines (spec §Message Modes).
//!
//! Every entry shape senders use today is accepted: `[time, record]` (spec
//! §Entry) and `[[time, metadata], record]`, the form fluent-bit 2.x+ uses
//! for its log events and sends by default since 5.0.5
//! (`Retain_Metadata_In_Forward_Mode`, plugins/out_forward/forward_format.c);
//! time as an integer, a float, or EventTime (fixext8 or ext8). Metadata is
//! dropped unless [`Decoder::metadata_key`] names the key to write it under
//! (an empty map writes nothing); in Message mode fluent-bit sends it as the
//! `metadata` option. Its group markers (EventTime seconds 0xFFFFFFFF and
//! 0xFFFFFFFE, nanoseconds 0; src/flb_log_event_decoder.c) are skipped.

use crate::forward::protocol::Options;
use crate::record::json::{self, ToJsonError};
use crate::record::reader::{Head, MsgReader, ReadError};
use crate::record::time::EVENT_TIME_EXT;
use crate::transport::limits::Held;
use rmp::Marker;
use std::io::Read;

/// The four carrier modes of spec §Message Modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Message,
    Forward,
    PackedForward,
    CompressedPackedForward,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Message => "message",
            Mode::Forward => "forward",
            Mode::PackedForward => "packed_forward",
            Mode::CompressedPackedForward => "compressed_packed_forward",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed msgpack: {0}")]
    Msgpack(#[from] ReadError),
    #[error("not a Forward message: {0}")]
    Shape(&'static str),
    #[error("invalid event time: {0}")]
    Time(&'static str),
    #[error("{0}")]
    Json(#[from] ToJsonError),
    #[error("gzip: {0}")]
    Gzip(std::io::Error),
    #[error(
        "decompressed entries exceed receive.max_decompressed_bytes ({0} bytes): a gzip bomb or a client sending too much per message"
    )]
    GzipTooLarge(usize),
    #[error("unsupported compression {0:?}")]
    Compression(String),
    #[error(
        "no room in receive.memory_budget_bytes to decompress this message; the client will retry it"
    )]
    Budget,
}

impl MessageError {
    /// Short label for the rejected-frames metric.
    pub fn reason(&self) -> &'static str {
        match self {
            MessageError::Msgpack(_) => "malformed",
            MessageError::Shape(_) => "not_forward",
            MessageError::Time(_) => "bad_time",
            MessageError::Json(ToJsonError::TooDeep) => "too_deep",
            MessageError::Json(_) => "malformed",
            MessageError::Gzip(_) => "gzip",
            MessageError::GzipTooLarge(_) => "gzip_too_large",
            MessageError::Compression(_) => "compression",
            MessageError::Budget => "memory_budget",
        }
    }
}

/// What a message held.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub mode: Mode,
    pub tag: &'a [u8],
    /// Records written (group markers are not records).
    pub events: u64,
    /// `chunk` option: the client wants an ack (spec §Option).
    pub chunk: Option<&'a [u8]>,
    /// This program's source identity options, if sent.
    pub identity: crate::forward::protocol::identity::Identity<'a>,
}

/// How records are turned into JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoder<'k> {
    /// gzip output cap (`receive.max_decompressed_bytes`).
    pub max_decompressed: usize,
    /// Write an entry's non-empty metadata under this top-level key
    /// (`receive.metadata_key`); `None`: drop it.
    pub metadata_key: Option<&'k str>,
    /// Write the message's Forward tag under this top-level key
    /// (`receive.tag_key`); `None`: not written.
    pub tag_key: Option<&'k str>,
    /// Decompressed bytes are charged here as they grow (`None`: only
    /// `max_decompressed` bounds them).
    pub budget: Option<&'k Held>,
}

/// Decodes `frame` (one complete msgpack value), appending one JSON line per
/// record to `out` (metadata dropped). `Ok(None)` for a heartbeat (nil).
pub fn decode<'a>(
    frame: &'a [u8],
    max_decompressed: usize,
    out: &mut Vec<u8>,
) -> Result<Option<Decoded<'a>>, MessageError> {
    Decoder {
        max_decompressed,
        ..Decoder::default()
    }
    .decode(frame, out)
}

impl Decoder<'_> {
    /// [`decode`] with these settings. On an error `out` holds no line of
    /// this frame: a message is written whole or not at all.
    pub fn decode<'a>(
        &self,
        frame: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Decoded<'a>>, MessageError> {
        let start = out.len();
        let r = self.decode_into(frame, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn decode_into<'a>(
        &self,
        frame: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Decoded<'a>>, MessageError> {
        let mut r = MsgReader::new(frame);
        if r.peek_marker()? == Marker::Null {
            return Ok(None);
        }
        let n = match r.read_head()? {
            (_, Head::Array(n)) => n,
            _ => return Err(MessageError::Shape("top level is not an array")),
        };
        if !(2..=4).contains(&n) {
            return Err(MessageError::Shape("array must have 2 to 4 elements"));
        }
        let tag = r
            .read_str_bytes()
            .map_err(|_| MessageError::Shape("tag is not a string"))?;
        let (mode, events, opts) = match r.peek_marker()? {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                // Forward mode: [tag, [entry, ...], option?]
                let k = r.read_array_len()?;
                let mut events = 0;
                for _ in 0..k {
                    events += self.entry(&mut r, tag, out)?;
                }
                let opts = if n >= 3 {
                    Options::read(&mut r)?
                } else {
                    Options::default()
                };
                (Mode::Forward, events, opts)
            }
            Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => {
                // (Compressed)PackedForward: [tag, entries-stream, option?]
                let entries = r.read_str_bytes()?;
                let opts = if n >= 3 {
                    Options::read(&mut r)?
                } else {
                    Options::default()
                };
                match opts.compressed {
                    None => (Mode::PackedForward, self.stream(entries, tag, out)?, opts),
                    Some(b"gzip") => {
                        let plain = self.gunzip(entries)?;
                        (
                            Mode::CompressedPackedForward,
                            self.stream(&plain, tag, out)?,
                            opts,
                        )
                    }
                    Some(other) => {
                        return Err(MessageError::Compression(
                            String::from_utf8_lossy(other).into_owned(),
                        ));
                    }
                }
            }
            _ => {
                // Message mode: [tag, time, record, option?]; fluent-bit
                // sends the metadata as the `metadata` option.
                if n < 3 {
                    return Err(MessageError::Shape("message mode needs time and record"));
                }
                time(&mut r)?;
                let start = out.len();
                json::write_value(&mut r, out)?;
                let opts = if n >= 4 {
                    Options::read(&mut r)?
                } else {
                    Options::default()
                };
                self.finish(start, opts.metadata, tag, out)?;
                (Mode::Message, 1, opts)
            }
        };
        Ok(Some(Decoded {
            mode,
            tag,
            events,
            chunk: opts.chunk,
            identity: opts.identity,
        }))
    }

    /// Multi-member gzip (spec §CompressedPackedForward), capped, and
    /// charged to the budget step by step as it grows.
    fn gunzip(&self, entries: &[u8]) -> Result<Vec<u8>, MessageError> {
        let cap = self.max_decompressed;
        let mut plain = Vec::new();
        let mut d = flate2::read::MultiGzDecoder::new(entries).take(cap as u64 + 1);
        let base = self.budget.map_or(0, Held::get);
        let mut step = (entries.len() * 4).clamp(64 * 1024, cap + 1);
        loop {
            if let Some(b) = self.budget
                && !b.try_set(base + plain.capacity() + step)
            {
                return Err(MessageError::Budget);
            }
            plain.reserve_exact(step);
            let got = (&mut d)
                .take(step as u64)
                .read_to_end(&mut plain)
                .map_err(MessageError::Gzip)?;
            if let Some(b) = self.budget {
                b.force_set(base + plain.capacity());
            }
            if plain.len() > cap {
                return Err(MessageError::GzipTooLarge(cap));
            }
            if got < step {
                return Ok(plain);
            }
            step = plain.len().min(cap + 1 - plain.len()).max(1);
        }
    }

    /// A MessagePackEventStream: entries back to back.
    fn stream(&self, bytes: &[u8], tag: &[u8], out: &mut Vec<u8>) -> Result<u64, MessageError> {
        let mut r = MsgReader::new(bytes);
        let mut n = 0;
        while !r.is_empty() {
            n += self.entry(&mut r, tag, out)?;
        }
        Ok(n)
    }

    /// One entry, `[time, record]` (spec §Entry) or `[[time, metadata],
    /// record]`; returns the records written (0 for a group marker).
    fn entry(
        &self,
        r: &mut MsgReader<'_>,
        tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, MessageError> {
        if r.read_array_len()? != 2 {
            return Err(MessageError::Shape(
                "entry is not [time, record] or [[time, metadata], record]",
            ));
        }
        let bytes = r.buf();
        let mut meta = None;
        let t = match r.peek_marker()? {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                if r.read_array_len()? != 2 {
                    return Err(MessageError::Shape("entry header is not [time, metadata]"));
                }
                let t = time(r)?;
                let at = r.pos();
                if !matches!(
                    r.peek_marker()?,
                    Marker::FixMap(_) | Marker::Map16 | Marker::Map32
                ) {
                    return Err(MessageError::Shape("entry metadata is not a map"));
                }
                r.skip_value()?;
                meta = Some(&bytes[at..r.pos()]);
                t
            }
            _ => time(r)?,
        };
        if meta.is_some() && t.is_some_and(|(s, ns)| s >= GROUP_END && ns == 0) {
            r.skip_value()?;
            return Ok(0);
        }
        // Straight from the frame (one pass; the JSON writer's block scans
        // may read past a string within the frame).
        let start = out.len();
        json::write_value(r, out)?;
        self.finish(start, meta, tag, out)?;
        Ok(1)
    }

    /// Ends the record written from `start` as a JSON line, with its
    /// metadata and its message's tag under the configured keys (a record
    /// that is not a map gets neither).
    fn finish(
        &self,
        start: usize,
        meta: Option<&[u8]>,
        tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), MessageError> {
        let is_map = out.len() >= start + 2 && out[start] == b'{' && out.last() == Some(&b'}');
        let add = |key: &str, out: &mut Vec<u8>| {
            out.pop();
            if out.len() > start + 1 {
                out.push(b',');
            }
            json::write_str(out, key.as_bytes());
            out.push(b':');
        };
        if let (Some(key), Some(meta)) = (self.metadata_key, meta)
            && is_map
            && !is_empty_map(meta)
        {
            add(key, out);
            json::write_value(&mut MsgReader::new(meta), out)?;
            out.push(b'}');
        }
        if let Some(key) = self.tag_key
            && is_map
        {
            add(key, out);
            json::write_str(out, tag);
            out.push(b'}');
        }
        out.push(b'\n');
        Ok(())
    }
}

/// fluent-bit's group markers: EventTime seconds of a group's end
/// (0xFFFFFFFE) and start (0xFFFFFFFF), nanoseconds 0.
const GROUP_END: u32 = 0xFFFF_FFFE;

/// Whether `map` (a msgpack map) has no entries (`80`, or fluent-bit's
/// `df 00 00 00 00`).
fn is_empty_map(map: &[u8]) -> bool {
    MsgReader::new(map).read_map_len() == Ok(0)
}

/// EventTime ext (fixext8 or ext8 of length 8) or integer seconds (spec
/// §EventTime Ext Format); a float is tolerated. An EventTime's (seconds,
/// nanoseconds), else `None`.
fn time(r: &mut MsgReader<'_>) -> Result<Option<(u32, u32)>, MessageError> {
    match r.read_head()? {
        (_, Head::Ext(t, 8)) if t == EVENT_TIME_EXT => {
            let b = r.read_bytes(8)?;
            let s = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let ns = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            Ok(Some((s, ns)))
        }
        (_, Head::Ext(..)) => Err(MessageError::Time("ext time must be type 0 with 8 bytes")),
        (Marker::F32 | Marker::F64, Head::Scalar(n)) => {
            r.read_bytes(n)?;
            Ok(None)
        }
        (m, Head::Scalar(n)) if !matches!(m, Marker::Null | Marker::True | Marker::False) => {
            r.read_bytes(n)?;
            Ok(None)
        }
        _ => Err(MessageError::Time("not an integer or EventTime")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::time::EventTime;
    use crate::record::write::write_str;
    use std::io::Write;

    fn rec(out: &mut Vec<u8>, v: u8) {
        out.push(0x81);
        write_str(out, b"k");
        out.push(v);
    }

    fn opts(out: &mut Vec<u8>, chunk: &[u8], gzip: bool) {
        out.push(if gzip { 0x82 } else { 0x81 });
        write_str(out, b"chunk");
        write_str(out, chunk);
        if gzip {
            write_str(out, b"compressed");
            write_str(out, b"gzip");
        }
    }

    fn run(frame: &[u8]) -> (Decoded<'_>, String) {
        let mut out = Vec::new();
        let d = decode(frame, 1 << 20, &mut out).unwrap().unwrap();
        (d, String::from_utf8(out).unwrap())
    }

    #[test]
    fn message_mode_with_int_time_and_option() {
        let mut f = vec![0x94];
        write_str(&mut f, b"t");
        f.push(0x05);
        rec(&mut f, 1);
        opts(&mut f, b"c1", false);
        let (d, out) = run(&f);
        assert_eq!(d.mode, Mode::Message);
        assert_eq!(d.chunk, Some(&b"c1"[..]));
        assert_eq!(out, "{\"k\":1}\n");
    }

    #[test]
    fn message_mode_with_ext8_time() {
        let mut f = vec![0x93];
        write_str(&mut f, b"t");
        f.extend_from_slice(&[0xc7, 8, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        rec(&mut f, 2);
        let (d, out) = run(&f);
        assert_eq!((d.mode, d.chunk), (Mode::Message, None));
        assert_eq!(out, "{\"k\":2}\n");
    }

    #[test]
    fn forward_mode() {
        let mut f = vec![0x93];
        write_str(&mut f, b"t");
        f.push(0x92);
        for v in [1, 2] {
            f.push(0x92);
            EventTime { secs: 1, nanos: 1 }.write(&mut f);
            rec(&mut f, v);
        }
        opts(&mut f, b"c", false);
        let (d, out) = run(&f);
        assert_eq!((d.mode, d.events), (Mode::Forward, 2));
        assert_eq!(out, "{\"k\":1}\n{\"k\":2}\n");
    }

    fn entries() -> Vec<u8> {
        let mut e = Vec::new();
        for v in [3, 4, 5] {
            e.push(0x92);
            EventTime { secs: 1, nanos: 1 }.write(&mut e);
            rec(&mut e, v);
        }
        e
    }

    #[test]
    fn packed_forward_as_str_and_bin() {
        for bin in [false, true] {
            let e = entries();
            let mut f = vec![0x93];
            write_str(&mut f, b"t");
            if bin {
                rmp::encode::write_bin_len(&mut f, e.len() as u32).unwrap();
            } else {
                write_str_header(&mut f, e.len());
            }
            f.extend_from_slice(&e);
            opts(&mut f, b"c", false);
            let (d, out) = run(&f);
            assert_eq!((d.mode, d.events), (Mode::PackedForward, 3));
            assert_eq!(out, "{\"k\":3}\n{\"k\":4}\n{\"k\":5}\n");
        }
    }

    fn write_str_header(f: &mut Vec<u8>, n: usize) {
        crate::record::write::write_str_header(f, n);
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn compressed_packed_forward_multi_member() {
        let e = entries();
        let mut z = gz(&e[..e.len() / 2]);
        z.extend_from_slice(&gz(&e[e.len() / 2..]));
        let mut f = vec![0x93];
        write_str(&mut f, b"t");
        rmp::encode::write_bin_len(&mut f, z.len() as u32).unwrap();
        f.extend_from_slice(&z);
        opts(&mut f, b"c", true);
        let (d, out) = run(&f);
        assert_eq!((d.mode, d.events), (Mode::CompressedPackedForward, 3));
        assert_eq!(out, "{\"k\":3}\n{\"k\":4}\n{\"k\":5}\n");
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let z = gz(&vec![0u8; 10 << 20]);
        let mut f = vec![0x93];
        write_str(&mut f, b"t");
        rmp::encode::write_bin_len(&mut f, z.len() as u32).unwrap();
        f.extend_from_slice(&z);
        opts(&mut f, b"c", true);
        let mut out = Vec::new();
        let e = decode(&f, 1 << 20, &mut out).unwrap_err();
        assert_eq!(e.reason(), "gzip_too_large");
    }

    #[test]
    fn heartbeat_and_garbage() {
        let mut out = Vec::new();
        assert_eq!(decode(&[0xc0], 10, &mut out).unwrap(), None);
        assert_eq!(
            decode(&[0x05], 10, &mut out).unwrap_err().reason(),
            "not_forward"
        );
        assert_eq!(
            decode(&[0x91, 0x01], 10, &mut out).unwrap_err().reason(),
            "not_forward"
        );
        // Message mode with a bool time.
        let mut f = vec![0x93];
        write_str(&mut f, b"t");
        f.push(0xc3);
        f.push(0x80);
        assert_eq!(decode(&f, 10, &mut out).unwrap_err().reason(), "bad_time");
    }

    /// One generated entry: its time form, whether it carries metadata
    /// (and which), and its record value.
    #[derive(Debug, Clone)]
    struct Gen {
        time: u8,
        meta: Option<u8>,
        v: u8,
    }

    fn gen_entry() -> impl proptest::strategy::Strategy<Value = Gen> {
        use proptest::prelude::*;
        (0u8..5, proptest::option::of(0u8..3), 0u8..100).prop_map(|(time, meta, v)| Gen {
            time,
            meta,
            v,
        })
    }

    /// The entry's bytes and the JSON line expected with metadata key `_m`.
    fn build(g: &Gen) -> (Vec<u8>, String) {
        let mut t = Vec::new();
        match g.time {
            0 => t.extend_from_slice(&[0xd7, 0, 0x65, 0x53, 0xf1, 0, 0, 0, 0, 7]),
            1 => t.extend_from_slice(&[0xc7, 8, 0, 0x65, 0x53, 0xf1, 0, 0, 0, 0, 7]),
            2 => t.extend_from_slice(&[0xce, 0x65, 0x53, 0xf1, 0]),
            3 => t.extend_from_slice(&[0xcb, 0x41, 0xd9, 0x54, 0xfc, 0x40, 0x07, 0xe6, 0xb7]),
            _ => t.push(0x05),
        }
        let mut e = vec![0x92];
        let mut line = format!("{{\"k\":{}", g.v);
        match g.meta {
            None => e.extend_from_slice(&t),
            Some(m) => {
                e.push(0x92);
                e.extend_from_slice(&t);
                match m {
                    0 => e.push(0x80),
                    1 => e.extend_from_slice(&[0xdf, 0, 0, 0, 0]),
                    _ => {
                        e.extend_from_slice(&[0xdf, 0, 0, 0, 1, 0xa1, b'x', 0xcc, g.v]);
                        line.push_str(&format!(",\"_m\":{{\"x\":{}}}", g.v));
                    }
                }
            }
        }
        e.extend_from_slice(&[0x81, 0xa1, b'k', 0xcc, g.v]);
        line.push_str("}\n");
        (e, line)
    }

    proptest::proptest! {
        /// Every entry shape in every mode decodes to its line, whatever
        /// mix of shapes a message holds; and the frame measurer finds the
        /// message incomplete at every split point before its end.
        #[test]
        fn every_entry_shape_decodes_in_every_mode(
            entries in proptest::collection::vec(gen_entry(), 1..6),
            mode in 0u8..4,
            split in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..4),
        ) {
            let (bytes, lines): (Vec<Vec<u8>>, Vec<String>) = entries.iter().map(build).unzip();
            let stream = bytes.concat();
            let mut f = vec![0x93, 0xa1, b't'];
            match mode {
                0 => {
                    f.push(0x90 | entries.len() as u8);
                    f.extend_from_slice(&stream);
                }
                1 => {
                    let _ = rmp::encode::write_bin(&mut f, &stream);
                }
                2 => write_str(&mut f, &stream),
                _ => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&stream).unwrap();
                    let _ = rmp::encode::write_bin(&mut f, &gz.finish().unwrap());
                }
            }
            opts(&mut f, b"id", mode == 3);
            for ix in &split {
                let at = ix.index(f.len());
                proptest::prop_assert!(matches!(
                    crate::forward::protocol::frame::measure(&f[..at], 1 << 20),
                    Ok(crate::forward::protocol::frame::Frame::Incomplete(_))
                ));
            }
            proptest::prop_assert_eq!(
                crate::forward::protocol::frame::measure(&f, 1 << 20).unwrap(),
                crate::forward::protocol::frame::Frame::Complete(f.len())
            );
            let mut out = Vec::new();
            let d = Decoder { max_decompressed: 1 << 20, metadata_key: Some("_m"), tag_key: None, budget: None }
                .decode(&f, &mut out)
                .unwrap()
                .unwrap();
            proptest::prop_assert_eq!(d.events, entries.len() as u64);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), lines.concat());
            // Without the key, the metadata is dropped.
            let mut plain = Vec::new();
            decode(&f, 1 << 20, &mut plain).unwrap();
            let want: String = entries.iter().map(|g| format!("{{\"k\":{}}}\n", g.v)).collect();
            proptest::prop_assert_eq!(String::from_utf8(plain).unwrap(), want);
        }
    }
}
