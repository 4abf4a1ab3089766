//! The CRDs: `crds/` matches the code, samples and fixtures pass the schema, and each invalid
//! fixture is rejected with the message its `# expect:` line names. Structural rules (types,
//! patterns, ranges, enums, required fields) are checked with JSON Schema and CEL rules with
//! kube-cel, as the apiserver would; the e2e suite repeats the invalid ones on a real apiserver.

use std::path::{Path, PathBuf};

use gpubridge::crd;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_folder_matches_the_generated_crds() {
    for (file, crd) in crd::all() {
        let path = root().join("crds").join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk,
            crd::to_yaml(&crd).unwrap(),
            "{} is out of date: run `make crds`",
            path.display()
        );
    }
}

fn schema_of(kind: &str) -> Value {
    let crd = crd::all()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"));
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Every message the schema and its CEL rules give for `object`, each prefixed with its path.
fn rejections(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema_of(object["kind"].as_str().expect("fixture has a kind"));
    let mut messages: Vec<String> = jsonschema::validator_for(&schema)
        .expect("the CRD schema is valid JSON Schema")
        .iter_errors(object)
        .map(|e| match &e.kind {
            // Said as the apiserver says it, so that the same fixtures serve the e2e suite.
            jsonschema::error::ValidationErrorKind::Required { property } => format!(
                "{}: Required value",
                dotted(&format!(
                    "{}/{}",
                    e.instance_path,
                    property.as_str().unwrap_or_default()
                ))
            ),
            _ => format!("{}: {e}", dotted(&e.instance_path.to_string())),
        })
        .collect();
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, object, old) {
        messages.extend(
            errors
                .as_slice()
                .iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    messages
}

/// "/spec/workload/allowedRegistries/0" → "spec.workload.allowedRegistries[0]", as kubectl says it.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    let object: Value = serde_yaml::from_str(&text).unwrap();
    (text, object)
}

#[test]
fn samples_and_valid_fixtures_are_accepted() {
    let mut files = yaml_files(&root().join("manifests/samples"));
    files.extend(yaml_files(&root().join("tests/fixtures/crd/valid")));
    assert!(files.len() >= 4);
    for path in files {
        let (_, object) = load(&path);
        assert_eq!(
            rejections(&object, None),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn each_invalid_fixture_is_rejected_with_its_message() {
    let files = yaml_files(&root().join("tests/fixtures/crd/invalid"));
    assert!(files.len() >= 10, "at least ten invalid objects");
    for path in files {
        let (text, object) = load(&path);
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let messages = rejections(&object, None);
        assert!(
            messages.iter().any(|m| m.contains(expect)),
            "{}: expected a rejection mentioning {expect:?}, got {messages:#?}",
            path.display()
        );
        // One mistake, one message: a malformed price is not also called zero.
        assert_eq!(messages.len(), 1, "{}: {messages:#?}", path.display());
    }
}

#[test]
fn a_lease_spec_cannot_change_after_creation() {
    let (_, old) = load(&root().join("tests/fixtures/crd/valid/lease.yaml"));
    let mut new = old.clone();
    new["spec"]["gpus"] = Value::from(8);
    let messages = rejections(&new, Some(&old));
    assert!(
        messages.iter().any(|m| m.contains("spec is immutable")),
        "{messages:#?}"
    );
    assert_eq!(
        rejections(&old, Some(&old)),
        Vec::<String>::new(),
        "an unchanged spec is fine"
    );
}

#[test]
fn every_field_is_described_for_kubectl_explain() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                let top_level =
                    ["apiVersion", "kind", "metadata"].contains(&name.as_str()) && path.is_empty();
                match sub.get("description").and_then(Value::as_str) {
                    None if !top_level => missing.push(here.clone()),
                    // Whole sentences, and a default said where there is one.
                    Some(text) if !text.trim_end().ends_with('.') => {
                        missing.push(format!("{here}: not a sentence: {text:?}"))
                    }
                    Some(text)
                        if sub.get("default").is_some()
                            && !here.starts_with(".status")
                            && !text
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                                .contains("Defaults to") =>
                    {
                        missing.push(format!("{here}: its default is not said: {text:?}"))
                    }
                    _ => {}
                }
                walk(sub, &here, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for kind in ["GpuOffer", "ComputeLease"] {
        let mut missing = Vec::new();
        walk(&schema_of(kind), "", &mut missing);
        assert_eq!(
            missing,
            Vec::<String>::new(),
            "{kind} fields without a description"
        );
    }
}
