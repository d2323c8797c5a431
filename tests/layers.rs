//! The source tree's dependency rule (docs/ARCHITECTURE.md, "Layers"):
//! commands → pipeline → stages → record, one way. Reads every `crate::`
//! path in `src/` (outside `#[cfg(test)]` modules and `tests.rs` files) and fails on an edge
//! that points up or sideways between stages, and on a cycle between
//! modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module's layer; a module may use only lower layers (and
/// itself). Stages in one layer must not use each other.
const LAYERS: &[(&str, u8)] = &[
    ("cmd", 7),
    ("pipeline", 6),
    ("config", 5),
    // Outputs beside Forward: they take the batcher's Forward chunks.
    ("sink", 4),
    ("source", 3),
    ("filter", 3),
    ("forward", 3),
    ("transport", 2),
    ("ops", 2),
    ("record", 1),
    ("synth", 0),
];

fn layer(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == top).map(|(_, l)| *l)
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → ``.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// modules (tests may use anything).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_test = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if skip_depth.is_none() && t.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        if pending_test && skip_depth.is_none() {
            pending_test = false;
            if t.starts_with("mod ") || t.starts_with("pub mod ") {
                skip_depth = Some(depth);
            }
        }
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d && (opens > 0 || closes > 0) => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The modules a file's code names: `crate::a::b` → `a::b` (two levels at
/// most), including `crate::a::{b, c}` groups.
fn uses(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let first: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if first.is_empty() || layer(&first).is_none() {
            continue; // `crate::stopped` and other root items
        }
        let after = &rest[first.len()..];
        let mods = after
            .strip_prefix("::")
            .map(module_names)
            .unwrap_or_default();
        if mods.is_empty() {
            out.insert(first.clone());
        }
        for m in mods {
            out.insert(format!("{first}::{m}"));
        }
    }
    out
}

/// The module names a path continues with after `x::`: `{a, b::C}` gives
/// `a`, `b`; `a::f` gives `a`; items (uppercase) and `self` are left out.
fn module_names(after: &str) -> Vec<String> {
    let names: Vec<String> = if let Some(g) = after.strip_prefix('{') {
        g.split('}')
            .next()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().split("::").next().unwrap_or("").trim().to_string())
            .collect()
    } else {
        vec![
            after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        ]
    };
    names
        .into_iter()
        .filter(|n| n.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && n != "self")
        .collect()
}

/// The lowercase names after `super::` (modules of the parent).
fn supers(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in code.split("super::").skip(1) {
        out.extend(module_names(part));
    }
    out
}

/// Module → the modules it uses (each cut to two levels).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && !p.ends_with("main.rs")
                // A `#[cfg(test)] mod tests;` in a file of its own.
                && !p.ends_with("tests.rs")
            {
                let full = module_of(src, &p);
                let m = two_levels(&full);
                let text = std::fs::read_to_string(&p).unwrap();
                let mut used = uses(&code(&text));
                // `super::x` in `a::b` (a file of its own) names `a::x`.
                if full.split("::").count() == 2 {
                    let parent = top(&full).to_string();
                    used.extend(
                        supers(&code(&text))
                            .into_iter()
                            .map(|x| format!("{parent}::{x}")),
                    );
                }
                g.entry(m.clone())
                    .or_default()
                    .extend(used.into_iter().filter(|u| *u != m));
            }
        }
    }
    // `a::f` where `f` is an item of `a`, not a module: an edge to `a`.
    let known: BTreeSet<String> = g.keys().cloned().collect();
    for tos in g.values_mut() {
        *tos = tos
            .iter()
            .map(|t| {
                if known.contains(t) {
                    t.clone()
                } else {
                    top(t).to_string()
                }
            })
            .collect();
    }
    g
}

fn two_levels(m: &str) -> String {
    m.split("::").take(2).collect::<Vec<_>>().join("::")
}

fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or("")
}

/// Edges that break the layer rule, as "from → to (why)".
fn forbidden(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in g {
        let Some(lf) = layer(top(from)) else {
            if !from.is_empty() {
                bad.push(format!("{from}: a top-level module not in LAYERS"));
            }
            continue;
        };
        for to in tos {
            if top(to) == top(from) {
                continue;
            }
            let lt = layer(top(to)).unwrap_or(u8::MAX);
            if lt > lf {
                bad.push(format!(
                    "{from} → {to} (points up: layer {lf} uses layer {lt})"
                ));
            } else if lt == lf {
                bad.push(format!("{from} → {to} (a stage uses a sibling stage)"));
            }
        }
    }
    bad
}

/// A cycle among the (two-level) modules, if any.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 = unvisited, 1 = on the path, 2 = done.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n).copied().unwrap_or(0) {
            1 => {
                let i = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[i..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            2 => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for to in g.get(n).into_iter().flatten() {
            // A module's own children (`a` → `a::b`) are its parts, not a
            // dependency between peers.
            if to.starts_with(&format!("{n}::")) || n.starts_with(&format!("{to}::")) {
                continue;
            }
            if let Some(c) = visit(to, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn dependencies_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.contains_key("record::encode") && g.contains_key("cmd::forward"));
    let bad = forbidden(&g);
    assert!(
        bad.is_empty(),
        "forbidden dependencies:\n{}",
        bad.join("\n")
    );
    if let Some(c) = cycle(&g) {
        panic!("dependency cycle: {}", c.join(" → "));
    }
}

/// The checker itself finds what it must: an upward edge, a sibling edge,
/// a cycle, and `crate::a::{b, c}` groups.
#[test]
fn the_checker_finds_forbidden_edges_and_cycles() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let used =
        uses("use crate::record::{encode::Transcoder, json};\nlet x = crate::stopped(&mut y);");
    assert_eq!(used, set(&["record::encode", "record::json"]));
    let tested = code(
        "use crate::ops::metrics::M;\n#[cfg(test)]\nmod tests {\n    use crate::cmd::cli;\n}\n",
    );
    assert_eq!(uses(&tested), set(&["ops::metrics"]));
    let mut g = BTreeMap::new();
    g.insert("record::encode".to_string(), set(&["forward::protocol"]));
    g.insert(
        "forward::client".to_string(),
        set(&["source::tail", "record::time"]),
    );
    let bad = forbidden(&g);
    assert_eq!(bad.len(), 2, "{bad:?}");
    let mut g = BTreeMap::new();
    g.insert("filter::chain".to_string(), set(&["filter::item"]));
    g.insert("filter::item".to_string(), set(&["filter::verdict"]));
    g.insert("filter::verdict".to_string(), set(&["filter::chain"]));
    assert!(cycle(&g).is_some());
    g.insert("filter::verdict".to_string(), set(&["filter"]));
    assert!(cycle(&g).is_none(), "a module's parent is not a peer");
}
