//! Finding message boundaries in a msgpack byte stream.
//!
//! Forward messages are sent back to back with no length prefix (spec §Message
//! Modes), so a receiver learns where one ends only by walking its structure.

use crate::record::reader::{Head, MsgReader, ReadError};

/// Result of looking for one complete msgpack value at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The first `n` bytes hold one complete value.
    Complete(usize),
    /// More bytes are needed; the value is at least this long in total.
    Incomplete(usize),
}

/// Why the stream cannot be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame larger than the limit of {limit} bytes (needs at least {needed})")]
    TooLarge { needed: usize, limit: usize },
    #[error("invalid msgpack: reserved marker 0xc1")]
    Reserved,
}

/// Measures the msgpack value at the start of `buf`. A frame whose declared
/// sizes already exceed `max` bytes is rejected before its bytes arrive, so a
/// peer cannot make the receiver buffer more than `max`.
pub fn measure(buf: &[u8], max: usize) -> Result<Frame, FrameError> {
    let mut r = MsgReader::new(buf);
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let before = r.pos();
        let head = match r.read_head() {
            Ok((_, h)) => h,
            Err(ReadError::Reserved) => return Err(FrameError::Reserved),
            Err(_) => {
                // The header itself is cut off: at least one more byte.
                let need = buf.len().max(before) + 1;
                return check(need, max).map(|_| Frame::Incomplete(need));
            }
        };
        match head {
            Head::Scalar(n) | Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => {
                let end = r.pos().saturating_add(n);
                check(end, max)?;
                if end > buf.len() {
                    return Ok(Frame::Incomplete(end));
                }
                // Cannot fail: end is within the buffer.
                let _ = r.read_bytes(n);
            }
            Head::Array(n) => {
                pending += n as u64;
                // Each pending element needs at least one more byte.
                check(r.pos().saturating_add(pending as usize), max)?;
            }
            Head::Map(n) => {
                pending += 2 * n as u64;
                check(r.pos().saturating_add(pending as usize), max)?;
            }
        }
    }
    Ok(Frame::Complete(r.pos()))
}

fn check(needed: usize, limit: usize) -> Result<(), FrameError> {
    if needed > limit {
        Err(FrameError::TooLarge { needed, limit })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_and_incomplete() {
        let v = b"\x93\xa3tag\xc4\x03abc\x80";
        assert_eq!(measure(v, 100), Ok(Frame::Complete(v.len())));
        for cut in 0..v.len() {
            match measure(&v[..cut], 100) {
                Ok(Frame::Incomplete(n)) => assert!(n > cut, "cut {cut} hint {n}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        let mut two = v.to_vec();
        two.extend_from_slice(v);
        assert_eq!(measure(&two, 100), Ok(Frame::Complete(v.len())));
    }

    #[test]
    fn declared_sizes_over_the_limit_are_rejected_early() {
        // bin32 of 1 GiB: rejected from its 5-byte header.
        let hdr = [0x93, 0xa1, b't', 0xc6, 0x40, 0, 0, 0];
        assert!(matches!(
            measure(&hdr, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        // array32 of 4 billion nils: rejected from its header.
        assert!(matches!(
            measure(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(measure(&[0xc1], 10), Err(FrameError::Reserved));
    }

    #[test]
    fn hint_jumps_to_the_end_of_a_large_bin() {
        let hdr = [0x93, 0xa1, b't', 0xc6, 0, 0x10, 0, 0];
        assert_eq!(measure(&hdr, 1 << 30), Ok(Frame::Incomplete(8 + 0x100000)));
    }
}
