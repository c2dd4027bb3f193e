//! Config loading from YAML built to stress the loader rather than mutated
//! from a valid file: deep nesting, one long key over many items, anchors
//! referenced many times, nested alias fan-out, merges. Loading must stay
//! linear in the file (`config_bound`) and answer with located errors.
//!
//! Two of these were quadratic before: the position index held every node's
//! whole key path (a 40 KB file of one long explicit key over 10 000 items
//! took 206 MB and 2.6 s), and serde_yaml copies every alias out (a 10 KB
//! file of 2 000 `*a` references to a 2 000-item anchor took 300 MB). The
//! index now stores single steps, and a file whose aliases expand past
//! 4 times its own nodes plus 10 000 is refused before serde_yaml sees it.

use std::path::Path;

use proptest::prelude::*;
use tether::config;

use crate::config::{check_located, config_bound};
use crate::peak;

fn list(item: &str, n: usize) -> String {
    vec![item; n].join(", ")
}

/// Under which top-level key a shape is put: a known section (converted
/// and checked) or an unknown one (reported and skipped).
fn at(top: &str, body: &str) -> String {
    format!("{top}:\n{body}")
}

fn deep(depth: usize, items: usize) -> String {
    format!(
        "pools: {}{}{}\n",
        "[".repeat(depth),
        list("x", items),
        "]".repeat(depth)
    )
}

fn long_key(top: &str, key: usize, items: usize) -> String {
    at(
        top,
        &format!("  ? {}\n  : [{}]\n", "k".repeat(key), list("x", items)),
    )
}

fn wide_alias(anchor: usize, refs: usize) -> String {
    format!(
        "pools:\n  a: &a [{}]\n  b: [{}]\n",
        list("x", anchor),
        list("*a", refs)
    )
}

/// `levels` anchors, each a list of `fan` references to the one before.
fn laughs(levels: usize, fan: usize) -> String {
    let mut t = String::from("pools:\n  l0: &l0 [x]\n");
    for i in 1..levels {
        t.push_str(&format!(
            "  l{i}: &l{i} [{}]\n",
            list(&format!("*l{}", i - 1), fan)
        ));
    }
    t
}

fn merges(keys: usize, pools: usize) -> String {
    let base: Vec<String> = (0..keys).map(|i| format!("k{i}: {i}")).collect();
    let mut t = format!("pools:\n  p0: &base {{ {} }}\n", base.join(", "));
    for i in 1..pools {
        t.push_str(&format!("  p{i}: {{ <<: *base, n: {i} }}\n"));
    }
    t
}

/// A flow mapping of bare keys: one byte of text per node.
fn bare_keys(n: usize) -> String {
    format!("pools: {{{}}}\n", list("a", n).replace(' ', ""))
}

fn shape() -> impl Strategy<Value = String> {
    let top = prop_oneof![Just("pools"), Just("listeners"), Just("zz")];
    prop_oneof![
        (1usize..120, 1usize..3000).prop_map(|(d, n)| deep(d, n)),
        (top, 1usize..12_000, 1usize..3000).prop_map(|(t, k, n)| long_key(t, k, n)),
        (1usize..2000, 1usize..2000).prop_map(|(a, r)| wide_alias(a, r)),
        (2usize..9, 2usize..10).prop_map(|(l, f)| laughs(l, f)),
        (1usize..60, 1usize..200).prop_map(|(k, p)| merges(k, p)),
        (1usize..10_000).prop_map(bare_keys),
    ]
}

/// Parses `text`, checks its bound and locations; returns the errors' text.
fn load(text: &str) -> Result<String, TestCaseError> {
    let file = Path::new("shapes.yaml");
    let (r, used) = peak(|| config::parse(file, text));
    check_located(text, file, &r)?;
    prop_assert!(
        used <= config_bound(text.len()),
        "{} bytes for {}",
        used,
        text.len()
    );
    Ok(r.err().map(|e| e.to_string()).unwrap_or_default())
}

proptest! {
    #![proptest_config(crate::config(24))]

    #[test]
    fn stressful_shapes_load_in_linear_memory(text in shape()) {
        load(&text)?;
    }
}

fn must(r: Result<String, TestCaseError>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn regression_one_long_key_over_many_items() {
    // was 206 MB for these 40 KB
    must(load(&long_key("pools", 20_000, 10_000)));
    must(load(&deep(100, 5000)));
}

#[test]
fn regression_aliases_copied_out() {
    // was 300 MB for these 10 KB, and 9 MB for the 218 bytes of laughs
    let e = must(load(&wide_alias(2000, 2000)));
    assert!(e.contains("aliases expand the document"), "{e}");
    assert!(
        e.starts_with("shapes.yaml:3:"),
        "at the reference that crosses: {e}"
    );
    let e = must(load(&laughs(6, 10)));
    assert!(e.contains("aliases expand the document"), "{e}");
}

#[test]
fn ordinary_anchors_and_merges_still_load() {
    let mut pools = String::from(
        "pools:\n  p0: &pool\n    hash: ketama\n    drain_timeout: 1m\n    health: &h { kind: tcp, interval: 2s, timeout: 1s }\n    backends: [{ id: b0, addr: \"127.0.0.1:9000\" }]\n",
    );
    for i in 1..40 {
        pools.push_str(&format!(
            "  p{i}:\n    <<: *pool\n    health: *h\n    backends: [{{ id: b{i}, addr: \"127.0.0.1:{}\" }}]\n",
            9000 + i
        ));
    }
    let text = format!("{pools}listeners:\n  - {{ name: web, bind: \"127.0.0.1:8080\", pool: p1, affinity: {{ key: source_ip }} }}\n");
    let snap = config::parse(Path::new("anchors.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools.len(), 40);
}
