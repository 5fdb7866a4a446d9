//! Watches the policies directory and reloads it when files change.
//!
//! Editors save in several steps (a temporary file, then a rename), so
//! events are debounced: the reload runs once the directory has been quiet
//! for [`DEBOUNCE`], well within the second a change may take to apply.
//! The watching thread ends when the [`Watch`] is dropped.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use tokio::time::Instant;

/// Quiet time after the last event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// A running watch; dropping it stops watching.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

/// Calls `reload` after every burst of changes in `dir`, or only of the
/// file named `only` there: a log written beside a configuration file must
/// not reload the configuration with every line.
pub fn watch(
    dir: &Path,
    only: Option<OsString>,
    reload: impl Fn() + Send + 'static,
) -> notify::Result<Watch> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    // Opening or reading a file is no change (the reload itself reads the
    // files, and would otherwise set off the next reload); a write that
    // closes is.
    let relevant = move |e: &notify::Result<notify::Event>| {
        let Ok(e) = e else { return true };
        let change = match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        change
            && only
                .as_ref()
                .is_none_or(|name| e.paths.iter().any(|p| p.file_name() == Some(name)))
    };
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("edgegate-policy-watch".into())
        .spawn(move || {
            // Ends when the watcher, and with it the sender, is dropped.
            while let Ok(e) = rx.recv() {
                if !relevant(&e) {
                    continue;
                }
                let mut quiet_at = Instant::now() + DEBOUNCE;
                loop {
                    match rx.recv_timeout(quiet_at.saturating_duration_since(Instant::now())) {
                        Ok(e) if relevant(&e) => quiet_at = Instant::now() + DEBOUNCE,
                        Ok(_) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                reload();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(Watch { _watcher: watcher })
}
