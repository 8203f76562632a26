//! What this binary was built from, as `tether --version`, the admin `/status` answer and the
//! `tether_build_info` metric report it. The values come from `build.rs`; each is `unknown`
//! where the build could not tell (no `.git` in a container build context, say).

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit checked out when the build script last ran (12 hex digits), or `unknown`.
pub const COMMIT: &str = env!("TETHER_BUILD_COMMIT");
/// The build date, `YYYY-MM-DD` UTC (`SOURCE_DATE_EPOCH` when set, for reproducible builds).
pub const BUILD_DATE: &str = env!("TETHER_BUILD_DATE");
/// The compiler, as `rustc --version` printed it.
pub const RUSTC: &str = env!("TETHER_BUILD_RUSTC");
/// The rustls version in `Cargo.lock`: TLS behaviour changes with it.
pub const RUSTLS: &str = env!("TETHER_BUILD_RUSTLS");

/// The `--version` text: one line per fact.
pub fn version_text() -> String {
    format!(
        "tether {VERSION}\ncommit: {COMMIT}\nbuilt: {BUILD_DATE}\ncompiler: {RUSTC}\nrustls: {RUSTLS}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_names_every_fact() {
        let text = version_text();
        assert!(text.starts_with(&format!("tether {VERSION}\n")));
        for line in ["commit: ", "built: ", "compiler: ", "rustls: "] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        // The date is a real date, the compiler a real rustc and rustls a version.
        assert_eq!(BUILD_DATE.len(), 10, "{BUILD_DATE}");
        assert!(RUSTC.starts_with("rustc ") || RUSTC == "unknown", "{RUSTC}");
        assert!(RUSTLS.starts_with("0.") || RUSTLS == "unknown", "{RUSTLS}");
    }
}
