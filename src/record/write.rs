//! msgpack writers the codec shares (msgpack spec, "str format family").

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
}
