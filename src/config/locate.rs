//! Where things are in `proxy.yaml`: the position index (key path -> line:col)
//! built from `yaml-rust2`'s marked event stream.
//!
//! `serde_yaml::Value` forgets positions, so every error found while converting
//! a value is located afterwards by looking its key path up here.

use std::collections::HashMap;

use yaml_rust2::parser::{MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::Event;

pub(crate) use super::keypath::KeyPath;

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
    map: HashMap<KeyPath, Entry>,
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
        Index { map: builder.map }
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
        let mut cur = Some(path.clone());
        while let Some(p) = cur {
            if let Some(e) = self.map.get(&p) {
                return pick(e);
            }
            cur = p.parent();
        }
        Pos::START
    }
}

enum Frame {
    /// `first`: no key seen yet. A block mapping's start mark is the `:` after
    /// its first key, so the mapping is relocated to that key when it arrives.
    Map {
        path: KeyPath,
        state: MapState,
        first: bool,
    },
    Seq {
        path: KeyPath,
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

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: HashMap<KeyPath, Entry>,
}

/// A key that is never looked up (mapping keys that are themselves collections).
const COMPLEX_KEY: &str = "\u{0}complex-key";

impl Builder {
    /// Registers a node starting at `pos` and returns its path. Mapping keys are
    /// not registered themselves: their mapping remembers them for the value.
    fn node(&mut self, pos: Pos, scalar: Option<&str>, scalar_node: bool) -> KeyPath {
        let (path, key) = match self.stack.last_mut() {
            None => (KeyPath::root(), pos),
            Some(Frame::Seq { path, next }) => {
                *next += 1;
                (path.idx(*next - 1), pos)
            }
            Some(Frame::Map { path, state, first }) => {
                match std::mem::replace(state, MapState::Key) {
                    MapState::Key => {
                        if std::mem::take(first) {
                            if let Some(e) = self.map.get_mut(path) {
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
                        return path.key(COMPLEX_KEY);
                    }
                    MapState::ComplexKey(p) => {
                        *state = MapState::ComplexKey(p);
                        return path.key(COMPLEX_KEY);
                    }
                    MapState::Value(k, kpos) => (path.key(&k), kpos),
                }
            }
        };
        let entry = Entry {
            key,
            value: pos,
            scalar: scalar_node,
        };
        self.map.entry(path.clone()).or_insert(entry);
        path
    }

    fn end_collection(&mut self) {
        self.stack.pop();
        if let Some(Frame::Map { state, .. }) = self.stack.last_mut() {
            if let MapState::ComplexKey(p) = *state {
                *state = MapState::Value(COMPLEX_KEY.to_owned(), p);
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, ..) => {
                self.node(pos, Some(&text), true);
            }
            Event::Alias(_) => {
                self.node(pos, Some(""), true);
            }
            Event::MappingStart(..) => {
                let path = self.node(pos, None, false);
                self.stack.push(Frame::Map {
                    path,
                    state: MapState::Key,
                    first: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.node(pos, None, false);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
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
    }
}
