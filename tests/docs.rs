//! Documentation that cannot drift from the code.
//!
//! - `docs/config.md` documents exactly the keys of `proxy.yaml`. The set of keys
//!   is not a hand-kept list: it is read from the config types themselves, by
//!   probing. Every raw struct is `deny_unknown_fields`, so inserting an unknown
//!   key `zz_probe: 1` into a mapping makes `tether::config::parse` answer
//!   "unknown field `zz_probe`, expected one of `a`, `b`, ...": the struct's own
//!   field list. Each field found is then probed in turn as a mapping, as a map
//!   of names (`pools.<name>`) and as a list of mappings (`backends[]`), and
//!   whatever answers with its own field list is walked the same way. A field
//!   added to a raw struct therefore shows up here with no edit to this file.
//!
//! `contrib/grafana-tether.json` is checked by `tests/grafana.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::{Mapping, Value};

const DOC: &str = "docs/config.md";

/// The unknown key inserted into a mapping to make it list its fields.
const PROBE: &str = "zz_probe";
/// The entry name used for maps of named sections (`pools.<name>`).
const NAME: &str = "zz_name";

/// The document every probe starts from: one pool, one listener. The listener is
/// `https` (without its `tls:` section, an error that is not looked at) so that
/// its `tls.certs[]` entries are read; every other section is reached with any
/// protocol. The probes only look for the error at their own key: `parse`
/// reports every problem of a file, so the other errors do not hide it.
const PROBE_BASE: &str = "\
pools:
  app:
    backends:
      - { id: app-1, addr: \"127.0.0.1:9001\" }
listeners:
  - name: web
    bind: 127.0.0.1:8080
    protocol: https
    pool: app
    affinity:
      key: { cookie: { name: TETHER, insert: true } }
";

// --- key discovery ---------------------------------------------------------

/// One step of a key path.
#[derive(Clone, Debug)]
enum Seg {
    /// A struct field.
    Key(String),
    /// An entry of a map of named sections: `<name>` in docs, [`NAME`] in probes.
    Name,
    /// An item of a list: `[]` in docs, index 0 in probes.
    Item,
}

/// The path as the docs write it: `pools.<name>.backends[].addr`.
fn doc_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Name => out.push_str(".<name>"),
            Seg::Item => out.push_str("[]"),
        }
    }
    out
}

/// The path as config errors write it: `pools.zz_name.backends[0].addr`.
fn error_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(_) | Seg::Name => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(match s {
                    Seg::Key(k) => k,
                    _ => NAME,
                });
            }
            Seg::Item => out.push_str("[0]"),
        }
    }
    out
}

/// The YAML key or index of one step.
fn step<'a>(v: &'a mut Value, s: &Seg) -> &'a mut Value {
    match s {
        Seg::Key(_) | Seg::Name => {
            if !v.is_mapping() {
                *v = Value::Mapping(Mapping::new());
            }
            let key = Value::String(match s {
                Seg::Key(k) => k.clone(),
                _ => NAME.to_owned(),
            });
            let Value::Mapping(m) = v else { unreachable!() };
            if !m.contains_key(&key) {
                m.insert(key.clone(), Value::Null);
            }
            m.get_mut(&key).expect("just inserted")
        }
        Seg::Item => {
            if !matches!(v, Value::Sequence(items) if !items.is_empty()) {
                *v = Value::Sequence(vec![Value::Null]);
            }
            let Value::Sequence(items) = v else {
                unreachable!()
            };
            &mut items[0]
        }
    }
}

/// How a probe document is made.
#[derive(Clone, Copy)]
enum Context {
    /// `zz_probe: 1` inserted into the mapping at the path, next to what the base
    /// document already has there (so required siblings are present).
    Kept,
    /// The mapping holding the last step replaced by that step alone: for
    /// one-of mappings like `affinity.key`, where a second entry is an error of
    /// its own before the entry is read.
    Alone,
}

/// The base document with `zz_probe: 1` at `segs`.
fn probe_doc(base: &Value, segs: &[Seg], ctx: Context) -> Value {
    let mut doc = base.clone();
    let mut at = &mut doc;
    for (i, s) in segs.iter().enumerate() {
        if i + 1 == segs.len() {
            if let (Context::Alone, Seg::Key(_) | Seg::Name) = (ctx, s) {
                *at = Value::Mapping(Mapping::new());
            }
        }
        at = step(at, s);
    }
    let mut probe = Mapping::new();
    probe.insert(Value::String(PROBE.into()), Value::from(1));
    match at {
        Value::Mapping(m) => {
            m.insert(Value::String(PROBE.into()), Value::from(1));
        }
        other => *other = Value::Mapping(probe),
    }
    doc
}

/// The names listed after "expected" in an unknown-key message:
/// serde's `unknown field `x`, expected one of `a`, `b``, `expected `a``,
/// `there are no fields`, and tether's own messages in the same form.
pub fn expected_fields(message: &str) -> Option<Vec<String>> {
    let rest = message.strip_prefix("unknown ")?;
    if rest.starts_with("variant") {
        return None; // an enum given a mapping: a value, not a section
    }
    if message.contains("there are no fields") {
        return Some(Vec::new());
    }
    let (_, list) = rest.split_once("expected")?;
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .filter(|f| *f != PROBE)
            // field names only, not a pointer like `docs/config.md` after the list
            .filter(|f| f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .map(str::to_owned)
            .collect(),
    )
}

/// The field list of the mapping at `segs`, if it is one: the probe's error
/// at `segs.zz_probe`.
fn fields_at(base: &Value, segs: &[Seg]) -> Option<Vec<String>> {
    let mut at = segs.to_vec();
    at.push(Seg::Key(PROBE.into()));
    let want = error_path(&at);
    for ctx in [Context::Kept, Context::Alone] {
        let text = serde_yaml::to_string(&probe_doc(base, segs, ctx)).expect("yaml");
        let Err(errors) = tether::config::parse(Path::new("probe.yaml"), &text) else {
            continue;
        };
        let found = errors
            .iter()
            .filter(|e| e.path == want)
            .find_map(|e| expected_fields(&e.message));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Every key path of `proxy.yaml`, in doc form, read from the config types.
pub fn discover_keys() -> BTreeSet<String> {
    let base: Value = serde_yaml::from_str(PROBE_BASE).expect("probe base");
    let mut keys = BTreeSet::new();
    let top = fields_at(&base, &[]).expect("the top level lists its keys");
    walk(&base, &[], top, &mut keys);
    keys
}

fn walk(base: &Value, segs: &[Seg], fields: Vec<String>, keys: &mut BTreeSet<String>) {
    assert!(
        segs.len() < 12,
        "runaway key discovery at {}",
        doc_path(segs)
    );
    for f in fields {
        let mut here = segs.to_vec();
        here.push(Seg::Key(f));
        keys.insert(doc_path(&here));
        // A struct, a map of named structs, or a list of structs; else a value.
        for tail in [vec![], vec![Seg::Name], vec![Seg::Item]] {
            let mut inner = here.clone();
            inner.extend(tail.iter().cloned());
            if let Some(sub) = fields_at(base, &inner) {
                if matches!(tail.first(), Some(Seg::Name)) {
                    keys.insert(doc_path(&inner));
                }
                walk(base, &inner, sub, keys);
                break;
            }
        }
    }
}

// --- the docs check -------------------------------------------------------

/// Key paths `docs/config.md` defines: the first cell of a table row, written
/// as one backticked path. Returns (path, line number, cells).
fn defined_rows(doc: &str) -> Vec<(String, usize, Vec<String>)> {
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_owned())
            .collect();
        let first = &cells[0];
        if let Some(path) = first
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|p| !p.contains('`'))
        {
            out.push((path.to_owned(), i + 1, cells));
        }
    }
    out
}

/// Whether `token` has the shape of a key path under one of the `tops`.
fn looks_like_key(token: &str, tops: &BTreeSet<&str>) -> bool {
    let head = token.split(['.', '[']).next().unwrap_or_default();
    let shaped = token
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]<>".contains(c));
    shaped && tops.contains(head) && (token == head || token[head.len()..].starts_with(['.', '[']))
}

/// Every problem of `doc` against the discovered `keys`; empty when the doc is
/// complete and holds nothing stale. Rules: each key has a table row whose
/// first cell is the backticked full path, with type, default, meaning and
/// example cells; every backticked key path anywhere in the doc (prose and
/// headings too, and the left side of `key: value` snippets) must exist.
pub fn doc_problems(keys: &BTreeSet<String>, doc: &str) -> Vec<String> {
    let tops: BTreeSet<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !k.contains(['.', '[']))
        .collect();
    let mut problems = Vec::new();
    let rows = defined_rows(doc);
    let mut defined: BTreeMap<&str, usize> = BTreeMap::new();
    for (path, line, cells) in &rows {
        if !looks_like_key(path, &tops) {
            continue;
        }
        if let Some(first) = defined.insert(path, *line) {
            problems.push(format!(
                "`{path}` has two rows (lines {first} and {line}) in {DOC}: keep one"
            ));
        }
        if cells.len() < 5 || cells.iter().any(|c| c.is_empty()) {
            problems.push(format!(
                "`{path}` (line {line}): its row needs every column filled: | key | type | default | meaning | example |"
            ));
        }
    }
    for key in keys {
        if !defined.contains_key(key.as_str()) {
            problems.push(format!(
                "`{key}` is a config key but is undocumented: document it in {DOC} \
                 (add a row: | `{key}` | type | default | meaning | example |)"
            ));
        }
    }
    // Prose may also name a list item as a whole, like `listeners[]`.
    let known: BTreeSet<&str> = keys
        .iter()
        .flat_map(|k| {
            let ends = k.match_indices('.').map(|(i, _)| i).chain([k.len()]);
            ends.map(move |i| &k[..i])
        })
        .collect();
    let mut stale = BTreeSet::new();
    for (path, line, _) in &rows {
        if looks_like_key(path, &tops) && !keys.contains(path) && stale.insert(path.as_str()) {
            problems.push(format!(
                "`{path}` (line {line}) is documented in {DOC} but is not a config key: \
                 remove it or fix its name"
            ));
        }
    }
    for (i, line) in doc.lines().enumerate() {
        for token in line.split('`').skip(1).step_by(2) {
            // `store.kind: redis` names the key `store.kind`
            let path = token.split(':').next().unwrap_or_default().trim();
            if looks_like_key(path, &tops) && !known.contains(path) && stale.insert(path) {
                problems.push(format!(
                    "`{path}` (line {}) is documented in {DOC} but is not a config key: \
                     remove it or fix its name",
                    i + 1
                ));
            }
        }
    }
    problems
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn config_reference_documents_every_key_and_nothing_else() {
    let keys = discover_keys();
    let problems = doc_problems(&keys, &read(DOC));
    assert!(
        problems.is_empty(),
        "{DOC} does not match the config types ({} problems); every key found in the code:\n{}\n\nproblems:\n- {}",
        problems.len(),
        keys.iter().cloned().collect::<Vec<_>>().join("\n"),
        problems.join("\n- ")
    );
}

/// The discovery walks every kind of nesting: structs, maps of names, lists
/// of structs, one-of mappings (key forms) and sections absent from the base.
#[test]
fn discovery_reaches_every_kind_of_section() {
    let keys = discover_keys();
    for want in [
        "admin.listen",
        "server.trusted_proxies",
        "store.redis.sentinel.nodes",
        "vip.address",
        "pools",
        "pools.<name>",
        "pools.<name>.health.passive.on_5xx",
        "pools.<name>.timeouts.connect",
        "pools.<name>.notify.webhook",
        "pools.<name>.tls.sni",
        "pools.<name>.backends[].addr",
        "listeners[].timeouts.idle",
        "listeners[].tls.certs[].key",
        "listeners[].affinity.key.cookie.secret_file",
        "listeners[].affinity.key.header",
        "listeners[].affinity.key.source_ip.ipv6_mask",
        "listeners[].affinity.key.prefix.pattern",
        "listeners[].affinity.fallback",
    ] {
        assert!(keys.contains(want), "{want} not discovered in:\n{keys:#?}");
    }
    // leaves are values, not sections
    assert!(!keys.iter().any(|k| k.starts_with("pools.<name>.hash.")));
    assert!(!keys
        .iter()
        .any(|k| k.contains("[].") && k.starts_with("server.")));
}

/// The key paths used in a YAML document, in doc form (`pools.<name>...`,
/// `listeners[]...`): a map of names is one whose `<name>` path is a key.
fn yaml_paths(v: &Value, path: &str, keys: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            let named = format!("{path}.<name>");
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?");
                let p = match () {
                    _ if keys.contains(&named) => named.clone(),
                    _ if path.is_empty() => k.to_owned(),
                    _ => format!("{path}.{k}"),
                };
                out.insert(p.clone());
                yaml_paths(v, &p, keys, out);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                yaml_paths(item, &format!("{path}[]"), keys, out);
            }
        }
        _ => {}
    }
}

/// A safety net for the discovery: a section it could not open would hide its
/// keys. Every key written in the shipped `proxy.yaml` and in the YAML examples
/// of the README and docs must have been found.
#[test]
fn discovery_finds_every_key_of_the_shipped_examples() {
    let keys = discover_keys();
    let mut found = BTreeSet::new();
    let doc: Value = serde_yaml::from_str(&read("proxy.yaml")).expect("proxy.yaml");
    yaml_paths(&doc, "", &keys, &mut found);
    let mut examples = 0;
    for file in ["README.md", "docs/operations.md", DOC] {
        for block in read(file).split("```yaml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            if let Ok(doc) = serde_yaml::from_str::<Value>(block) {
                yaml_paths(&doc, "", &keys, &mut found);
                examples += 1;
            }
        }
    }
    assert!(examples > 0, "no YAML example found in the README");
    assert!(found.len() > 40, "proxy.yaml uses more keys than {found:?}");
    let missed: Vec<&String> = found.difference(&keys).collect();
    assert!(
        missed.is_empty(),
        "keys written in proxy.yaml or a YAML example that the discovery did not find: {missed:?}"
    );
}

// --- the check itself, on fake inputs ---------------------------------------

/// A stand-in raw section with a brand-new field, as a developer would add one.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct FakeAdmin {
    listen: Option<String>,
    token_file: Option<String>,
    brand_new: Option<bool>,
}

const FAKE_DOC: &str = "\
| key | type | default | meaning | example |
| --- | --- | --- | --- | --- |
| `admin` | mapping | see below | the admin listener | `admin: { listen: 127.0.0.1:9090 }` |
| `admin.listen` | ip:port | `127.0.0.1:9090` | where the admin API listens | `listen: 127.0.0.1:9090` |
| `admin.token_file` | path | none | the bearer token | `token_file: admin-token` |
";

fn fake_keys() -> BTreeSet<String> {
    let err = serde_yaml::from_str::<FakeAdmin>("zz_probe: 1").unwrap_err();
    let fields = expected_fields(&err.to_string()).expect("serde lists the fields");
    std::iter::once("admin".to_owned())
        .chain(fields.iter().map(|f| format!("admin.{f}")))
        .collect()
}

#[test]
fn a_new_undocumented_field_fails_the_check_by_name() {
    let keys = fake_keys();
    assert!(keys.contains("admin.brand_new"), "{keys:?}");
    let problems = doc_problems(&keys, FAKE_DOC);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("`admin.brand_new`"), "{problems:#?}");
    assert!(
        problems[0].contains("document it in docs/config.md"),
        "{problems:#?}"
    );
    // documented: passes
    let doc = format!(
        "{FAKE_DOC}| `admin.brand_new` | bool | `false` | something new | `brand_new: true` |\n"
    );
    assert_eq!(doc_problems(&keys, &doc), Vec::<String>::new());
}

#[test]
fn a_stale_or_half_documented_key_fails_the_check() {
    let keys = fake_keys();
    let full = format!(
        "{FAKE_DOC}| `admin.brand_new` | bool | `false` | something new | `brand_new: true` |\n"
    );
    // a row for a key the code does not have
    let doc = format!("{full}| `admin.old_name` | bool | `false` | gone | `old_name: true` |\n");
    let problems = doc_problems(&keys, &doc);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("`admin.old_name`") && problems[0].contains("not a config key"));
    // a stale path in prose, also as `key: value`
    let doc = format!("{full}\nSet `admin.listen_addr: 0.0.0.0:9090` to expose it.\n");
    let problems = doc_problems(&keys, &doc);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("`admin.listen_addr`"), "{problems:#?}");
    // a row without its example, and a key documented twice
    let doc = full.replace(" | `brand_new: true` |", " | |")
        + "| `admin.listen` | ip:port | x | again | `listen: x` |\n";
    let problems = doc_problems(&keys, &doc);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    // other backticked text is not taken for keys
    let doc =
        format!("{full}\nDurations like `500ms`; `kind: redis`; `tether check`; `admin-token`.\n");
    assert_eq!(doc_problems(&keys, &doc), Vec::<String>::new());
}

#[test]
fn expected_fields_reads_every_message_form() {
    let f = |m: &str| expected_fields(m);
    assert_eq!(
        f("unknown field `zz_probe`, expected one of `a`, `b_c`"),
        Some(vec!["a".into(), "b_c".into()])
    );
    assert_eq!(
        f("unknown field `zz_probe`, expected `a`"),
        Some(vec!["a".into()])
    );
    assert_eq!(
        f("unknown field `zz_probe`, there are no fields"),
        Some(vec![])
    );
    assert_eq!(
        f("unknown key kind `zz_probe`, expected one of `cookie`, `sni`"),
        Some(vec!["cookie".into(), "sni".into()])
    );
    assert_eq!(
        f("unknown field `zz_probe`, expected `a` or `b` (see `docs/config.md`)"),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(f("unknown variant `zz_probe`, expected `v1` or `v2`"), None);
    assert_eq!(f("invalid type: map, expected a string"), None);
}
