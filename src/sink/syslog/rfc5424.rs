//! RFC 5424 messages (§6) with the audit event's JSON as MSG, and the
//! octet-counted framing of RFC 6587 §3.4.1 for plain TCP and TLS.
//!
//! ```text
//! SYSLOG-MSG = HEADER SP STRUCTURED-DATA [SP MSG]            ; §6
//! HEADER     = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
//! PRI        = "<" (facility * 8 + severity) ">"             ; §6.2.1
//! ```
//!
//! TIMESTAMP is the event's `stageTimestamp` (else `requestReceivedTimestamp`,
//! else now) in UTC with microseconds (§6.2.3: at most 6 fractional digits);
//! PROCID and STRUCTURED-DATA are NILVALUE (`-`). MSG is the JSON without a
//! BOM (§6.4's MSG-ANY), so a collector's raw MSG is the event as written.

use crate::record::time::EventTime;

/// Facility names of RFC 5424 §6.2.1, in code order.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];
/// Severity names, in code order.
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn code(v: &str, names: &[&str]) -> Option<u8> {
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(v))
        .or_else(|| v.parse::<usize>().ok().filter(|n| *n < names.len()))
        .map(|n| n as u8)
}

/// The header fields every message of an output shares.
#[derive(Debug, Clone)]
pub struct Header {
    /// `<PRI>1 ` (PRI and VERSION).
    lead: String,
    /// ` HOSTNAME APP-NAME - MSGID - ` (after the timestamp).
    tail: String,
}

impl Header {
    /// Checks and assembles the fields (§6.2: PRINTUSASCII, lengths).
    pub fn new(
        facility: &str,
        severity: &str,
        hostname: &str,
        app_name: &str,
        msgid: &str,
    ) -> Result<Self, String> {
        let f = code(facility, &FACILITIES)
            .ok_or_else(|| format!("facility: {facility:?} is not a facility name or 0..=23"))?;
        let s = code(severity, &SEVERITIES)
            .ok_or_else(|| format!("severity: {severity:?} is not a severity name or 0..=7"))?;
        let field = |key: &str, v: &str, max: usize| -> Result<(), String> {
            if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b)) {
                Err(format!(
                    "{key}: {v:?} must be 1 to {max} printable ASCII characters without spaces (RFC 5424 §6.2)"
                ))
            } else {
                Ok(())
            }
        };
        field("hostname", hostname, 255)?;
        field("app_name", app_name, 48)?;
        field("msgid", msgid, 32)?;
        Ok(Header {
            lead: format!("<{}>1 ", u32::from(f) * 8 + u32::from(s)),
            tail: format!(" {hostname} {app_name} - {msgid} - "),
        })
    }

    /// Appends one message for `event` (one JSON object, no newline).
    pub fn write(&self, out: &mut Vec<u8>, event: &[u8]) {
        out.extend_from_slice(self.lead.as_bytes());
        let t = crate::sink::event_time(event).unwrap_or_else(EventTime::now);
        write_timestamp(out, t);
        out.extend_from_slice(self.tail.as_bytes());
        out.extend_from_slice(event);
    }
}

/// `2026-12-03T12:34:56.123456Z` (§6.2.3).
fn write_timestamp(out: &mut Vec<u8>, t: EventTime) {
    use chrono::{Datelike, Timelike};
    let d = chrono::DateTime::from_timestamp(i64::from(t.secs), 0).unwrap_or_default();
    let parts = [
        (None, d.year().clamp(0, 9999) as u32, 4),
        (Some(b'-'), d.month(), 2),
        (Some(b'-'), d.day(), 2),
        (Some(b'T'), d.hour(), 2),
        (Some(b':'), d.minute(), 2),
        (Some(b':'), d.second(), 2),
        (Some(b'.'), t.nanos.min(999_999_999) / 1000, 6),
    ];
    for (sep, mut v, n) in parts {
        out.extend(sep);
        let mut b = [b'0'; 6];
        for d in b[..n].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&b[..n]);
    }
    out.push(b'Z');
}

/// Appends `MSG-LEN SP SYSLOG-MSG` (RFC 6587 §3.4.1).
pub fn octet_counted(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(itoa::Buffer::new().format(msg.len()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_header_time_and_msg() {
        let h = Header::new("local0", "info", "seed-1", "kube-apiserver", "audit").unwrap();
        let ev = br#"{"kind":"Event","requestReceivedTimestamp":"2026-12-03T12:00:00.000001Z","stageTimestamp":"2026-12-03T12:34:56.123456Z"}"#;
        let mut out = Vec::new();
        h.write(&mut out, ev);
        let want = format!(
            "<134>1 2026-12-03T12:34:56.123456Z seed-1 kube-apiserver - audit - {}",
            std::str::from_utf8(ev).unwrap()
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        let mut framed = Vec::new();
        octet_counted(&mut framed, &out);
        assert_eq!(framed, format!("{} {want}", want.len()).into_bytes());
        // Numbers and other names; requestReceivedTimestamp as fallback.
        let h = Header::new("10", "warning", "h", "a", "-").unwrap();
        let mut out = Vec::new();
        h.write(
            &mut out,
            br#"{"requestReceivedTimestamp":"2026-01-02T03:04:05Z"}"#,
        );
        assert!(
            out.starts_with(b"<84>1 2026-01-02T03:04:05.000000Z h a - - - {"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn refuses_fields_rfc_5424_does_not_allow() {
        for (f, s, h, a, m, why) in [
            ("local8", "info", "h", "a", "m", "facility"),
            ("24", "info", "h", "a", "m", "facility"),
            ("local0", "loud", "h", "a", "m", "severity"),
            ("local0", "info", "my host", "a", "m", "hostname"),
            ("local0", "info", "h", &"a".repeat(49), "m", "app_name"),
            ("local0", "info", "h", "a", "", "msgid"),
        ] {
            let e = Header::new(f, s, h, a, m).unwrap_err();
            assert!(e.starts_with(why), "{e}");
        }
    }
}
