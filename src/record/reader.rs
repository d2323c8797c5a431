//! A zero-copy msgpack cursor over a complete frame.
//!
//! Built on `rmp::Marker`; lengths follow the msgpack spec's format families.

use rmp::Marker;

/// Why a msgpack value could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    #[error("unexpected end of data")]
    Eof,
    #[error("expected {expected}, found marker {found:?}")]
    Type {
        expected: &'static str,
        found: Marker,
    },
    #[error("reserved msgpack marker 0xc1")]
    Reserved,
}

/// Header of one msgpack value: its marker, and for containers the number of
/// children, for str/bin/ext the payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Scalar with `n` more bytes of payload after the marker (ints, floats, nil, bool).
    Scalar(usize),
    Str(usize),
    Bin(usize),
    Array(u32),
    Map(u32),
    /// Extension: type and payload length.
    Ext(i8, usize),
}

/// Cursor over msgpack bytes.
#[derive(Debug, Clone)]
pub struct MsgReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> MsgReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        MsgReader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The whole buffer this cursor reads, consumed or not.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).ok_or(ReadError::Eof)?;
        let s = self.buf.get(self.pos..end).ok_or(ReadError::Eof)?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, ReadError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    pub fn peek_marker(&self) -> Result<Marker, ReadError> {
        self.buf
            .get(self.pos)
            .map(|&b| Marker::from_u8(b))
            .ok_or(ReadError::Eof)
    }

    /// Reads a value's marker and length fields (msgpack spec "formats").
    pub fn read_head(&mut self) -> Result<(Marker, Head), ReadError> {
        let m = Marker::from_u8(self.take(1)?[0]);
        let h = match m {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                Head::Scalar(0)
            }
            Marker::U8 | Marker::I8 => Head::Scalar(1),
            Marker::U16 | Marker::I16 => Head::Scalar(2),
            Marker::U32 | Marker::I32 | Marker::F32 => Head::Scalar(4),
            Marker::U64 | Marker::I64 | Marker::F64 => Head::Scalar(8),
            Marker::FixStr(n) => Head::Str(n as usize),
            Marker::Str8 => Head::Str(self.be(1)? as usize),
            Marker::Str16 => Head::Str(self.be(2)? as usize),
            Marker::Str32 => Head::Str(self.be(4)? as usize),
            Marker::Bin8 => Head::Bin(self.be(1)? as usize),
            Marker::Bin16 => Head::Bin(self.be(2)? as usize),
            Marker::Bin32 => Head::Bin(self.be(4)? as usize),
            Marker::FixArray(n) => Head::Array(n as u32),
            Marker::Array16 => Head::Array(self.be(2)? as u32),
            Marker::Array32 => Head::Array(self.be(4)? as u32),
            Marker::FixMap(n) => Head::Map(n as u32),
            Marker::Map16 => Head::Map(self.be(2)? as u32),
            Marker::Map32 => Head::Map(self.be(4)? as u32),
            Marker::FixExt1 => Head::Ext(self.be(1)? as i8, 1),
            Marker::FixExt2 => Head::Ext(self.be(1)? as i8, 2),
            Marker::FixExt4 => Head::Ext(self.be(1)? as i8, 4),
            Marker::FixExt8 => Head::Ext(self.be(1)? as i8, 8),
            Marker::FixExt16 => Head::Ext(self.be(1)? as i8, 16),
            Marker::Ext8 => {
                let n = self.be(1)? as usize;
                Head::Ext(self.be(1)? as i8, n)
            }
            Marker::Ext16 => {
                let n = self.be(2)? as usize;
                Head::Ext(self.be(1)? as i8, n)
            }
            Marker::Ext32 => {
                let n = self.be(4)? as usize;
                Head::Ext(self.be(1)? as i8, n)
            }
            Marker::Reserved => return Err(ReadError::Reserved),
        };
        Ok((m, h))
    }

    pub fn read_array_len(&mut self) -> Result<u32, ReadError> {
        match self.read_head()? {
            (_, Head::Array(n)) => Ok(n),
            (m, _) => Err(ReadError::Type {
                expected: "array",
                found: m,
            }),
        }
    }

    pub fn read_map_len(&mut self) -> Result<u32, ReadError> {
        match self.read_head()? {
            (_, Head::Map(n)) => Ok(n),
            (m, _) => Err(ReadError::Type {
                expected: "map",
                found: m,
            }),
        }
    }

    /// Reads a str or bin as raw bytes. Handshake fields and chunk ids are read
    /// this way because peers put non-UTF-8 bytes into str (see PEERS.md).
    pub fn read_str_bytes(&mut self) -> Result<&'a [u8], ReadError> {
        match self.read_head()? {
            (_, Head::Str(n) | Head::Bin(n)) => self.take(n),
            (m, _) => Err(ReadError::Type {
                expected: "str or bin",
                found: m,
            }),
        }
    }

    /// Reads an unsigned integer of any width.
    pub fn read_u64(&mut self) -> Result<u64, ReadError> {
        let save = self.pos;
        let (m, _) = self.read_head()?;
        self.pos = save + 1;
        match m {
            Marker::FixPos(v) => Ok(v as u64),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                let v = self.read_int_body(m)?;
                u64::try_from(v).map_err(|_| ReadError::Type {
                    expected: "unsigned integer",
                    found: m,
                })
            }
            _ => {
                self.pos = save;
                Err(ReadError::Type {
                    expected: "unsigned integer",
                    found: m,
                })
            }
        }
    }

    fn read_int_body(&mut self, m: Marker) -> Result<i64, ReadError> {
        Ok(match m {
            Marker::I8 => self.be(1)? as u8 as i8 as i64,
            Marker::I16 => self.be(2)? as u16 as i16 as i64,
            Marker::I32 => self.be(4)? as u32 as i32 as i64,
            Marker::I64 => self.be(8)? as i64,
            _ => 0,
        })
    }

    /// Returns the bytes of the next complete value and moves past it.
    pub fn read_raw(&mut self) -> Result<&'a [u8], ReadError> {
        let start = self.pos;
        self.skip_value()?;
        Ok(&self.buf[start..self.pos])
    }

    /// Skips one complete value. Iterative: a declared container size only adds
    /// to a counter, and every step consumes at least one byte, so hostile
    /// lengths cannot make it allocate or loop beyond the input's size.
    pub fn skip_value(&mut self) -> Result<(), ReadError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.read_head()?.1 {
                Head::Scalar(n) | Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => {
                    self.take(n)?;
                }
                Head::Array(n) => pending += n as u64,
                Head::Map(n) => pending += 2 * n as u64,
            }
        }
        Ok(())
    }

    /// Reads a msgpack value and returns the next `n` payload bytes: helper for
    /// callers that decoded a [`Head`] themselves.
    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        self.take(n)
    }

    /// Reads a signed or unsigned integer that fits in i64.
    pub fn read_i64(&mut self) -> Result<i64, ReadError> {
        let m = self.peek_marker()?;
        match m {
            Marker::FixNeg(v) => {
                self.pos += 1;
                Ok(v as i64)
            }
            Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                self.pos += 1;
                self.read_int_body(m)
            }
            _ => {
                let v = self.read_u64()?;
                i64::try_from(v).map_err(|_| ReadError::Type {
                    expected: "i64",
                    found: m,
                })
            }
        }
    }

    /// Reads a float (f32 or f64).
    pub fn read_f64(&mut self) -> Result<f64, ReadError> {
        let m = self.peek_marker()?;
        match m {
            Marker::F32 => {
                self.pos += 1;
                Ok(f32::from_bits(self.be(4)? as u32) as f64)
            }
            Marker::F64 => {
                self.pos += 1;
                Ok(f64::from_bits(self.be(8)?))
            }
            _ => Err(ReadError::Type {
                expected: "float",
                found: m,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_is_bounded_by_input() {
        // array32 declaring 4 billion elements, followed by nothing.
        let mut r = MsgReader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.skip_value(), Err(ReadError::Eof));
        // str32 declaring 4 GiB.
        let mut r = MsgReader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.skip_value(), Err(ReadError::Eof));
        let mut r = MsgReader::new(&[0xc1]);
        assert_eq!(r.skip_value(), Err(ReadError::Reserved));
    }

    #[test]
    fn reads_integers_of_every_width() {
        for (bytes, v) in [
            (&[0x05][..], 5i64),
            (&[0xff][..], -1),
            (&[0xcc, 0xff][..], 255),
            (&[0xcd, 0x01, 0x00][..], 256),
            (&[0xd0, 0x80][..], -128),
            (&[0xd1, 0xff, 0x00][..], -256),
            (&[0xce, 0, 1, 0, 0][..], 65536),
            (
                &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe][..],
                -2,
            ),
        ] {
            assert_eq!(MsgReader::new(bytes).read_i64(), Ok(v), "{bytes:x?}");
        }
        assert!(MsgReader::new(&[0xa1, b'x']).read_u64().is_err());
    }

    #[test]
    fn str_and_bin_both_read_as_bytes() {
        assert_eq!(MsgReader::new(b"\xa3abc").read_str_bytes(), Ok(&b"abc"[..]));
        assert_eq!(
            MsgReader::new(b"\xc4\x02\xff\xfe").read_str_bytes(),
            Ok(&b"\xff\xfe"[..])
        );
    }
}
