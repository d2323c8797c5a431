//! Setting top-level fields of an encoded (msgpack map) record without
//! re-encoding the rest: enrichment by a filter's `set-fields` verdict.

use super::encode::key_bits;
use super::reader::{MsgReader, ReadError};

/// The top-level entries of a msgpack map record: from `top` (where each
/// entry starts, then the end, as `filter::item::Item` keeps them) when it fits the
/// record, else by parsing.
struct Entries<'a> {
    rec: &'a [u8],
    r: MsgReader<'a>,
    top: &'a [u32],
    /// Number of entries.
    n: usize,
    known: bool,
}

impl<'a> Entries<'a> {
    fn new(rec: &'a [u8], top: &'a [u32]) -> Result<Self, ReadError> {
        let mut r = MsgReader::new(rec);
        let n = r.read_map_len()? as usize;
        let known = top.len() == n + 1
            && top[0] as usize == r.pos()
            && top[n] as usize == rec.len()
            && top.windows(2).all(|w| w[0] <= w[1]);
        Ok(Entries {
            rec,
            r,
            top,
            n,
            known,
        })
    }

    /// Where the entries start.
    fn start(&self) -> usize {
        if self.known {
            self.top[0] as usize
        } else {
            self.r.pos()
        }
    }

    /// Entry `i` (in order, each once): its start, key and end.
    fn entry(&mut self, i: usize) -> Result<(usize, &'a [u8], usize), ReadError> {
        if self.known {
            let (start, end) = (self.top[i] as usize, self.top[i + 1] as usize);
            let entry = &self.rec[start..end];
            // A fixstr key (all of an audit event's) without the reader.
            let key = match entry.first() {
                Some(&h @ 0xa0..=0xbf) => entry.get(1..1 + (h & 0x1f) as usize),
                _ => None,
            };
            let key = match key {
                Some(k) => k,
                None => MsgReader::new(entry).read_str_bytes()?,
            };
            return Ok((start, key, end));
        }
        let start = self.r.pos();
        let key = self.r.read_str_bytes()?;
        self.r.skip_value()?;
        Ok((start, key, self.r.pos()))
    }
}

/// The index of the last field named `k` (later duplicates win).
fn last<K: AsRef<str>, V>(fields: &[(K, V)], k: &[u8]) -> Option<usize> {
    fields.iter().rposition(|(f, _)| f.as_ref().as_bytes() == k)
}

/// Sets top-level `fields` (key, encoded value) of the msgpack map `rec`.
/// When every key is new and the map's header has room for them (the
/// transcoder writes map16), they are appended to `rec` in place and the
/// count patched: enrichment copies nothing. Otherwise [`splice`] builds
/// the record in `scratch`, which is swapped in. `keys`: the
/// [`key_bits`] of `rec`'s keys, if known: when every field misses a bit
/// of them (and `top` fits), the keys are not scanned.
pub fn set_fields<K: AsRef<str>, V: AsRef<[u8]>>(
    rec: &mut Vec<u8>,
    top: &[u32],
    keys: Option<u128>,
    fields: &[(K, V)],
    scratch: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut e = Entries::new(rec, top)?;
    let mut fresh = true;
    // Where the last entry ends: the record must end there too.
    let mut end = e.start();
    let absent = keys.is_some_and(|k| {
        fields.iter().all(|(f, _)| {
            let b = key_bits(f.as_ref().as_bytes());
            k & b != b
        })
    });
    if absent && e.known {
        end = top[e.n] as usize;
    } else {
        for i in 0..e.n {
            let (_, key, stop) = e.entry(i)?;
            end = stop;
            if last(fields, key).is_some() {
                fresh = false;
                break;
            }
        }
    }
    let n = e.n;
    let room = match rec.first() {
        Some(0x80..=0x8f) => 15,
        Some(0xde) => 0xffff,
        Some(0xdf) => u32::MAX as usize,
        _ => 0,
    };
    let new = (0..fields.len())
        .filter(|&i| last(fields, fields[i].0.as_ref().as_bytes()) == Some(i))
        .count();
    if fresh && end == rec.len() && n + new <= room {
        for (i, (k, v)) in fields.iter().enumerate() {
            if last(fields, k.as_ref().as_bytes()) == Some(i) {
                crate::record::write::write_str(rec, k.as_ref().as_bytes());
                rec.extend_from_slice(v.as_ref());
            }
        }
        let count = n + new;
        match rec[0] {
            0x80..=0x8f => rec[0] = 0x80 | count as u8,
            0xde => rec[1..3].copy_from_slice(&(count as u16).to_be_bytes()),
            _ => rec[1..5].copy_from_slice(&(count as u32).to_be_bytes()),
        }
        return Ok(());
    }
    splice(rec, top, fields, scratch)?;
    std::mem::swap(rec, scratch);
    Ok(())
}

/// Sets top-level `fields` (key, encoded value) of the msgpack map `rec`
/// into `out`: existing keys get the new value in place, new keys are
/// appended; the other entries are copied byte for byte, runs of them at
/// once. Later duplicates win. `top`: as `filter::item::Item` keeps it; ignored unless
/// it fits `rec`.
pub fn splice<K: AsRef<str>, V: AsRef<[u8]>>(
    rec: &[u8],
    top: &[u32],
    fields: &[(K, V)],
    out: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let mut e = Entries::new(rec, top)?;
    let n = e.n;
    // One pass, no allocation for up to 64 fields. The header is map16
    // (map32 when needed) like the transcoder's, patched at the end.
    let mut small = [false; 64];
    let mut big = Vec::new();
    let found: &mut [bool] = if fields.len() <= small.len() {
        &mut small[..fields.len()]
    } else {
        big.resize(fields.len(), false);
        &mut big
    };
    out.clear();
    let wide = n + fields.len() > 0xffff;
    out.extend_from_slice(if wide {
        &[0xdf, 0, 0, 0, 0][..]
    } else {
        &[0xde, 0, 0][..]
    });
    let mut count = 0u32;
    // Start of the entries not yet copied (all unchanged).
    let mut pending = e.start();
    let mut end = pending;
    for i in 0..n {
        let (start, key, stop) = e.entry(i)?;
        end = stop;
        if let Some(j) = last(fields, key) {
            out.extend_from_slice(&rec[pending..start]);
            pending = stop;
            found[j] = true;
            crate::record::write::write_str(out, key);
            out.extend_from_slice(fields[j].1.as_ref());
        }
        count += 1;
    }
    out.extend_from_slice(&rec[pending..end]);
    for (i, (k, v)) in fields.iter().enumerate() {
        // New keys, each at its last occurrence.
        if !found[i] && last(fields, k.as_ref().as_bytes()) == Some(i) {
            crate::record::write::write_str(out, k.as_ref().as_bytes());
            out.extend_from_slice(v.as_ref());
            count += 1;
        }
    }
    if wide {
        out[1..5].copy_from_slice(&count.to_be_bytes());
    } else {
        out[1..3].copy_from_slice(&(count as u16).to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode::Transcoder;
    use crate::record::json::record_json;

    use crate::record::encode::encoded as enc;

    #[test]
    fn splice_replaces_in_place_and_appends() {
        let rec = enc(r#"{"kind":"Event","verb":"get","user":{"username":"a"}}"#);
        let v = |j: &str| {
            let m = enc(&format!("{{\"v\":{j}}}"));
            let mut r = MsgReader::new(&m);
            r.read_map_len().unwrap();
            r.read_str_bytes().unwrap();
            m[r.pos()..].to_vec()
        };
        let mut out = Vec::new();
        splice(
            &rec,
            &[],
            &[
                ("verb", &v("\"list\"")),
                ("clusterID", &v("\"shoot--a\"")),
                ("n", &v("1")),
                ("n", &v("{\"x\":[1,2]}")),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            record_json(&out).unwrap(),
            r#"{"kind":"Event","verb":"list","user":{"username":"a"},"clusterID":"shoot--a","n":{"x":[1,2]}}"#
        );
        assert!(splice::<&str, &[u8]>(b"\x01", &[], &[], &mut out).is_err());
    }

    /// `set_fields` gives what `splice` gives, for every map header (fixmap
    /// as the policy writes small maps, map16 as the transcoder does,
    /// map32), with and without entry positions; it appends in place (the
    /// scratch buffer stays unused) exactly when every key is new, the
    /// header has room and nothing trails the map.
    #[test]
    fn set_fields_appends_in_place_or_splices() {
        let one = [0x01u8];
        let sets: [&[(&str, &[u8])]; 5] = [
            &[],
            &[("clusterID", &one)],
            &[("clusterID", &one), ("x", &one), ("clusterID", &one)],
            &[("verb", &one)],
            &[("new", &one), ("kind", &one)],
        ];
        // (header, entries): 2 entries, or 14 under a fixmap (no room for 2 more).
        let recs = |n: usize| {
            let mut body = Vec::new();
            for i in 0..n {
                let k = if i == 0 {
                    "kind".to_string()
                } else if i == 1 {
                    "verb".into()
                } else {
                    format!("k{i}")
                };
                crate::record::write::write_str(&mut body, k.as_bytes());
                body.push(0x07);
            }
            let mut fix = vec![0x80 | n as u8];
            fix.extend_from_slice(&body);
            let mut m16 = vec![0xde, 0, n as u8];
            m16.extend_from_slice(&body);
            let mut m32 = vec![0xdf, 0, 0, 0, n as u8];
            m32.extend_from_slice(&body);
            let mut trailing = m16.clone();
            trailing.push(0xc0);
            [(fix, true), (m16, true), (m32, true), (trailing, false)]
        };
        for n in [2, 14] {
            for (rec, clean) in recs(n) {
                let mut tops = vec![Vec::new()];
                if clean {
                    let mut r = MsgReader::new(&rec);
                    r.read_map_len().unwrap();
                    let mut t = Vec::new();
                    for _ in 0..n {
                        t.push(r.pos() as u32);
                        r.read_str_bytes().unwrap();
                        r.skip_value().unwrap();
                    }
                    t.push(rec.len() as u32);
                    tops.push(t);
                }
                for top in &tops {
                    for f in sets {
                        let mut want = Vec::new();
                        splice(&rec, top, f, &mut want).unwrap();
                        let (mut got, mut scratch) = (rec.clone(), Vec::new());
                        set_fields(&mut got, top, None, f, &mut scratch).unwrap();
                        assert_eq!(record_json(&got), record_json(&want), "{rec:x?} {f:?}");
                        // With the keys' bits known the result is the same.
                        let mut r = MsgReader::new(&rec);
                        let mut bits = 0;
                        for _ in 0..r.read_map_len().unwrap() {
                            bits |= key_bits(r.read_str_bytes().unwrap());
                            r.skip_value().unwrap();
                        }
                        let (mut fast, mut s2) = (rec.clone(), Vec::new());
                        set_fields(&mut fast, top, Some(bits), f, &mut s2).unwrap();
                        assert_eq!(fast, got, "{rec:x?} {f:?}");
                        let new = f.iter().filter(|(k, _)| *k != "verb" && *k != "kind");
                        let fresh = new.clone().count() == f.len();
                        let room = if rec[0] < 0x90 { 15 } else { 0xffff };
                        let distinct = f
                            .iter()
                            .map(|x| x.0)
                            .collect::<std::collections::HashSet<_>>()
                            .len();
                        let in_place = clean && fresh && n + distinct <= room;
                        assert_eq!(scratch.is_empty(), in_place, "{rec:x?} {f:?}");
                    }
                }
            }
        }
    }

    /// With the transcoder's entry positions `splice` skips parsing; the
    /// result is the same, and positions that do not fit are ignored.
    #[test]
    fn splice_with_known_entries_equals_splice_by_parsing() {
        let docs = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"kind":"Event","verb":"get","user":{"username":"a","groups":["x","y"]},"n":[1,{"b":null}],"verb":"list"}"#,
        ];
        let one = [0x01u8];
        let sets: [&[(&str, &[u8])]; 4] = [
            &[],
            &[("verb", &one)],
            &[("clusterID", &one), ("a", &one)],
            &[("kind", &one), ("n", &one), ("new", &one), ("kind", &one)],
        ];
        for d in docs {
            let mut rec = Vec::new();
            let mut tc = Transcoder::default();
            tc.encode(d.as_bytes(), &mut rec).unwrap();
            let mut top: Vec<u32> = tc.top.iter().map(|e| e.span.start as u32).collect();
            top.push(rec.len() as u32);
            for f in sets {
                let (mut want, mut got) = (Vec::new(), Vec::new());
                splice(&rec, &[], f, &mut want).unwrap();
                splice(&rec, &top, f, &mut got).unwrap();
                assert_eq!(got, want, "{d} {f:?}");
                let mut wrong = top.clone();
                wrong.reverse();
                splice(&rec, &wrong, f, &mut got).unwrap();
                assert_eq!(got, want, "wrong positions ignored");
            }
        }
    }

    #[test]
    fn splice_with_more_fields_than_the_fast_path_holds() {
        let rec = enc(r#"{"a":1,"k7":"old"}"#);
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let one = [0x01u8];
        let fields: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), &one[..])).collect();
        let mut out = Vec::new();
        splice(&rec, &[], &fields, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_str(&record_json(&out).unwrap()).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 101);
        assert_eq!(m["k7"], 1);
        assert_eq!(m["a"], 1);
        // "k7" stays where it was, the new keys follow in order.
        let order: Vec<&str> = m.keys().map(String::as_str).take(3).collect();
        assert_eq!(order, ["a", "k7", "k0"]);
    }
}
