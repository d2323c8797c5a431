//! Decoding one Forward message into JSON lines (spec §Message Modes).

use crate::forward::protocol::Options;
use crate::record::json::{self, ToJsonError};
use crate::record::reader::{Head, MsgReader, ReadError};
use crate::record::time::EVENT_TIME_EXT;
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
        }
    }
}

/// What a message held.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub mode: Mode,
    pub tag: &'a [u8],
    pub events: u64,
    /// `chunk` option: the client wants an ack (spec §Option).
    pub chunk: Option<&'a [u8]>,
}

/// Decodes `frame` (one complete msgpack value), appending one JSON line per
/// record to `out`. `Ok(None)` for a heartbeat (nil).
pub fn decode<'a>(
    frame: &'a [u8],
    max_decompressed: usize,
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
    let start = out.len();
    let second = r.peek_marker()?;
    let (mode, events, opts) = match second {
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            // Forward mode: [tag, [[time, record], ...], option?]
            let k = r.read_array_len()?;
            for _ in 0..k {
                entry(&mut r, out)?;
            }
            let opts = if n >= 3 {
                Options::read(&mut r)?
            } else {
                Options::default()
            };
            (Mode::Forward, k as u64, opts)
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
            let (mode, count) = match opts.compressed {
                None => (Mode::PackedForward, stream(entries, out)?),
                Some(b"gzip") => {
                    // Multi-member gzip allowed (spec §CompressedPackedForward).
                    let mut plain = Vec::with_capacity((entries.len() * 4).min(max_decompressed));
                    flate2::read::MultiGzDecoder::new(entries)
                        .take(max_decompressed as u64 + 1)
                        .read_to_end(&mut plain)
                        .map_err(MessageError::Gzip)?;
                    if plain.len() > max_decompressed {
                        out.truncate(start);
                        return Err(MessageError::GzipTooLarge(max_decompressed));
                    }
                    (Mode::CompressedPackedForward, stream(&plain, out)?)
                }
                Some(other) => {
                    return Err(MessageError::Compression(
                        String::from_utf8_lossy(other).into_owned(),
                    ));
                }
            };
            (mode, count, opts)
        }
        _ => {
            // Message mode: [tag, time, record, option?]
            if n < 3 {
                return Err(MessageError::Shape("message mode needs time and record"));
            }
            time(&mut r)?;
            json::write_value(&mut r, out)?;
            out.push(b'\n');
            let opts = if n >= 4 {
                Options::read(&mut r)?
            } else {
                Options::default()
            };
            (Mode::Message, 1, opts)
        }
    };
    Ok(Some(Decoded {
        mode,
        tag,
        events,
        chunk: opts.chunk,
    }))
}

/// A MessagePackEventStream: entries back to back.
fn stream(bytes: &[u8], out: &mut Vec<u8>) -> Result<u64, MessageError> {
    let mut r = MsgReader::new(bytes);
    let mut n = 0;
    while !r.is_empty() {
        entry(&mut r, out)?;
        n += 1;
    }
    Ok(n)
}

/// One `[time, record]` entry (spec §Entry).
fn entry(r: &mut MsgReader<'_>, out: &mut Vec<u8>) -> Result<(), MessageError> {
    if r.read_array_len()? != 2 {
        return Err(MessageError::Shape("entry is not [time, record]"));
    }
    time(r)?;
    json::write_value(r, out)?;
    out.push(b'\n');
    Ok(())
}

/// EventTime ext (fixext8 or ext8 of length 8) or integer seconds (spec
/// §EventTime Ext Format); a float is tolerated.
fn time(r: &mut MsgReader<'_>) -> Result<(), MessageError> {
    match r.read_head()? {
        (_, Head::Ext(t, 8)) if t == EVENT_TIME_EXT => {
            r.read_bytes(8)?;
            Ok(())
        }
        (_, Head::Ext(..)) => Err(MessageError::Time("ext time must be type 0 with 8 bytes")),
        (Marker::F32 | Marker::F64, Head::Scalar(n)) => {
            r.read_bytes(n)?;
            Ok(())
        }
        (m, Head::Scalar(n)) if !matches!(m, Marker::Null | Marker::True | Marker::False) => {
            r.read_bytes(n)?;
            Ok(())
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
}
