//! Errors that name the field, what is wrong with it, and the layer that set it.

use std::fmt;

/// One configuration problem.
///
/// Displays as `{path}: {message} [{source}]`, e.g.
/// `routing_rules.chat.backend_pool: no backend pool named "chta" (did you mean "chat"?) [file ./tether.toml]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path such as `backend_settings.chat.request_timeout`; list elements are
    /// written `members[1]`. Empty when the problem concerns a whole source, such as a file
    /// that cannot be read or parsed.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
    /// The layer the offending value came from: `file ./tether.toml`, `env TETHER_X__Y`,
    /// `embedded default`, `built-in default` or `inline`.
    pub source: String,
}

impl ConfigError {
    pub(crate) fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{} [{}]", self.message, self.source)
        } else {
            write!(f, "{}: {} [{}]", self.path, self.message, self.source)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, reported together. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A single value (duration, size, address, pattern, ...) that could not be parsed.
/// The message quotes the value and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// ` (did you mean "x"?)` when one of `candidates` is within a small edit distance of
/// `word` (case-insensitive), otherwise the empty string.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= 2 && d < c.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

/// `unknown field "x"` with a did-you-mean hint, or the list of known fields when none is close.
pub(crate) fn unknown_field(field: &str, known: &[&str]) -> String {
    let hint = did_you_mean(field, known.iter().copied());
    if hint.is_empty() {
        format!(
            "unknown field \"{field}\" (known fields: {})",
            known.join(", ")
        )
    } else {
        format!("unknown field \"{field}\"{hint}")
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row.push(substitute.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("chta", "chat"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("bind", "bind"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("chta", ["chat", "video"]),
            r#" (did you mean "chat"?)"#
        );
        assert_eq!(
            did_you_mean("HTTP", ["http", "https"]),
            r#" (did you mean "http"?)"#
        );
        assert_eq!(did_you_mean("zzzzzz", ["chat"]), "");
        // A two-letter candidate is not "close" to an unrelated two-letter word.
        assert_eq!(did_you_mean("xy", ["ab"]), "");
    }

    #[test]
    fn display_one_line_per_error() {
        let errors = ConfigErrors(vec![
            ConfigError::new("a.b", "bad", "inline"),
            ConfigError::new("", "cannot read", "file x.toml"),
        ]);
        assert_eq!(
            errors.to_string(),
            "a.b: bad [inline]\ncannot read [file x.toml]"
        );
    }
}
