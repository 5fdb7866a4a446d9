//! The module order is written once, in the README's architecture section;
//! `lib.rs` lists the same order, and every module imports only modules
//! above it in that order (except `server`, which wires them together).
//! Checked from the source, so the layering cannot drift.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The modules of the README's architecture table, in order.
fn readme_order() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README");
    let section = text
        .split("## Architecture")
        .nth(1)
        .expect("an architecture section");
    section
        .lines()
        .skip_while(|l| !l.starts_with("| module"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let name = l.split('`').nth(1)?;
            let name = name.trim_end_matches('/');
            (!name.ends_with(".rs")).then(|| name.to_owned())
        })
        .collect()
}

/// The modules `lib.rs` documents, in its order.
fn lib_order() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("src/lib.rs")).expect("lib.rs");
    text.lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

fn sources(module: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut out = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The crate's modules a source file names (`crate::name`).
fn imports(file: &Path, modules: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("source");
    let mut out: Vec<String> = text
        .match_indices("crate::")
        .filter_map(|(i, _)| {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            modules.contains(&name).then_some(name)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_readme_and_lib_rs_give_one_module_order() {
    let readme = readme_order();
    assert!(readme.len() > 10, "{readme:?}");
    assert_eq!(readme, lib_order());
}

#[test]
fn every_module_imports_only_modules_above_it() {
    let order = readme_order();
    let mut problems = Vec::new();
    for (i, module) in order.iter().enumerate() {
        if module == "server" {
            continue;
        }
        let files = sources(module);
        assert!(!files.is_empty(), "no source for `{module}`");
        for file in files {
            for used in imports(&file, &order) {
                if used == *module {
                    continue;
                }
                let at = order.iter().position(|m| *m == used).expect("known");
                if at > i {
                    problems.push(format!(
                        "{} ({module}) imports {used}, which is below it",
                        file.strip_prefix(root()).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
