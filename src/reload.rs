//! Configuration reload: the one path every trigger takes (the file changing
//! on disk, SIGHUP, `POST /config/reload`): read the file, parse and validate
//! it, compare it with the running configuration, compile a new snapshot
//! that keeps the state of what did not change, and swap it in atomically.
//! Requests in flight finish on the snapshot they started with. Any failure
//! leaves the running snapshot in place.
//!
//! A change only a new process can apply (listeners, the admin listener,
//! the runtime, the access log, tracing) is applied by a binary upgrade of
//! the gateway onto itself, when it runs as `weir run` with a control
//! socket: a successor started with the same file and flags takes the
//! listening sockets over (keeping those whose listener is unchanged,
//! binding new ones, closing removed ones) and this process drains. Without
//! a control socket (an embedded gateway) such a change is refused.
//!
//! This module owns the trigger plumbing and the swap; what carries over is
//! decided by `Snapshot::build`, what may change live by
//! `weir_config::ConfigDiff`, and the handoff by `upgrade`.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use weir_config::{Config, ConfigDiff, ConfigErrors};

use crate::snapshot::{BuildError, Snapshot};
use crate::state::State;
use crate::upgrade::{Successor, UpgradeError};
use crate::upstream;

/// How often the watcher looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the file must stay unchanged before it is read: editors and
/// deploy tools often write a file in several steps.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How long a successor may take to start and take the sockets over.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reloads one configuration file into a running gateway.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    state: Arc<State>,
    // One reload at a time: two triggers at once must not race their swaps.
    busy: tokio::sync::Mutex<()>,
    /// Set when this process can upgrade itself in place.
    successor: OnceLock<Successor>,
    /// The successor this process handed over to (0: none yet). Once set,
    /// every trigger is declined: the successor owns the file now.
    handed_over: AtomicU32,
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// Hash of the file now running.
    pub hash: String,
    /// The changes applied (empty when the file was unchanged).
    pub changes: Vec<String>,
    /// The process that now serves, when the changes took a binary upgrade.
    pub upgraded_to: Option<u32>,
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The change touches what only a restart can apply.
    #[error("these changes need a restart (or a binary upgrade): {}", .0.join("; "))]
    NeedsRestart(Vec<String>),
    /// The configuration could not be compiled.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The change needs a new process, and starting it failed; this one
    /// keeps serving the old configuration.
    #[error("these changes need a new process, and the upgrade failed: {0}")]
    Upgrade(#[source] UpgradeError),
    /// This process has already handed over to a successor.
    #[error("this weir has handed over to pid {0}, which serves and reloads now")]
    HandedOver(u32),
}

impl ReloadError {
    /// Every problem, one per entry, for the admin API.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.errors.iter().map(|e| e.to_string()).collect(),
            ReloadError::NeedsRestart(changes) => changes
                .iter()
                .map(|c| format!("{c} (needs a restart)"))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Reloader {
    /// A reloader for the file at `path`, feeding `state`.
    pub fn new(path: &Path, state: Arc<State>) -> Arc<Reloader> {
        Arc::new(Reloader {
            path: path.to_owned(),
            state,
            busy: tokio::sync::Mutex::new(()),
            successor: OnceLock::new(),
            handed_over: AtomicU32::new(0),
        })
    }

    /// Lets changes that need a new process take a binary upgrade to a
    /// `successor` instead of being refused.
    pub fn enable_upgrades(&self, successor: Successor) {
        let _ = self.successor.set(successor);
    }

    /// Waits (a bounded time) for a reload in progress to finish.
    pub async fn settle(&self) {
        let _ = tokio::time::timeout(UPGRADE_TIMEOUT, self.busy.lock()).await;
    }

    fn successor_pid(&self) -> Option<u32> {
        Some(self.handed_over.load(Ordering::Acquire)).filter(|&pid| pid != 0)
    }

    /// The file this reloader reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads now. `trigger` names the cause in logs and metrics
    /// (`file`, `signal`, `admin`).
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadReport, ReloadError> {
        let _one = self.busy.lock().await;
        if let Some(pid) = self.successor_pid() {
            tracing::debug!(trigger, successor = pid, "reload declined: handed over");
            return Err(ReloadError::HandedOver(pid));
        }
        let result = self.apply().await;
        let metrics = &self.state.metrics;
        match &result {
            Ok(report) if report.changes.is_empty() => {
                tracing::debug!(trigger, "configuration unchanged");
            }
            Ok(ReloadReport {
                hash,
                changes,
                upgraded_to: Some(pid),
            }) => {
                metrics.config_reloaded(true);
                tracing::info!(
                    trigger,
                    hash = %hash,
                    changes = %changes.join("; "),
                    successor = pid,
                    "configuration applied by a binary upgrade: the new process serves, this one drains"
                );
            }
            Ok(report) => {
                metrics.config_reloaded(true);
                tracing::info!(
                    trigger,
                    hash = %report.hash,
                    changes = %report.changes.join("; "),
                    "configuration reloaded"
                );
            }
            Err(e) => {
                metrics.config_reloaded(false);
                for message in e.messages() {
                    tracing::error!(trigger, file = %self.path.display(), "reload rejected: {message}");
                }
            }
        }
        result
    }

    async fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| ReloadError::Read {
                path: self.path.display().to_string(),
                source,
            })?;
        let hash = config_hash(&text);
        let current = self.state.snapshot.load_full();
        if *current.hash == hash {
            return Ok(ReloadReport {
                hash,
                changes: Vec::new(),
                upgraded_to: None,
            });
        }
        let file = self.path.display().to_string();
        let config = Config::from_yaml_in(&text, &file).map_err(ReloadError::Invalid)?;
        let diff = ConfigDiff::between(&current.config, &config);
        if !diff.is_live() {
            return self.upgrade(hash, diff).await;
        }
        // Compiling may resolve host names, which blocks: keep it off the
        // runtime's worker threads.
        let metrics = self.state.metrics.clone();
        let previous = current.clone();
        let built =
            tokio::task::spawn_blocking(move || Snapshot::build(config, &metrics, Some(&previous)))
                .await
                .map_err(|e| ReloadError::Read {
                    path: file,
                    source: std::io::Error::other(e.to_string()),
                })??;
        let mut snapshot = built;
        snapshot.hash = Arc::from(hash.as_str());
        let fresh: Vec<Arc<upstream::UpstreamSet>> = snapshot
            .upstreams
            .iter()
            .filter(|s| !current.upstreams.iter().any(|o| Arc::ptr_eq(o, s)))
            .cloned()
            .collect();
        upstream::start_background(&fresh);
        self.state.metrics.set_config_hash(&current.hash, &hash);
        self.state.snapshot.store(Arc::new(snapshot));
        let mut changes = diff.live;
        if changes.is_empty() {
            changes.push("no effective change (formatting or comments)".into());
        }
        Ok(ReloadReport {
            hash,
            changes,
            upgraded_to: None,
        })
    }

    /// Applies `diff` by handing over to a new process that reads the file
    /// itself, or refuses it when this process cannot upgrade in place.
    async fn upgrade(&self, hash: String, diff: ConfigDiff) -> Result<ReloadReport, ReloadError> {
        let Some(successor) = self.successor.get().cloned() else {
            return Err(ReloadError::NeedsRestart(diff.restart));
        };
        tracing::info!(
            changes = %diff.restart.join("; "),
            "these changes need a new process: upgrading in place"
        );
        let done = tokio::task::spawn_blocking(move || successor.start(false, UPGRADE_TIMEOUT))
            .await
            .unwrap_or_else(|e| Err(UpgradeError::Protocol(e.to_string())))
            .map_err(ReloadError::Upgrade)?;
        self.handed_over.store(done.pid, Ordering::Release);
        let mut changes = diff.restart;
        changes.extend(diff.live);
        Ok(ReloadReport {
            hash,
            changes,
            upgraded_to: Some(done.pid),
        })
    }

    /// Watches the file and reloads when it changes, until the state is
    /// dropped. Compares modification time, size and (on a change) content,
    /// so touching the file without changing it does nothing.
    pub async fn watch(self: Arc<Self>) {
        let mut last = stamp(&self.path);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Arc::strong_count(&self.state) == 1
                || self.state.is_draining()
                || self.successor_pid().is_some()
            {
                return;
            }
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            // Wait until the writer is done.
            tokio::time::sleep(DEBOUNCE).await;
            let settled = stamp(&self.path);
            if settled != now {
                continue;
            }
            last = settled;
            if now.is_some() {
                let _ = self.reload("file").await;
            }
        }
    }
}

/// Modification time and size, or None when the file is missing (mid-way
/// through a rename by an editor).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The hash `GET /status` and `weir_config_info` show: stable across
/// processes for the same file content, so a fleet can be compared.
pub fn config_hash(text: &str) -> String {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7765_6972, 0x636f_6e66);
    h.write(text.as_bytes());
    format!("{:016x}", h.finish())
}
