//! Source positions for configuration errors: turning parser errors into
//! [`ConfigError`]s, and mapping YAML paths (`routes[2].match.path_regex`) back
//! to the line they were written on.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use crate::error::ConfigError;

/// Longest message taken from the parser. Messages quote the offending value,
/// and a megabyte-long scalar must not become a megabyte-long error.
const MAX_MESSAGE_CHARS: usize = 300;

/// Turns a parse or type error from serde-saphyr into a [`ConfigError`] with
/// its line. serde-saphyr does not report the YAML path of such errors, so the
/// path is left empty.
pub(crate) fn serde_error(e: &serde_saphyr::Error) -> ConfigError {
    let inner = innermost(e);
    let message = match inner {
        serde_saphyr::Error::InvalidScalar { ty, .. } => scalar_message(ty),
        serde_saphyr::Error::UnknownAnchor { .. } => "alias refers to an unknown anchor".to_owned(),
        // The user formatter gives the bare sentence; `Display` would add a source
        // snippet and a "at line X, column Y" suffix that the line field already carries.
        other => clean_message(&UserMessageFormatter.format_message(other)),
    };
    let line = inner
        .location()
        .or_else(|| e.location())
        .map(|loc| loc.line())
        .filter(|&line| line > 0);
    ConfigError {
        path: String::new(),
        line,
        message,
    }
}

/// Unwraps the snippet and alias wrappers down to the error that says what is wrong.
fn innermost(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    loop {
        match e {
            serde_saphyr::Error::WithSnippet { error, .. }
            | serde_saphyr::Error::AliasError { error, .. } => e = error,
            other => return other,
        }
    }
}

/// serde-saphyr names the Rust type (`invalid u16`); say what to write instead.
fn scalar_message(ty: &str) -> String {
    let range = match ty {
        "u8" => Some(u64::from(u8::MAX)),
        "u16" => Some(u64::from(u16::MAX)),
        "u32" => Some(u64::from(u32::MAX)),
        "u64" | "usize" => Some(u64::MAX),
        _ => None,
    };
    match (range, ty) {
        (Some(max), _) => format!("expected a whole number from 0 to {max}"),
        (None, "bool") => "expected true or false".to_owned(),
        (None, t) if t.starts_with('i') => "expected a whole number".to_owned(),
        (None, t) if t.starts_with('f') => "expected a number".to_owned(),
        (None, t) => format!("invalid {t}"),
    }
}

/// First non-empty line, without control characters, capped in length.
fn clean_message(raw: &str) -> String {
    let line = raw
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML");
    let mut out: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if line.chars().count() > MAX_MESSAGE_CHARS {
        out.push_str("...");
    }
    out
}

/// Maps YAML paths to the 1-based line of the node they name.
///
/// Paths use the same syntax as [`ConfigError::path`]: mapping keys joined with
/// `.`, sequence items as `[i]`, e.g. `upstreams[0].targets[1].address`. For a
/// mapping entry the line is the key's line.
#[derive(Debug, Default)]
pub(crate) struct LineIndex {
    /// Path -> (line, column), both 1-based.
    positions: HashMap<String, (u64, u64)>,
}

impl LineIndex {
    /// Indexes `text`. Text that does not parse as YAML gives an empty index,
    /// in which every lookup returns `None`.
    pub(crate) fn build(text: &str) -> LineIndex {
        let mut index = LineIndex::default();
        // Parsing a second time is cheap for configuration-sized files, and keeps
        // the typed model free of span wrappers. Scalars are typeless here: a
        // `.nan` that is a fine string in the typed model must not fail the index.
        let options = serde_saphyr::options! {
            non_finite_float_policy: serde_saphyr::options::NonFiniteFloatPolicy::PassThrough,
        };
        if let Ok(root) = serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options) {
            let mut path = String::new();
            index.add(&mut path, &root);
        }
        index
    }

    /// Line of the node at `path`, or of its nearest ancestor that is in the
    /// document (a defaulted field points at the mapping that omits it).
    pub(crate) fn line(&self, path: &str) -> Option<u64> {
        self.position(path).map(|(line, _)| line)
    }

    /// Line and column of the node at `path`, with the same fallback as
    /// [`LineIndex::line`]. The column orders errors that share a line.
    pub(crate) fn position(&self, path: &str) -> Option<(u64, u64)> {
        let mut current = path;
        loop {
            if let Some(&pos) = self.positions.get(current) {
                return Some(pos);
            }
            current = parent(current)?;
        }
    }

    fn add(&mut self, path: &mut String, node: &Spanned<Node>) {
        // Keep the first position: a key's is recorded before its value's.
        self.record(path, &node.referenced);
        let base = path.len();
        match &node.value {
            Node::Scalar => {}
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    use fmt::Write as _;
                    let _ = write!(path, "[{i}]");
                    self.add(path, item);
                    path.truncate(base);
                }
            }
            Node::Map(entries) => {
                for (key, value) in entries {
                    let Some(name) = &key.value.0 else { continue };
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                    self.record(path, &key.referenced);
                    self.add(path, value);
                    path.truncate(base);
                }
            }
        }
    }

    fn record(&mut self, path: &str, loc: &serde_saphyr::Location) {
        let (line, column) = (loc.line(), loc.column());
        // Line 0 is serde-saphyr's "unknown".
        if line > 0 && !self.positions.contains_key(path) {
            self.positions.insert(path.to_owned(), (line, column));
        }
    }
}

/// The path one level up: `a.b[2]` -> `a.b` -> `a` -> `` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(&path[..path.rfind(['.', '[']).unwrap_or(0)])
}

/// A YAML node reduced to its shape: enough to know where each child is.
enum Node {
    Scalar,
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

/// A mapping key as text; `None` for keys that are not scalars.
struct Key(Option<String>);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // As a string, so that `y`, `on` or `0x1` keep their text instead of being
        // resolved to a boolean or a number, as the typed model sees them.
        d.deserialize_string(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
        Ok(Key(Some(v.to_string())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key(Some(v.to_owned())))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        Key::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        Key::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
a: 1
b:
  - x: 1
    y: [1, 2]
  - z
c: { d: e, f.g: h }
on: .nan
";

    #[test]
    fn maps_paths_to_lines() {
        let idx = LineIndex::build(DOC);
        assert_eq!(idx.line(""), Some(1));
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("b"), Some(2));
        assert_eq!(idx.line("b[0]"), Some(3));
        assert_eq!(idx.line("b[0].y"), Some(4));
        assert_eq!(idx.line("b[0].y[1]"), Some(4));
        assert_eq!(idx.line("b[1]"), Some(5));
        assert_eq!(idx.line("c.f.g"), Some(6));
        // Keys keep their text: `on` is not read as a boolean.
        assert_eq!(idx.line("on"), Some(7));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let idx = LineIndex::build(DOC);
        assert_eq!(idx.line("b[0].missing"), Some(3));
        assert_eq!(idx.line("b[7].x"), Some(2));
        assert_eq!(idx.line("c.nope.deeper[3]"), Some(6));
        assert_eq!(idx.line("zzz"), Some(1));
    }

    #[test]
    fn unparsable_text_gives_an_empty_index() {
        for text in ["", "a: [", "a: *nope", "\u{0}\u{1}", "? [a]\n: b\n"] {
            let idx = LineIndex::build(text);
            assert_eq!(idx.line("a"), idx.line(""), "{text:?}");
        }
        assert_eq!(LineIndex::build("a: [").line("a"), None);
        let deep = format!("a: {}{}", "[".repeat(5_000), "]".repeat(5_000));
        assert_eq!(LineIndex::build(&deep).line("a"), None);
    }

    #[test]
    fn positions_order_entries_on_one_line() {
        let idx = LineIndex::build("m: { b: 1, a: 2 }\n");
        assert_eq!(idx.position("m.b"), Some((1, 6)));
        assert_eq!(idx.position("m.a"), Some((1, 12)));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn serde_errors_are_one_clean_sentence() {
        let err = serde_saphyr::from_str::<crate::Config>("listeners: []\nbogus: 1\n").unwrap_err();
        let e = serde_error(&err);
        assert_eq!(e.line, Some(2));
        assert!(e.path.is_empty());
        assert!(
            e.message.starts_with("unknown field `bogus`"),
            "{}",
            e.message
        );
        assert!(!e.message.contains('\n') && !e.message.contains("line 2"));

        let err =
            serde_saphyr::from_str::<crate::Config>("runtime: { threads: x }\nlisteners: []\n")
                .unwrap_err();
        assert_eq!(
            serde_error(&err).message,
            format!("expected a whole number from 0 to {}", u64::MAX)
        );
    }

    #[test]
    fn long_messages_are_capped() {
        let msg = clean_message(&format!("\n  first {}\nsecond", "x".repeat(10_000)));
        assert!(msg.starts_with("first x") && msg.ends_with("...") && msg.len() < 400);
    }
}
