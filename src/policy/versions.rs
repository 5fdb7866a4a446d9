//! The versions of each named policy, as AWS IoT keeps them.
//!
//! `policies/NAME.json` stays the source of truth for what is enforced: it
//! holds the default version, and the directory watcher applies it to live
//! connections whether the API or an editor wrote it. The store keeps every
//! version (at most five) with its id and time, under `policy/NAME`.
//! [`Versions::sync`] reconciles the two: a file without a record gets
//! version 1, a hand edit becomes a new default version, and a removed file
//! removes the policy. API writes go to the file atomically (temporary
//! file, fsync, rename), then to the store, under one lock.

use super::document;
use crate::store::{Op, Store, now_ms};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Versions one policy may have.
pub const MAX_VERSIONS: usize = 5;

/// Largest document, in characters other than whitespace (AWS IoT's quota).
pub const MAX_DOCUMENT_CHARS: usize = 2048;

/// One version of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its id: 1, 2, ... never reused.
    pub id: u64,
    /// The document as written.
    pub text: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// A named policy with its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// The id of the version in force.
    pub default: u64,
    /// The id the next version gets.
    pub next: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Last change, ms since the epoch.
    pub modified_ms: u64,
}

impl Policy {
    /// The version in force.
    pub fn default_version(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == self.default)
    }

    /// One version.
    pub fn version(&self, id: u64) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }
}

/// Why a policy operation failed, in the classes AWS answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// No such policy or version (`ResourceNotFoundException`).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken (`ResourceAlreadyExistsException`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The document is not a valid policy (`MalformedPolicyException`).
    #[error("{0}")]
    Malformed(String),
    /// Five versions exist (`VersionsLimitExceededException`).
    #[error("{0}")]
    LimitExceeded(String),
    /// It is in use (`DeleteConflictException`).
    #[error("{0}")]
    DeleteConflict(String),
    /// Not acceptable as written (`InvalidRequestException`).
    #[error("{0}")]
    Invalid(String),
    /// The file could not be written.
    #[error("writing {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// What happened to a resource (a policy here, the registry's resources
/// too), for registry events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Made.
    Created,
    /// Changed.
    Updated,
    /// Removed.
    Deleted,
}

/// A policy that was made, changed (its versions, or which is the
/// default) or deleted, however: the API, the CLI or a hand edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    /// What happened.
    pub operation: Operation,
    /// The policy's name.
    pub name: String,
    /// Its default version after the change (before a deletion).
    pub default_version: u64,
}

/// Policy changes waiting for the events service; one that falls this far
/// behind misses some (and counts them).
const CHANGES: usize = 1024;

/// Every named policy's versions, kept in step with the policies directory.
pub struct Versions {
    dir: PathBuf,
    store: Store,
    policies: Mutex<BTreeMap<String, Policy>>,
    changes: tokio::sync::broadcast::Sender<PolicyChange>,
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions").field("dir", &self.dir).finish()
    }
}

const PREFIX: &str = "policy/";

impl Versions {
    /// The versions stored (registry records under `policy/`), reconciled
    /// with the files in `dir`.
    pub fn new(dir: &Path, store: Store, records: &[(String, Vec<u8>)]) -> Self {
        let policies = records
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(PREFIX)?;
                let p = serde_json::from_slice::<Policy>(v)
                    .map_err(|e| tracing::warn!(key = %k, error = %e, "unreadable policy record skipped"))
                    .ok()?;
                Some((name.to_owned(), p))
            })
            .collect();
        let v = Self {
            dir: dir.to_owned(),
            store,
            policies: Mutex::new(policies),
            changes: tokio::sync::broadcast::channel(CHANGES).0,
        };
        v.sync();
        v
    }

    /// Every policy change from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<PolicyChange> {
        self.changes.subscribe()
    }

    /// Tells the events service (if it listens) that `name` changed.
    fn announce(&self, operation: Operation, name: &str, p: &Policy) {
        let _ = self.changes.send(PolicyChange {
            operation,
            name: name.to_owned(),
            default_version: p.default,
        });
    }

    /// Brings the records in line with the files: what the directory holds
    /// is the default version of each policy.
    pub fn sync(&self) {
        let files = read_texts(&self.dir);
        let mut policies = self.policies.lock();
        let mut ops = Vec::new();
        let now = now_ms();
        for (name, text) in &files {
            let operation = if policies.contains_key(name) {
                Operation::Updated
            } else {
                Operation::Created
            };
            let p = policies.entry(name.clone()).or_insert_with(|| Policy {
                versions: Vec::new(),
                default: 0,
                next: 1,
                created_ms: now,
                modified_ms: now,
            });
            if p.default_version().is_some_and(|v| v.text == *text) {
                continue;
            }
            // A hand edit: the file's text becomes the new default version,
            // making room by forgetting the oldest other one.
            if p.versions.len() >= MAX_VERSIONS
                && let Some(i) = p.versions.iter().position(|v| v.id != p.default)
            {
                p.versions.remove(i);
            }
            add_version(p, text.clone(), true, now);
            ops.push(put(name, p));
            self.announce(operation, name, p);
        }
        let gone: Vec<String> = policies
            .keys()
            .filter(|n| !files.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(p) = policies.remove(&name) {
                self.announce(Operation::Deleted, &name, &p);
            }
            ops.push(Op::DelRegistry(format!("{PREFIX}{name}")));
        }
        if !ops.is_empty() {
            self.store.enqueue(ops);
        }
    }

    /// One policy.
    pub fn get(&self, name: &str) -> Result<Policy, VersionError> {
        self.policies
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| no_policy(name))
    }

    /// Every policy, by name.
    pub fn list(&self) -> Vec<(String, Policy)> {
        self.policies
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Creates a policy with `text` as version 1.
    pub fn create(&self, name: &str, text: &str) -> Result<Policy, VersionError> {
        if !crate::config::valid_policy_name(name) {
            return Err(VersionError::Invalid(format!(
                "`{name}` is not a valid policy name ([\\w+=,.@-], 1 to 128)"
            )));
        }
        validate(text)?;
        let mut policies = self.policies.lock();
        if policies.contains_key(name) || self.file(name).exists() {
            return Err(VersionError::AlreadyExists(format!(
                "Policy cannot be created - name already exists (name={name})"
            )));
        }
        let now = now_ms();
        let mut p = Policy {
            versions: Vec::new(),
            default: 0,
            next: 1,
            created_ms: now,
            modified_ms: now,
        };
        add_version(&mut p, text.to_owned(), true, now);
        self.write_file(name, text)?;
        self.store.enqueue(vec![put(name, &p)]);
        self.announce(Operation::Created, name, &p);
        policies.insert(name.to_owned(), p.clone());
        Ok(p)
    }

    /// Adds a version; with `set_default` it is written to the file and enforced.
    pub fn create_version(
        &self,
        name: &str,
        text: &str,
        set_default: bool,
    ) -> Result<Version, VersionError> {
        validate(text)?;
        self.change(name, |p| {
            if p.versions.len() >= MAX_VERSIONS {
                return Err(VersionError::LimitExceeded(format!(
                    "The policy {name} already has the maximum number of versions ({MAX_VERSIONS})"
                )));
            }
            Ok(add_version(p, text.to_owned(), set_default, now_ms()).clone())
        })
    }

    /// Makes a version the one in force.
    pub fn set_default(&self, name: &str, id: u64) -> Result<(), VersionError> {
        self.change(name, |p| {
            p.version(id).ok_or_else(|| no_version(name, id))?;
            p.default = id;
            p.modified_ms = now_ms();
            Ok(())
        })
    }

    /// Deletes a version other than the default.
    pub fn delete_version(&self, name: &str, id: u64) -> Result<(), VersionError> {
        self.change(name, |p| {
            p.version(id).ok_or_else(|| no_version(name, id))?;
            if id == p.default {
                return Err(VersionError::DeleteConflict(
                    "Cannot delete the default version of a policy".into(),
                ));
            }
            p.versions.retain(|v| v.id != id);
            p.modified_ms = now_ms();
            Ok(())
        })
    }

    /// Deletes a policy that has only its default version; `attached` says
    /// whether a target still has it, checked under the lock.
    pub fn delete(&self, name: &str, attached: impl FnOnce() -> bool) -> Result<(), VersionError> {
        let mut policies = self.policies.lock();
        let p = policies.get(name).ok_or_else(|| no_policy(name))?;
        if attached() {
            return Err(VersionError::DeleteConflict(format!(
                "The policy cannot be deleted as the policy is attached to one or more principals (name={name})"
            )));
        }
        if p.versions.len() > 1 {
            return Err(VersionError::DeleteConflict(format!(
                "Cannot delete the policy because versions other than the default version exist (name={name})"
            )));
        }
        let file = self.file(name);
        std::fs::remove_file(&file).map_err(|e| io_error(&file, &e))?;
        self.announce(Operation::Deleted, name, p);
        policies.remove(name);
        self.store
            .enqueue(vec![Op::DelRegistry(format!("{PREFIX}{name}"))]);
        Ok(())
    }

    /// Applies `change` to a policy; if the default version's text changed,
    /// the file is rewritten before the record.
    fn change<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut Policy) -> Result<T, VersionError>,
    ) -> Result<T, VersionError> {
        let mut policies = self.policies.lock();
        let p = policies.get_mut(name).ok_or_else(|| no_policy(name))?;
        let mut next = p.clone();
        let out = change(&mut next)?;
        let text = next.default_version().map(|v| &v.text);
        if let Some(text) = text
            && Some(text) != p.default_version().map(|v| &v.text)
        {
            self.write_file(name, text)?;
        }
        *p = next;
        self.store.enqueue(vec![put(name, p)]);
        self.announce(Operation::Updated, name, p);
        Ok(out)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes the file whole or not at all: a temporary file beside it
    /// (which the loader ignores), flushed, then renamed over it.
    fn write_file(&self, name: &str, text: &str) -> Result<(), VersionError> {
        let file = self.file(name);
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::File::create(&tmp))
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &file))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(&file, &e)
        })
    }
}

fn io_error(file: &Path, e: &std::io::Error) -> VersionError {
    VersionError::Io {
        path: file.display().to_string(),
        message: e.to_string(),
    }
}

fn no_policy(name: &str) -> VersionError {
    VersionError::NotFound(format!("The policy {name} does not exist"))
}

fn no_version(name: &str, id: u64) -> VersionError {
    VersionError::NotFound(format!("The policy {name} has no version {id}"))
}

fn add_version(p: &mut Policy, text: String, set_default: bool, now: u64) -> &Version {
    let id = p.next;
    p.next += 1;
    p.versions.push(Version {
        id,
        text,
        created_ms: now,
    });
    if set_default {
        p.default = id;
    }
    p.modified_ms = now;
    &p.versions[p.versions.len() - 1]
}

fn put(name: &str, p: &Policy) -> Op {
    Op::PutRegistry(
        format!("{PREFIX}{name}"),
        serde_json::to_vec(p).unwrap_or_default(),
    )
}

/// Checks a document as CreatePolicy does: its size, then its grammar,
/// every problem in one message.
pub fn validate(text: &str) -> Result<document::Document, VersionError> {
    let chars = text.chars().filter(|c| !c.is_whitespace()).count();
    if chars > MAX_DOCUMENT_CHARS {
        return Err(VersionError::Malformed(format!(
            "Policy document is {chars} characters long (without whitespace); the limit is {MAX_DOCUMENT_CHARS}"
        )));
    }
    document::parse(text).map_err(|errors| {
        VersionError::Malformed(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The text of every `NAME.json` with a valid name in `dir`.
fn read_texts(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension().is_none_or(|x| x != "json") {
                return None;
            }
            let name = path.file_stem()?.to_str()?.to_owned();
            if !crate::config::valid_policy_name(&name) {
                return None;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            Some((name, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    const DOC: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
    const DOC2: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"iot:Connect","Resource":"*"}]}"#;

    fn versions(dir: &Path) -> (Versions, tempfile::TempDir) {
        let db = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            Store::open(&db.path().join("db"), false, Arc::new(Metrics::new())).expect("store");
        (Versions::new(dir, store, &[]), db)
    }

    #[test]
    fn versions_live_in_the_file_and_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, _db) = versions(dir.path());
        v.create("p", DOC).expect("create");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p.json")).expect("file"),
            DOC
        );
        assert!(matches!(
            v.create("p", DOC),
            Err(VersionError::AlreadyExists(_))
        ));
        let second = v.create_version("p", DOC2, false).expect("version 2");
        assert_eq!(second.id, 2);
        // Not the default: the file still enforces version 1.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p.json")).expect("file"),
            DOC
        );
        v.set_default("p", 2).expect("default");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p.json")).expect("file"),
            DOC2
        );
        assert!(matches!(
            v.delete_version("p", 2),
            Err(VersionError::DeleteConflict(_))
        ));
        assert!(matches!(
            v.delete("p", || false),
            Err(VersionError::DeleteConflict(_))
        ));
        for _ in 0..3 {
            v.create_version("p", DOC, false).expect("room");
        }
        assert!(matches!(
            v.create_version("p", DOC, false),
            Err(VersionError::LimitExceeded(_))
        ));
        assert!(matches!(
            v.delete("p", || true),
            Err(VersionError::DeleteConflict(_))
        ));
        for id in [1, 3, 4, 5] {
            v.delete_version("p", id).expect("delete version");
        }
        v.delete("p", || false).expect("delete");
        assert!(!dir.path().join("p.json").exists());
        assert!(matches!(v.get("p"), Err(VersionError::NotFound(_))));
    }

    #[test]
    fn a_hand_edit_becomes_the_default_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hand.json"), DOC).expect("write");
        let (v, _db) = versions(dir.path());
        assert_eq!(v.get("hand").expect("known").default, 1);
        std::fs::write(dir.path().join("hand.json"), DOC2).expect("write");
        v.sync();
        let p = v.get("hand").expect("known");
        assert_eq!((p.default, p.versions.len()), (2, 2));
        assert_eq!(p.default_version().map(|d| d.text.as_str()), Some(DOC2));
        std::fs::remove_file(dir.path().join("hand.json")).expect("rm");
        v.sync();
        assert!(v.get("hand").is_err());
    }

    #[test]
    fn malformed_and_oversize_documents_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v, _db) = versions(dir.path());
        let Err(VersionError::Malformed(m)) =
            v.create("p", r#"{"Statement":[{"Effect":"Maybe"}]}"#)
        else {
            panic!("malformed accepted");
        };
        assert!(m.contains("statement 0"), "{m}");
        let big = format!(
            r#"{{"Statement":[{{"Effect":"Allow","Action":"iot:Publish","Resource":"{}"}}]}}"#,
            "a".repeat(2100)
        );
        assert!(matches!(
            v.create("p", &big),
            Err(VersionError::Malformed(_))
        ));
        assert!(!dir.path().join("p.json").exists());
    }
}
