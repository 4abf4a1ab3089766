//! The layers of DESIGN §1, checked on the source: a module may use only modules of a lower
//! layer, and the process roles never use one another. Every `crate::…` path in `src/` counts,
//! in test modules too; there is no allow-list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer. Cores that build on one another get
/// layers of their own; modules sharing a layer (the process roles) may not use one another.
const LAYERS: &[(&str, u8)] = &[
    ("identity", 0),
    ("wire", 1),
    ("crd", 2),
    ("access", 2),
    ("commitment", 2),
    ("gpu", 2),
    ("capacity", 3),
    ("probe", 3),
    ("admission", 4),
    ("workload", 4),
    ("lifecycle", 5),
    ("metering", 5),
    ("attestation", 6),
    ("process", 7),
    ("operator", 8),
    ("node", 8),
    ("sidecar", 8),
    ("deviceplugin", 8),
    ("cli", 9),
    ("decoders", 10),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
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

/// The top-level modules a source text names through `crate::`, including inside
/// `use crate::{a, b::c}` groups.
fn crate_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

/// `(file, module it is in, module it uses)` for every use that does not go down.
fn upward_uses(src: &Path) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let top = top.to_str().unwrap().trim_end_matches(".rs");
        if matches!(top, "lib" | "main" | "bin") {
            continue;
        }
        let own = layer(top).unwrap_or_else(|| {
            panic!("src/{top} is a module with no layer: add it to LAYERS (DESIGN §1)")
        });
        let source = std::fs::read_to_string(&file).unwrap();
        for used in crate_references(&source) {
            if used == top {
                continue;
            }
            let ok = layer(&used).is_some_and(|theirs| theirs < own);
            if !ok {
                violations.push((relative.display().to_string(), top.to_string(), used));
            }
        }
    }
    violations
}

#[test]
fn no_module_uses_a_layer_above_it_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = upward_uses(&src);
    assert!(
        violations.is_empty(),
        "imports that run up or across the layers (DESIGN §1):\n{}",
        violations
            .iter()
            .map(|(file, from, to)| format!("  src/{file}: {from} uses {to}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_check_sees_grouped_and_inline_paths() {
    let found = crate_references(
        "use crate::{wire::proto, crd};\nfn f() { crate::node::run(); }\nuse crate::identity::sign;",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["crd", "identity", "node", "wire"]
    );
}

#[test]
fn a_role_using_another_role_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("sidecar")).unwrap();
    std::fs::write(
        src.join("sidecar/mod.rs"),
        "use crate::operator::collector;\n",
    )
    .unwrap();
    std::fs::write(src.join("wire.rs"), "use crate::identity::sign;\n").unwrap();
    std::fs::write(src.join("identity.rs"), "fn f() { crate::wire::seal(); }\n").unwrap();
    assert_eq!(
        upward_uses(src),
        [
            ("identity.rs".into(), "identity".into(), "wire".into()),
            ("sidecar/mod.rs".into(), "sidecar".into(), "operator".into()),
        ]
        .into_iter()
        .collect::<Vec<(String, String, String)>>()
    );
}
