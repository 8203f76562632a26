//! The merged configuration as a tree that remembers which layer set each value.
//!
//! [`crate::sources`] builds one [`Node`] tree per layer (a file, an environment variable) and
//! merges them; the raw stage deserializes from the merged tree, and every later error looks a
//! field's path up in it to say where its value came from.

use std::collections::BTreeMap;

use config::{File, FileFormat, Source as _, ValueKind};

use crate::error::ConfigError;

/// Label of a value that no layer set: the field's built-in default.
pub(crate) const BUILT_IN: &str = "built-in default";
/// One value of the merged configuration and the layer that set it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) source: String,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Node {
    pub(crate) fn table(source: &str, entries: BTreeMap<String, Node>) -> Self {
        Self {
            value: Value::Table(entries),
            source: source.to_owned(),
        }
    }

    /// Converts a value parsed by the `config` crate, labelling every node with `source`.
    /// `null` table entries (YAML `~`, JSON `null`) are dropped: they mean "not set".
    pub(crate) fn from_config(value: config::Value, source: &str) -> Self {
        let value = match value.kind {
            ValueKind::Nil => Value::Nil,
            ValueKind::Boolean(b) => Value::Bool(b),
            ValueKind::I64(i) => Value::Int(i.into()),
            ValueKind::I128(i) => Value::Int(i),
            ValueKind::U64(u) => Value::Int(u.into()),
            ValueKind::U128(u) => {
                i128::try_from(u).map_or_else(|_| Value::Str(u.to_string()), Value::Int)
            }
            ValueKind::Float(f) => Value::Float(f),
            ValueKind::String(s) => Value::Str(s),
            ValueKind::Table(t) => return Self::table(source, Self::entries(t, source)),
            ValueKind::Array(items) => Value::List(
                items
                    .into_iter()
                    .map(|v| Self::from_config(v, source))
                    .collect(),
            ),
        };
        Self {
            value,
            source: source.to_owned(),
        }
    }

    pub(crate) fn entries(
        table: config::Map<String, config::Value>,
        source: &str,
    ) -> BTreeMap<String, Node> {
        table
            .into_iter()
            .filter(|(_, v)| !matches!(v.kind, ValueKind::Nil))
            .map(|(k, v)| (k, Self::from_config(v, source)))
            .collect()
    }

    /// Lays `top` over `self`: tables merge recursively (the table keeps the label of the
    /// layer that first declared it), anything else is replaced.
    pub(crate) fn merge(&mut self, top: Node) {
        match (&mut self.value, top.value) {
            (Value::Table(base), Value::Table(entries)) => {
                for (key, node) in entries {
                    match base.get_mut(&key) {
                        Some(existing) => existing.merge(node),
                        None => {
                            base.insert(key, node);
                        }
                    }
                }
            }
            (_, value) => {
                *self = Node {
                    value,
                    source: top.source,
                }
            }
        }
    }

    /// The node at a dotted path such as `backend_pools.chat.members[1]`.
    pub(crate) fn find(&self, path: &str) -> Option<&Node> {
        path.split('.').try_fold(self, |node, segment| {
            let (key, index) = match segment.split_once('[') {
                Some((key, rest)) => (key, rest.strip_suffix(']')?.parse::<usize>().ok()),
                None => (segment, None),
            };
            let Value::Table(entries) = &node.value else {
                return None;
            };
            let child = entries.get(key)?;
            match (index, &child.value) {
                (None, _) => Some(child),
                (Some(i), Value::List(items)) => items.get(i),
                // A list given as one comma-separated string: the string holds every element.
                (Some(_), _) => Some(child),
            }
        })
    }

    /// The label of the layer that set `path`, or [`BUILT_IN`] when no layer did.
    pub(crate) fn source_of(&self, path: &str) -> &str {
        self.find(path).map_or(BUILT_IN, |n| &n.source)
    }
}

/// Parses one inline TOML document, labelling every node with `source`.
pub(crate) fn parse_str(toml: &str, source: &str) -> Result<Node, ConfigError> {
    let map = File::from_str(toml, FileFormat::Toml)
        .collect()
        .map_err(|e| ConfigError::new("", describe(e), source))?;
    Ok(Node::table(source, Node::entries(map, source)))
}

/// The `config` crate's message without its trailing `" in <file>"` (the source label says that).
pub(crate) fn describe(error: config::ConfigError) -> String {
    match error {
        config::ConfigError::FileParse { cause, .. } => format!("cannot parse: {cause}"),
        config::ConfigError::Foreign(cause) => format!("cannot read: {cause}"),
        other => other.to_string(),
    }
}
