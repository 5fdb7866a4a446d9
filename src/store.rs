//! Durable state: retained messages, persistent sessions and their queued
//! messages, in one redb database.
//!
//! Design:
//! - One writer thread owns every write transaction. Callers send batches of
//!   [`Op`]s over a bounded channel; the writer takes every batch that is
//!   already waiting, applies them all in one transaction and commits once
//!   (group commit), then tells each caller. While one commit is being
//!   fsynced the next group gathers, so the fsync rate adapts to the load.
//! - A caller that must not acknowledge before its data is durable (a QoS 1/2
//!   publish) awaits the [`Commit`] of its batch; one that only tidies up (a
//!   delivered message) does not wait.
//! - Records are opaque bytes to the store; their owners encode them.
//!
//! Tables: `retained` (topic → record), `sessions` (client id → record) and
//! `queue` ((client id, sequence) → record), so a session's messages are one
//! ordered range; `registry`, `spool`, and `shadows` (thing and shadow name →
//! document, kept after a delete so that versions never go back).

use crate::metrics::Metrics;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

const RETAINED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");
const QUEUE: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("queue");
const REGISTRY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registry");
const SPOOL: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("spool");
const SHADOWS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("shadows");

/// Batches waiting for the writer. Past it, durable writes are refused
/// (`StoreError::Busy`); tidying writes are still queued, in order, since
/// each one stands for state that is already bounded elsewhere (a delivered
/// message, a session) and refusing it would leave that state behind.
const WRITER_QUEUE: usize = 65_536;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// Database file.
        path: String,
        /// Cause.
        source: Box<redb::DatabaseError>,
    },
    /// A transaction failed (disk full, IO error, corruption).
    #[error("store transaction failed: {0}")]
    Transaction(String),
    /// Another process (a running gateway) has the database open.
    #[error("store {0} is in use by another process")]
    Locked(String),
    /// The writer thread has stopped.
    #[error("store writer has stopped")]
    Closed,
    /// The writer is this far behind; the write was not queued.
    #[error("store writer queue is full")]
    Busy,
    /// A bounded queue in front of the store (the rules engine, a spool
    /// that refuses new records) is full; the write was not queued.
    #[error("{0} is full")]
    Full(String),
}

fn txn_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transaction(e.to_string())
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store or replace the retained message of a topic.
    PutRetained(String, Vec<u8>),
    /// Clear the retained message of a topic.
    DelRetained(String),
    /// Store or replace a session record.
    PutSession(Arc<str>, Vec<u8>),
    /// Delete a session with every message queued for it.
    DelSession(Arc<str>),
    /// Queue a message for a session under a sequence number.
    PutQueued(Arc<str>, u64, Arc<[u8]>),
    /// Remove a delivered message.
    DelQueued(Arc<str>, u64),
    /// Store or replace a registry record (`cert/<id>`, `thing/<name>`).
    PutRegistry(String, Vec<u8>),
    /// Delete a registry record.
    DelRegistry(String),
    /// Append a record to a spool under a sequence number.
    PutSpool(Arc<str>, u64, Arc<[u8]>),
    /// Remove a delivered (or given up) record from a spool.
    DelSpool(Arc<str>, u64),
    /// Store or replace a device shadow (its key names thing and shadow).
    PutShadow(String, Vec<u8>),
    /// Forget a device shadow (a tombstone past its time).
    DelShadow(String),
}

/// Milliseconds since the Unix epoch: how every record keeps time.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// Resolves when a batch is durable.
pub type Commit = oneshot::Receiver<Result<(), Arc<StoreError>>>;

struct Batch {
    ops: Vec<Op>,
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

enum Msg {
    Batch(Batch),
    /// Commit what is queued, close the database and say so.
    Close(oneshot::Sender<()>),
}

/// What was durable when the gateway started.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Retained messages by topic.
    pub retained: Vec<(String, Vec<u8>)>,
    /// Sessions with their queued messages in order.
    pub sessions: Vec<StoredSession>,
    /// Registry records by key.
    pub registry: Vec<(String, Vec<u8>)>,
    /// Spool records: (spool, sequence, record), in order.
    pub spools: Vec<(String, u64, Vec<u8>)>,
    /// Device shadows by key.
    pub shadows: Vec<(String, Vec<u8>)>,
}

/// One persistent session as stored.
#[derive(Debug)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: String,
    /// The session record.
    pub record: Vec<u8>,
    /// Queued messages, by sequence number.
    pub queue: Vec<(u64, Vec<u8>)>,
}

/// A cheap handle to the store; clones share one writer.
#[derive(Clone)]
pub struct Store {
    /// One FIFO for every write, so writes apply in the order they were queued.
    tx: mpsc::UnboundedSender<Msg>,
    /// Batches sent and not yet taken by the writer: the queue's bound.
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the database, reads what it holds, and starts its writer thread.
    ///
    /// With `fsync` false, commits are not flushed to disk: faster, but a
    /// crash of the machine loses what was acknowledged.
    pub fn open(
        path: &Path,
        fsync: bool,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Snapshot), StoreError> {
        let path = path.to_owned();
        Self::start(
            move || {
                Database::create(&path).map_err(|e| match e {
                    redb::DatabaseError::DatabaseAlreadyOpen => {
                        StoreError::Locked(path.display().to_string())
                    }
                    e => StoreError::Open {
                        path: path.display().to_string(),
                        source: Box::new(e),
                    },
                })
            },
            fsync,
            metrics,
        )
    }

    /// Starts the writer on a database that `open` (re)opens. After a failed
    /// commit (a full disk, an IO error) redb refuses further writes until
    /// the database is opened again, so the writer reopens it before the
    /// next group, and keeps answering every group with the error until that
    /// succeeds: nothing is acknowledged that was not written.
    fn start(
        open: impl Fn() -> Result<Database, StoreError> + Send + 'static,
        fsync: bool,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Snapshot), StoreError> {
        let db = open()?;
        {
            let txn = db.begin_write().map_err(txn_err)?;
            txn.open_table(RETAINED).map_err(txn_err)?;
            txn.open_table(SESSIONS).map_err(txn_err)?;
            txn.open_table(QUEUE).map_err(txn_err)?;
            txn.open_table(REGISTRY).map_err(txn_err)?;
            txn.open_table(SPOOL).map_err(txn_err)?;
            txn.open_table(SHADOWS).map_err(txn_err)?;
            txn.commit().map_err(txn_err)?;
        }
        let snapshot = snapshot(&db)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name("edgegate-store".into())
            .spawn(move || writer(db, open, rx, &taken, fsync, metrics))
            .map_err(txn_err)?;
        Ok((Self { tx, queued }, snapshot))
    }

    /// Queues `ops` at once and returns a [`Commit`] that resolves when they
    /// are durable. Never waits: ops queued one after the other (from any
    /// thread) are applied in that order, which is what lets callers keep
    /// memory and store in step by queueing under their own locks.
    pub fn try_submit(&self, ops: Vec<Op>) -> Result<Commit, StoreError> {
        let (done, commit) = oneshot::channel();
        let batch = Batch {
            ops,
            done: Some(done),
        };
        if self.queued.load(Ordering::Relaxed) >= WRITER_QUEUE {
            return Err(StoreError::Busy);
        }
        self.send(batch)?;
        Ok(commit)
    }

    /// Resolves once everything queued so far is on disk: batches commit in
    /// order, so an empty one committing means every earlier one did. The
    /// error says why not, in words.
    pub async fn barrier(&self) -> Result<(), String> {
        let commit = self.try_submit(Vec::new()).map_err(|e| e.to_string())?;
        match commit.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(StoreError::Closed.to_string()),
        }
    }

    /// Queues `ops` that need no acknowledgement (tidying up after delivery,
    /// session records), in order with every other op, even past the queue's
    /// bound (see [`WRITER_QUEUE`]).
    pub fn enqueue(&self, ops: Vec<Op>) {
        // After `close` there is no writer left to tell.
        let _ = self.send(Batch { ops, done: None });
    }

    fn send(&self, batch: Batch) -> Result<(), StoreError> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Msg::Batch(batch)).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            StoreError::Closed
        })
    }

    /// Commits everything queued so far and closes the database file.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// Reads everything durable; used once at startup.
fn snapshot(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(txn_err)?;
    let mut snap = Snapshot::default();
    let retained = txn.open_table(RETAINED).map_err(txn_err)?;
    for row in retained.iter().map_err(txn_err)? {
        let (k, v) = row.map_err(txn_err)?;
        snap.retained
            .push((k.value().to_owned(), v.value().to_vec()));
    }
    let spool = txn.open_table(SPOOL).map_err(txn_err)?;
    for row in spool.iter().map_err(txn_err)? {
        let (k, v) = row.map_err(txn_err)?;
        let (name, seq) = k.value();
        snap.spools.push((name.to_owned(), seq, v.value().to_vec()));
    }
    let registry = txn.open_table(REGISTRY).map_err(txn_err)?;
    for row in registry.iter().map_err(txn_err)? {
        let (k, v) = row.map_err(txn_err)?;
        snap.registry
            .push((k.value().to_owned(), v.value().to_vec()));
    }
    let shadows = txn.open_table(SHADOWS).map_err(txn_err)?;
    for row in shadows.iter().map_err(txn_err)? {
        let (k, v) = row.map_err(txn_err)?;
        snap.shadows
            .push((k.value().to_owned(), v.value().to_vec()));
    }
    let sessions = txn.open_table(SESSIONS).map_err(txn_err)?;
    let queue = txn.open_table(QUEUE).map_err(txn_err)?;
    for row in sessions.iter().map_err(txn_err)? {
        let (k, v) = row.map_err(txn_err)?;
        let client_id = k.value().to_owned();
        let mut stored = Vec::new();
        for q in queue
            .range((client_id.as_str(), 0)..=(client_id.as_str(), u64::MAX))
            .map_err(txn_err)?
        {
            let (qk, qv) = q.map_err(txn_err)?;
            stored.push((qk.value().1, qv.value().to_vec()));
        }
        snap.sessions.push(StoredSession {
            client_id,
            record: v.value().to_vec(),
            queue: stored,
        });
    }
    Ok(snap)
}

/// The writer loop: gather every waiting batch, apply in one transaction, commit, notify.
fn writer(
    db: Database,
    open: impl Fn() -> Result<Database, StoreError>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    queued: &AtomicUsize,
    fsync: bool,
    metrics: Arc<Metrics>,
) {
    let mut db = Some(db);
    let mut group = Vec::new();
    let mut close = None;
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Batch(b) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    group.push(b);
                }
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if group.len() < WRITER_QUEUE {
                next = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
        }
        if db.is_none() {
            db = open().ok();
        }
        let result = match &db {
            Some(d) => apply(d, &group, fsync),
            None => Err(StoreError::Transaction(
                "database could not be reopened".into(),
            )),
        }
        .map_err(Arc::new);
        match &result {
            Ok(()) => metrics.store_commits.increment(1),
            Err(e) => {
                metrics.store_errors.increment(1);
                tracing::error!(error = %e, "store commit failed");
                // Drop it now so the next group starts from a reopened database.
                db = None;
            }
        }
        for batch in group.drain(..) {
            if let Some(done) = batch.done {
                let _ = done.send(result.clone());
            }
        }
    }
    drop(db);
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn apply(db: &Database, group: &[Batch], fsync: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(txn_err)?;
    if !fsync {
        txn.set_durability(Durability::None).map_err(txn_err)?;
    }
    {
        let mut retained = txn.open_table(RETAINED).map_err(txn_err)?;
        let mut sessions = txn.open_table(SESSIONS).map_err(txn_err)?;
        let mut queue = txn.open_table(QUEUE).map_err(txn_err)?;
        let mut registry = txn.open_table(REGISTRY).map_err(txn_err)?;
        let mut spool = txn.open_table(SPOOL).map_err(txn_err)?;
        let mut shadows = txn.open_table(SHADOWS).map_err(txn_err)?;
        for op in group.iter().flat_map(|b| &b.ops) {
            match op {
                Op::PutRetained(topic, rec) => {
                    retained
                        .insert(topic.as_str(), rec.as_slice())
                        .map_err(txn_err)?;
                }
                Op::DelRetained(topic) => {
                    retained.remove(topic.as_str()).map_err(txn_err)?;
                }
                Op::PutSession(id, rec) => {
                    sessions.insert(&**id, rec.as_slice()).map_err(txn_err)?;
                }
                Op::DelSession(id) => {
                    sessions.remove(&**id).map_err(txn_err)?;
                    queue
                        .extract_from_if((&**id, 0)..=(&**id, u64::MAX), |_, _| true)
                        .map_err(txn_err)?
                        .for_each(drop);
                }
                Op::PutQueued(id, seq, rec) => {
                    queue.insert((&**id, *seq), &**rec).map_err(txn_err)?;
                }
                Op::DelQueued(id, seq) => {
                    queue.remove((&**id, *seq)).map_err(txn_err)?;
                }
                Op::PutRegistry(key, rec) => {
                    registry
                        .insert(key.as_str(), rec.as_slice())
                        .map_err(txn_err)?;
                }
                Op::DelRegistry(key) => {
                    registry.remove(key.as_str()).map_err(txn_err)?;
                }
                Op::PutSpool(name, seq, rec) => {
                    spool.insert((&**name, *seq), &**rec).map_err(txn_err)?;
                }
                Op::DelSpool(name, seq) => {
                    spool.remove((&**name, *seq)).map_err(txn_err)?;
                }
                Op::PutShadow(key, rec) => {
                    shadows
                        .insert(key.as_str(), rec.as_slice())
                        .map_err(txn_err)?;
                }
                Op::DelShadow(key) => {
                    shadows.remove(key.as_str()).map_err(txn_err)?;
                }
            }
        }
    }
    txn.commit().map_err(txn_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use redb::StorageBackend;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// In-memory storage that runs out of space at `limit` bytes.
    #[derive(Debug, Clone, Default)]
    struct Disk {
        bytes: Arc<Mutex<Vec<u8>>>,
        limit: Arc<AtomicU64>,
    }

    impl Disk {
        fn full(&self, at: u64) -> std::io::Result<()> {
            if at > self.limit.load(Ordering::Relaxed) {
                Err(std::io::Error::from_raw_os_error(28))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Disk {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.bytes.lock().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let bytes = self.bytes.lock();
            let start = offset as usize;
            let src = bytes
                .get(start..start + out.len())
                .ok_or_else(|| std::io::Error::other("read past the end"))?;
            out.copy_from_slice(src);
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.full(len)?;
            self.bytes.lock().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.full(offset + data.len() as u64)?;
            let mut bytes = self.bytes.lock();
            let end = offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_full_disk_fails_commits_without_losing_what_was_written() {
        let disk = Disk::default();
        disk.limit.store(u64::MAX, Ordering::Relaxed);
        let opener = disk.clone();
        let open = move || {
            redb::Builder::new()
                .create_with_backend(opener.clone())
                .map_err(|e| StoreError::Open {
                    path: "memory".into(),
                    source: Box::new(e),
                })
        };
        let (store, _) = Store::start(open, true, Arc::new(Metrics::new())).expect("start");
        let put = |i: u32| vec![Op::PutRetained(format!("t/{i}"), vec![7u8; 4096])];
        let write = |i| store.try_submit(put(i)).expect("queued");
        write(0).await.expect("sent").expect("written");
        // The disk fills up: commits fail and say so.
        let used = disk.bytes.lock().len() as u64;
        disk.limit.store(used, Ordering::Relaxed);
        // Every write acknowledged while the disk is full must be there later.
        let mut acknowledged = vec![0];
        let mut failed = 0;
        for i in 1..50 {
            match write(i).await.expect("sent") {
                Ok(()) => acknowledged.push(i),
                Err(_) => failed += 1,
            }
        }
        assert!(failed > 0, "a full disk must fail commits");
        // Space comes back: writes succeed again and the first record is intact.
        disk.limit.store(u64::MAX, Ordering::Relaxed);
        write(100).await.expect("sent").expect("written again");
        store.close().await;
        let (_store, snap) = Store::start(
            move || {
                redb::Builder::new()
                    .create_with_backend(disk.clone())
                    .map_err(|e| StoreError::Open {
                        path: "memory".into(),
                        source: Box::new(e),
                    })
            },
            true,
            Arc::new(Metrics::new()),
        )
        .expect("reopen");
        let topics: Vec<&str> = snap.retained.iter().map(|(t, _)| t.as_str()).collect();
        acknowledged.push(100);
        for i in acknowledged {
            let topic = format!("t/{i}");
            assert!(topics.contains(&topic.as_str()), "{topic} lost: {topics:?}");
        }
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_deletes_cascade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let metrics = Arc::new(Metrics::new());
        {
            let (store, _) = Store::open(&path, true, metrics.clone()).expect("open");
            let id: Arc<str> = "dev".into();
            let ops = vec![
                Op::PutRetained("a/b".into(), b"r".to_vec()),
                Op::PutSession(id.clone(), b"s".to_vec()),
                Op::PutQueued(id.clone(), 2, Arc::from(&b"m2"[..])),
                Op::PutQueued(id.clone(), 1, Arc::from(&b"m1"[..])),
                Op::PutSession("gone".into(), b"s".to_vec()),
                Op::PutQueued("gone".into(), 1, Arc::from(&b"x"[..])),
                Op::PutRegistry("thing/a".into(), b"{}".to_vec()),
                Op::PutRegistry("thing/b".into(), b"{}".to_vec()),
            ];
            let commit = store.try_submit(ops).expect("queued");
            commit.await.expect("sent").expect("durable");
            let commit = store
                .try_submit(vec![
                    Op::DelSession("gone".into()),
                    Op::DelQueued(id, 2),
                    Op::DelRegistry("thing/b".into()),
                ])
                .expect("queued");
            commit.await.expect("sent").expect("durable");
            store.close().await;
        }
        let (_store, snap) = Store::open(&path, true, metrics).expect("reopen");
        assert_eq!(snap.retained, vec![("a/b".to_owned(), b"r".to_vec())]);
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.sessions[0].client_id, "dev");
        assert_eq!(snap.sessions[0].queue, vec![(1, b"m1".to_vec())]);
        assert_eq!(snap.registry, vec![("thing/a".to_owned(), b"{}".to_vec())]);
    }

    /// Tidying writes queued far past the bound, from outside any runtime,
    /// still apply in order: the last write to a key is the one that stays.
    #[test]
    fn queued_writes_apply_in_order_past_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let metrics = Arc::new(Metrics::new());
        let last = 2 * WRITER_QUEUE as u64 + 2;
        {
            let (store, _) = Store::open(&path, false, metrics.clone()).expect("open");
            for i in 0..=last {
                store.enqueue(vec![if i % 2 == 0 {
                    Op::PutRetained("t".into(), i.to_be_bytes().to_vec())
                } else {
                    Op::DelRetained("t".into())
                }]);
            }
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(store.close());
        }
        let (_store, snap) = Store::open(&path, false, metrics).expect("reopen");
        assert_eq!(
            snap.retained,
            vec![("t".to_owned(), last.to_be_bytes().to_vec())]
        );
    }
}
