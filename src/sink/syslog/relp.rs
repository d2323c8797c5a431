//! RELP framing, client side (librelp's "RELP - The Reliable Event Logging
//! Protocol", doc/relp.html in rsyslog/librelp):
//!
//! ```text
//! RELP-FRAME = TXNR SP COMMAND SP DATALEN [SP DATA] TRAILER   ; TRAILER = LF
//! TXNR       = 1..=999999999, then 1 again                     ; per session
//! RSP DATA   = RSP-CODE [SP HUMANMSG] [LF CMDDATA]             ; "200 OK"
//! ```
//!
//! A session starts with `open` (offers `relp_version`, `relp_software`,
//! `commands=syslog`), which the server answers `rsp 200`; each `syslog`
//! command carries one message and is answered by an `rsp` with the same
//! TXNR; `close` ends it. The server may send `serverclose` (TXNR 0)
//! before it closes.

/// Largest TXNR; the next one is 1.
pub const MAX_TXNR: u32 = 999_999_999;
/// Largest DATALEN a response may announce (bounds what is buffered).
const MAX_RSP_DATA: usize = 64 << 10;

/// The TXNR after `t`.
pub fn next_txnr(t: u32) -> u32 {
    if t >= MAX_TXNR { 1 } else { t + 1 }
}

/// Appends one command frame.
pub fn command(out: &mut Vec<u8>, txnr: u32, cmd: &str, data: &[u8]) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(txnr).as_bytes());
    out.push(b' ');
    out.extend_from_slice(cmd.as_bytes());
    out.push(b' ');
    out.extend_from_slice(n.format(data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// The `open` command's offers.
pub fn open_offers() -> Vec<u8> {
    format!(
        "relp_version=0\nrelp_software=audit-forwarder,{},https://github.com/\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `rsp` to the command `txnr`: its code and human-readable text.
    Rsp { txnr: u32, code: u16, text: String },
    /// `serverclose`: the server ends the session.
    ServerClose,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid RELP frame from the server: {0}")]
pub struct FrameError(pub String);

/// Parses one frame at the start of `buf`: `Ok(None)` until it is whole,
/// else the reply and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, FrameError> {
    let bad = |w: &str| {
        FrameError(format!(
            "{w}: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        ))
    };
    let mut i = 0;
    // TXNR SP COMMAND SP DATALEN
    let field = |i: &mut usize, max: usize| -> Result<Option<&[u8]>, FrameError> {
        let start = *i;
        while *i < buf.len() && buf[*i] != b' ' && buf[*i] != b'\n' {
            *i += 1;
            if *i - start > max {
                return Err(bad("field too long"));
            }
        }
        if *i == buf.len() {
            return Ok(None);
        }
        Ok(Some(&buf[start..*i]))
    };
    let Some(txnr) = field(&mut i, 9)? else {
        return Ok(None);
    };
    let txnr = number(txnr).ok_or_else(|| bad("TXNR is not a number"))?;
    if buf[i] != b' ' {
        return Err(bad("no command"));
    }
    i += 1;
    let Some(cmd) = field(&mut i, 32)? else {
        return Ok(None);
    };
    let cmd = cmd.to_vec();
    if buf[i] != b' ' {
        return Err(bad("no DATALEN"));
    }
    i += 1;
    let Some(len) = field(&mut i, 9)? else {
        return Ok(None);
    };
    let len = number(len).ok_or_else(|| bad("DATALEN is not a number"))? as usize;
    if len > MAX_RSP_DATA {
        return Err(bad("DATALEN too large"));
    }
    let data_start = if len > 0 {
        if buf[i] != b' ' {
            return Err(bad("no SP before DATA"));
        }
        i + 1
    } else {
        i
    };
    // DATA, then the LF trailer.
    if buf.len() < data_start + len + 1 {
        return Ok(None);
    }
    if buf[data_start + len] != b'\n' {
        return Err(bad("no LF after DATA"));
    }
    let data = &buf[data_start..data_start + len];
    let used = data_start + len + 1;
    match cmd.as_slice() {
        b"rsp" => {
            let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
            let (code, text) = match line.iter().position(|b| *b == b' ') {
                Some(p) => (&line[..p], &line[p + 1..]),
                None => (line, &b""[..]),
            };
            // librelp answers `close` with an empty rsp: code 0.
            let code = match code {
                b"" => 0,
                c => number(c)
                    .and_then(|c| u16::try_from(c).ok())
                    .ok_or_else(|| bad("rsp without a code"))?,
            };
            Ok(Some((
                Reply::Rsp {
                    txnr: txnr as u32,
                    code,
                    text: String::from_utf8_lossy(text).into_owned(),
                },
                used,
            )))
        }
        b"serverclose" => Ok(Some((Reply::ServerClose, used))),
        _ => Err(bad("unexpected command")),
    }
}

fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_commands() {
        let mut out = Vec::new();
        command(&mut out, 7, "syslog", b"<134>1 - - - - - - {}");
        command(&mut out, 8, "close", b"");
        assert_eq!(out, b"7 syslog 21 <134>1 - - - - - - {}\n8 close 0\n");
        assert_eq!(next_txnr(MAX_TXNR), 1);
        assert_eq!(next_txnr(1), 2);
    }

    #[test]
    fn parses_replies_whole_or_not_yet() {
        // rsyslog 8.2302 / librelp 1.11's answer to `open`, byte for byte.
        let open = b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n";
        let (r, n) = parse(open).unwrap().unwrap();
        assert_eq!(n, open.len());
        assert_eq!(
            r,
            Reply::Rsp {
                txnr: 1,
                code: 200,
                text: "OK".into()
            }
        );
        let two = b"2 rsp 6 200 OK\n3 rsp 28 500 error: message too large\n0 serverclose 0\n";
        let (r, n) = parse(two).unwrap().unwrap();
        assert!(matches!(
            r,
            Reply::Rsp {
                txnr: 2,
                code: 200,
                ..
            }
        ));
        let (r, m) = parse(&two[n..]).unwrap().unwrap();
        assert!(
            matches!(r, Reply::Rsp { txnr: 3, code: 500, ref text } if text.contains("too large")),
            "{r:?}"
        );
        assert_eq!(parse(&two[n + m..]).unwrap().unwrap().0, Reply::ServerClose);
        // librelp's answer to `close` (bytes seen from rsyslog 8.2302).
        assert!(matches!(
            parse(b"5 rsp 0\n").unwrap().unwrap().0,
            Reply::Rsp {
                txnr: 5,
                code: 0,
                ..
            }
        ));
        for cut in 0..open.len() {
            assert_eq!(parse(&open[..cut]).unwrap(), None, "cut at {cut}");
        }
        for bad in [
            &b"x rsp 6 200 OK\n"[..],
            b"2 rsp 6 200 OKX",
            b"2 hello 0\n",
            b"2 rsp 999999999 ",
            b"1234567890 rsp 0\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
