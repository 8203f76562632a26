//! Where configuration comes from, and which layer set each value.
//!
//! Every layer is turned into a [`Node`] tree whose nodes carry the label of the layer that
//! set them (`file ./tether.toml`, `env TETHER_WORKERS`, ...). Layers are merged key by key:
//! tables merge, anything else (including lists) is replaced whole by the higher layer.
//! Errors later on look a field's path up in the merged tree to say where its value came from.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Source as _};

use crate::error::ConfigError;
use crate::raw::TOP_LEVEL_KEYS;
use crate::tree::{describe, parse_str, Node, Value, BUILT_IN};
use crate::units::format_size;

/// Label of values from the embedded default configuration.
pub(crate) const EMBEDDED: &str = "embedded default";
/// Label of values given to [`crate::from_toml_str`].
pub(crate) const INLINE: &str = "inline";

/// The configuration used when no file is given: one HTTP listener `public` on
/// `0.0.0.0:8080`, one pool `default` with the member `127.0.0.1:3000`, settings `default`
/// and a basic routing rule `default` binding them.
pub const EMBEDDED_DEFAULT_TOML: &str = include_str!("default.toml");

/// Only environment variables with this prefix are configuration.
pub const ENV_PREFIX: &str = "TETHER_";

/// The largest configuration file Tether reads: 4 MiB. A real configuration is a few KiB; a
/// larger file is refused before it is parsed, so a wrong path (a log, a disk image) or a
/// runaway generator cannot make `check`, start-up or a reload hold it all in memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Where configuration comes from.
///
/// Layers, lowest first: built-in field defaults < the embedded default configuration
/// (only when `files` is empty) < each file in order < `TETHER_*` variables in `env`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Configuration files, lowest precedence first. The format follows the extension:
    /// `.toml`, `.yaml`/`.yml` or `.json`.
    pub files: Vec<PathBuf>,
    /// Environment variables as `(name, value)`; the caller passes them in (typically
    /// `std::env::vars().collect()`), this crate never reads the process environment.
    /// Variables without the `TETHER_` prefix are ignored.
    pub env: Vec<(String, String)>,
}

/// All layers merged into one tree.
pub(crate) struct Layered {
    pub(crate) root: Node,
    pub(crate) used_embedded_default: bool,
    /// `TETHER_*` variables left out as Kubernetes service links ([`is_service_link`]).
    pub(crate) service_links: Vec<String>,
}

/// Reads and merges every layer. Fails with every unreadable file and every unusable variable.
pub(crate) fn layer(sources: &Sources) -> Result<Layered, Vec<ConfigError>> {
    let mut root = Node::table(BUILT_IN, BTreeMap::new());
    let mut errors = Vec::new();
    let used_embedded_default = sources.files.is_empty();
    let mut add = |layer: Result<Node, ConfigError>| match layer {
        Ok(node) => root.merge(node),
        Err(e) => errors.push(e),
    };
    if used_embedded_default {
        add(parse_str(EMBEDDED_DEFAULT_TOML, EMBEDDED));
    }
    for path in &sources.files {
        add(read_file(path));
    }
    let mut service_links = Vec::new();
    for (name, value) in &sources.env {
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        if is_service_link(name) {
            service_links.push(name.clone());
        } else {
            add(env_var(name, value));
        }
    }
    service_links.sort();
    if errors.is_empty() {
        Ok(Layered {
            root,
            used_embedded_default,
            service_links,
        })
    } else {
        Err(errors)
    }
}

/// Reads one configuration file: at most [`MAX_CONFIG_FILE_BYTES`], YAML without aliases, and
/// not empty. Every refusal is a [`ConfigError`] labelled
/// with the file, so `check`, start-up and a reload all name it.
fn read_file(path: &Path) -> Result<Node, ConfigError> {
    let source = format!("file {}", path.display());
    let fail = |message: String| ConfigError::new("", message, &source);
    let format = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("toml") => FileFormat::Toml,
        Some("yaml" | "yml") => FileFormat::Yaml,
        Some("json") => FileFormat::Json,
        Some(other) => {
            return Err(fail(format!(
                "unsupported file extension \".{other}\" (use .toml, .yaml, .yml or .json)"
            )))
        }
        None => {
            return Err(fail(
                "no file extension (use .toml, .yaml, .yml or .json)".to_owned(),
            ))
        }
    };
    let text = read_bounded(path).map_err(fail)?;
    if format == FileFormat::Yaml {
        check_yaml(&text).map_err(fail)?;
    }
    let map = File::from_str(&text, format)
        .collect()
        .map_err(|e| fail(describe(e)))?;
    if map.is_empty() {
        return Err(fail(EMPTY_FILE.to_owned()));
    }
    Ok(Node::table(&source, Node::entries(map, &source)))
}

/// Why a file that parses to nothing is refused: a configuration file that sets nothing is
/// almost always one caught between truncation and rewrite, or the wrong file.
const EMPTY_FILE: &str = "cannot parse: the file is empty (nothing but whitespace and comments); \
     a configuration file must set at least one key";

/// The file's text, refused when it is over [`MAX_CONFIG_FILE_BYTES`]. The length is checked
/// before reading and the read itself is bounded too (a file that grows meanwhile, a FIFO).
fn read_bounded(path: &Path) -> Result<String, String> {
    let too_large = |size: &str| {
        format!(
            "the file is {size}, over the {} limit for a configuration file",
            format_size(MAX_CONFIG_FILE_BYTES)
        )
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_CONFIG_FILE_BYTES {
        return Err(too_large(&format!("{len} bytes")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(too_large("larger than that"));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8 text ({e})"))
}

/// Refuses YAML that the `config` crate's loader could not read in bounded time and memory.
///
/// That loader (yaml-rust2's `YamlLoader`) copies the anchored node at every alias, so a
/// kilobyte of nested aliases ("billion laughs") expands to gigabytes. Tether's schema has no
/// use for aliases, so this pass walks the parser's event stream — which never expands
/// anything — and refuses the first alias (YAML 1.2 §3.2.2.2, `*name`). Anchors alone
/// (`&name`) copy nothing and are let through. (Nesting depth is bounded by the parser itself.)
fn check_yaml(text: &str) -> Result<(), String> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    loop {
        // A syntax error is reported by the real parse that follows, with its usual message.
        let Ok((event, mark)) = parser.next_token() else {
            return Ok(());
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => {
                return Err(format!(
                    "cannot parse: YAML alias at line {} column {}: aliases (*name) are not \
                     accepted in a configuration file (they can expand without bound); \
                     write the value out",
                    mark.line(),
                    mark.col() + 1
                ))
            }
            _ => {}
        }
    }
}

/// Whether a `TETHER_*` variable is one of the service-link variables Kubernetes injects for a
/// Service whose name starts with `tether` (`TETHER_SERVICE_HOST`, `TETHER_SERVICE_PORT`,
/// `TETHER_SERVICE_PORT_HTTP`, `TETHER_PORT`, `TETHER_PORT_8080_TCP`,
/// `TETHER_PORT_8080_TCP_ADDR`/`_PORT`/`_PROTO`, and the same after `TETHER_ADMIN_` for a
/// Service named `tether-admin`), rather than a configuration field.
///
/// Such a name has no `__`, so it could only name a top-level field; it is a service link only
/// when it is not one. Every other unknown `TETHER_*` name is still an error, so a typo
/// (`TETHER_WORKRS`, `TETHER_LISTENERS__PUBLIC__BINDD`) never goes unnoticed.
pub(crate) fn is_service_link(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    if rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.to_ascii_lowercase().as_str()) {
        return false;
    }
    // words[0] is `TETHER` (the prefix was checked): the Service's name starts there, and the
    // patterns below only look at what follows it.
    let words: Vec<&str> = name.split('_').collect();
    let is_port_number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let is_protocol = |w: &str| matches!(w, "TCP" | "UDP" | "SCTP");
    // {SVC}_SERVICE_HOST, {SVC}_SERVICE_PORT, {SVC}_SERVICE_PORT_{PORT_NAME}
    if let Some(at) = words.iter().position(|w| *w == "SERVICE") {
        match &words[at + 1..] {
            ["HOST"] | ["PORT"] => return true,
            ["PORT", name @ ..] if !name.is_empty() && name.iter().all(|w| !w.is_empty()) => {
                return true
            }
            _ => {}
        }
    }
    // {SVC}_PORT, {SVC}_PORT_{N}_{PROTO}, {SVC}_PORT_{N}_{PROTO}_{ADDR|PORT|PROTO}
    match &words[1..] {
        // Also {SVC}_PORT_{N}_{PROTO}_PORT.
        [.., "PORT"] => true,
        [.., "PORT", number, protocol] => is_port_number(number) && is_protocol(protocol),
        [.., "PORT", number, protocol, "ADDR" | "PROTO"] => {
            is_port_number(number) && is_protocol(protocol)
        }
        _ => false,
    }
}

/// One `TETHER_*` variable as a tree: `TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT=60s`
/// becomes `backend_settings.chat.request_timeout = "60s"`. The value stays a string; the raw
/// layer accepts string forms of numbers, booleans and comma-separated lists.
fn env_var(name: &str, value: &str) -> Result<Node, ConfigError> {
    let source = format!("env {name}");
    let single: config::Map<String, String> = [(name.to_owned(), value.to_owned())].into();
    let collected = Environment::with_prefix("TETHER")
        .prefix_separator("_")
        .separator("__")
        .source(Some(single))
        .collect()
        .map_err(|e| ConfigError::new("", e.to_string(), &source))?;
    let key = collected.into_keys().next().unwrap_or_default();
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::new(
            "",
            "not a configuration variable: levels after TETHER_ are separated by \"__\", \
             e.g. TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT",
            &source,
        ));
    }
    let leaf = Node {
        value: Value::Str(value.to_owned()),
        source: source.clone(),
    };
    Ok(segments.iter().rev().fold(leaf, |child, segment| {
        Node::table(&source, [(segment.to_string(), child)].into())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempFile;

    /// The classic "billion laughs": nine levels of nine aliases, about 1 KB of YAML that a
    /// loader copying the anchored node at each alias expands to 9^9 strings.
    pub(crate) fn alias_bomb() -> String {
        let mut yaml = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            let items = vec![format!("*{prev}"); 9].join(",");
            yaml.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        yaml
    }

    fn refusal(extension: &str, text: &str) -> ConfigError {
        let file = TempFile::new(extension, text);
        let err = read_file(file.path()).expect_err("refused");
        assert_eq!(err.source, format!("file {}", file.path().display()));
        assert!(err.path.is_empty());
        err
    }

    #[test]
    fn empty_and_comment_only_files_are_refused() {
        for (extension, text) in [
            ("toml", ""),
            ("toml", " \n\t\n"),
            ("toml", "# nothing yet\n\n# still nothing\n"),
            ("yaml", ""),
            ("yml", "# only a comment\n"),
            ("json", "{}"),
        ] {
            let err = refusal(extension, text);
            assert!(
                err.message.contains("the file is empty"),
                "{extension} {text:?}: {err}"
            );
        }
        // Zero-length JSON is not JSON at all; a YAML document marker alone is a null document.
        assert!(refusal("json", "").message.starts_with("cannot parse"));
        assert!(refusal("yaml", "---\n").message.starts_with("cannot parse"));
        // One key is enough.
        let file = TempFile::new("toml", "# a comment\nworkers = 2\n");
        assert!(read_file(file.path()).is_ok());
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_before_parsing() {
        let limit = usize::try_from(MAX_CONFIG_FILE_BYTES).unwrap();
        let line = format!("#{}\n", "x".repeat(1023));
        let mut at_limit = line.repeat(limit / line.len() - 1);
        at_limit.push_str("workers = 2\n");
        assert!(at_limit.len() <= limit);
        let file = TempFile::new("toml", &at_limit);
        assert!(
            read_file(file.path()).is_ok(),
            "a file at the limit is read"
        );

        let over = "x".repeat(limit + 1);
        let err = refusal("toml", &over);
        assert!(err.message.contains("4MiB limit"), "{err}");
        assert!(
            err.message.contains(&format!("{} bytes", limit + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_yaml_alias_bomb_is_refused_quickly() {
        let bomb = alias_bomb();
        assert!(bomb.len() < 1024, "{}", bomb.len());
        let started = std::time::Instant::now();
        let err = refusal("yaml", &bomb);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(err.message.contains("alias"), "{err}");
        assert!(err.message.contains("line 2 column 8"), "{err}");
        // An anchor without an alias copies nothing and is accepted.
        let file = TempFile::new("yaml", "workers: &w 2\n");
        assert!(read_file(file.path()).is_ok());
    }

    fn str_at<'a>(root: &'a Node, path: &str) -> (&'a str, &'a str) {
        let node = root.find(path).unwrap_or_else(|| panic!("no {path}"));
        match &node.value {
            Value::Str(s) => (s, &node.source),
            other => panic!("{path} is {other:?}"),
        }
    }

    #[test]
    fn env_variable_becomes_nested_string() {
        let node = env_var("TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT", "60s").unwrap();
        assert_eq!(
            str_at(&node, "backend_settings.chat.request_timeout"),
            ("60s", "env TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT")
        );
        let node = env_var("TETHER_WORKERS", "2").unwrap();
        assert_eq!(str_at(&node, "workers"), ("2", "env TETHER_WORKERS"));
    }

    #[test]
    fn kubernetes_service_links_are_told_apart_from_fields_and_typos() {
        for name in [
            "TETHER_SERVICE_HOST",
            "TETHER_SERVICE_PORT",
            "TETHER_SERVICE_PORT_HTTP",
            "TETHER_SERVICE_PORT_ADMIN_API",
            "TETHER_PORT",
            "TETHER_PORT_8080_TCP",
            "TETHER_PORT_8080_TCP_ADDR",
            "TETHER_PORT_8080_TCP_PORT",
            "TETHER_PORT_8080_TCP_PROTO",
            "TETHER_PORT_53_UDP",
            "TETHER_ADMIN_SERVICE_HOST",
            "TETHER_ADMIN_PORT_9901_TCP_ADDR",
        ] {
            assert!(is_service_link(name), "{name}");
        }
        for name in [
            "TETHER_WORKERS",
            "TETHER_WORKRS",
            "TETHER_ALLOW_EMPTY",
            "TETHER_SHUTDOWN_GRACE",
            "TETHER_LISTENERS__PUBLIC__BIND",
            "TETHER_LISTENERS__PUBLIC__PORT",
            "TETHER_ADMIN__BIND",
            "TETHER_PORT_HTTP_TCP",
            "TETHER_PORT_8080_HTTP",
            "TETHER_PORT_8080_TCP_HOST",
            "TETHER_SERVICE_NAME",
            "TETHER_",
            "OTHER_SERVICE_HOST",
        ] {
            assert!(!is_service_link(name), "{name}");
        }
    }

    #[test]
    fn service_links_are_left_out_and_typos_still_fail() {
        let env = |pairs: &[(&str, &str)]| Sources {
            files: vec![],
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let layered = layer(&env(&[
            ("TETHER_SERVICE_HOST", "10.0.0.7"),
            ("TETHER_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
            ("TETHER_WORKERS", "2"),
        ]))
        .map_err(|e| e.len())
        .unwrap();
        assert_eq!(
            layered.service_links,
            ["TETHER_PORT_8080_TCP", "TETHER_SERVICE_HOST"]
        );
        assert!(layered.root.find("workers").is_some());
        assert!(layered.root.find("service_host").is_none());
    }

    #[test]
    fn env_variable_with_empty_level_is_rejected() {
        for name in ["TETHER_", "TETHER_A____B", "TETHER_A__"] {
            let err = env_var(name, "x").unwrap_err();
            assert_eq!(err.source, format!("env {name}"));
            assert!(err.message.contains("\"__\""), "{err}");
        }
    }

    #[test]
    fn merge_keeps_table_label_and_replaces_leaves_and_lists() {
        let mut base = parse_str("[a]\nx = 1\nl = [1, 2]\n", "file one").unwrap();
        base.merge(parse_str("[a]\ny = 2\nl = [3]\n", "file two").unwrap());
        assert_eq!(base.source_of("a"), "file one");
        assert_eq!(base.source_of("a.x"), "file one");
        assert_eq!(base.source_of("a.y"), "file two");
        assert_eq!(base.source_of("a.l[0]"), "file two");
        assert!(base.find("a.l[1]").is_none());
        let env = env_var("TETHER_A__L", "x,y").unwrap();
        assert_eq!(env.source_of("a.l[1]"), "env TETHER_A__L");
        assert_eq!(base.source_of("a.z"), BUILT_IN);
    }
}
