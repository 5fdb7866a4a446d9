//! `file`: the rule output appended as one JSON line to a file under
//! `actions.file_root` (an edge action; AWS has none).
//!
//! A path template is checked twice: its text may only name a relative path
//! of plain components, and the walk from the root to the file creates
//! directories one by one and follows no symbolic link, so neither `..`
//! nor a link can make or write anything elsewhere. A file is rotated (renamed to `<name>.<unix ms>`) before
//! a write would take it past `file_max_bytes`, or once it is older than
//! `file_max_age_secs`; the newest `file_max_rotated` rotated copies are
//! kept, and no more than `file_max_files` files are made under the root,
//! so the disk file actions use is bounded whatever their path templates
//! make of the topics they see. Each batch of lines is flushed to disk (with the
//! directory, when it made a new entry) before the spool lets go of it.
//! The root should be writable by the gateway alone: a link planted there
//! between the walk and the write is the one thing the checks cannot see.

use super::{Context, Outcome};
use crate::config::{Actions, FileAction};
use crate::sql::Template;
use crate::sql::eval::base64_encode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A compiled file action.
#[derive(Debug)]
pub struct File {
    path: Template,
}

/// One line for one file, as spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Path relative to the root, after substitution.
    pub path: String,
    /// The line, without its newline.
    pub line: String,
}

impl File {
    /// Checks and compiles the configuration.
    pub fn compile(a: &FileAction) -> Result<Self, String> {
        let path = Template::parse(&a.path)
            .map_err(|e| format!("path: position {}: {}", e.at, e.message))?;
        if let Some(p) = path.literal() {
            check_relative(&p)?;
        }
        Ok(Self { path })
    }

    /// The path, for error documents of failed renders.
    pub fn resource(&self, cx: &Context<'_>) -> String {
        self.path.render(cx.msg, cx.vars)
    }

    /// Substitutes the path for one message. The line is the JSON output, or
    /// a JSON string of the base64 bytes when the output is not JSON.
    pub fn render(&self, cx: &Context<'_>, bytes: &[u8], json: bool) -> Result<Request, String> {
        let path = self.path.render(cx.msg, cx.vars);
        check_relative(&path)?;
        let line = if json {
            String::from_utf8_lossy(bytes).into_owned()
        } else {
            serde_json::Value::String(base64_encode(bytes)).to_string()
        };
        Ok(Request { path, line })
    }
}

/// Only plain components: no root, no `..`, no `.`.
fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty()
        || path.contains('\0')
        || !p.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "path `{path}` must be relative to actions.file_root, without `..`"
        ));
    }
    Ok(())
}

/// Where files go and when they rotate.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
    max_bytes: u64,
    max_age: Option<Duration>,
    max_rotated: usize,
    max_files: usize,
    /// One writer at a time: two lanes writing one path must not rotate it
    /// under each other. It holds the number of files under the root,
    /// counted when first needed and again whenever it reaches the bound
    /// (files removed by hand are noticed then).
    files: Arc<Mutex<Option<usize>>>,
}

impl Files {
    /// Files under `actions.file_root` (which must exist), rotated as `actions` says.
    pub fn new(actions: &Actions) -> Self {
        let age = actions.file_max_age_secs;
        Self {
            root: actions.file_root.clone(),
            max_bytes: actions.file_max_bytes,
            max_age: (age > 0).then(|| Duration::from_secs(age)),
            max_rotated: actions.file_max_rotated,
            max_files: actions.file_max_files,
            files: Arc::default(),
        }
    }

    /// Appends lines (all for one path) and flushes them to disk.
    pub async fn deliver(&self, path: String, lines: Vec<String>) -> Outcome {
        let files = self.clone();
        match tokio::task::spawn_blocking(move || files.append(&path, &lines)).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry(format!("file writer stopped: {e}")),
        }
    }

    fn append(&self, path: &str, lines: &[String]) -> Outcome {
        let mut files = self.files.lock();
        if let Err(e) = check_relative(path) {
            return Outcome::Failed(e);
        }
        // A new file is counted before anything (a directory) is made for it.
        let new_file = std::fs::symlink_metadata(self.root.join(path)).is_err();
        if new_file && self.max_files > 0 {
            let count = match *files {
                Some(n) if n < self.max_files => n,
                _ => live_files(&self.root, self.max_files),
            };
            *files = Some(count);
            if count >= self.max_files {
                return Outcome::Failed(format!(
                    "{} already holds actions.file_max_files ({}) files",
                    self.root.display(),
                    self.max_files
                ));
            }
        }
        let mut dir = self.root.clone();
        let mut parts: Vec<&std::ffi::OsStr> = Path::new(path).iter().collect();
        let Some(name) = parts.pop() else {
            return Outcome::Failed(format!("path `{path}` names no file"));
        };
        // Walk down from the root without following links, creating what
        // is missing, so that nothing is made or written outside it.
        for part in parts {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Outcome::Failed(format!(
                        "{} is not a directory (links are not followed)",
                        dir.display()
                    ));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if let Err(e) = std::fs::create_dir(&dir) {
                        return io_failure(&dir, e);
                    }
                }
                Err(e) => return io_failure(&dir, e),
            }
        }
        let target = dir.join(name);
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            bytes.extend_from_slice(l.as_bytes());
            bytes.push(b'\n');
        }
        let existing = match std::fs::symlink_metadata(&target) {
            Ok(m) if !m.is_file() => {
                return Outcome::Failed(format!(
                    "{} is not a regular file (links are not followed)",
                    target.display()
                ));
            }
            Ok(m) => Some(m),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return io_failure(&target, e),
        };
        let mut new_entry = existing.is_none();
        if let Some(m) = existing
            && self.due(&m, bytes.len() as u64)
        {
            if let Err(e) = rotate(&target) {
                return io_failure(&target, e);
            }
            // The lines are not at stake: a copy left over is removed at the next rotation.
            if let Err(e) = prune(&dir, name, self.max_rotated) {
                tracing::warn!(file = %target.display(), error = %e, "could not remove old rotated files");
            }
            new_entry = true;
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_data()
            })
            // A new directory entry is durable only once its directory is.
            .and_then(|()| {
                if new_entry {
                    std::fs::File::open(&dir)?.sync_all()
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) => {
                if new_file && let Some(n) = files.as_mut() {
                    *n += 1;
                }
                Outcome::Delivered
            }
            Err(e) => io_failure(&target, e),
        }
    }

    /// Whether a file must rotate before `adding` more bytes.
    fn due(&self, m: &std::fs::Metadata, adding: u64) -> bool {
        if m.len() == 0 {
            return false;
        }
        let too_big = m.len() + adding > self.max_bytes;
        let too_old = self.max_age.is_some_and(|max| {
            m.created()
                .ok()
                .and_then(|c| SystemTime::now().duration_since(c).ok())
                .is_some_and(|age| age > max)
        });
        too_big || too_old
    }
}

/// The files under `root` that are not rotated copies (`<name>.<unix ms>`),
/// counted up to `cap`, without following links.
fn live_files(root: &Path, cap: usize) -> usize {
    let rotated = |name: &str| {
        name.rsplit_once('.')
            .is_some_and(|(_, ms)| ms.len() >= 10 && ms.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut count = 0;
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && !rotated(&entry.file_name().to_string_lossy()) {
                count += 1;
                if count >= cap {
                    return count;
                }
            }
        }
    }
    count
}

/// Renames a full file to `<name>.<unix ms>`, never over an existing file.
fn rotate(target: &Path) -> std::io::Result<()> {
    let mut ms = crate::store::now_ms();
    loop {
        let rotated = PathBuf::from(format!("{}.{ms}", target.display()));
        // A hard link fails if the name is taken, where a rename would replace it.
        match std::fs::hard_link(target, &rotated) {
            Ok(()) => return std::fs::remove_file(target),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => ms += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the oldest rotated copies of `dir/name` (`name.<unix ms>`) past
/// the newest `keep`.
fn prune(dir: &Path, name: &std::ffi::OsStr, keep: usize) -> std::io::Result<()> {
    let Some(prefix) = name.to_str().map(|n| format!("{n}.")) else {
        return Ok(());
    };
    let mut rotated = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ms = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|ms| ms.parse::<u64>().ok());
        if let Some(ms) = ms
            && entry.file_type()?.is_file()
        {
            rotated.push((ms, entry.path()));
        }
    }
    if rotated.len() > keep {
        rotated.sort_unstable();
        for (_, path) in &rotated[..rotated.len() - keep] {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// An IO error as an outcome: what a retry cannot fix (a path that is not
/// a directory, a name too long) fails at once; the rest (a full disk, an
/// IO error) is retried.
fn io_failure(at: &Path, e: std::io::Error) -> Outcome {
    let message = format!("{}: {e}", at.display());
    match e.kind() {
        ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::InvalidFilename
        | ErrorKind::InvalidInput
        | ErrorKind::AlreadyExists => Outcome::Failed(message),
        // O_NOFOLLOW on a link.
        _ if e.raw_os_error() == Some(libc::ELOOP) => Outcome::Failed(message),
        _ => Outcome::Retry(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths() {
        for ok in ["a.jsonl", "dev/1/t.jsonl"] {
            assert!(check_relative(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    /// Files under a fresh root that rotate past 10 bytes, never by age,
    /// with `tweak` applied; the directory (kept for the test) and its root.
    fn files_under(tweak: impl FnOnce(&mut Actions)) -> (tempfile::TempDir, PathBuf, Files) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        let mut actions = Actions {
            file_root: root.clone(),
            file_max_bytes: 10,
            file_max_age_secs: 0,
            ..Actions::default()
        };
        tweak(&mut actions);
        (dir, root, Files::new(&actions))
    }

    fn line(s: &str) -> Vec<String> {
        vec![s.to_owned()]
    }

    #[test]
    fn the_files_under_the_root_are_bounded() {
        let (_dir, root, files) = files_under(|a| a.file_max_files = 3);
        for topic in ["a", "b", "c"] {
            assert_eq!(
                files.append(&format!("out/{topic}"), &line("1")),
                Outcome::Delivered
            );
        }
        // `out/${topic(2)}` over many topics: the fourth file is refused,
        // and no directory is made for it.
        assert!(
            matches!(files.append("more/d", &line("1")), Outcome::Failed(m) if m.contains("file_max_files"))
        );
        assert!(!root.join("more").exists());
        // Files already there take more lines, and rotate without counting.
        for l in ["12345678", "12345678", "12345678"] {
            assert_eq!(files.append("out/a", &line(l)), Outcome::Delivered);
        }
        // A file removed by hand makes room again.
        std::fs::remove_file(root.join("out/b")).expect("remove");
        assert_eq!(files.append("out/d", &line("1")), Outcome::Delivered);
    }

    #[test]
    fn appends_rotates_and_stays_inside() {
        let (dir, root, files) = files_under(|a| a.file_max_rotated = 2);
        assert_eq!(files.append("d/a.jsonl", &line("1234")), Outcome::Delivered);
        assert_eq!(files.append("d/a.jsonl", &line("5678")), Outcome::Delivered);
        assert_eq!(
            std::fs::read_to_string(root.join("d/a.jsonl")).expect("read"),
            "1234\n5678\n"
        );
        // A third line would pass 10 bytes: the file rotates first.
        assert_eq!(files.append("d/a.jsonl", &line("9")), Outcome::Delivered);
        assert_eq!(
            std::fs::read_to_string(root.join("d/a.jsonl")).expect("read"),
            "9\n"
        );
        let rotated = std::fs::read_dir(root.join("d"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("a.jsonl."))
            .count();
        assert_eq!(rotated, 1);
        // Three more rotations: only the newest two rotated copies are kept.
        for l in ["a-long-line", "b-long-line", "c-long-line"] {
            assert_eq!(files.append("d/a.jsonl", &line(l)), Outcome::Delivered);
        }
        let mut kept: Vec<String> = std::fs::read_dir(root.join("d"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("a.jsonl."))
            .map(|e| std::fs::read_to_string(e.path()).expect("read"))
            .collect();
        kept.sort();
        assert_eq!(kept, ["a-long-line\n", "b-long-line\n"]);
        assert_eq!(
            std::fs::read_to_string(root.join("d/a.jsonl")).expect("read"),
            "c-long-line\n"
        );
        // A link inside the root that points out of it is not followed.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        assert!(matches!(
            files.append("link/x.jsonl", &line("1")),
            Outcome::Failed(_)
        ));
        assert!(!outside.join("x.jsonl").exists());
    }
}
