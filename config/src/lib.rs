//! Layered configuration for the Tether sidecar.
//!
//! # Layers
//!
//! A configuration is built from layers, lowest precedence first:
//!
//! 1. **built-in defaults** — the `DEFAULT_*` constants, for every field no layer sets;
//! 2. **the embedded default** ([`EMBEDDED_DEFAULT_TOML`]) — one HTTP listener `public` on
//!    `0.0.0.0:8080` proxying everything to `127.0.0.1:3000`; used *only* when no file is given;
//! 3. **files**, in order (`--config a.toml --config b.yaml`): TOML, YAML or JSON by extension;
//! 4. **`TETHER_*` environment variables**, passed in through [`Sources::env`]:
//!    `TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT=60s` sets
//!    `backend_settings.chat.request_timeout`. `__` separates levels, lists are
//!    comma-separated (`TETHER_BACKEND_POOLS__CHAT__MEMBERS=10.0.0.5:5000,10.0.0.6:5000`).
//!
//! Tables merge key by key across layers; any other value, lists included, is replaced whole.
//! The crate never reads the process environment itself.
//!
//! # Files that are refused before they are parsed
//!
//! A file larger than [`MAX_CONFIG_FILE_BYTES`], YAML with an alias (`*name`, which the YAML
//! loader would expand without bound), and a file that
//! sets nothing (empty, or only whitespace and comments: typically one caught between
//! truncation and rewrite) are errors naming the file. A reload is further checked by
//! [`Config::check_replaces`]: removing every listener or every routing rule takes
//! `allow_empty = true`.
//!
//! # Two stages
//!
//! The merged layers form a tree that remembers which layer set each value. Stage one
//! (`raw`) deserializes it into a serde mirror of the file whose structs deny unknown fields
//! and keep hard-to-parse values as strings, so serde only fails on structure. Stage two
//! (`validate`) turns that into the strongly typed [`Config`] (`Duration`, `SocketAddr`,
//! `NonZeroU32`, patterns) and runs the checks that span fields: references between tables,
//! overlapping rules, and the Application Gateway trap of a `request_timeout` that does not
//! exceed a WebSocket `keepalive_interval`.
//!
//! Neither stage stops at the first problem: [`ConfigErrors`] lists every one, each as
//! `{path}: {message} [{source}]`, e.g.
//!
//! ```text
//! routing_rules.chat.backend_pool: no backend pool named "chta" (did you mean "chat"?) [file ./tether.toml]
//! backend_settings.chat.request_timeout: invalid duration "40": write a unit, e.g. "40s" [env TETHER_BACKEND_SETTINGS__CHAT__REQUEST_TIMEOUT]
//! ```
//!
//! ```
//! let config = tether_config::from_toml_str(r#"
//!     [listeners.public]
//!     bind = "127.0.0.1:8080"
//!     [backend_pools.chat]
//!     members = ["127.0.0.1:5000"]
//!     [backend_settings.chat]
//!     request_timeout = "40s"
//!     [routing_rules.chat]
//!     listener = "public"
//!     paths = ["/chat/*"]
//!     backend_pool = "chat"
//!     backend_settings = "chat"
//!     websocket.keepalive_interval = "20s"
//! "#).unwrap();
//! assert_eq!(config.backend_settings["chat"].request_timeout.as_secs(), 40);
//! ```

pub mod authority;
mod de;
mod error;
mod lenient;
mod model;
mod raw;
mod reload;
mod sources;
mod tree;
pub mod units;
mod validate;

#[cfg(test)]
mod test_support;

pub use error::{ConfigError, ConfigErrors, ParseError};
pub use model::*;
pub use reload::EmptyReload;
pub use sources::{Sources, EMBEDDED_DEFAULT_TOML, ENV_PREFIX, MAX_CONFIG_FILE_BYTES};

/// A loaded, valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Whether the embedded default configuration was used (no file was given).
    pub used_embedded_default: bool,
    /// Things that are probably mistakes but not errors (a listener no rule uses, ...),
    /// each as `{path}: {message} [{source}]`.
    pub warnings: Vec<String>,
}

/// Loads and validates the configuration from `sources`, reporting every problem at once.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigErrors> {
    let layered = sources::layer(sources).map_err(ConfigErrors)?;
    let mut validated = build(&layered.root)?;
    // TLS files are read here, where they will be used, not by `from_toml_str`.
    let (mut errors, warnings) = validate::check_tls_files(&layered.root, &validated.config);
    errors.extend(validate::check_source_addresses(
        &layered.root,
        &validated.config,
    ));
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    validated.warnings.extend(warnings);
    if !layered.service_links.is_empty() {
        validated.warnings.push(format!(
            "{}: ignored: Kubernetes service-link variables, not configuration fields \
             (set enableServiceLinks: false in the pod spec to keep them out) [env]",
            layered.service_links.join(", ")
        ));
    }
    Ok(Loaded {
        config: validated.config,
        used_embedded_default: layered.used_embedded_default,
        warnings: validated.warnings,
    })
}

/// Builds a configuration from one inline TOML document (source label `inline`), without
/// the embedded default or any environment variable. For tests and embedding.
pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
    let root = tree::parse_str(toml, sources::INLINE).map_err(|e| ConfigErrors(vec![e]))?;
    Ok(build(&root)?.config)
}

fn build(root: &tree::Node) -> Result<validate::Validated, ConfigErrors> {
    let (raw, declared, errors) = raw::read(root);
    validate::validate(&raw, &declared, root, errors).map_err(ConfigErrors)
}

#[cfg(test)]
mod tests;
