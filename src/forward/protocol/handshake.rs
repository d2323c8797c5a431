//! Handshake messages: HELO, PING, PONG (spec §Handshake Messages). The
//! server speaks first, and only when security (a shared key) is configured.
//!
//! Fields are read as bytes, from a msgpack str or bin: fluent-bit sends its
//! raw salt bytes in a str that is not valid UTF-8, and nonces may be longer
//! than 16 bytes. PING's fields are written as str holding the raw bytes,
//! the way fluent-bit writes them: its in_forward (5.x) refuses a PING whose
//! `shared_key_salt` is not a str (plugins/in_forward/fw_prot.c,
//! `check_ping`). HELO's nonce and auth salt are written as bin (below).

use crate::record::reader::{MsgReader, ReadError};
use crate::record::write::write_str;
use sha2::{Digest, Sha512};

/// HELO: `["HELO", {"nonce": .., "auth": .., "keepalive": bool}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    pub nonce: Vec<u8>,
    /// Salt for user authentication; empty when the server has no users.
    pub auth: Vec<u8>,
    pub keepalive: bool,
}

/// PING: `["PING", hostname, shared_key_salt, digest, username, password_digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub hostname: Vec<u8>,
    pub salt: Vec<u8>,
    pub digest: String,
    pub username: Vec<u8>,
    pub password_digest: String,
}

/// PONG: `["PONG", auth_result, reason, hostname, digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub ok: bool,
    pub reason: String,
    pub hostname: Vec<u8>,
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    #[error("expected {expected}, got {got:?}")]
    Unexpected { expected: &'static str, got: String },
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        HandshakeError::Malformed(e.to_string())
    }
}

/// `sha512_hex(a ‖ b ‖ c ‖ d)` (spec: shared key and password digests).
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The shared-key digest a client sends in PING (salt, client hostname,
/// nonce, key) and a server in PONG (salt, server hostname, nonce, key).
pub fn shared_key_digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &[u8]) -> String {
    digest(&[salt, hostname, nonce, key])
}

/// The user digest of PING: `sha512_hex(auth_salt ‖ username ‖ password)`.
pub fn password_digest(auth_salt: &[u8], username: &[u8], password: &[u8]) -> String {
    digest(&[auth_salt, username, password])
}

fn head(r: &mut MsgReader<'_>, name: &'static str, min: u32) -> Result<u32, HandshakeError> {
    let n = r.read_array_len()?;
    let tag = r.read_str_bytes()?;
    if tag != name.as_bytes() {
        return Err(HandshakeError::Unexpected {
            expected: name,
            got: String::from_utf8_lossy(&tag[..tag.len().min(16)]).into_owned(),
        });
    }
    if n < min {
        return Err(HandshakeError::Malformed(format!(
            "{name} has {n} elements"
        )));
    }
    Ok(n)
}

impl Helo {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = vec![0x92];
        write_str(&mut o, b"HELO");
        o.push(0x83);
        // bin, as fluentd sends them: fluent-bit's out_forward reads str or
        // bin (plugins/out_forward/forward.c, `secure_forward_set_ping`),
        // while @fluent-org/logger's client decodes a str nonce as UTF-8
        // text, which changes raw bytes and fails the digest.
        write_str(&mut o, b"nonce");
        let _ = rmp::encode::write_bin(&mut o, &self.nonce);
        write_str(&mut o, b"auth");
        let _ = rmp::encode::write_bin(&mut o, &self.auth);
        write_str(&mut o, b"keepalive");
        o.push(if self.keepalive { 0xc3 } else { 0xc2 });
        o
    }

    pub fn decode(frame: &[u8]) -> Result<Helo, HandshakeError> {
        let mut r = MsgReader::new(frame);
        head(&mut r, "HELO", 2)?;
        let mut h = Helo {
            nonce: Vec::new(),
            auth: Vec::new(),
            keepalive: true,
        };
        for _ in 0..r.read_map_len()? {
            match r.read_str_bytes()? {
                b"nonce" => h.nonce = r.read_str_bytes()?.to_vec(),
                b"auth" => h.auth = r.read_str_bytes()?.to_vec(),
                b"keepalive" => h.keepalive = r.read_raw()? != [0xc2],
                _ => r.skip_value()?,
            }
        }
        if h.nonce.is_empty() {
            return Err(HandshakeError::Malformed("HELO without nonce".into()));
        }
        Ok(h)
    }
}

impl Ping {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = vec![0x96];
        write_str(&mut o, b"PING");
        write_str(&mut o, &self.hostname);
        write_str(&mut o, &self.salt);
        write_str(&mut o, self.digest.as_bytes());
        write_str(&mut o, &self.username);
        write_str(&mut o, self.password_digest.as_bytes());
        o
    }

    pub fn decode(frame: &[u8]) -> Result<Ping, HandshakeError> {
        let mut r = MsgReader::new(frame);
        head(&mut r, "PING", 6)?;
        Ok(Ping {
            hostname: r.read_str_bytes()?.to_vec(),
            salt: r.read_str_bytes()?.to_vec(),
            digest: String::from_utf8_lossy(r.read_str_bytes()?).into_owned(),
            username: r.read_str_bytes()?.to_vec(),
            password_digest: String::from_utf8_lossy(r.read_str_bytes()?).into_owned(),
        })
    }
}

impl Pong {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = vec![0x95];
        write_str(&mut o, b"PONG");
        o.push(if self.ok { 0xc3 } else { 0xc2 });
        write_str(&mut o, self.reason.as_bytes());
        write_str(&mut o, &self.hostname);
        write_str(&mut o, self.digest.as_bytes());
        o
    }

    pub fn decode(frame: &[u8]) -> Result<Pong, HandshakeError> {
        let mut r = MsgReader::new(frame);
        head(&mut r, "PONG", 5)?;
        let ok = match r.read_raw()? {
            [0xc3] => true,
            [0xc2] => false,
            _ => {
                return Err(HandshakeError::Malformed(
                    "PONG auth_result is not a bool".into(),
                ));
            }
        };
        Ok(Pong {
            ok,
            reason: String::from_utf8_lossy(r.read_str_bytes()?).into_owned(),
            hostname: r.read_str_bytes()?.to_vec(),
            digest: String::from_utf8_lossy(r.read_str_bytes()?).into_owned(),
        })
    }
}

/// The machine's host name (for PING/PONG), or `fallback`.
pub fn hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_vectors() {
        // sha512("") and sha512("abc") (FIPS 180-2 test vectors).
        assert!(digest(&[]).starts_with("cf83e1357eefb8bdf1542850d66d8007"));
        assert_eq!(
            digest(&[b"a", b"b", b"c"]),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        // Concatenation order of the spec: salt ‖ hostname ‖ nonce ‖ key.
        assert_eq!(
            shared_key_digest(b"s", b"h", b"n", b"k"),
            digest(&[b"shnk"])
        );
        assert_eq!(password_digest(b"s", b"u", b"p"), digest(&[b"sup"]));
    }

    #[test]
    fn messages_round_trip_with_non_utf8_and_long_fields() {
        let h = Helo {
            nonce: vec![0xff; 64],
            auth: vec![0x80, 0x81],
            keepalive: false,
        };
        assert_eq!(Helo::decode(&h.encode()).unwrap(), h);
        let p = Ping {
            hostname: b"client".to_vec(),
            salt: vec![0xfe; 16],
            digest: "ab".into(),
            username: b"u".to_vec(),
            password_digest: "cd".into(),
        };
        assert_eq!(Ping::decode(&p.encode()).unwrap(), p);
        let q = Pong {
            ok: false,
            reason: "nope".into(),
            hostname: b"server".to_vec(),
            digest: String::new(),
        };
        assert_eq!(Pong::decode(&q.encode()).unwrap(), q);
    }

    #[test]
    fn fluent_bit_style_helo_with_raw_salt_in_str() {
        // ["HELO", {"nonce": str(16 raw bytes), "auth": str(""), "keepalive": true}]
        let mut m = vec![0x92];
        write_str(&mut m, b"HELO");
        m.push(0x83);
        write_str(&mut m, b"nonce");
        write_str(&mut m, &[0xc1; 16]);
        write_str(&mut m, b"auth");
        write_str(&mut m, b"");
        write_str(&mut m, b"keepalive");
        m.push(0xc3);
        let h = Helo::decode(&m).unwrap();
        assert_eq!(h.nonce, vec![0xc1; 16]);
        assert!(h.auth.is_empty() && h.keepalive);
        assert!(matches!(
            Pong::decode(&m),
            Err(HandshakeError::Unexpected { .. })
        ));
    }

    /// fluent-bit 5.1.1's PING, byte for byte (plugins/out_forward/forward.c,
    /// `secure_forward_ping`: every field a msgpack str, the 16-byte salt
    /// raw), with the digests of its formulas; ours must be the same bytes,
    /// the salt a str (`b0`), never a bin (`c4`).
    #[test]
    fn ping_is_byte_for_byte_fluent_bits_with_the_salt_as_str() {
        let salt: Vec<u8> = (0x00..0x10).collect();
        let nonce: Vec<u8> = (0x10..0x20).collect();
        let auth: Vec<u8> = (0x20..0x30).collect();
        let d = shared_key_digest(&salt, b"client", &nonce, b"secret");
        assert_eq!(
            d,
            "f88dec6206a34d3b286e2586f28d518a62f48b005b4516abc6dd24d585d9e63c41155954d145d2982674102a1b3ee015cd2e9a2ed78b96b5fe3554a2a705b6e9"
        );
        let pw = password_digest(&auth, b"", b"");
        let ping = Ping {
            hostname: b"client".to_vec(),
            salt: salt.clone(),
            digest: d.clone(),
            username: Vec::new(),
            password_digest: pw.clone(),
        }
        .encode();
        let mut want = vec![0x96, 0xa4, b'P', b'I', b'N', b'G', 0xa6];
        want.extend_from_slice(b"client");
        want.push(0xb0); // fixstr 16: the raw salt
        want.extend_from_slice(&salt);
        want.extend_from_slice(&[0xd9, 0x80]);
        want.extend_from_slice(d.as_bytes());
        want.push(0xa0);
        want.extend_from_slice(&[0xd9, 0x80]);
        want.extend_from_slice(pw.as_bytes());
        assert_eq!(ping, want);
        // The PONG fluent-bit's in_forward answers, and its digest.
        let pong_digest = shared_key_digest(&salt, b"server", &nonce, b"secret");
        assert!(pong_digest.starts_with("b9f2947109d90e955d51ed9d03e4738a"));
        let mut pong = vec![0x95, 0xa4, b'P', b'O', b'N', b'G', 0xc3, 0xa0, 0xa6];
        pong.extend_from_slice(b"server");
        pong.extend_from_slice(&[0xd9, 0x80]);
        pong.extend_from_slice(pong_digest.as_bytes());
        let p = Pong::decode(&pong).unwrap();
        assert!(p.ok && p.hostname == b"server" && p.digest == pong_digest);
    }

    /// fluent-bit 5.1.1's HELO (plugins/in_forward/fw_prot.c, `send_helo`):
    /// nonce and auth as str of 16 raw bytes, no keepalive key, is read;
    /// ours writes them as bin (fluentd's form, which every client reads),
    /// and a bin nonce is read too.
    #[test]
    fn helo_fields_are_str_and_bin_is_read_too() {
        let mut fb = vec![0x92, 0xa4, b'H', b'E', b'L', b'O', 0x82, 0xa5];
        fb.extend_from_slice(b"nonce");
        fb.push(0xb0);
        fb.extend((0x10..0x20).collect::<Vec<u8>>());
        fb.push(0xa4);
        fb.extend_from_slice(b"auth");
        fb.push(0xb0);
        fb.extend((0x20..0x30).collect::<Vec<u8>>());
        let h = Helo::decode(&fb).unwrap();
        assert_eq!(h.nonce, (0x10..0x20).collect::<Vec<u8>>());
        assert_eq!(h.auth, (0x20..0x30).collect::<Vec<u8>>());
        assert!(h.keepalive, "no keepalive key: keep the connection");
        let ours = Helo {
            nonce: vec![0xff; 16],
            auth: vec![7; 16],
            keepalive: true,
        }
        .encode();
        let nonce_at = ours.windows(6).position(|w| w == b"\xa5nonce").unwrap() + 6;
        assert_eq!(ours[nonce_at..nonce_at + 2], [0xc4, 16], "nonce is a bin");
        let mut bin = vec![0x92, 0xa4, b'H', b'E', b'L', b'O', 0x81, 0xa5];
        bin.extend_from_slice(b"nonce");
        bin.extend_from_slice(&[0xc4, 0x02, 0xaa, 0xbb]);
        assert_eq!(Helo::decode(&bin).unwrap().nonce, vec![0xaa, 0xbb]);
    }
}
