//! Key paths into the configuration document, displayed like
//! `pools.app.backends[1].weight`: how every error names its key.

use std::fmt;

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Idx(usize),
}

/// A path from the document root, displayed like `pools.app.backends[1].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a mapping key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    /// This path extended by a sequence index.
    pub(crate) fn idx(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Idx(index));
        KeyPath(segs)
    }

    /// This path extended by the path `serde_path_to_error` reports inside a piece.
    pub(crate) fn join(&self, inner: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut segs = self.0.clone();
        for seg in inner.iter() {
            match seg {
                Segment::Seq { index } => segs.push(Seg::Idx(*index)),
                Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                Segment::Enum { variant } => segs.push(Seg::Key(variant.clone())),
                Segment::Unknown => {}
            }
        }
        KeyPath(segs)
    }

    /// The steps from the root.
    pub(crate) fn segs(&self) -> &[Seg] {
        &self.0
    }

    /// The last mapping key of the path (`token_file` in `admin.token_file`).
    pub(crate) fn last_key(&self) -> &str {
        match self.0.last() {
            Some(Seg::Key(k)) => k,
            _ => "",
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Idx(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_dotted_paths() {
        let p = KeyPath::root()
            .key("pools")
            .key("app")
            .key("backends")
            .idx(1)
            .key("weight");
        assert_eq!(p.to_string(), "pools.app.backends[1].weight");
    }
}
