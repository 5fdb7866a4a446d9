//! AWS IoT policies: documents, compilation per connection, evaluation.
//!
//! Parse, compile, evaluate: [`document`] turns JSON into a validated
//! model, [`compile`] specialises every document that applies to one
//! connection (variables, conditions, ARN heads), and [`eval`] decides
//! requests against the result without allocating.

pub mod compile;
pub mod document;
pub mod eval;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Whether a policy name is one AWS accepts: `[\w+=,.@-]{1,128}`.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
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
        if !valid_name(name) {
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
