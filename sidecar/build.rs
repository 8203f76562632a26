//! Records what `tether --version`, `/status` and the `tether_build_info` metric report: the
//! commit, the build date, the compiler and the rustls version. Every value falls back to
//! `unknown` rather than failing the build (a source tarball or a container build context has no
//! `.git`); `TETHER_BUILD_COMMIT` and `SOURCE_DATE_EPOCH` override the commit and the date.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("..");

    println!("cargo:rerun-if-env-changed=TETHER_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    if let Some(head) = git(&root, &["rev-parse", "--git-path", "HEAD"]) {
        // Relative to `root` when git answers a relative path.
        let head = root.join(head);
        println!("cargo:rerun-if-changed={}", head.display());
        if let Some(reference) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
            if let Some(path) = git(&root, &["rev-parse", "--git-path", &reference]) {
                println!("cargo:rerun-if-changed={}", root.join(path).display());
            }
        }
    }

    let commit = std::env::var("TETHER_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&root, &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());

    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());

    let rustls = std::fs::read_to_string(root.join("Cargo.lock"))
        .ok()
        .and_then(|lock| locked_version(&lock, "rustls"))
        .unwrap_or_else(|| "unknown".into());

    println!("cargo:rustc-env=TETHER_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=TETHER_BUILD_DATE={}", date(epoch));
    println!("cargo:rustc-env=TETHER_BUILD_RUSTC={rustc}");
    println!("cargo:rustc-env=TETHER_BUILD_RUSTLS={rustls}");
}

/// `git -C root ARGS`, trimmed, when git is there and succeeds.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

/// The version of package `name` in a `Cargo.lock`.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_owned());
        }
    }
    None
}

/// `YYYY-MM-DD` (UTC) for seconds since the Unix epoch: the civil-from-days conversion of the
/// proleptic Gregorian calendar.
fn date(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
