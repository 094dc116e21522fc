//! The one-way flow of ARCHITECTURE.md, checked on the source: a module of `src/` refers
//! (through `crate::…`) only to modules on a lower level, never to one on its own level or
//! above. Run on the sources, so a new import that breaks the rule fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The levels, bottom first. Modules on one level are independent of each other.
const LEVELS: &[&[&str]] = &[
    &["error"],
    &["geometry"],
    &["linalg"],
    &["kmeans", "conv", "data"],
    &["codebook"],
    &["clustered"],
    &["compress"],
    &["nn"],
    &["io"],
];

fn level(module: &str) -> Option<usize> {
    LEVELS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<name>` in the code of `text` (comments and doc links are not dependencies)
/// whose name is a module of the level table.
fn referenced_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("crate::") {
        let name: String = code[at + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if level(&name).is_some() {
            found.insert(name);
        }
    }
    found
}

/// `(module, file, referenced module)` for every reference that breaks the rule.
fn violations(src: &Path) -> Vec<(String, PathBuf, String)> {
    let mut bad = Vec::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(own) = level(&module) else { continue };
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for other in referenced_modules(&text) {
                if other != module && level(&other).unwrap() >= own {
                    bad.push((module.clone(), file.clone(), other));
                }
            }
        }
    }
    bad
}

#[test]
fn every_module_of_src_has_a_level() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if matches!(name.as_str(), "lib" | "bin") {
            continue;
        }
        assert!(
            level(&name).is_some(),
            "src/{name} is not in the level table of tests/layering.rs (and ARCHITECTURE.md)"
        );
    }
}

#[test]
fn modules_import_only_lower_levels() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "imports against the one-way flow (module, file, imported module): {bad:#?}"
    );
}

#[test]
fn the_check_sees_a_forbidden_import() {
    // The scanner itself: a kmeans file that names the conv module is caught, a reference
    // to a lower level is not.
    let dir = std::env::temp_dir().join(format!("layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("kmeans")).unwrap();
    std::fs::write(
        dir.join("kmeans/lloyd.rs"),
        "/// See [`x`](crate::compress).\nuse crate::linalg::gemm;\nuse crate::conv::gemm;\n",
    )
    .unwrap();
    std::fs::write(dir.join("conv.rs"), "use crate::error::Result;\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!((bad[0].0.as_str(), bad[0].2.as_str()), ("kmeans", "conv"));
}
