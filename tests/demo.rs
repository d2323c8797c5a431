//! The README's first command must keep working.

mod common;

#[test]
fn demo_runs_and_verifies_itself() {
    let o = std::process::Command::new(common::BIN)
        .args(["demo", "--events", "600", "--show", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("security: 600 of 600 events, same order as written: yes"),
        "{out}"
    );
    assert!(out.contains("output owner"), "{out}");
    // The owner's output gets every event its policy keeps, in order.
    let owner = out
        .lines()
        .find(|l| l.trim_start().starts_with("owner:"))
        .unwrap_or_else(|| panic!("{out}"));
    let counts: Vec<usize> = owner
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[0] > 0,
        "{owner}"
    );
    assert!(owner.contains("same order as written: yes"), "{owner}");
    // The example filter is built by scripts/test-all.sh; run from the
    // crate root, the demo finds it.
    assert!(
        out.contains("with the WebAssembly filter") && !out.contains("from the WASM filter: 0"),
        "{out}"
    );
}
