//! The event time every record carries: Forward's EventTime (spec
//! §EventTime Ext Format), parsed from the audit event's `stageTimestamp`.
//!
//! Spec sections cited as "spec §X" refer to
//! <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1>.

/// msgpack extension type of EventTime (spec §EventTime Ext Format).
pub const EVENT_TIME_EXT: i8 = 0;

/// An event timestamp with nanosecond precision (spec §EventTime Ext Format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventTime {
    pub secs: u32,
    pub nanos: u32,
}

impl EventTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        EventTime {
            secs: d.as_secs() as u32,
            nanos: d.subsec_nanos(),
        }
    }

    /// Parses an RFC 3339 timestamp such as the audit event's `stageTimestamp`
    /// (`2026-11-23T18:57:52.123456Z`).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        if let Some(t) = Self::parse_utc(s.as_bytes()) {
            return Some(t);
        }
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        let secs = u32::try_from(t.timestamp()).ok()?;
        Some(EventTime {
            secs,
            nanos: t.timestamp_subsec_nanos(),
        })
    }

    /// The form the apiserver writes, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`
    /// (RFC 3339 in UTC), without chrono; `None` for anything else (the
    /// caller then asks chrono).
    fn parse_utc(b: &[u8]) -> Option<Self> {
        fn num(b: &[u8]) -> Option<u32> {
            b.iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + (c - b'0') as u32)
            })
        }
        if b.len() < 20 || b.len() > 30 || *b.last()? != b'Z' {
            return None;
        }
        if (b[4], b[7], b[10], b[13], b[16]) != (b'-', b'-', b'T', b':', b':') {
            return None;
        }
        let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
        let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
        let frac = &b[19..b.len() - 1];
        let nanos = match frac {
            [] => 0,
            [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
                num(digits)? * 10u32.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let mdays = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&mo) || d == 0 || d > mdays[mo as usize - 1] {
            return None;
        }
        // Second 60 (a leap second) is left to chrono.
        if h > 23 || mi > 59 || sec > 59 || y < 1970 {
            return None;
        }
        // Days since 1970-01-01 (H. Hinnant's days_from_civil).
        let (y, mo, d) = (y as i64, mo as i64, d as i64);
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y / 400;
        let yoe = y - era * 400;
        let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
        Some(EventTime {
            secs: u32::try_from(secs).ok()?,
            nanos,
        })
    }

    /// Appends the EventTime as `fixext8` type 0: seconds and nanoseconds as
    /// big-endian u32 (spec §EventTime Ext Format).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0xd7, EVENT_TIME_EXT as u8]);
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.nanos.to_be_bytes());
    }

    /// Seconds since the epoch as a float.
    pub fn as_f64(&self) -> f64 {
        self.secs as f64 + self.nanos as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_is_fixext8_type_0() {
        let mut out = Vec::new();
        EventTime {
            secs: 0x5a5b5c5d,
            nanos: 0x01020304,
        }
        .write(&mut out);
        assert_eq!(
            out,
            [0xd7, 0x00, 0x5a, 0x5b, 0x5c, 0x5d, 0x01, 0x02, 0x03, 0x04]
        );
    }

    #[test]
    fn parses_stage_timestamp() {
        let t = EventTime::parse_rfc3339("2026-11-23T18:57:52.123456Z").unwrap();
        assert_eq!(t.secs, 1795460272);
        assert_eq!(t.nanos, 123_456_000);
        assert!(EventTime::parse_rfc3339("yesterday").is_none());
    }

    proptest::proptest! {
        /// The chrono-free path agrees with chrono on every form it takes,
        /// and leaves the rest (offsets, leap seconds) to chrono.
        #[test]
        fn utc_fast_path_agrees_with_chrono(
            secs in 0i64..4_294_967_295,
            nanos in 0u32..1_000_000_000,
            digits in 0usize..=9,
            offset in proptest::option::of(-50_000i32..50_000),
        ) {
            use chrono::{SecondsFormat, TimeZone};
            let t = chrono::Utc.timestamp_opt(secs, nanos).unwrap();
            let text = match offset {
                Some(o) => t.with_timezone(&chrono::FixedOffset::east_opt(o / 60 * 60).unwrap())
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
                None => {
                    let f = t.format("%Y-%m-%dT%H:%M:%S").to_string();
                    let frac = format!("{:09}", nanos);
                    if digits == 0 { format!("{f}Z") } else { format!("{f}.{}Z", &frac[..digits]) }
                }
            };
            let chrono = chrono::DateTime::parse_from_rfc3339(&text).ok().and_then(|t| {
                Some(EventTime { secs: u32::try_from(t.timestamp()).ok()?, nanos: t.timestamp_subsec_nanos() })
            });
            proptest::prop_assert_eq!(EventTime::parse_rfc3339(&text), chrono, "{}", text);
        }
    }

    #[test]
    fn utc_fast_path_rejects_what_chrono_rejects() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T00:00:00.Z",
            "2026-11-24T00:00:00.1234567890Z",
            "2026-11-24T00:00:0xZ",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(EventTime::parse_utc(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            EventTime::parse_rfc3339("2024-02-29T12:00:00Z").map(|t| t.secs),
            Some(1_709_208_000)
        );
    }
}
