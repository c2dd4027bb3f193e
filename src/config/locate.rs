//! Where things are in `proxy.yaml`: the position index (key path -> line:col)
//! built from `yaml-rust2`'s marked event stream, and the bound on how far
//! aliases may expand the document.
//!
//! `serde_yaml::Value` forgets positions, so every error found while converting
//! a value is located afterwards by looking its key path up here.
//!
//! The index is a tree of single steps (`(parent, key or index) -> node`), not
//! a map of whole paths: a map of paths holds every ancestor key once per
//! descendant, which made a 40 KB file of one long key over many items take
//! 200 MB (found by the property tests, tests/props/yaml_shapes.rs).

use std::collections::HashMap;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::Event;

pub(crate) use super::keypath::KeyPath;
use super::keypath::Seg;

/// Nodes the aliases of a document may add beyond `ALIAS_FACTOR` times its
/// own. `serde_yaml` expands every alias into a copy; its own repetition
/// limit (100 jumps per event) still lets a 10 KB file of `*a` references to
/// a long anchor become 300 MB of values.
pub(crate) const ALIAS_SLACK: usize = 10_000;
pub(crate) const ALIAS_FACTOR: usize = 4;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, col: 1 };

    fn from_marker(m: Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The key (for sequence items: the item itself).
    key: Pos,
    /// Where the value starts.
    value: Pos,
    /// Whether the value is a scalar (errors about scalars point at the value).
    scalar: bool,
}

/// Key path -> position of every node in the document.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// `(parent, step) -> node`; node 0 is the document root.
    children: HashMap<(usize, Seg), usize>,
    /// Each node's position; `None` for nodes only passed through (the
    /// placeholder under which collection-valued keys are indexed).
    entries: Vec<Option<Entry>>,
    /// Where aliases took the document past its bound, if they did.
    alias_overflow: Option<Pos>,
}

impl Index {
    /// Indexes `text`; a document `yaml-rust2` cannot read yields an empty index
    /// (every lookup then answers 1:1), since `serde_yaml` has already accepted it.
    pub(crate) fn build(text: &str) -> Index {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Index::default();
        }
        let mut index = builder.index;
        index.alias_overflow = builder.aliases.overflow;
        index
    }

    /// The alias that makes the document expand past
    /// `ALIAS_FACTOR * nodes + ALIAS_SLACK` nodes, to be refused before
    /// `serde_yaml` copies it out.
    pub(crate) fn alias_overflow(&self) -> Option<Pos> {
        self.alias_overflow
    }

    /// Where an error about `path` belongs: the value for scalars, the key for
    /// mappings and sequences; the nearest known ancestor when `path` is absent.
    pub(crate) fn pos(&self, path: &KeyPath) -> Pos {
        self.find(path, |e| if e.scalar { e.value } else { e.key })
    }

    /// The position of the key itself (unknown keys, duplicates of a name).
    pub(crate) fn key_pos(&self, path: &KeyPath) -> Pos {
        self.find(path, |e| e.key)
    }

    fn find(&self, path: &KeyPath, pick: impl Fn(&Entry) -> Pos) -> Pos {
        let mut best = self.entries.first().copied().flatten();
        let mut node = 0;
        for seg in path.segs() {
            match self.children.get(&(node, seg.clone())) {
                Some(&child) => node = child,
                None => break,
            }
            if let Some(e) = self.entries[node] {
                best = Some(e);
            }
        }
        best.as_ref().map_or(Pos::START, pick)
    }

    /// The node for `step` under `parent`, created if new.
    fn child(&mut self, parent: usize, step: Seg) -> usize {
        let next = self.entries.len();
        let id = *self.children.entry((parent, step)).or_insert(next);
        if id == next {
            self.entries.push(None);
        }
        id
    }
}

enum Frame {
    /// `first`: no key seen yet. A block mapping's start mark is the `:` after
    /// its first key, so the mapping is relocated to that key when it arrives.
    Map {
        node: usize,
        state: MapState,
        first: bool,
    },
    Seq {
        node: usize,
        next: usize,
    },
}

enum MapState {
    /// The next node is a key.
    Key,
    /// The key was not a scalar; it is being skipped.
    ComplexKey(Pos),
    /// The next node is the value of this key.
    Value(String, Pos),
}

/// Counts nodes as written and as `serde_yaml` will expand them.
#[derive(Default)]
struct Aliases {
    written: usize,
    expanded: usize,
    /// Anchor id -> expanded size of its node.
    sizes: HashMap<usize, usize>,
    /// Per open collection: its anchor id (0: none) and `expanded` at its start.
    open: Vec<(usize, usize)>,
    overflow: Option<Pos>,
}

impl Aliases {
    fn add(&mut self, written: usize, expanded: usize, pos: Pos) {
        self.written += written;
        self.expanded = self.expanded.saturating_add(expanded);
        let limit = ALIAS_FACTOR
            .saturating_mul(self.written)
            .saturating_add(ALIAS_SLACK);
        if self.overflow.is_none() && self.expanded > limit {
            self.overflow = Some(pos);
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: Index,
    aliases: Aliases,
}

/// A key that is never looked up (mapping keys that are themselves collections).
const COMPLEX_KEY: &str = "\u{0}complex-key";

impl Builder {
    /// Registers a node starting at `pos` and returns it. Mapping keys are
    /// not registered themselves: their mapping remembers them for the value
    /// (`None` for scalar keys; collection keys are indexed under a placeholder).
    fn node(&mut self, pos: Pos, scalar: Option<&str>, scalar_node: bool) -> Option<usize> {
        let Builder { stack, index, .. } = self;
        let (parent, step, key) = match stack.last_mut() {
            None => {
                if index.entries.is_empty() {
                    index.entries.push(None);
                }
                index.entries[0].get_or_insert(Entry {
                    key: pos,
                    value: pos,
                    scalar: scalar_node,
                });
                return Some(0);
            }
            Some(Frame::Seq { node, next }) => {
                *next += 1;
                (*node, Seg::Idx(*next - 1), pos)
            }
            Some(Frame::Map { node, state, first }) => {
                match std::mem::replace(state, MapState::Key) {
                    MapState::Key => {
                        if std::mem::take(first) {
                            if let Some(e) = &mut index.entries[*node] {
                                if (pos.line, pos.col) < (e.value.line, e.value.col) {
                                    if e.key == e.value {
                                        e.key = pos;
                                    }
                                    e.value = pos;
                                }
                            }
                        }
                        *state = match scalar {
                            Some(k) => MapState::Value(k.to_owned(), pos),
                            None => MapState::ComplexKey(pos),
                        };
                        let parent = *node;
                        return scalar
                            .is_none()
                            .then(|| index.child(parent, Seg::Key(COMPLEX_KEY.to_owned())));
                    }
                    MapState::ComplexKey(p) => {
                        *state = MapState::ComplexKey(p);
                        let parent = *node;
                        return Some(index.child(parent, Seg::Key(COMPLEX_KEY.to_owned())));
                    }
                    MapState::Value(k, kpos) => (*node, Seg::Key(k), kpos),
                }
            }
        };
        let id = index.child(parent, step);
        index.entries[id].get_or_insert(Entry {
            key,
            value: pos,
            scalar: scalar_node,
        });
        Some(id)
    }

    fn end_collection(&mut self) {
        self.stack.pop();
        if let Some(Frame::Map { state, .. }) = self.stack.last_mut() {
            if let MapState::ComplexKey(p) = *state {
                *state = MapState::Value(COMPLEX_KEY.to_owned(), p);
            }
        }
        if let Some((anchor, start)) = self.aliases.open.pop() {
            if anchor != 0 {
                let size = self.aliases.expanded - start;
                self.aliases.sizes.insert(anchor, size);
            }
        }
    }

    /// A collection starts: registered, then pushed as the parent of what follows.
    fn start(&mut self, pos: Pos, anchor: usize, seq: bool) {
        self.aliases.open.push((anchor, self.aliases.expanded));
        self.aliases.add(1, 1, pos);
        // `node` always answers for a collection (`None` is for scalar keys).
        let node = self.node(pos, None, false).unwrap_or(0);
        self.stack.push(if seq {
            Frame::Seq { node, next: 0 }
        } else {
            Frame::Map {
                node,
                state: MapState::Key,
                first: true,
            }
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, _, anchor, _) => {
                self.aliases.add(1, 1, pos);
                if anchor != 0 {
                    self.aliases.sizes.insert(anchor, 1);
                }
                self.node(pos, Some(&text), true);
            }
            Event::Alias(anchor) => {
                // An alias to a node still open (a loop) counts as one node:
                // serde_yaml refuses those itself.
                let size = self.aliases.sizes.get(&anchor).copied().unwrap_or(1);
                self.aliases.add(1, size, pos);
                self.node(pos, Some(""), true);
            }
            Event::MappingStart(anchor, _) => self.start(pos, anchor, false),
            Event::SequenceStart(anchor, _) => self.start(pos, anchor, true),
            Event::MappingEnd | Event::SequenceEnd => self.end_collection(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "a:\n  b: 1\n  list:\n    - { id: x, n: 2 }\n    - y\n    - k: v\nc: [1, 2]\n";

    fn at(line: usize, col: usize) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn positions_are_one_based() {
        let idx = Index::build(DOC);
        let a = KeyPath::root().key("a");
        assert_eq!(idx.key_pos(&a), at(1, 1));
        assert_eq!(idx.pos(&a.key("b")), at(2, 6));
        assert_eq!(idx.key_pos(&a.key("b")), at(2, 3));
        let item = a.key("list").idx(0);
        assert_eq!(idx.pos(&item.key("n")), at(4, 19));
        assert_eq!(idx.key_pos(&item.key("id")), at(4, 9));
        assert_eq!(idx.pos(&a.key("list").idx(1)), at(5, 7));
        assert_eq!(idx.pos(&KeyPath::root().key("c").idx(1)), at(7, 8));
        // Block mappings are located at their first key, not at its `:`.
        assert_eq!(idx.pos(&KeyPath::root()), at(1, 1));
        assert_eq!(idx.pos(&a.key("list").idx(2)), at(6, 7));
        assert_eq!(idx.pos(&item), at(4, 7));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(idx.pos(&item.key("missing")), idx.pos(&item));
        assert_eq!(idx.pos(&item.key("missing").idx(3)), idx.pos(&item));
    }

    #[test]
    fn aliases_are_counted_as_expanded() {
        let refs = |n: usize| vec!["*a"; n].join(", ");
        let items = vec!["x"; 1000].join(", ");
        // 1000 references to 1001 nodes: a million nodes once copied out.
        let idx = Index::build(&format!("a: &a [{items}]\nb: [{}]\n", refs(1000)));
        let at = idx.alias_overflow().expect("refused");
        assert_eq!(at.line, 2);
        // A few references expand by less than the slack.
        let idx = Index::build(&format!("a: &a [{items}]\nb: [{}]\n", refs(5)));
        assert_eq!(idx.alias_overflow(), None);
        // Nested fan-out counts each level's expanded size.
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n\
                      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                      e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        assert_eq!(
            Index::build(laughs).alias_overflow().map(|p| p.line),
            Some(4)
        );
    }
}
