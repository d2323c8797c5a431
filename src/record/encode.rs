//! The encoder stage: one audit event JSON line → one msgpack record, in a
//! single pass with no intermediate DOM (docs/ARCHITECTURE.md, "Performance notes").
//!
//! While transcoding it borrows the few fields that policy and filters need
//! (verb, user, objectRef, stage, level, requestURI, stageTimestamp, auditID)
//! and records where each top-level entry landed in the output, so a decision
//! (drop `requestObject`, rewrite `level`) can be applied by splicing bytes.
//!
//! JSON grammar: RFC 8259. msgpack formats: the msgpack spec.

use std::borrow::Cow;
use std::ops::Range;

/// Deepest nesting accepted; deeper input is rejected rather than risking
/// the stack.
pub const MAX_DEPTH: usize = 128;

/// Why a line is not a JSON object we can forward.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at byte {offset}: {what}")]
    Syntax { offset: usize, what: &'static str },
    #[error("invalid UTF-8 in a string at byte {offset}")]
    Utf8 { offset: usize },
    #[error("JSON value is not an object")]
    NotObject,
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl JsonError {
    /// A short label for metrics and the `error` field of raw records.
    pub fn reason(&self) -> &'static str {
        match self {
            JsonError::Syntax { .. } => "invalid_json",
            JsonError::Utf8 { .. } => "invalid_utf8",
            JsonError::NotObject => "not_an_object",
            JsonError::TooDeep => "too_deep",
        }
    }
}

/// Top-level keys the decision stage may need to touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKey {
    Level,
    RequestObject,
    ResponseObject,
    Other,
}

/// Where one top-level entry (key and value) sits in the encoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    pub key: TopKey,
    /// Bytes of the key and the value.
    pub span: Range<usize>,
    /// Bytes of the value alone.
    pub value: Range<usize>,
}

/// `objectRef` fields of a resource request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    pub api_group: Cow<'a, str>,
    pub resource: Cow<'a, str>,
    pub subresource: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
}

/// Fields of an audit event borrowed while encoding it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub audit_id: Option<Cow<'a, str>>,
    pub verb: Option<Cow<'a, str>>,
    pub stage: Option<Cow<'a, str>>,
    pub level: Option<Cow<'a, str>>,
    pub request_uri: Option<Cow<'a, str>>,
    pub stage_timestamp: Option<Cow<'a, str>>,
    /// `user.username`; `None` when there is no user or it is empty.
    pub username: Option<Cow<'a, str>>,
    pub groups: Vec<Cow<'a, str>>,
    /// Present iff the event has `objectRef` (a resource request).
    pub object_ref: Option<ObjectRef<'a>>,
    /// `responseStatus.code`, when it is an integer.
    pub response_code: Option<i64>,
}

/// Where the text of the extracted [`Fields`] is in the encoded record:
/// byte ranges of msgpack str bodies (unescaped UTF-8), relative to the
/// record's start; `(0, 0)` for a field the event lacks. The filter chain
/// passes them to filters without copying the strings out first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldSpans {
    /// By [`FieldSpans::AUDIT_ID`] ..= [`FieldSpans::REQUEST_URI`]; index 0
    /// is unused (the filter interface's `json`).
    pub slots: [(u32, u32); 12],
    /// `user.groups`, in order.
    pub groups: Vec<(u32, u32)>,
}

impl FieldSpans {
    pub const AUDIT_ID: usize = 1;
    pub const VERB: usize = 2;
    pub const USERNAME: usize = 3;
    pub const NAMESPACE: usize = 4;
    pub const RESOURCE: usize = 5;
    pub const SUBRESOURCE: usize = 6;
    pub const NAME: usize = 7;
    pub const API_GROUP: usize = 8;
    pub const STAGE: usize = 9;
    pub const LEVEL: usize = 10;
    pub const REQUEST_URI: usize = 11;

    fn index(slot: Slot) -> Option<usize> {
        Some(match slot {
            Slot::AuditId => Self::AUDIT_ID,
            Slot::Verb => Self::VERB,
            Slot::Username => Self::USERNAME,
            Slot::Namespace => Self::NAMESPACE,
            Slot::Resource => Self::RESOURCE,
            Slot::Subresource => Self::SUBRESOURCE,
            Slot::Name => Self::NAME,
            Slot::ApiGroup => Self::API_GROUP,
            Slot::Stage => Self::STAGE,
            Slot::Level => Self::LEVEL,
            Slot::RequestUri => Self::REQUEST_URI,
            _ => return None,
        })
    }

    /// `n` bytes were inserted at `at` (a container's header widened):
    /// spans after it move.
    fn shift(&mut self, at: usize, n: usize) {
        for s in self.slots.iter_mut().chain(self.groups.iter_mut()) {
            if s.0 as usize > at {
                s.0 += n as u32;
                s.1 += n as u32;
            }
        }
    }
}

/// Reusable JSON → msgpack transcoder.
#[derive(Debug, Default)]
pub struct Transcoder {
    /// Top-level entries of the last encoded record.
    pub top: Vec<TopEntry>,
    /// Where the fields of the last encoded record are in it.
    pub spans: FieldSpans,
    /// With `track_keys`: [`key_bits`] of each of its top-level keys,
    /// or-ed (a Bloom filter): a key with a bit missing is not among them.
    pub keys: u128,
    /// Whether to fill `keys` (the filter chain's `set-fields` uses it).
    pub track_keys: bool,
}

/// Two bits of 128 for a top-level key (its length and first, middle and
/// last byte, mixed), for [`Transcoder::keys`]. With an audit event's ~18
/// keys a new key is told absent ~95 % of the time.
#[inline]
pub fn key_bits(key: &[u8]) -> u128 {
    let n = key.len();
    let b = |i: usize| key.get(i).copied().unwrap_or(0) as u64;
    let v = (n as u64) << 24 | b(0) << 16 | b(n / 2) << 8 | b(n.wrapping_sub(1));
    let h = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1 << (h >> 57) | 1 << ((h >> 50) & 127)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    User,
    ObjectRef,
    ResponseStatus,
    Plain,
}

#[derive(Clone, Copy)]
enum Slot {
    None,
    AuditId,
    Verb,
    Stage,
    Level,
    RequestUri,
    StageTimestamp,
    Username,
    Groups,
    User,
    ObjectRef,
    ApiGroup,
    Resource,
    Subresource,
    Namespace,
    Name,
    ResponseStatus,
    Code,
}

impl Transcoder {
    /// Encodes one JSON object (surrounding whitespace allowed) as a msgpack
    /// map appended to `out`. On error `out` is restored to its prior length.
    pub fn encode<'a>(
        &mut self,
        line: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Fields<'a>, JsonError> {
        let start = out.len();
        self.top.clear();
        self.spans.slots = [(0, 0); 12];
        self.spans.groups.clear();
        self.keys = 0;
        let mut p = Parser {
            s: line,
            i: 0,
            base: start,
            out,
            top: &mut self.top,
            spans: &mut self.spans,
            keys: &mut self.keys,
            track_keys: self.track_keys,
        };
        let mut fields = Fields::default();
        let r = (|| {
            p.ws();
            if p.peek() != Some(b'{') {
                if p.peek().is_none() {
                    return Err(p.err("empty line"));
                }
                // Validate it as JSON anyway so the reason is accurate.
                p.value(0, Ctx::Plain, Slot::None, &mut fields)?;
                p.ws();
                if p.i != p.s.len() {
                    return Err(p.err("trailing characters after the value"));
                }
                return Err(JsonError::NotObject);
            }
            p.object(0, Ctx::Top, &mut fields)?;
            p.ws();
            if p.i != p.s.len() {
                return Err(p.err("trailing characters after the object"));
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(fields),
            Err(e) => {
                out.truncate(start);
                self.top.clear();
                Err(e)
            }
        }
    }
}

struct Parser<'a, 'o> {
    s: &'a [u8],
    i: usize,
    /// Where the record starts in `out`.
    base: usize,
    out: &'o mut Vec<u8>,
    top: &'o mut Vec<TopEntry>,
    spans: &'o mut FieldSpans,
    keys: &'o mut u128,
    track_keys: bool,
}

impl<'a> Parser<'a, '_> {
    /// The span of the str body of `len` bytes just written (every string
    /// ends with its body, unescaped).
    fn last_str(&self, len: usize) -> (u32, u32) {
        let end = self.out.len() - self.base;
        ((end - len) as u32, end as u32)
    }

    fn err(&self, what: &'static str) -> JsonError {
        JsonError::Syntax {
            offset: self.i,
            what,
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn object(&mut self, depth: usize, ctx: Ctx, f: &mut Fields<'a>) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.i += 1; // '{'
        let hdr = self.out.len();
        if ctx == Ctx::Top {
            // The top level usually has more than 15 keys: reserve a map16
            // header so finishing it never moves the whole record.
            self.out.extend_from_slice(&[0xde, 0, 0]);
        } else {
            self.out.push(0x80);
        }
        let mut count: u32 = 0;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let entry_start = self.out.len();
            let key = self.string(ctx != Ctx::Plain)?;
            self.expect(b':', "expected ':' after a key")?;
            self.ws();
            if ctx == Ctx::Top && self.track_keys {
                *self.keys |= key_bits(key.as_bytes());
            }
            let (slot, tk) = slot_for(ctx, &key);
            let value_start = self.out.len();
            self.value(depth + 1, ctx, slot, f)?;
            if ctx == Ctx::Top {
                self.top.push(TopEntry {
                    key: tk,
                    span: entry_start..self.out.len(),
                    value: value_start..self.out.len(),
                });
            }
            count = count.checked_add(1).ok_or(JsonError::TooDeep)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or '}' in an object")),
            }
        }
        if ctx == Ctx::Top && count <= 0xffff {
            self.out[hdr + 1..hdr + 3].copy_from_slice(&(count as u16).to_be_bytes());
            return Ok(());
        }
        if ctx == Ctx::Top {
            // More than 65535 keys: widen to map32.
            self.out[hdr] = 0xdf;
            self.out.splice(hdr + 1..hdr + 1, [0, 0]);
            self.out[hdr + 1..hdr + 5].copy_from_slice(&count.to_be_bytes());
            for e in self.top.iter_mut() {
                e.span = e.span.start + 2..e.span.end + 2;
                e.value = e.value.start + 2..e.value.end + 2;
            }
            self.spans.shift(hdr - self.base, 2);
            return Ok(());
        }
        let n = finish_container(self.out, hdr, count, true);
        if n > 0 {
            self.spans.shift(hdr - self.base, n);
        }
        Ok(())
    }

    fn array(&mut self, depth: usize, slot: Slot, f: &mut Fields<'a>) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.i += 1; // '['
        let hdr = self.out.len();
        self.out.push(0x90);
        let mut count: u32 = 0;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if matches!(slot, Slot::Groups) && self.peek() == Some(b'"') {
                let g = self.string(true)?;
                let span = self.last_str(g.len());
                self.spans.groups.push(span);
                f.groups.push(g);
            } else {
                self.value(depth + 1, Ctx::Plain, Slot::None, f)?;
            }
            count = count.checked_add(1).ok_or(JsonError::TooDeep)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or ']' in an array")),
            }
        }
        let n = finish_container(self.out, hdr, count, false);
        if n > 0 {
            self.spans.shift(hdr - self.base, n);
        }
        Ok(())
    }

    fn value(
        &mut self,
        depth: usize,
        ctx: Ctx,
        slot: Slot,
        f: &mut Fields<'a>,
    ) -> Result<(), JsonError> {
        let _ = ctx;
        match self.peek() {
            Some(b'{') => {
                let inner = match slot {
                    Slot::User => Ctx::User,
                    Slot::ResponseStatus => Ctx::ResponseStatus,
                    Slot::ObjectRef => {
                        f.object_ref = Some(ObjectRef::default());
                        for i in FieldSpans::NAMESPACE..=FieldSpans::API_GROUP {
                            self.spans.slots[i] = (0, 0);
                        }
                        Ctx::ObjectRef
                    }
                    _ => Ctx::Plain,
                };
                self.object(depth, inner, f)
            }
            Some(b'[') => self.array(depth, slot, f),
            Some(b'"') => {
                let s = self.string(!matches!(slot, Slot::None))?;
                if let Some(i) = FieldSpans::index(slot)
                    && !(matches!(slot, Slot::Username) && s.is_empty())
                {
                    self.spans.slots[i] = self.last_str(s.len());
                }
                store(f, slot, s);
                Ok(())
            }
            Some(b't') => self.literal(b"true", 0xc3),
            Some(b'f') => self.literal(b"false", 0xc2),
            Some(b'n') => self.literal(b"null", 0xc0),
            Some(b'-' | b'0'..=b'9') if matches!(slot, Slot::Code) => {
                let start = self.i;
                self.number()?;
                f.response_code = std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|t| t.parse().ok());
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of line")),
        }
    }

    fn literal(&mut self, word: &'static [u8], marker: u8) -> Result<(), JsonError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            self.out.push(marker);
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let st = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - st
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        let mut int = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            int = false;
            if self.digits() == 0 {
                return Err(self.err("expected digits after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            int = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected exponent digits"));
            }
        }
        // ASCII digits, signs, '.', 'e': always valid UTF-8.
        let text =
            std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("invalid number"))?;
        if int {
            if let Ok(v) = text.parse::<i64>() {
                let _ = rmp::encode::write_sint(self.out, v);
                return Ok(());
            }
            if let Ok(v) = text.parse::<u64>() {
                let _ = rmp::encode::write_uint(self.out, v);
                return Ok(());
            }
        }
        let v: f64 = text.parse().map_err(|_| self.err("invalid number"))?;
        let _ = rmp::encode::write_f64(self.out, v);
        Ok(())
    }

    /// Reads a string starting at its opening quote and writes it as a
    /// msgpack str. Returns its text when `want` (borrowed from the line
    /// unless it had escapes), else an empty string.
    #[inline(always)]
    fn string(&mut self, want: bool) -> Result<Cow<'a, str>, JsonError> {
        self.i += 1; // opening quote
        let start = self.i;
        // Fastest path (inlined where strings are read): a short plain
        // string, scanned and copied at once.
        if let Some(len) = super::scan::short_plain_str(self.out, self.s, start) {
            self.i = start + len + 1;
            // SAFETY: `short_plain_str` takes only printable ASCII.
            let seg = unsafe { std::str::from_utf8_unchecked(&self.s[start..start + len]) };
            return Ok(Cow::Borrowed(seg));
        }
        self.string_long(start, want)
    }

    #[inline(never)]
    fn string_long(&mut self, start: usize, want: bool) -> Result<Cow<'a, str>, JsonError> {
        // Fast path: printable ASCII up to the closing quote, found in one
        // pass (most strings of an audit event).
        let stop = super::scan::string_special(self.s, start);
        if self.s.get(stop) == Some(&b'"') {
            let seg = &self.s[start..stop];
            // SAFETY: `string_special` stopped at the first byte outside
            // 0x20..0x80 other than '"' and '\\', so `seg` is ASCII.
            let seg = unsafe { std::str::from_utf8_unchecked(seg) };
            self.i = stop + 1;
            put_str(self.out, self.s, start, seg.len());
            return Ok(Cow::Borrowed(seg));
        }
        self.string_slow(start, want)
    }

    /// A string with escapes or non-ASCII text: validated and unescaped
    /// straight into the output behind a header sized for the worst case,
    /// which is shrunk at the end (an escape never lengthens the text).
    fn string_slow(&mut self, start: usize, want: bool) -> Result<Cow<'a, str>, JsonError> {
        let hdr = self.out.len();
        let worst = header_len(self.s.len() - start);
        self.out.resize(hdr + worst, 0);
        let body = self.out.len();
        self.i = start;
        let mut escaped = false;
        loop {
            let rest = &self.s[self.i..];
            let stop = memchr::memchr2(b'"', b'\\', rest)
                .ok_or_else(|| self.err("unterminated string"))?;
            let seg = checked_str(&rest[..stop]).map_err(|e| self.str_err(e, self.i))?;
            self.out.extend_from_slice(seg.as_bytes());
            self.i += stop + 1;
            if rest[stop] == b'"' {
                break;
            }
            escaped = true;
            let c = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
            self.i += 1;
            let b = match c {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let ch = self.unicode_escape()?;
                    let mut buf = [0u8; 4];
                    self.out
                        .extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
                _ => return Err(self.err("invalid escape")),
            };
            self.out.push(b);
        }
        let len = self.out.len() - body;
        let need = header_len(len);
        if need != worst {
            self.out.copy_within(body.., hdr + need);
            self.out.truncate(hdr + need + len);
        }
        let mut h = Vec::with_capacity(5);
        crate::record::write::write_str_header(&mut h, len);
        self.out[hdr..hdr + need].copy_from_slice(&h);
        if !want {
            return Ok(Cow::Borrowed(""));
        }
        if !escaped {
            // No escapes: the text is the line's own bytes, validated above.
            let raw = &self.s[start..self.i - 1];
            // SAFETY: every segment of `raw` passed `checked_str`.
            return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(raw) }));
        }
        let text = &self.out[hdr + need..];
        // Built from validated segments and chars: valid UTF-8.
        String::from_utf8(text.to_vec())
            .map(Cow::Owned)
            .map_err(|_| JsonError::Utf8 { offset: start })
    }

    fn str_err(&self, e: StrError, base: usize) -> JsonError {
        match e {
            StrError::Control => self.err("control character in a string"),
            StrError::Utf8(at) => JsonError::Utf8 { offset: base + at },
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let mut v = 0u32;
        for &b in h {
            let d = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
        }
        self.i += 4;
        Ok(v)
    }

    /// `\uXXXX`, with surrogate pairs; a lone surrogate becomes U+FFFD, as Go's
    /// decoder does.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or('\u{FFFD}'));
            }
            self.i = save;
        }
        Ok(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }
}

enum StrError {
    Control,
    Utf8(usize),
}

/// Validates string contents: no control characters (RFC 8259 §7) and valid
/// UTF-8 (SIMD, via simdutf8).
#[inline]
fn checked_str(seg: &[u8]) -> Result<&str, StrError> {
    match scan(seg) {
        Scan::Control => Err(StrError::Control),
        // SAFETY: every byte is in 0x20..0x80, so `seg` is ASCII and thus UTF-8.
        Scan::Ascii => Ok(unsafe { std::str::from_utf8_unchecked(seg) }),
        Scan::NonAscii => {
            simdutf8::compat::from_utf8(seg).map_err(|e| StrError::Utf8(e.valid_up_to()))
        }
    }
}

enum Scan {
    Ascii,
    NonAscii,
    Control,
}

/// Classifies bytes eight at a time: printable ASCII only, some byte >= 0x80,
/// or a control byte (< 0x20). A word flagged by the bit trick is checked
/// exactly, so the answer is exact.
#[inline]
fn scan(seg: &[u8]) -> Scan {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut ascii = true;
    let mut chunks = seg.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if v.wrapping_sub(LO * 0x20) & !v & HI != 0 && c.iter().any(|&b| b < 0x20) {
            return Scan::Control;
        }
        ascii &= v & HI == 0;
    }
    for &b in chunks.remainder() {
        if b < 0x20 {
            return Scan::Control;
        }
        ascii &= b < 0x80;
    }
    if ascii { Scan::Ascii } else { Scan::NonAscii }
}

/// Appends `s[start..start + len]` as a msgpack str. Short strings (most
/// keys and many values) are copied as one 16-byte block instead of a
/// `memcpy` call.
#[inline(always)]
fn put_str(out: &mut Vec<u8>, s: &[u8], start: usize, len: usize) {
    crate::record::write::write_str_header(out, len);
    if len <= 16 && start + 16 <= s.len() {
        out.reserve(16);
        // SAFETY: `start + 16 <= s.len()`, so 16 bytes are readable; 16
        // bytes of spare capacity were reserved; the new length covers
        // only the `len` bytes wanted, all of them written.
        unsafe {
            let dst = out.as_mut_ptr().add(out.len());
            std::ptr::copy_nonoverlapping(s.as_ptr().add(start), dst, 16);
            out.set_len(out.len() + len);
        }
    } else {
        out.extend_from_slice(&s[start..start + len]);
    }
}

/// Bytes of the msgpack str header for `len` bytes (msgpack spec, str
/// format family).
fn header_len(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn slot_for(ctx: Ctx, key: &str) -> (Slot, TopKey) {
    match ctx {
        Ctx::Top => match key {
            "auditID" => (Slot::AuditId, TopKey::Other),
            "verb" => (Slot::Verb, TopKey::Other),
            "stage" => (Slot::Stage, TopKey::Other),
            "level" => (Slot::Level, TopKey::Level),
            "requestURI" => (Slot::RequestUri, TopKey::Other),
            "stageTimestamp" => (Slot::StageTimestamp, TopKey::Other),
            "user" => (Slot::User, TopKey::Other),
            "objectRef" => (Slot::ObjectRef, TopKey::Other),
            "requestObject" => (Slot::None, TopKey::RequestObject),
            "responseObject" => (Slot::None, TopKey::ResponseObject),
            "responseStatus" => (Slot::ResponseStatus, TopKey::Other),
            _ => (Slot::None, TopKey::Other),
        },
        Ctx::ResponseStatus => match key {
            "code" => (Slot::Code, TopKey::Other),
            _ => (Slot::None, TopKey::Other),
        },
        Ctx::User => match key {
            "username" => (Slot::Username, TopKey::Other),
            "groups" => (Slot::Groups, TopKey::Other),
            _ => (Slot::None, TopKey::Other),
        },
        Ctx::ObjectRef => match key {
            "apiGroup" => (Slot::ApiGroup, TopKey::Other),
            "resource" => (Slot::Resource, TopKey::Other),
            "subresource" => (Slot::Subresource, TopKey::Other),
            "namespace" => (Slot::Namespace, TopKey::Other),
            "name" => (Slot::Name, TopKey::Other),
            _ => (Slot::None, TopKey::Other),
        },
        Ctx::Plain => (Slot::None, TopKey::Other),
    }
}

fn store<'a>(f: &mut Fields<'a>, slot: Slot, s: Cow<'a, str>) {
    match slot {
        Slot::AuditId => f.audit_id = Some(s),
        Slot::Verb => f.verb = Some(s),
        Slot::Stage => f.stage = Some(s),
        Slot::Level => f.level = Some(s),
        Slot::RequestUri => f.request_uri = Some(s),
        Slot::StageTimestamp => f.stage_timestamp = Some(s),
        Slot::Username => {
            if !s.is_empty() {
                f.username = Some(s)
            }
        }
        Slot::ApiGroup | Slot::Resource | Slot::Subresource | Slot::Namespace | Slot::Name => {
            let o = f.object_ref.get_or_insert_with(ObjectRef::default);
            match slot {
                Slot::ApiGroup => o.api_group = s,
                Slot::Resource => o.resource = s,
                Slot::Subresource => o.subresource = s,
                Slot::Namespace => o.namespace = s,
                _ => o.name = s,
            }
        }
        Slot::None
        | Slot::Groups
        | Slot::User
        | Slot::ObjectRef
        | Slot::ResponseStatus
        | Slot::Code => {}
    }
}

/// Writes the final header of a container whose one-byte placeholder is at
/// `hdr`: fixmap/fixarray up to 15 entries, else map16/array16 or
/// map32/array32 (msgpack spec "map format family"). Returns the number of
/// bytes inserted.
fn finish_container(out: &mut Vec<u8>, hdr: usize, count: u32, map: bool) -> usize {
    if count <= 15 {
        out[hdr] = if map { 0x80 } else { 0x90 } | count as u8;
        0
    } else if count <= 0xffff {
        out[hdr] = if map { 0xde } else { 0xdc };
        out.splice(hdr + 1..hdr + 1, (count as u16).to_be_bytes());
        2
    } else {
        out[hdr] = if map { 0xdf } else { 0xdd };
        out.splice(hdr + 1..hdr + 1, count.to_be_bytes());
        4
    }
}

/// Test helper: the msgpack record of a JSON object (panics on invalid JSON).
#[cfg(test)]
pub(crate) fn encoded(json: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Transcoder::default()
        .encode(json.as_bytes(), &mut out)
        .expect("valid JSON object");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::json::write_value;
    use crate::record::reader::MsgReader;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|v| v.into()),
            any::<u64>().prop_map(|v| v.into()),
            (-1e15f64..1e15).prop_map(|v| serde_json::json!(v)),
            "\\PC{0,20}".prop_map(serde_json::Value::String),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 20, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..20).prop_map(serde_json::Value::Array),
                prop::collection::vec(("\\PC{0,8}", inner), 0..20)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn through(line: &[u8]) -> Result<serde_json::Value, JsonError> {
        let mut mp = Vec::new();
        Transcoder::default().encode(line, &mut mp)?;
        let mut out = Vec::new();
        write_value(&mut MsgReader::new(&mp), &mut out).expect("our msgpack is valid");
        Ok(serde_json::from_slice(&out).expect("our JSON is valid"))
    }

    #[test]
    fn escaped_strings_at_every_header_size_boundary() {
        for len in [
            1, 30, 31, 32, 33, 254, 255, 256, 257, 65534, 65535, 65536, 65537,
        ] {
            // An escape at the start, so the escaped text is one byte longer.
            let text = format!("\n{}", "x".repeat(len - 1));
            let v = serde_json::json!({ "verb": text, "k": text, "é": "ü\u{2028}" });
            let line = serde_json::to_string(&v).unwrap();
            assert_eq!(through(line.as_bytes()).unwrap(), v, "len {len}");
            let mut mp = Vec::new();
            let f = Transcoder::default()
                .encode(line.as_bytes(), &mut mp)
                .unwrap();
            assert_eq!(f.verb.as_deref(), Some(text.as_str()));
            // Minimal headers, byte for byte.
            let one = serde_json::to_string(&serde_json::json!({ "k": text })).unwrap();
            let mut mp = Vec::new();
            Transcoder::default()
                .encode(one.as_bytes(), &mut mp)
                .unwrap();
            let mut want = vec![0xde, 0, 1];
            crate::record::write::write_str(&mut want, b"k");
            crate::record::write::write_str(&mut want, text.as_bytes());
            assert_eq!(mp, want, "len {len}");
        }
        // A key with an escape still names a field.
        let mut mp = Vec::new();
        let f = Transcoder::default()
            .encode(
                br#"{"ver\u0062":"get","user":{"username":"a\"b"}}"#,
                &mut mp,
            )
            .unwrap();
        assert_eq!(f.verb.as_deref(), Some("get"));
        assert_eq!(f.username.as_deref(), Some("a\"b"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any JSON object survives JSON → msgpack → JSON unchanged.
        #[test]
        fn round_trip_equals_serde_json(m in prop::collection::vec(("\\PC{0,8}", json_value()), 0..24)) {
            let v = serde_json::Value::Object(m.into_iter().collect());
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(through(text.as_bytes()).unwrap(), v.clone());
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(through(pretty.as_bytes()).unwrap(), v);
        }

        /// On arbitrary bytes it never panics, and accepts exactly what
        /// serde_json accepts as an object (lone-surrogate escapes aside).
        #[test]
        fn agrees_with_serde_json_on_validity(bytes in prop::collection::vec(any::<u8>(), 0..64), prefix in "\\{\"[a-z]{0,3}\":") {
            let mut line = prefix.into_bytes();
            line.extend_from_slice(&bytes);
            let ours = through(&line);
            let theirs = serde_json::from_slice::<serde_json::Value>(&line);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (Err(JsonError::NotObject), Ok(v)) => prop_assert!(!v.is_object()),
                _ => prop_assert!(false, "disagree on {:?}: ours {:?} serde {:?}", String::from_utf8_lossy(&line), ours, theirs.map(|_| ())),
            }
        }
    }

    #[test]
    fn extracts_policy_fields_and_top_level_spans() {
        let line = br#"{"level":"RequestResponse","auditID":"x","verb":"create","requestURI":"/api/v1/namespaces/a/pods?x=1\u0026y=2","user":{"username":"alice","groups":["g1","g2"]},"objectRef":{"resource":"pods","namespace":"a","apiVersion":"v1"},"requestObject":{"big":1},"responseObject":[1],"stage":"ResponseComplete","stageTimestamp":"2026-01-01T00:00:00.000001Z"}"#;
        let mut t = Transcoder::default();
        let mut out = Vec::new();
        let f = t.encode(line, &mut out).unwrap();
        assert_eq!(f.verb.as_deref(), Some("create"));
        assert_eq!(
            f.request_uri.as_deref(),
            Some("/api/v1/namespaces/a/pods?x=1&y=2")
        );
        assert_eq!(f.username.as_deref(), Some("alice"));
        assert_eq!(f.groups, vec!["g1", "g2"]);
        let o = f.object_ref.unwrap();
        assert_eq!(
            (
                o.resource.as_ref(),
                o.namespace.as_ref(),
                o.api_group.as_ref()
            ),
            ("pods", "a", "")
        );
        let keys: Vec<TopKey> = t.top.iter().map(|e| e.key).collect();
        assert_eq!(keys[0], TopKey::Level);
        assert!(keys.contains(&TopKey::RequestObject) && keys.contains(&TopKey::ResponseObject));
        // Each recorded span holds exactly one key and one value.
        for e in &t.top {
            let mut r = MsgReader::new(&out[e.span.clone()]);
            r.skip_value().unwrap();
            r.skip_value().unwrap();
            assert!(r.is_empty());
        }
    }

    #[test]
    fn empty_user_means_no_user() {
        let mut out = Vec::new();
        let f = Transcoder::default()
            .encode(br#"{"user":{},"verb":"get"}"#, &mut out)
            .unwrap();
        assert_eq!(f.username, None);
        let f = Transcoder::default()
            .encode(br#"{"user":{"username":""}}"#, &mut out)
            .unwrap();
        assert_eq!(f.username, None);
    }
}

#[cfg(test)]
mod span_tests {
    use super::*;
    use crate::synth::{Generator, Mix};

    /// Checks that every span of [`Transcoder::spans`] holds exactly the
    /// text of the field it stands for.
    fn check(line: &str) {
        let mut tc = Transcoder::default();
        let mut rec = vec![0xaa; 7]; // the record need not start at 0
        let f = tc.encode(line.as_bytes(), &mut rec).unwrap();
        let rec = &rec[7..];
        let at = |(a, b): (u32, u32)| std::str::from_utf8(&rec[a as usize..b as usize]).unwrap();
        let d = |v: &Option<Cow<'_, str>>| v.as_deref().unwrap_or_default().to_string();
        let o = f.object_ref.clone().unwrap_or_default();
        let want = [
            (FieldSpans::AUDIT_ID, d(&f.audit_id)),
            (FieldSpans::VERB, d(&f.verb)),
            (FieldSpans::USERNAME, d(&f.username)),
            (FieldSpans::NAMESPACE, o.namespace.to_string()),
            (FieldSpans::RESOURCE, o.resource.to_string()),
            (FieldSpans::SUBRESOURCE, o.subresource.to_string()),
            (FieldSpans::NAME, o.name.to_string()),
            (FieldSpans::API_GROUP, o.api_group.to_string()),
            (FieldSpans::STAGE, d(&f.stage)),
            (FieldSpans::LEVEL, d(&f.level)),
            (FieldSpans::REQUEST_URI, d(&f.request_uri)),
        ];
        for (i, w) in want {
            assert_eq!(at(tc.spans.slots[i]), w, "slot {i} of {line}");
        }
        let groups: Vec<&str> = tc.spans.groups.iter().map(|&g| at(g)).collect();
        assert_eq!(groups, f.groups, "{line}");
    }

    #[test]
    fn field_spans_hold_the_fields_text() {
        for mix in [Mix::Metadata, Mix::Realistic] {
            let mut g = Generator::new(7, mix);
            for _ in 0..300 {
                check(&g.event());
            }
        }
        let many =
            |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(",");
        for line in [
            r#"{}"#.to_string(),
            r#"{"verb":"get","user":{"username":""}}"#.into(),
            // Escapes and non-ASCII (the body is the unescaped text).
            r#"{"auditID":"a\"b","user":{"username":"al\u00e9 \ud83d\ude00","groups":["g\\1","","ü"]},"objectRef":{"name":"p\n1","namespace":"né"}}"#.into(),
            // Duplicates: the last value wins, as in `Fields`; a second
            // objectRef starts afresh; a non-string value is ignored.
            r#"{"verb":"get","verb":"list","verb":5,"objectRef":{"name":"x","resource":"r"},"objectRef":{"resource":"s"},"user":{"username":"u"},"user":{"groups":["a"]}}"#.into(),
            // Containers whose headers widen (more than 15 entries) before,
            // around and inside the fields.
            format!(
                r#"{{"a":{{{}}},"user":{{{},"username":"u","groups":[{}]}},"objectRef":{{{},"name":"n"}},"verb":"v"}}"#,
                many(20, &|i| format!(r#""k{i}":{i}"#)),
                many(17, &|i| format!(r#""x{i}":"{i}""#)),
                many(40, &|i| format!(r#""g{i}""#)),
                many(18, &|i| format!(r#""y{i}":[{i}]"#)),
            ),
            // A top level of more than 65,535 keys (map32).
            format!(r#"{{"verb":"get",{},"stage":"s"}}"#, many(70_000, &|i| format!(r#""k{i}":0"#))),
        ] {
            check(&line);
        }
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use crate::synth::{Generator, Mix};

    /// The filter holds every top-level key (never a false "absent"), only
    /// when asked for, and tells typical enrichment keys absent.
    #[test]
    fn key_filter_holds_every_top_level_key() {
        let mut g = Generator::new(9, Mix::Realistic);
        let mut tc = Transcoder::default();
        let mut rec = Vec::new();
        tc.encode(g.event().as_bytes(), &mut rec).unwrap();
        assert_eq!(tc.keys, 0, "not tracked unless asked");
        tc.track_keys = true;
        for _ in 0..200 {
            rec.clear();
            tc.encode(g.event().as_bytes(), &mut rec).unwrap();
            for e in &tc.top {
                let k = crate::record::reader::MsgReader::new(&rec[e.span.clone()])
                    .read_str_bytes()
                    .unwrap();
                assert_eq!(tc.keys & key_bits(k), key_bits(k));
            }
            for k in ["clusterID", "cluster", "landscape", "shoot", "project"] {
                let b = key_bits(k.as_bytes());
                assert_ne!(tc.keys & b, b, "{k}");
            }
        }
    }
}
