//! The audit log: one JSON line per control-plane call, and per fleet
//! provisioning request over MQTT (what makes certificates and things), in
//! `audit.jsonl` under the data directory, rotated by size
//! (`audit.jsonl.1` is the newest old file) and bounded in files.
//!
//! A dedicated thread writes, fed through a bounded channel, so that a slow
//! disk never holds up a call; a line that finds the channel full, or that
//! cannot be written, is counted in `edgegate_audit_dropped_total` and the
//! first failure of a run is logged.

use crate::metrics::Metrics;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

/// Lines waiting for the writer.
const QUEUE: usize = 1024;

/// RFC 3339 time now, as entries carry it.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One call, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339 time of the call.
    pub time: String,
    /// The access key id, `local` for the Unix socket, or the certificate
    /// id of a device that asked over MQTT.
    pub principal: String,
    /// The peer's address, when the call came over TCP.
    pub source: Option<String>,
    /// AWS's operation name (`UpdateCertificate`), or the method and path
    /// of a request that named no operation.
    pub operation: String,
    /// The ARNs the call acted on.
    pub resources: Vec<String>,
    /// `allow` or `deny` (the operator's policies), or `unauthenticated`;
    /// a device's request is `allow` (its policy let it publish).
    pub decision: &'static str,
    /// HTTP status of the answer (a device's: the `statusCode` AWS would give).
    pub status: u16,
    /// AWS's error code, when the call failed.
    pub error: Option<String>,
}

/// A handle to the audit writer; clones share it.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::SyncSender<Entry>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    /// Starts the writer for `dir/audit.jsonl`; it ends when the last handle goes.
    pub fn start(
        dir: &Path,
        max_bytes: u64,
        max_files: u32,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.jsonl");
        let (tx, rx) = mpsc::sync_channel::<Entry>(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("edgegate-audit".into())
            .spawn(move || {
                let mut log = Log {
                    path,
                    max_bytes,
                    max_files,
                    file: None,
                    size: 0,
                };
                let mut warned = false;
                while let Ok(entry) = rx.recv() {
                    if let Err(e) = log.append(&entry) {
                        m.audit_dropped.increment(1);
                        if !std::mem::replace(&mut warned, true) {
                            tracing::error!(error = %e, "audit log write failed; further failures are only counted");
                        }
                    }
                }
            })?;
        Ok(Self { tx, metrics })
    }

    /// Queues one line without waiting.
    pub fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.metrics.audit_dropped.increment(1);
        }
    }
}

struct Log {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: Option<std::fs::File>,
    size: u64,
}

impl Log {
    fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        if self.file.is_none() {
            let f = open_private(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.file = None;
            self.rotate()?;
            self.file = Some(open_private(&self.path)?);
            self.size = 0;
        }
        if let Some(f) = &mut self.file {
            f.write_all(&line)?;
            self.size += line.len() as u64;
        }
        Ok(())
    }

    /// `audit.jsonl` becomes `.1`, `.1` becomes `.2`, and so on; the
    /// oldest beyond `max_files` is removed.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.max_files == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            time: "2026-01-01T00:00:00Z".into(),
            principal: "local".into(),
            source: None,
            operation: format!("Op{n}"),
            resources: vec![],
            decision: "allow",
            status: 200,
            error: None,
        }
    }

    #[test]
    fn the_log_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = Log {
            path: path.clone(),
            max_bytes: 400,
            max_files: 2,
            file: None,
            size: 0,
        };
        for n in 0..40 {
            log.append(&entry(n)).expect("append");
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for name in &names {
            let len = std::fs::metadata(dir.path().join(name))
                .expect("meta")
                .len();
            assert!(len <= 400, "{name} has {len} bytes");
        }
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.trim_end().ends_with(r#""error":null}"#), "{newest}");
        assert!(newest.contains("\"Op39\""));
        let first: serde_json::Value =
            serde_json::from_str(newest.lines().next().expect("a line")).expect("json");
        assert_eq!(first["principal"], "local");
    }
}
