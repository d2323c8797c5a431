//! Running the handshake (spec §Handshake Messages) over a connection: the
//! client answers HELO with PING and checks PONG; the server sends HELO,
//! checks PING (shared key, optional user and password) and answers PONG.

use super::protocol::frame::{self, Frame};
use super::protocol::handshake::{
    HandshakeError, Helo, Ping, Pong, password_digest, shared_key_digest,
};
use crate::transport::Stream;
use crate::transport::limits::Held;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client credentials of an output.
#[derive(Debug, Clone)]
pub struct ClientSecurity {
    pub shared_key: String,
    pub hostname: String,
    pub username: String,
    pub password: String,
}

/// Receiver security settings.
#[derive(Debug, Clone)]
pub struct ServerSecurity {
    pub shared_key: String,
    pub hostname: String,
    /// (username, password); empty: no user authentication.
    pub users: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no HELO from the server within {0:?}: a shared_key is configured here, but the server does not seem to require the handshake"
    )]
    NoHelo(Duration),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("no room in the memory budget for the handshake")]
    Budget,
    #[error("authentication failed: {0}")]
    Rejected(String),
    #[error(
        "the server's PONG digest does not match the shared key: wrong key, or not the expected server"
    )]
    BadServerDigest,
    #[error("the server claims this client's own hostname {0:?}")]
    SameHostname(String),
    #[error("{0}")]
    Protocol(#[from] HandshakeError),
    #[error("handshake frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("i/o during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one complete msgpack value into `buf` (which may already hold
/// bytes) and returns its length.
async fn read_frame(
    s: &mut Stream,
    buf: &mut Vec<u8>,
    t: Duration,
    no_data: AuthError,
    held: Option<&Held>,
) -> Result<usize, AuthError> {
    let deadline = tokio::time::Instant::now() + t;
    let mut first = true;
    let mut m = frame::Measurer::default();
    let mut chunk = [0u8; 4096];
    loop {
        if let Frame::Complete(n) = m.feed(buf, MAX_HANDSHAKE_FRAME)? {
            return Ok(n);
        }
        // Small reads into a tightly sized buffer: a handshake holds at
        // most MAX_HANDSHAKE_FRAME + 4 KiB for a peer not yet authenticated.
        let r = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await;
        match r {
            Err(_) if first && buf.is_empty() => return Err(no_data),
            Err(_) => return Err(AuthError::Timeout(t)),
            Ok(Ok(0)) => return Err(AuthError::Closed),
            Ok(Ok(n)) => {
                first = false;
                if let Some(h) = held
                    && !h.try_set(buf.len() + n)
                {
                    return Err(AuthError::Budget);
                }
                buf.reserve_exact(n);
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// The largest handshake message accepted (HELO, PING and PONG are a few
/// hundred bytes).
pub const MAX_HANDSHAKE_FRAME: usize = 64 * 1024;

/// Client side. Returns the server's keepalive flag; bytes read past the
/// PONG stay in `buf`.
pub async fn client(
    s: &mut Stream,
    sec: &ClientSecurity,
    t: Duration,
    buf: &mut Vec<u8>,
) -> Result<bool, AuthError> {
    let n = read_frame(s, buf, t, AuthError::NoHelo(t), None).await?;
    let helo = Helo::decode(&buf[..n])?;
    buf.drain(..n);
    // 128 random bits as 32 hex digits: PING's fields go as msgpack str
    // (fluent-bit 5 requires it), and a peer that reads a str as UTF-8
    // text (@fluent-org/logger's server) must see the same bytes.
    let salt = hex::encode(rand::random::<[u8; 16]>()).into_bytes();
    let ping = Ping {
        hostname: sec.hostname.as_bytes().to_vec(),
        salt: salt.to_vec(),
        digest: shared_key_digest(
            &salt,
            sec.hostname.as_bytes(),
            &helo.nonce,
            sec.shared_key.as_bytes(),
        ),
        username: sec.username.as_bytes().to_vec(),
        password_digest: if helo.auth.is_empty() {
            String::new()
        } else {
            password_digest(&helo.auth, sec.username.as_bytes(), sec.password.as_bytes())
        },
    };
    s.write_all(&ping.encode()).await?;
    s.flush().await?;
    let n = read_frame(s, buf, t, AuthError::Timeout(t), None).await?;
    let pong = Pong::decode(&buf[..n])?;
    buf.drain(..n);
    if !pong.ok {
        return Err(AuthError::Rejected(pong.reason));
    }
    if pong.hostname == sec.hostname.as_bytes() {
        return Err(AuthError::SameHostname(sec.hostname.clone()));
    }
    let want = shared_key_digest(
        &salt,
        &pong.hostname,
        &helo.nonce,
        sec.shared_key.as_bytes(),
    );
    if pong.digest != want {
        return Err(AuthError::BadServerDigest);
    }
    Ok(helo.keepalive)
}

/// Server side. On failure the client gets a PONG with the reason before the
/// error is returned (and the connection closed by the caller). What the
/// peer sends is charged to `held` as it arrives.
pub async fn server(
    s: &mut Stream,
    sec: &ServerSecurity,
    t: Duration,
    buf: &mut Vec<u8>,
    held: Option<&Held>,
) -> Result<(), AuthError> {
    let nonce: [u8; 16] = rand::random();
    let auth: Vec<u8> = if sec.users.is_empty() {
        Vec::new()
    } else {
        rand::random::<[u8; 16]>().to_vec()
    };
    let helo = Helo {
        nonce: nonce.to_vec(),
        auth: auth.clone(),
        keepalive: true,
    };
    s.write_all(&helo.encode()).await?;
    s.flush().await?;
    let n = read_frame(s, buf, t, AuthError::Timeout(t), held).await?;
    let ping = Ping::decode(&buf[..n])?;
    buf.drain(..n);
    let key = sec.shared_key.as_bytes();
    let verdict = if ping.hostname == sec.hostname.as_bytes() {
        Err("client hostname is the same as the server's")
    } else if ping.digest != shared_key_digest(&ping.salt, &ping.hostname, &nonce, key) {
        Err("shared_key mismatch")
    } else if !sec.users.is_empty()
        && !sec.users.iter().any(|(u, p)| {
            u.as_bytes() == ping.username
                && ping.password_digest == password_digest(&auth, u.as_bytes(), p.as_bytes())
        })
    {
        Err("username/password mismatch")
    } else {
        Ok(())
    };
    let pong = Pong {
        ok: verdict.is_ok(),
        reason: verdict.err().unwrap_or("").to_string(),
        hostname: sec.hostname.as_bytes().to_vec(),
        digest: if verdict.is_ok() {
            shared_key_digest(&ping.salt, sec.hostname.as_bytes(), &nonce, key)
        } else {
            String::new()
        },
    };
    s.write_all(&pong.encode()).await?;
    s.flush().await?;
    verdict.map_err(|r| AuthError::Rejected(r.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides over streams that hold writes back until flushed (as a TLS
    /// stream may): the handshake completes only if every message is flushed.
    #[tokio::test]
    async fn handshake_flushes_every_message() {
        let (a, b) = tokio::io::duplex(64 << 10);
        let mut cs: Stream = Box::new(tokio::io::BufWriter::new(a));
        let mut ss: Stream = Box::new(tokio::io::BufWriter::new(b));
        let csec = ClientSecurity {
            shared_key: "k".into(),
            hostname: "client".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let ssec = ServerSecurity {
            shared_key: "k".into(),
            hostname: "server".into(),
            users: vec![("u".into(), "p".into())],
        };
        let t = Duration::from_secs(5);
        let (c, s) = tokio::join!(
            async { client(&mut cs, &csec, t, &mut Vec::new()).await },
            async { server(&mut ss, &ssec, t, &mut Vec::new(), None).await },
        );
        s.expect("server side");
        c.expect("client side");
    }
}
