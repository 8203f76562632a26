//! A serde [`Deserializer`] over the merged [`Node`] tree.
//!
//! Unlike deserializing a flat value, it knows at every step the field path and the layer
//! that set the value, so each error it produces is a located [`ConfigError`]. Its error
//! type also overrides serde's `unknown_field`/`unknown_variant` hooks to add a
//! "did you mean" hint.

use std::collections::btree_map;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Unexpected, Visitor};

use crate::error::{did_you_mean, unknown_field, ConfigError};
use crate::tree::{Node, Value};

/// Deserializes `T` from `node`, which sits at `path`.
pub(crate) fn from_node<'de, T: de::Deserialize<'de>>(
    node: &'de Node,
    path: &str,
) -> Result<T, ConfigError> {
    T::deserialize(NodeDe::new(node, path.to_owned())).map_err(DeError::into_config_error)
}

/// [`from_node`], reporting every error of a table rather than the first: serde stops at the
/// first unknown field or bad value, so when the whole fails, each leaf value of the tree (a
/// scalar, a list, an empty table) is read again alone, in a copy of the tree pruned down to
/// that one path, and every error found that way is returned, in path order. A "missing
/// required field" found only by a pruned read is not one (the field is elsewhere in the tree).
pub(crate) fn from_node_all<T: de::DeserializeOwned>(
    node: &Node,
    path: &str,
) -> Result<T, Vec<ConfigError>> {
    let first = match from_node(node, path) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let mut all: Vec<ConfigError> = Vec::new();
    for pruned in leaves(node) {
        if let Err(e) = from_node::<T>(&pruned, path) {
            if e.message != MISSING && !all.contains(&e) {
                all.push(e);
            }
        }
    }
    if !all.contains(&first) && (all.is_empty() || first.message != MISSING) {
        all.push(first);
    }
    all.sort_by(|a, b| a.path.cmp(&b.path));
    Err(all)
}

const MISSING: &str = "missing required field";

/// One copy of `node` per leaf, each holding only the tables on the way to that leaf.
fn leaves(node: &Node) -> Vec<Node> {
    match &node.value {
        Value::Table(entries) if !entries.is_empty() => entries
            .iter()
            .flat_map(|(key, child)| {
                leaves(child).into_iter().map(move |pruned| {
                    Node::table(
                        &node.source,
                        std::iter::once((key.clone(), pruned)).collect(),
                    )
                })
            })
            .collect(),
        _ => vec![node.clone()],
    }
}

/// A deserialization error, located (path and source) by the innermost node it passed.
#[derive(Debug)]
pub(crate) struct DeError {
    message: String,
    /// Set by `missing_field`: the error's path is the table's path plus this field.
    missing: Option<&'static str>,
    at: Option<(String, String)>,
}

impl DeError {
    fn locate(mut self, path: &str, node: &Node) -> Self {
        if self.at.is_none() {
            let path = match self.missing {
                Some(field) => join(path, field),
                None => path.to_owned(),
            };
            self.at = Some((path, node.source.clone()));
        }
        self
    }

    pub(crate) fn into_config_error(self) -> ConfigError {
        let (path, source) = self.at.unwrap_or_default();
        ConfigError::new(path, self.message, source)
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            missing: None,
            at: None,
        }
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {expected}, found {}",
            describe(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "invalid value {}, expected {expected}",
            describe(&unexpected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_field(field, expected))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!(
            "unknown value \"{variant}\"{}; expected one of: {}",
            did_you_mean(variant, expected.iter().copied()),
            expected.join(", ")
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            missing: Some(field),
            ..Self::custom("missing required field")
        }
    }
}

/// Names values in the configuration's own vocabulary (table, list) instead of serde's.
fn describe(unexpected: &Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Map => "a table".to_owned(),
        Unexpected::Seq => "a list".to_owned(),
        Unexpected::Unit => "null".to_owned(),
        Unexpected::Str(s) => format!("string \"{s}\""),
        other => other.to_string(),
    }
}

/// What a node holds, in serde's terms.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Nil => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(i) => i64::try_from(*i).map_or(Unexpected::Other("integer"), Unexpected::Signed),
        Value::Float(f) => Unexpected::Float(*f),
        Value::Str(s) => Unexpected::Str(s),
        Value::List(_) => Unexpected::Seq,
        Value::Table(_) => Unexpected::Map,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes one node; `path` is where it sits in the configuration.
pub(crate) struct NodeDe<'de> {
    node: &'de Node,
    path: String,
}

impl<'de> NodeDe<'de> {
    fn new(node: &'de Node, path: String) -> Self {
        Self { node, path }
    }

    fn locate<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|e| e.locate(&self.path, self.node))
    }
}

impl<'de> Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Nil => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
                (Ok(n), _) => visitor.visit_i64(n),
                (_, Ok(n)) => visitor.visit_u64(n),
                _ => visitor.visit_i128(*i),
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::List(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Table(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                pending: None,
                path: &self.path,
            }),
        };
        self.locate(result)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Nil => self.locate(visitor.visit_none()),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    /// Enums are written as their variant's name: `protocol = "https"`.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => {
                let expected = format!("one of: {}", variants.join(", "));
                Err(de::Error::invalid_type(
                    unexpected(other),
                    &expected.as_str(),
                ))
            }
        };
        self.locate(result)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct SeqDe<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    path: &'p str,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.items
            .next()
            .map(|(i, node)| seed.deserialize(NodeDe::new(node, format!("{}[{i}]", self.path))))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'de, 'p> {
    entries: btree_map::Iter<'de, String, Node>,
    pending: Option<(&'de String, &'de Node)>,
    path: &'p str,
}

impl<'de> de::MapAccess<'de> for MapDe<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key, node));
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
            .map_err(|e: DeError| e.locate(&join(self.path, key), node))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node) = self
            .pending
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before its key"))?;
        seed.deserialize(NodeDe::new(node, join(self.path, key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::tree::parse_str;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        bind: String,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Http,
        Https,
    }

    #[test]
    fn every_error_of_a_table_is_reported_not_only_the_first() {
        let root = parse_str(
            "[a]\nbnd = 1\nbind = [1]\nmode = \"htps\"\nzzzzz = 2\n[b]\nbind = \"x\"\n",
            "inline",
        )
        .unwrap();
        let errors = from_node_all::<BTreeMap<String, Inner>>(&root, "").unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "a.bind: expected a string, found a list [inline]",
                r#"a.bnd: unknown field "bnd" (did you mean "bind"?) [inline]"#,
                r#"a.mode: unknown value "htps" (did you mean "https"?); expected one of: http, https [inline]"#,
                r#"a.zzzzz: unknown field "zzzzz" (known fields: bind, mode) [inline]"#,
            ]
        );
        // A missing field is still reported when it is the only problem.
        let root = parse_str("[a]\nmode = \"http\"\n", "inline").unwrap();
        let errors = from_node_all::<BTreeMap<String, Inner>>(&root, "").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "a.bind: missing required field [inline]"
        );
    }

    fn de(toml: &str) -> Result<BTreeMap<String, Inner>, ConfigError> {
        let root = parse_str(toml, "inline").unwrap();
        from_node(&root, "")
    }

    #[test]
    fn reads_nested_values() {
        let map = de("[a]\nbind = \"x\"\nmode = \"https\"\n").unwrap();
        assert_eq!(
            map["a"],
            Inner {
                bind: "x".into(),
                mode: Some(Mode::Https)
            }
        );
    }

    #[test]
    fn unknown_field_is_located_with_a_hint() {
        let err = de("[a]\nbind = \"x\"\nbnd = 1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"a.bnd: unknown field "bnd" (did you mean "bind"?) [inline]"#
        );
        let err = de("[a]\nbind = \"x\"\nzzzzz = 1\n").unwrap_err();
        assert_eq!(
            err.message,
            r#"unknown field "zzzzz" (known fields: bind, mode)"#
        );
    }

    #[test]
    fn missing_field_wrong_type_and_unknown_variant() {
        let err = de("[a]\n").unwrap_err();
        assert_eq!(err.to_string(), "a.bind: missing required field [inline]");
        let err = de("[a]\nbind = [1]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.bind: expected a string, found a list [inline]"
        );
        let err = de("[a]\nbind = \"x\"\nmode = \"htps\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"a.mode: unknown value "htps" (did you mean "https"?); expected one of: http, https [inline]"#
        );
    }
}
