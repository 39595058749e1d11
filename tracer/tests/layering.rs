//! The tracer's modules import only the stages before them: the pipeline
//! (probes → events → stacks → ledger → analysis/symbolize → report) never
//! reaches up into the driver, the modes or the command line, and no two
//! modules import each other. Checked over the `crate::` paths in every
//! source file (test modules left out), so a change that breaks the flow
//! fails here with the line that does it.

use std::{collections::BTreeMap, fs, path::Path};

/// Every top-level module by its stage; a module may import only modules
/// of a lower stage.
const STAGES: &[(&str, u32)] = &[
    ("clock", 0),
    ("maps", 0),
    ("kallsyms", 0),
    ("safe_open", 0),
    ("mapped", 1),
    ("sampling", 0),
    ("debuginfo", 0),
    ("debuglink", 2),
    ("perfmap", 1),
    ("container", 0),
    ("privileges", 0),
    ("memory_limit", 0),
    ("placement", 1),
    ("target", 2),
    ("armed", 2),
    ("probes", 3),
    ("unwind", 3),
    ("events", 4),
    ("stacks", 5),
    ("ledger", 6),
    ("analysis", 7),
    ("symbolize", 7),
    ("report", 8),
    ("metrics", 9),
    ("diff", 9),
    ("html", 9),
    ("filters", 9),
    ("cli", 10),
    ("config", 11),
    ("driver", 12),
    ("modes", 13),
];

#[test]
fn every_module_imports_only_lower_stages() {
    let stages: BTreeMap<&str, u32> = STAGES.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for file in rust_files(&src) {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&stage) = stages.get(module.as_str()) else {
            violations.push(format!(
                "{relative}: module `{module}` has no stage in STAGES"
            ));
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in without_tests(&text).lines().enumerate() {
            for imported in crate_paths(line) {
                let Some(&imported_stage) = stages.get(imported.as_str()) else {
                    continue;
                };
                if imported != module && imported_stage >= stage {
                    violations.push(format!(
                        "{relative}:{}: `{module}` (stage {stage}) imports `{imported}` (stage \
                         {imported_stage}): {}",
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The top-level modules named by `crate::X` paths and `use crate::{X, ..}`
/// groups on one line (rustfmt puts each group member on its own line, so
/// a line inside a group starts with the member's name).
fn crate_paths(line: &str) -> Vec<String> {
    let line = line.trim();
    if line.starts_with("//") {
        return Vec::new();
    }
    let mut found: Vec<String> = line
        .match_indices("crate::")
        .map(|(at, _)| first_word(&line[at + "crate::".len()..]))
        .collect();
    if let Some(group) = line.strip_prefix("use crate::{") {
        found.extend(group.split(',').map(first_word));
    }
    found.retain(|name| !name.is_empty() && name != "{");
    found
}

fn first_word(text: &str) -> String {
    text.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Multi-line `use crate::{` groups: the members of each, one per line.
fn without_tests(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::new();
    let mut in_group = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "use crate::{" {
            in_group = true;
            continue;
        }
        if in_group {
            if trimmed.starts_with("};") {
                in_group = false;
            } else {
                out.push_str(&format!("crate::{trimmed}\n"));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_check_sees_single_and_grouped_imports() {
    let source = "use crate::{\n    ledger::Ledger,\n    report::{self, X},\n};\nfn f() { crate::driver::run(); }\n";
    let lines: Vec<Vec<String>> = without_tests(source).lines().map(crate_paths).collect();
    assert_eq!(
        lines.concat(),
        ["ledger", "report", "driver"].map(String::from)
    );
}
