//! msgpack record → one JSON line, streaming, no intermediate tree.
//!
//! Strings are escaped the way Go's `encoding/json` escapes them (`<`, `>`,
//! `&`, U+2028 and U+2029 as `\uXXXX`), so events written by kube-apiserver
//! come out byte for byte as they went in.

use crate::record::reader::{Head, MsgReader, ReadError};
use crate::record::scan;
use crate::record::time::EVENT_TIME_EXT;
use rmp::Marker;

/// Deepest nesting written; deeper records are rejected.
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToJsonError {
    #[error("invalid msgpack: {0}")]
    Read(#[from] ReadError),
    #[error("record nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Writes the next msgpack value of `r` as JSON into `out`.
pub fn write_value(r: &mut MsgReader<'_>, out: &mut Vec<u8>) -> Result<(), ToJsonError> {
    value(r, out, 0)
}

fn value(r: &mut MsgReader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), ToJsonError> {
    if depth > MAX_DEPTH {
        return Err(ToJsonError::TooDeep);
    }
    let marker = r.peek_marker()?;
    match marker {
        Marker::Null => {
            r.read_head()?;
            out.extend_from_slice(b"null");
        }
        Marker::True => {
            r.read_head()?;
            out.extend_from_slice(b"true");
        }
        Marker::False => {
            r.read_head()?;
            out.extend_from_slice(b"false");
        }
        Marker::F32 | Marker::F64 => {
            let v = r.read_f64()?;
            if v.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
        Marker::FixPos(_) | Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => {
            out.extend_from_slice(itoa::Buffer::new().format(r.read_u64()?).as_bytes());
        }
        Marker::FixNeg(_) | Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
            out.extend_from_slice(itoa::Buffer::new().format(r.read_i64()?).as_bytes());
        }
        _ => match r.read_head()?.1 {
            Head::Str(n) | Head::Bin(n) => str_body(r, n, out)?,
            Head::Array(n) => {
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    value(r, out, depth + 1)?;
                }
                out.push(b']');
            }
            Head::Map(n) => {
                out.push(b'{');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    key(r, out, depth + 1)?;
                    out.push(b':');
                    value(r, out, depth + 1)?;
                }
                out.push(b'}');
            }
            Head::Ext(t, n) => {
                let data = r.read_bytes(n)?;
                if t == EVENT_TIME_EXT && n == 8 {
                    let secs = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    let nanos = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                    let v = secs as f64 + nanos as f64 / 1e9;
                    out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
            }
            Head::Scalar(_) => out.extend_from_slice(b"null"),
        },
    }
    Ok(())
}

/// JSON object keys must be strings: a non-string msgpack key is written as
/// the string of its JSON form.
fn key(r: &mut MsgReader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), ToJsonError> {
    let mut ahead = r.clone();
    match ahead.read_head()?.1 {
        Head::Str(n) | Head::Bin(n) => {
            *r = ahead;
            str_body(r, n, out)?;
        }
        _ => {
            let mut tmp = Vec::new();
            value(r, &mut tmp, depth)?;
            write_str(out, &tmp);
        }
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the `n`-byte body of the str or bin whose header `r` just read,
/// as a JSON string (read in place: the frame goes on after it).
fn str_body(r: &mut MsgReader<'_>, n: usize, out: &mut Vec<u8>) -> Result<(), ReadError> {
    let at = r.pos();
    r.read_bytes(n)?;
    write_str_at(out, r.buf(), at, n);
    Ok(())
}

/// Writes `s` as a JSON string, as [`write_str_at`] does.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    write_str_at(out, s, 0, s.len());
}

/// Writes `buf[at..at + len]` as a JSON string (RFC 8259 §7, escaped as Go's
/// `encoding/json` does since Go 1.22); the bytes after it in `buf` may be
/// read to scan in whole blocks. Each byte of invalid UTF-8 becomes
/// `\ufffd`, as in Go.
fn write_str_at(out: &mut Vec<u8>, buf: &[u8], at: usize, len: usize) {
    out.push(b'"');
    let body = out.len();
    if write_body(out, buf, at, len).is_err() {
        out.truncate(body);
        for chunk in buf[at..at + len].utf8_chunks() {
            let valid = chunk.valid().as_bytes();
            // Valid UTF-8: cannot fail.
            let _ = write_body(out, valid, 0, valid.len());
            for _ in chunk.invalid() {
                out.extend_from_slice(b"\\ufffd");
            }
        }
    }
    out.push(b'"');
}

/// The escaped text of [`write_str_at`], without quotes; `Err` (part of
/// it written) if it is not valid UTF-8.
fn write_body(out: &mut Vec<u8>, buf: &[u8], at: usize, len: usize) -> Result<(), ()> {
    let s = &buf[at..at + len];
    // Validated lazily, from the first non-ASCII byte on: most strings are
    // ASCII and need no second pass.
    let mut utf8_ok = false;
    let mut i = 0;
    loop {
        i += scan::copy_plain(out, buf, at + i, len - i, utf8_ok);
        let Some(&b) = s.get(i) else { break };
        if b >= 0x80 {
            if !utf8_ok {
                simdutf8::basic::from_utf8(&s[i..]).map_err(|_| ())?;
                utf8_ok = true;
                continue;
            }
            // 0xE2 in valid UTF-8 starts a 3-byte sequence. U+2028 / U+2029
            // (E2 80 A8 / E2 80 A9) are escaped, as Go does.
            let third = s.get(i + 2).copied();
            if s.get(i + 1) == Some(&0x80) && matches!(third, Some(0xA8 | 0xA9)) {
                out.extend_from_slice(if third == Some(0xA8) {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
            continue;
        }
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            // Other control characters, '<', '>', '&'.
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]),
        }
        i += 1;
    }
    Ok(())
}

/// msgpack record → JSON text.
pub fn record_json(rec: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(rec.len() + rec.len() / 4);
    write_value(&mut MsgReader::new(rec), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode::Transcoder;
    use proptest::prelude::*;

    fn round_trip(json: &str) -> String {
        let mut mp = Vec::new();
        Transcoder::default()
            .encode(json.as_bytes(), &mut mp)
            .unwrap();
        let mut out = Vec::new();
        write_value(&mut MsgReader::new(&mp), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn go_style_escaping_is_byte_exact() {
        let line = r#"{"requestURI":"/api/v1/pods?a=1\u0026b=\u003cx\u003e","msg":"tab\there \"q\" \\ \u2028 é ✓ \b\f\u0001","n":-12,"f":1.5,"b":true,"z":null,"a":[1,{"k":[]}],"e":{}}"#;
        assert_eq!(round_trip(line), line);
    }

    #[test]
    fn large_maps_and_arrays_use_wide_headers() {
        let mut line = String::from("{");
        for i in 0..300 {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&format!(
                "\"k{i}\":[{}]",
                (0..20).map(|x| x.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
        line.push('}');
        assert_eq!(round_trip(&line), line);
    }

    /// Go writes `\ufffd` for each byte that is not valid UTF-8 (a
    /// truncated sequence gives one per byte).
    #[test]
    fn invalid_utf8_becomes_one_replacement_per_byte() {
        let mut out = Vec::new();
        write_str(&mut out, b"a\xe2\x80b\xff\xef\xbf\xbd<");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\ufffd\\ufffdb\\ufffd\u{fffd}\\u003c\""
        );
    }

    #[test]
    fn non_string_keys_become_strings() {
        // {1: "a"}
        let mp = [0x81, 0x01, 0xa1, b'a'];
        let mut out = Vec::new();
        write_value(&mut MsgReader::new(&mp), &mut out).unwrap();
        assert_eq!(out, br#"{"1":"a"}"#);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mp = vec![0x91; 1000];
        let mut out = Vec::new();
        assert_eq!(
            write_value(&mut MsgReader::new(&mp), &mut out),
            Err(ToJsonError::TooDeep)
        );
    }

    /// Go's `encoding/json` string escaping (Go 1.22+), one char at a time;
    /// `\ufffd` for each byte of invalid UTF-8.
    fn go_reference(s: &[u8]) -> Vec<u8> {
        let mut o = String::from("\"");
        for chunk in s.utf8_chunks() {
            go_chars(&mut o, chunk.valid());
            for _ in chunk.invalid() {
                o.push_str("\\ufffd");
            }
        }
        o.push('"');
        o.into_bytes()
    }

    fn go_chars(o: &mut String, s: &str) {
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\r' => o.push_str("\\r"),
                '\t' => o.push_str("\\t"),
                '\u{8}' => o.push_str("\\b"),
                '\u{c}' => o.push_str("\\f"),
                '\u{2028}' => o.push_str("\\u2028"),
                '\u{2029}' => o.push_str("\\u2029"),
                c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&') => {
                    o.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => o.push(c),
            }
        }
    }

    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            &b"a"[..],
            b"Z",
            b" ",
            b"\xc3\xa9",
            b"\xe2\x80\xa8",
            b"\xe2\x80\xa9",
            b"\xe2\x80\xa7",
            b"\xe2\x9c\x93",
            b"\xf0\x9f\x98\x80",
            b"<",
            b">",
            b"&",
            b"\"",
            b"\\",
            b"\n",
            b"\x01",
            b"\x1f",
            b"\x7f",
            b"\xe2",
            b"\xff",
            b"\x80",
            b"0123456789abcdef",
        ]);
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        /// Any bytes, inside a buffer that goes on with bytes that would
        /// need escaping: the same string as Go writes.
        #[test]
        fn strings_are_escaped_as_go_does(
            s in prop_oneof![pieces(), prop::collection::vec(any::<u8>(), 0..100)],
            after in prop_oneof![Just(Vec::new()), pieces()],
        ) {
            let buf = [&b"\xe2<"[..], &s, &after].concat();
            let mut out = b"[".to_vec();
            write_str_at(&mut out, &buf, 2, s.len());
            let want = go_reference(&s);
            prop_assert_eq!(String::from_utf8(out[1..].to_vec()).unwrap(), String::from_utf8(want).unwrap());
        }
    }
}
