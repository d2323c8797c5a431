//! Byte scanners for the two JSON hot loops: the encoder looking for the end
//! of a string (RFC 8259 §7) and the receiver looking for bytes it must
//! escape (copying what it need not escape in the same pass). Sixteen bytes
//! at a time with SSE2 (part of every x86_64 CPU), one at a time elsewhere;
//! both answer exactly what the one-byte definitions below say
//! (property-tested against them). (AVX2 with
//! run-time detection was tried: the strings of audit events are mostly
//! short, and the detection cost more than the wider blocks saved.)

/// Does the encoder have to look closer at `b`: a quote, a backslash, a
/// control character (invalid in a JSON string) or a non-ASCII byte (UTF-8
/// to validate)?
#[inline]
pub fn is_string_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b)
}

/// Does the receiver have to look closer at `b` when writing it in a JSON
/// string: a quote, a backslash, a control character, `<`, `>` or `&`
/// (escaped like Go's encoder does), or a non-ASCII byte: any of them while
/// the string's UTF-8 is not yet validated (`utf8_ok` false), only 0xE2
/// (may start U+2028/U+2029) after.
#[inline]
pub fn is_escape_candidate(b: u8, utf8_ok: bool) -> bool {
    matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&')
        || b < 0x20
        || (b >= 0x80 && (!utf8_ok || b == 0xE2))
}

/// Index of the first byte at or after `from` with [`is_string_special`],
/// or `s.len()`.
#[inline]
pub fn string_special(s: &[u8], from: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::string_special(s, from)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar(s, from, is_string_special)
    }
}

/// The encoder's fast path: when the JSON string body at `s[start..]` is
/// printable ASCII without escapes and ends (at its closing quote) within
/// 32 bytes, appends it to `out` as a msgpack fixstr (msgpack spec, str
/// format family) and returns its length; otherwise appends nothing and
/// returns `None`. Scanning and copying are one pass over two 16-byte
/// blocks (most keys and values of an audit event are that short).
#[inline]
pub fn short_plain_str(out: &mut Vec<u8>, s: &[u8], start: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::short_plain_str(out, s, start)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // As the SSE2 version: only with 32 bytes to read.
        let body = s.get(start..start.checked_add(32)?)?;
        let n = body.iter().position(|&b| is_string_special(b))?;
        (body[n] == b'"').then(|| {
            out.push(0xa0 | n as u8);
            out.extend_from_slice(&body[..n]);
            n
        })
    }
}

/// Appends to `out` the bytes of `buf[at..at + len]` up to the first one
/// with [`is_escape_candidate`], and returns how many it appended (`len` if
/// there is none). Bytes of `buf` after the string may be read, never
/// copied: that lets SSE2 take every string, however short, in 16-byte
/// blocks, scanning and copying in the same pass.
#[inline]
pub fn copy_plain(out: &mut Vec<u8>, buf: &[u8], at: usize, len: usize, utf8_ok: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::copy_plain(out, buf, at, len, utf8_ok)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let s = &buf[at..at + len];
        let n = s
            .iter()
            .position(|&b| is_escape_candidate(b, utf8_ok))
            .unwrap_or(len);
        out.extend_from_slice(&s[..n]);
        n
    }
}

#[inline]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn scalar(s: &[u8], from: usize, hit: fn(u8) -> bool) -> usize {
    s.get(from..)
        .and_then(|t| t.iter().position(|&b| hit(b)))
        .map_or(s.len(), |i| from + i)
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Runs `mask` over 16-byte blocks from `from`; the tail (under 16
    /// bytes) as one more block: the last 16 bytes of `s` with the lanes
    /// already checked masked off, or, if `s` is shorter, a copy padded
    /// with lanes that are masked off. (Most strings the receiver writes are
    /// short: byte by byte they cost ~20 % of its instructions.)
    #[inline(always)]
    fn find(s: &[u8], from: usize, mask: fn(__m128i) -> i32) -> usize {
        let mut i = from;
        while i + 16 <= s.len() {
            // SAFETY: `i + 16 <= s.len()`, so the 16 bytes read are inside
            // `s`; `loadu` has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(s.as_ptr().add(i).cast()) };
            let m = mask(v);
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
        if i >= s.len() {
            return s.len();
        }
        let (base, m) = if s.len() >= 16 {
            let base = s.len() - 16;
            // SAFETY: `base + 16 == s.len()`.
            let v = unsafe { _mm_loadu_si128(s.as_ptr().add(base).cast()) };
            // Lanes before `i` were checked already.
            (base, mask(v) & (0xffff << (i - base)))
        } else {
            let mut pad = [0u8; 16];
            let n = s.len() - i;
            pad[..n].copy_from_slice(&s[i..]);
            // SAFETY: `pad` is 16 bytes.
            let v = unsafe { _mm_loadu_si128(pad.as_ptr().cast()) };
            (i, mask(v) & ((1 << n) - 1))
        };
        if m != 0 {
            base + m.trailing_zeros() as usize
        } else {
            s.len()
        }
    }

    // SAFETY (the `unsafe` blocks below): the intrinsics are SSE2, which
    // every x86_64 CPU has (it is in the target's baseline features).

    #[inline(always)]
    fn string_mask(v: __m128i) -> i32 {
        unsafe {
            let q = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let b = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Signed compare: bytes >= 0x80 are negative, so this is
            // "< 0x20 or >= 0x80".
            let c = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(q, b), c))
        }
    }

    #[inline(always)]
    fn escape_mask(v: __m128i, utf8_ok: bool) -> i32 {
        unsafe {
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let ctl = if utf8_ok {
                // Unsigned v <= 0x1f: max(v, 0x1f) == 0x1f; and 0xE2.
                let lim = _mm_set1_epi8(0x1f);
                _mm_or_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, lim), lim), eq(0xE2))
            } else {
                // Signed compare: "< 0x20 or >= 0x80".
                _mm_cmplt_epi8(v, _mm_set1_epi8(0x20))
            };
            let a = _mm_or_si128(_mm_or_si128(eq(b'"'), eq(b'\\')), ctl);
            let b = _mm_or_si128(_mm_or_si128(eq(b'<'), eq(b'>')), eq(b'&'));
            _mm_movemask_epi8(_mm_or_si128(a, b))
        }
    }

    pub fn copy_plain(
        out: &mut Vec<u8>,
        buf: &[u8],
        at: usize,
        len: usize,
        utf8_ok: bool,
    ) -> usize {
        assert!(at <= buf.len() && len <= buf.len() - at);
        // Each block stores 16 bytes at `base + i` with `i < len`.
        out.reserve(len + 16);
        let base = out.len();
        let mut i = 0;
        while i < len {
            let rem = len - i;
            // SAFETY: 16 bytes are read from `buf` only when they are inside
            // it; otherwise the tail (then under 16 bytes, as the string ends
            // inside `buf`) goes through a zeroed copy.
            let v = unsafe {
                if at + i + 16 <= buf.len() {
                    _mm_loadu_si128(buf.as_ptr().add(at + i).cast())
                } else {
                    let mut pad = [0u8; 16];
                    pad[..rem].copy_from_slice(&buf[at + i..at + len]);
                    _mm_loadu_si128(pad.as_ptr().cast())
                }
            };
            let mut m = escape_mask(v, utf8_ok);
            if rem < 16 {
                m &= (1 << rem) - 1;
            }
            // SAFETY: `base + i + 16 <= base + len + 16 <= capacity`
            // (reserved above); the bytes become part of `out` only up to
            // the length set below.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(base + i).cast(), v) };
            if m != 0 {
                i += m.trailing_zeros() as usize;
                break;
            }
            i += rem.min(16);
        }
        // SAFETY: bytes `base..base + i` were written above, `i <= len`.
        unsafe { out.set_len(base + i) };
        i
    }

    #[inline(always)]
    pub fn short_plain_str(out: &mut Vec<u8>, s: &[u8], start: usize) -> Option<usize> {
        if start.checked_add(32)? > s.len() {
            return None;
        }
        out.reserve(33);
        let base = out.len();
        // SAFETY: `start + 32 <= s.len()`, so both 16-byte loads are inside
        // `s`; 33 bytes of spare capacity were reserved from `base`, and the
        // stores write `base + 1 .. base + 33`; the new length covers the
        // header and the `len` bytes before the quote, all written.
        unsafe {
            let p = s.as_ptr().add(start);
            let dst = out.as_mut_ptr().add(base);
            let v0 = _mm_loadu_si128(p.cast());
            _mm_storeu_si128(dst.add(1).cast(), v0);
            let m0 = string_mask(v0);
            let len = if m0 != 0 {
                m0.trailing_zeros() as usize
            } else {
                let v1 = _mm_loadu_si128(p.add(16).cast());
                _mm_storeu_si128(dst.add(17).cast(), v1);
                let m1 = string_mask(v1);
                if m1 == 0 {
                    return None;
                }
                16 + m1.trailing_zeros() as usize
            };
            if *p.add(len) != b'"' {
                return None;
            }
            *dst = 0xa0 | len as u8;
            out.set_len(base + 1 + len);
            Some(len)
        }
    }

    pub fn string_special(s: &[u8], from: usize) -> usize {
        find(s, from, string_mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slow(s: &[u8], from: usize, hit: impl Fn(u8) -> bool) -> usize {
        (from..s.len()).find(|&i| hit(s[i])).unwrap_or(s.len())
    }

    /// The encoder's scanner agrees with its definition on `s` from
    /// `from`; the receiver's copier agrees with its own on `s` placed in
    /// a buffer between `before` and `after` (the bytes after it are read,
    /// and must neither stop the copy nor be copied).
    fn agrees(s: &[u8], from: usize, what: &str) {
        assert_eq!(
            string_special(s, from),
            slow(s, from, is_string_special),
            "{what} from {from}"
        );
        for after in [&b""[..], b"\"\x01\xe2", b"aaaaaaaaaaaaaaaaaaaa\\"] {
            for utf8_ok in [false, true] {
                copy_agrees(b"ab", s, after, utf8_ok, what);
            }
        }
    }

    fn copy_agrees(before: &[u8], s: &[u8], after: &[u8], utf8_ok: bool, what: &str) {
        let buf = [before, s, after].concat();
        let mut out = b"xyz".to_vec();
        let n = copy_plain(&mut out, &buf, before.len(), s.len(), utf8_ok);
        let want = slow(s, 0, |b| is_escape_candidate(b, utf8_ok));
        assert_eq!(n, want, "{what}, utf8_ok {utf8_ok}, after {after:?}");
        assert_eq!(out, [&b"xyz"[..], &s[..n]].concat(), "{what}");
    }

    #[test]
    fn every_byte_value_in_every_lane() {
        for b in 0..=255u8 {
            for pos in 0..80 {
                let mut s = vec![b'a'; 80];
                s[pos] = b;
                for from in [0, 1, 15, 16, 17, 31, 32, 33, 47] {
                    agrees(&s[from..], 0, &format!("byte {b:#x} at {pos}"));
                    agrees(&s, from, &format!("byte {b:#x} at {pos}"));
                }
            }
        }
    }

    /// Short strings and tails: every length up to 33, every byte value at
    /// every position, from several starts.
    #[test]
    fn every_byte_value_in_short_strings_and_tails() {
        for len in 0..=33usize {
            for pos in 0..len.max(1) {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    if pos < len {
                        s[pos] = b;
                    }
                    for from in [0, 1, 7, 15, 16, 17, len] {
                        agrees(&s, from, &format!("byte {b:#x} at {pos} of {len}"));
                    }
                }
            }
        }
    }

    /// What [`short_plain_str`] must do: the definition, byte by byte.
    fn short_slow(s: &[u8], start: usize) -> Option<usize> {
        let body = s.get(start..start + 32)?;
        let n = body.iter().position(|&b| is_string_special(b))?;
        (body[n] == b'"').then_some(n)
    }

    fn short_agrees(s: &[u8], start: usize) {
        let mut out = b"xy".to_vec();
        let got = short_plain_str(&mut out, s, start);
        assert_eq!(got, short_slow(s, start), "{s:?} from {start}");
        let want = match got {
            Some(n) => [&b"xy"[..], &[0xa0 | n as u8], &s[start..start + n]].concat(),
            None => b"xy".to_vec(),
        };
        assert_eq!(out, want);
    }

    #[test]
    fn short_strings_every_byte_at_every_position() {
        for len in 0..40usize {
            for pos in 0..=len {
                for b in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xe2, 0xff, b'a'] {
                    let mut s = vec![b'a'; 48];
                    s[len] = b'"';
                    if pos < len {
                        s[pos] = b;
                    }
                    for start in [0, 1, 16] {
                        short_agrees(&s, start);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn same_answer_as_the_definition(s in proptest::collection::vec(any::<u8>(), 0..200), from in 0usize..210) {
            prop_assert_eq!(string_special(&s, from), slow(&s, from, is_string_special));
        }

        #[test]
        fn short_plain_str_as_defined(s in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'a'), any::<u8>()], 0..80), start in 0usize..80) {
            short_agrees(&s, start);
        }

        #[test]
        fn copy_stops_where_the_definition_says(
            buf in proptest::collection::vec(any::<u8>(), 0..200),
            at in 0usize..200,
            len in 0usize..200,
            utf8_ok in any::<bool>(),
        ) {
            let at = at.min(buf.len());
            let len = len.min(buf.len() - at);
            let s = &buf[at..at + len];
            let mut out = Vec::new();
            let n = copy_plain(&mut out, &buf, at, len, utf8_ok);
            prop_assert_eq!(n, slow(s, 0, |b| is_escape_candidate(b, utf8_ok)));
            prop_assert_eq!(&out[..], &s[..n]);
        }
    }
}
