//! Reloads from the configuration files: on a trigger (the binary's SIGHUP) or when a
//! `--config` file has changed and then held still, every layer is read again and handed to the
//! running sidecar as a [`ReloadRequest`] — a configuration that cannot be loaded too, so that
//! every refusal is logged and counted in one place (`run_reloadable`, `GET /status`).
//!
//! # Waiting for a file to settle
//!
//! Editors, `kubectl cp` and config tools often truncate a file and then write it. Read in
//! between, the file is empty or half written. So a change is acted on only once it has held
//! still: the file's stamp (modification time and length) must be the same on two polls in a
//! row. [`Stability`] is that rule with no I/O; [`ConfigWatcher`] drives it with a timer.
//!
//! ```text
//! Settled(s) --poll: stamps == s--> Settled(s)                  (nothing to do)
//! Settled(s) --poll: stamps == c != s--> Changing(s, c)
//! Changing(s, c) --poll: stamps == c--> Settled(c) + reload     (held still for one poll)
//! Changing(s, c) --poll: stamps == s--> Settled(s)              (changed back: nothing to do)
//! Changing(s, c) --poll: stamps == d, other--> Changing(s, d)   (still being written)
//! any --trigger--> Settled(current stamps) + reload             (the operator asked: read now)
//! ```
//!
//! A refused reload still settles: the watcher does not retry a broken file until it changes
//! again. The running configuration keeps serving meanwhile.
//!
//! A `--config-dir` is listed again at every poll and every trigger ([`ConfigPath`]): its
//! modification time and its files' stamps are part of what is watched, so a file added to it
//! or removed from it is a change like any other, and the reload reads the new list.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_config::Sources;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::ReloadRequest;

/// How often the binary checks its `--config` files: a change is applied one to two polls after
/// the last write to the file.
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// One `--config FILE` or `--config-dir DIR` argument, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigPath {
    /// A file, read as it is.
    File(PathBuf),
    /// A directory: every `*.toml` file in it, in name order.
    Dir(PathBuf),
}

/// The files `paths` name now: each file as is, each directory's `*.toml` files in name
/// order (what the container image reads from `/etc/tether`). A directory that cannot be read
/// or holds no `*.toml` file is an error naming it.
pub fn expand(paths: &[ConfigPath]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        match path {
            ConfigPath::File(file) => files.push(file.clone()),
            ConfigPath::Dir(dir) => {
                let shown = dir.display();
                let entries =
                    std::fs::read_dir(dir).map_err(|e| format!("--config-dir {shown}: {e}"))?;
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(format!("--config-dir {shown}: no *.toml file in it"));
                }
                files.extend(found);
            }
        }
    }
    Ok(files)
}

/// What identifies a version of a file: its modification time and length, `None` while it cannot
/// be read (an editor's rename-and-replace in progress, a deleted file).
pub type Stamp = Option<(SystemTime, u64)>;

/// The current [`Stamp`] of `path`.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Whether the watched files have changed and then held still (see the module's lifecycle).
/// Pure: it is given the stamps of every poll and says when to reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stability {
    /// The files are as they were at the last reload (or at start-up).
    Settled(Vec<Stamp>),
    /// The files differ from `settled`; `seen` is what the last poll found.
    Changing {
        /// The stamps of the version in force.
        settled: Vec<Stamp>,
        /// The stamps found by the last poll.
        seen: Vec<Stamp>,
    },
}

impl Stability {
    /// Starts settled at `stamps`: the files as they were when the configuration was loaded.
    pub fn new(stamps: Vec<Stamp>) -> Stability {
        Stability::Settled(stamps)
    }

    /// One poll found `now`. Answers whether to reload: only when a change was seen by the
    /// previous poll and `now` is the same again.
    pub fn poll(&mut self, now: Vec<Stamp>) -> bool {
        let (next, reload) = match std::mem::replace(self, Stability::Settled(Vec::new())) {
            Stability::Settled(settled) if now == settled => (Stability::Settled(settled), false),
            Stability::Settled(settled) => (Stability::Changing { settled, seen: now }, false),
            Stability::Changing { seen, .. } if now == seen => (Stability::Settled(now), true),
            Stability::Changing { settled, .. } if now == settled => {
                (Stability::Settled(settled), false)
            }
            Stability::Changing { settled, .. } => {
                (Stability::Changing { settled, seen: now }, false)
            }
        };
        *self = next;
        reload
    }

    /// A reload was asked for directly (SIGHUP) and reads the files as they are: `now`.
    pub fn settle(&mut self, now: Vec<Stamp>) {
        *self = Stability::Settled(now);
    }
}

/// Asks a [`ConfigWatcher`] to reload now (the binary fires it on SIGHUP). A request made while
/// a reload is under way is kept and served after it.
#[derive(Debug, Clone, Default)]
pub struct ReloadTrigger(Arc<Notify>);

impl ReloadTrigger {
    /// Requests a reload.
    pub fn fire(&self) {
        self.0.notify_one();
    }
}

/// Watches the configuration files and reloads the sidecar from every layer (see the module
/// docs): on a [`ReloadTrigger`], and when a file has changed and then held still for a poll.
#[derive(Debug)]
pub struct ConfigWatcher {
    sources: Sources,
    /// The arguments `sources.files` came from, listed again at every look (empty: the files
    /// are fixed).
    paths: Vec<ConfigPath>,
    poll: Duration,
    stability: Stability,
    trigger: ReloadTrigger,
}

impl ConfigWatcher {
    /// A watcher of `sources.files`, polled every `poll`. The files' stamps are taken now: create
    /// it *before* loading the configuration, so a change made during start-up is not missed.
    pub fn new(sources: Sources, poll: Duration) -> ConfigWatcher {
        let stability = Stability::new(stamps(&sources.files, &[]));
        ConfigWatcher {
            sources,
            paths: Vec::new(),
            poll,
            stability,
            trigger: ReloadTrigger::default(),
        }
    }

    /// A watcher of the files `paths` name ([`expand`]), listed again at every poll and every
    /// trigger, so a file added to or removed from a `--config-dir` is picked up; `env` is the
    /// environment layer. Like [`ConfigWatcher::new`], create it before loading.
    pub fn over(
        paths: Vec<ConfigPath>,
        env: Vec<(String, String)>,
        poll: Duration,
    ) -> Result<ConfigWatcher, String> {
        let files = expand(&paths)?;
        let mut watcher = ConfigWatcher::new(Sources { files, env }, poll);
        watcher.paths = paths;
        watcher.stability = Stability::new(watcher.look());
        Ok(watcher)
    }

    /// The stamps of every watched file and directory, after listing the directories again.
    /// A directory that cannot be listed now keeps its last list: reading it then fails and
    /// names the missing file.
    fn look(&mut self) -> Vec<Stamp> {
        if !self.paths.is_empty() {
            if let Ok(files) = expand(&self.paths) {
                self.sources.files = files;
            }
        }
        stamps(&self.sources.files, &self.paths)
    }

    /// What requests a reload now.
    pub fn trigger(&self) -> ReloadTrigger {
        self.trigger.clone()
    }

    /// Runs until the sidecar stops taking reloads: polls the files, and on a settled change or
    /// a trigger loads every layer and sends the result to `reloads`, waiting for its outcome
    /// before looking again.
    pub async fn run(mut self, reloads: mpsc::UnboundedSender<ReloadRequest>) {
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let trigger = self.trigger.0.clone();
        loop {
            let why = tokio::select! {
                () = trigger.notified() => {
                    let now = self.look();
                    self.stability.settle(now);
                    "reload requested"
                }
                _ = poll.tick() => {
                    let now = self.look();
                    if !self.stability.poll(now) {
                        continue;
                    }
                    "a --config file changed and held still"
                }
            };
            tracing::info!("{why}: reloading the configuration");
            if !self.reload(&reloads).await {
                return;
            }
        }
    }

    /// Loads every layer and hands the outcome to the sidecar; `false` once it is gone.
    async fn reload(&self, reloads: &mpsc::UnboundedSender<ReloadRequest>) -> bool {
        let config = match tether_config::load(&self.sources) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                Ok(loaded.config)
            }
            Err(errors) => Err(errors),
        };
        let (done, answer) = oneshot::channel();
        let request = ReloadRequest {
            config,
            origin: origin(&self.sources.files),
            done,
        };
        reloads.send(request).is_ok() && answer.await.is_ok()
    }
}

/// The stamps of `files`, then of the directories among `paths` (a directory's modification
/// time moves when a file is added, removed or renamed in it).
fn stamps(files: &[PathBuf], paths: &[ConfigPath]) -> Vec<Stamp> {
    let dirs = paths.iter().filter_map(|p| match p {
        ConfigPath::Dir(dir) => Some(dir),
        ConfigPath::File(_) => None,
    });
    files
        .iter()
        .map(|f| stamp(f))
        .chain(dirs.map(|d| stamp(d)))
        .collect()
}

/// The files a reload read, as a source label: `file a.toml, file b.yaml`.
fn origin(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "embedded default".to_owned();
    }
    files
        .iter()
        .map(|f| format!("file {}", f.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_dir_expands_to_its_toml_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("tether-expand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = [
            ConfigPath::File("/etc/first.yaml".into()),
            ConfigPath::Dir(dir.clone()),
        ];
        assert_eq!(
            expand(&paths).unwrap_err(),
            format!("--config-dir {}: no *.toml file in it", dir.display())
        );
        for name in ["20-b.toml", "10-a.toml", "notes.txt"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        assert_eq!(
            expand(&paths).unwrap(),
            [
                PathBuf::from("/etc/first.yaml"),
                dir.join("10-a.toml"),
                dir.join("20-b.toml")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn at(secs: u64, len: u64) -> Stamp {
        Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), len))
    }

    #[test]
    fn a_change_reloads_only_once_it_held_still_for_a_poll() {
        let mut s = Stability::new(vec![at(1, 100)]);
        assert!(!s.poll(vec![at(1, 100)]), "nothing changed");
        // Truncated: seen once, not acted on.
        assert!(!s.poll(vec![at(2, 0)]));
        // Rewritten before the next poll: still changing.
        assert!(!s.poll(vec![at(3, 120)]));
        // The same twice in a row: reload, once.
        assert!(s.poll(vec![at(3, 120)]));
        assert_eq!(s, Stability::Settled(vec![at(3, 120)]));
        assert!(!s.poll(vec![at(3, 120)]));
    }

    #[test]
    fn a_truncation_that_stays_is_reloaded_and_then_left_alone() {
        // `: > tether.toml` and nothing else: the empty file is read once (and refused by the
        // loader); the watcher does not retry it until it changes again.
        let mut s = Stability::new(vec![at(1, 100)]);
        assert!(!s.poll(vec![at(2, 0)]));
        assert!(s.poll(vec![at(2, 0)]));
        assert!(!s.poll(vec![at(2, 0)]));
        assert!(!s.poll(vec![at(4, 90)]));
        assert!(s.poll(vec![at(4, 90)]));
    }

    #[test]
    fn a_change_undone_before_it_settles_is_not_reloaded() {
        let mut s = Stability::new(vec![at(1, 100), None]);
        assert!(!s.poll(vec![None, None]), "being replaced");
        assert!(!s.poll(vec![at(1, 100), None]), "back as it was");
        assert_eq!(s, Stability::Settled(vec![at(1, 100), None]));
        assert!(!s.poll(vec![at(1, 100), None]));
    }

    #[test]
    fn a_trigger_settles_at_the_current_stamps() {
        let mut s = Stability::new(vec![at(1, 100)]);
        assert!(!s.poll(vec![at(2, 50)]));
        s.settle(vec![at(2, 50)]);
        assert!(
            !s.poll(vec![at(2, 50)]),
            "the trigger read this version already"
        );
    }
}
