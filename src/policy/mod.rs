//! AWS IoT policies: documents, compilation per connection, evaluation.
//!
//! Parse, compile, evaluate: [`document`] turns JSON into a validated
//! model, [`compile`] specialises every document that applies to one
//! connection (variables, conditions, ARN heads), and [`eval`] decides
//! requests against the result without allocating.

pub mod compile;
pub mod document;
pub mod eval;
pub mod versions;
pub mod vocabulary;
pub mod watch;

/// Puts the policies directory in force for live connections at once, so
/// that a policy just written applies before the call that wrote it
/// returns (the directory watcher would apply it too, a moment later).
pub type Enforce = std::sync::Arc<dyn Fn() + Send + Sync>;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// A problem in one policy file.
#[derive(Debug, Clone)]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, and where.
    pub error: document::PolicyError,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.error)
    }
}

/// The policies of a directory: `NAME.json` holds the policy `NAME`.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Valid documents by policy name.
    pub documents: BTreeMap<Arc<str>, Arc<document::Document>>,
    /// Every problem found, per file; a file with problems is left out.
    pub errors: Vec<FileError>,
}

/// Reads every `*.json` file of `dir` (other files are ignored).
pub fn load_dir(dir: &Path) -> Policies {
    let mut out = Policies::default();
    let error = |file: &Path, message: String| FileError {
        file: file.to_owned(),
        error: document::PolicyError {
            statement: None,
            position: None,
            message,
        },
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.errors
                .push(error(dir, format!("cannot read the directory: {e}")));
            return out;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        let Some(name) = file.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !crate::config::valid_policy_name(name) {
            out.errors.push(error(
                &file,
                format!("`{name}` is not a valid policy name ([A-Za-z0-9_+=,.@-], 1 to 128)"),
            ));
            continue;
        }
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                out.errors.push(error(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        match document::parse(&text) {
            Ok(doc) => {
                out.documents.insert(name.into(), Arc::new(doc));
            }
            Err(errors) => out.errors.extend(errors.into_iter().map(|error| FileError {
                file: file.clone(),
                error,
            })),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let loaded = load_dir(&dir);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.documents.contains_key("device"));
        let operators = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("operator-policies"));
        assert!(operators.errors.is_empty(), "{:?}", operators.errors);
        assert_eq!(operators.documents.len(), 2);
    }

    #[test]
    fn connections_that_agree_on_what_their_policies_read_share_one_set() {
        let doc = |text: &str| Arc::new(document::parse(text).expect("valid policy"));
        let mut documents = BTreeMap::new();
        documents.insert(
            Arc::from("own"),
            doc(r#"{"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*"},
                {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/site/*",
                 "Condition": {"StringEquals": {"iot:Connection.Thing.Attributes[site]": "berlin"}}}]}"#),
        );
        documents.insert(
            Arc::from("open"),
            doc(r#"{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}"#),
        );
        let store = PolicyStore::new(documents);
        let head = compile::ArnHead::new("us-east-1", "000000000000");
        let ctx = |client: &str, thing: &str, site: Option<&str>| {
            let mut ctx = compile::Context::new();
            ctx.set("iot:ClientId", client)
                .set("iot:Connection.Thing.ThingName", thing);
            if let Some(site) = site {
                ctx.set("iot:Connection.Thing.Attributes[site]", site);
            }
            ctx
        };
        let own = ["own".to_owned()];
        let snapshot = store.current();
        let a = snapshot.compile(&own, &head, &ctx("c-1", "lamp", Some("berlin")));
        // Another client id, which these policies do not read: the same set.
        let b = snapshot.compile(&own, &head, &ctx("c-2", "lamp", Some("berlin")));
        assert!(Arc::ptr_eq(&a, &b));
        // Another thing, or another site, or none: sets of their own.
        let other_thing = snapshot.compile(&own, &head, &ctx("c-1", "fan", Some("berlin")));
        let other_site = snapshot.compile(&own, &head, &ctx("c-1", "lamp", Some("paris")));
        let no_site = snapshot.compile(&own, &head, &ctx("c-1", "lamp", None));
        for set in [&other_thing, &other_site, &no_site] {
            assert!(!Arc::ptr_eq(&a, set));
        }
        let publish = |set: &eval::PolicySet, topic: &str| {
            set.decide(eval::Action::Publish, eval::ResourceType::Topic, topic)
                .is_allowed()
        };
        assert!(publish(&a, "things/lamp/state") && publish(&a, "site/x"));
        assert!(
            !publish(&other_thing, "things/lamp/state") && publish(&other_thing, "things/fan/x")
        );
        assert!(!publish(&other_site, "site/x") && !publish(&no_site, "site/x"));
        // Other policies, the same context: another set.
        let open = snapshot.compile(
            &["open".to_owned()],
            &head,
            &ctx("c-1", "lamp", Some("berlin")),
        );
        assert!(!Arc::ptr_eq(&a, &open) && publish(&open, "anything"));
        // A set goes with the last connection that held it.
        let weak = Arc::downgrade(&other_thing);
        drop(other_thing);
        assert!(weak.upgrade().is_none());
        let again = snapshot.compile(&own, &head, &ctx("c-9", "fan", Some("berlin")));
        assert!(publish(&again, "things/fan/x"));
    }

    #[test]
    fn a_directory_reports_every_bad_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = r#"{"Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}}"#;
        std::fs::write(dir.path().join("good.json"), ok).expect("write");
        std::fs::write(dir.path().join("broken.json"), "{").expect("write");
        std::fs::write(dir.path().join("bad name!.json"), ok).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let loaded = load_dir(dir.path());
        assert_eq!(
            loaded.documents.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["good"]
        );
        let text: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("broken.json") && t.contains("line 1"))
        );
        assert!(text.iter().any(|t| t.contains("not a valid policy name")));
    }
}

/// One generation of loaded policies.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every reload.
    pub generation: u64,
    /// Documents by policy name.
    pub documents: BTreeMap<Arc<str>, Arc<document::Document>>,
    /// Sets compiled from this generation, for connections to share.
    shared: parking_lot::Mutex<SharedSets>,
}

/// Most distinct compiled sets a generation keeps for sharing; past it a
/// connection whose set matches none kept compiles one of its own.
const SHARED_SETS: usize = 16_384;

/// Compiled sets by what they were compiled from: the policies' names and
/// the context's values of every key those policies use. Two connections
/// that agree on both compile to the same set, so they hold one between
/// them (devices under policies without variables, or with variables of
/// the same values): a set is most of what an idle connection holds of its
/// own. Weak, so that a set goes with the last connection holding it.
#[derive(Debug, Default)]
struct SharedSets {
    /// The keys each list of policy names uses.
    keys: HashMap<Box<[String]>, Arc<[String]>>,
    sets: HashMap<SetKey, Weak<eval::PolicySet>>,
}

/// Policy names, and the values of the keys they use (absent or not).
type SetKey = (Box<[String]>, Box<[Option<Box<[String]>>]>);

impl Snapshot {
    /// Compiles the named policies (unknown names are skipped) for a
    /// connection, or gives the set a connection of the same policies and
    /// the same values of the keys they use compiled already.
    pub fn compile(
        &self,
        names: &[String],
        head: &compile::ArnHead,
        ctx: &compile::Context,
    ) -> Arc<eval::PolicySet> {
        let documents = || {
            names
                .iter()
                .filter_map(|n| self.documents.get_key_value(n.as_str()))
                .map(|(k, d)| (k, &**d))
        };
        let key = {
            let mut shared = self.shared.lock();
            if shared.keys.len() >= SHARED_SETS {
                shared.keys.clear();
            }
            let keys = shared
                .keys
                .entry(names.into())
                .or_insert_with(|| compile::used_keys(documents().map(|(_, d)| d)).into())
                .clone();
            let values = keys.iter().map(|k| ctx.get(k).map(Box::from)).collect();
            let key: SetKey = (names.into(), values);
            if let Some(set) = shared.sets.get(&key).and_then(Weak::upgrade) {
                return set;
            }
            key
        };
        // Compiled outside the lock: two connections may compile the same
        // set at once, and one of the two is kept.
        let set = Arc::new(compile::compile(documents(), head, ctx));
        let mut shared = self.shared.lock();
        if shared.sets.len() >= SHARED_SETS {
            shared.sets.retain(|_, set| set.strong_count() > 0);
        }
        if shared.sets.len() < SHARED_SETS {
            shared.sets.insert(key, Arc::downgrade(&set));
        }
        set
    }
}

/// The policies in force, swapped whole on reload; connections notice a new
/// generation through [`PolicyStore::subscribe`] and recompile.
#[derive(Debug)]
pub struct PolicyStore {
    current: arc_swap::ArcSwap<Snapshot>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl PolicyStore {
    /// Starts with the given documents as generation 1.
    pub fn new(documents: BTreeMap<Arc<str>, Arc<document::Document>>) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(Snapshot {
                generation: 1,
                documents,
                shared: Default::default(),
            }),
            changed: tokio::sync::watch::channel(1).0,
        }
    }

    /// The policies in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether `snapshot` is still the one in force (cheap: no reference count).
    pub fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.current.load().generation == snapshot.generation
    }

    /// A receiver that changes whenever a new generation is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Re-reads `dir`. A file that fails keeps its last good version; a
    /// deleted file's policy goes; nothing changes if no document did.
    /// Returns the problems found.
    pub fn reload(&self, dir: &Path) -> Vec<FileError> {
        let loaded = load_dir(dir);
        let old = self.current();
        let mut documents = loaded.documents;
        for e in &loaded.errors {
            let kept = e
                .file
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|name| old.documents.get_key_value(name));
            if let Some((name, doc)) = kept {
                documents.insert(name.clone(), doc.clone());
            }
        }
        // An unchanged directory (a save that rewrote the same text, or a
        // file the control plane wrote and applied already) is no new
        // generation: live connections have nothing to recompile.
        if documents == old.documents {
            return loaded.errors;
        }
        let generation = old.generation + 1;
        self.current.store(Arc::new(Snapshot {
            generation,
            documents,
            shared: Default::default(),
        }));
        self.changed.send_replace(generation);
        loaded.errors
    }
}
