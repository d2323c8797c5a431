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

/// [`measure`], resumable: fed the same frame again and again as it grows
/// (from its first byte; the bytes before stay as they were), it continues
/// where it stopped, so each byte is examined a bounded number of times
/// however the frame arrives in reads (a header cut off is read again
/// whole: at most 9 bytes). Reset after each complete frame.
#[derive(Debug, Default, Clone)]
pub struct Measurer {
    /// Where the next header starts, relative to the frame's first byte.
    pos: usize,
    /// Values still to be read (0 with `pos == 0`: not started).
    pending: u64,
    /// Bytes examined so far (headers read), for tests and metrics.
    examined: u64,
}

impl Measurer {
    /// Measures the frame at the start of `buf`, continuing from the last
    /// call on the same (grown) frame.
    pub fn feed(&mut self, buf: &[u8], max: usize) -> Result<Frame, FrameError> {
        if self.pos == 0 && self.pending == 0 {
            self.pending = 1;
        }
        while self.pending > 0 {
            if self.pos >= buf.len() {
                let need = self.pos + 1;
                return check(need, max).map(|_| Frame::Incomplete(need));
            }
            let mut r = MsgReader::new(&buf[self.pos..]);
            let head = match r.read_head() {
                Ok((_, h)) => h,
                Err(ReadError::Reserved) => return Err(FrameError::Reserved),
                Err(_) => {
                    // The header is cut off: read it again next time.
                    self.examined += (buf.len() - self.pos) as u64;
                    let need = buf.len() + 1;
                    return check(need, max).map(|_| Frame::Incomplete(need));
                }
            };
            let after = self.pos + r.pos();
            match head {
                Head::Scalar(n) | Head::Str(n) | Head::Bin(n) | Head::Ext(_, n) => {
                    let end = after.saturating_add(n);
                    check(end, max)?;
                    if end > buf.len() {
                        // Not consumed: its header is read again (a few
                        // bytes), its body is jumped over once there.
                        self.examined += (after - self.pos) as u64;
                        return Ok(Frame::Incomplete(end));
                    }
                    self.examined += (after - self.pos) as u64;
                    self.pos = end;
                }
                Head::Array(n) => {
                    self.examined += (after - self.pos) as u64;
                    self.pos = after;
                    self.pending += n as u64;
                    // This value itself is read: the others need a byte each.
                    check(self.pos.saturating_add(self.pending as usize - 1), max)?;
                }
                Head::Map(n) => {
                    self.examined += (after - self.pos) as u64;
                    self.pos = after;
                    self.pending += 2 * n as u64;
                    check(self.pos.saturating_add(self.pending as usize - 1), max)?;
                }
            }
            self.pending -= 1;
        }
        let n = self.pos;
        self.pos = 0;
        Ok(Frame::Complete(n))
    }

    /// Bytes examined since this measurer was made.
    pub fn examined(&self) -> u64 {
        self.examined
    }
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

    /// Fed byte by byte, a Forward frame of 5,000 small entries is examined
    /// in time linear in its size (the whole-frame measurer walks it again
    /// on every read: quadratic); both agree at every step.
    #[test]
    fn the_resumable_measurer_examines_each_byte_a_bounded_number_of_times() {
        let mut f = vec![0x93, 0xa1, b't', 0xdd];
        let n: u32 = 5000;
        f.extend_from_slice(&n.to_be_bytes());
        for i in 0..n {
            // [i, {"k": "vvvv"}]
            f.extend_from_slice(&[0x92, 0xce]);
            f.extend_from_slice(&i.to_be_bytes());
            f.extend_from_slice(&[0x81, 0xa1, b'k', 0xa4, b'v', b'v', b'v', b'v']);
        }
        f.push(0x80);
        let mut m = Measurer::default();
        for cut in 0..f.len() {
            let got = m.feed(&f[..cut], 1 << 30).unwrap();
            assert!(matches!(got, Frame::Incomplete(_)), "cut {cut}: {got:?}");
            // (The whole-frame measurer, quadratic here, at a few cuts.)
            if cut % 4099 == 0 {
                assert!(matches!(
                    measure(&f[..cut], 1 << 30),
                    Ok(Frame::Incomplete(_))
                ));
            }
        }
        assert_eq!(m.feed(&f, 1 << 30), Ok(Frame::Complete(f.len())));
        // Each byte once, plus a header cut off re-read: at most 9 more
        // bytes per read.
        assert!(
            m.examined() <= 10 * f.len() as u64,
            "{} bytes examined for a {}-byte frame",
            m.examined(),
            f.len()
        );
        // After a complete frame it starts over.
        assert_eq!(m.feed(&f, 1 << 30), Ok(Frame::Complete(f.len())));
    }

    proptest::proptest! {
        /// Fed any frame split at any points, it agrees with `measure`.
        #[test]
        fn resumable_agrees_with_whole(
            v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= v.len()).collect();
            cuts.sort_unstable();
            cuts.push(v.len());
            let mut m = Measurer::default();
            for c in cuts {
                let want = measure(&v[..c], 1 << 20);
                let got = m.feed(&v[..c], 1 << 20);
                match (&want, &got) {
                    (Ok(Frame::Complete(a)), Ok(Frame::Complete(b))) => {
                        proptest::prop_assert_eq!(a, b);
                        break;
                    }
                    (Ok(Frame::Incomplete(_)), Ok(Frame::Incomplete(_))) => {}
                    (Err(a), Err(b)) => { proptest::prop_assert_eq!(a, b); break; }
                    _ => proptest::prop_assert!(false, "{:?} vs {:?} at {}", want, got, c),
                }
            }
        }
    }
}
