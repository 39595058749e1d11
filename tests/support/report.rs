//! Reading the JSON report (`--report`): field accessors that panic with
//! context, stacks by site, and the assertions every complete report of the
//! `leaky` workload must pass (exact bytes and counts per site, sorted
//! stacks, allocator frames dropped, leaf frames symbolized).

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::{
    ALLOCATOR_FUNCTIONS, SITES, expected_leak_bytes, expected_leak_count, leak_sites,
    leaky_function_lines,
};

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}\n{text}", path.display()))
}

/// Numeric field as u64 (panics with context otherwise).
pub fn as_u64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("missing/non-integer `{key}` in {v}"))
}

/// Numeric field as f64 (panics with context otherwise).
pub fn as_f64(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("missing/non-number `{key}` in {v}"))
}

/// `processes` array of a report.
pub fn processes(report: &Value) -> &Vec<Value> {
    array_field(report, "processes")
}

/// All stacks of all processes.
pub fn all_stacks(report: &Value) -> Vec<&Value> {
    processes(report)
        .iter()
        .flat_map(|p| array_field(p, "stacks"))
        .collect()
}

/// `frames` of a stack.
pub fn frames(stack: &Value) -> &Vec<Value> {
    array_field(stack, "frames")
}

/// Array field (panics with context otherwise).
fn array_field<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no `{key}` array in {v}"))
}

/// `function` of every frame of a stack, leaf first (`"?"` when unnamed).
pub fn frame_functions(stack: &Value) -> Vec<&str> {
    frames(stack)
        .iter()
        .map(|f| f.get("function").and_then(Value::as_str).unwrap_or("?"))
        .collect()
}

/// `frames[0].function` of a stack.
pub fn leaf_function(stack: &Value) -> Option<&str> {
    frames(stack).first()?.get("function")?.as_str()
}

/// Stacks whose frames[0].function == `site`.
pub fn site_stacks<'a>(report: &'a Value, site: &str) -> Vec<&'a Value> {
    all_stacks(report)
        .into_iter()
        .filter(|s| leaf_function(s) == Some(site))
        .collect()
}

/// (bytes, count) summed over the stacks whose frames[0].function == `site`.
pub fn site_totals(report: &Value, site: &str) -> (u64, u64) {
    site_stacks(report, site).iter().fold((0, 0), |(b, c), s| {
        (b + as_u64(s, "bytes"), c + as_u64(s, "count"))
    })
}

/// Short human dump of a report's stacks (for assertion messages).
pub fn summarize_report(report: &Value) -> String {
    let mut s = String::new();
    if let Some(t) = report.get("totals") {
        s.push_str(&format!("totals: {t}\n"));
    }
    for st in all_stacks(report).iter().take(60) {
        let names: Vec<String> = frames(st)
            .iter()
            .take(4)
            .map(|f| {
                f.get("function")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        s.push_str(&format!(
            "  {:>9} B {:>5}x  {}\n",
            st.get("bytes").unwrap_or(&Value::Null),
            st.get("count").unwrap_or(&Value::Null),
            names.join(" <- ")
        ));
    }
    s
}

/// Every site in [`SITES`] has exactly the expected (bytes, count); freed
/// sites have no stack at all. Reports every mismatch at once.
pub fn assert_sites_exact(report: &Value) {
    let mut bad = Vec::new();
    for s in SITES {
        let got = site_totals(report, s.name);
        if got != (s.bytes, s.count) {
            bad.push(format!(
                "  {:<26} expected {:>8} B {:>4}x   got {:>8} B {:>4}x",
                s.name, s.bytes, s.count, got.0, got.1
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "per-site outstanding memory is wrong:\n{}\nreport:\n{}",
        bad.join("\n"),
        summarize_report(report)
    );
}

/// The entry of `pid` in a report's `processes`.
pub fn process_entry(report: &Value, pid: u32) -> &Value {
    processes(report)
        .iter()
        .find(|p| p.get("pid").and_then(Value::as_u64) == Some(pid as u64))
        .unwrap_or_else(|| {
            let pids: Vec<String> = processes(report)
                .iter()
                .map(|p| format!("{} ({})", p["comm"], p["pid"]))
                .collect();
            panic!("no process entry for pid {pid} among {}", pids.join(", "))
        })
}

/// A report holding only `pid`'s entry, for the per-report helpers.
pub fn report_of_process(report: &Value, pid: u32) -> Value {
    serde_json::json!({ "processes": [process_entry(report, pid).clone()] })
}

/// Keys of the `totals` of a report and of each of its processes.
const TOTALS_KEYS: &[&str] = &[
    "allocs",
    "frees",
    "outstanding_bytes",
    "outstanding_count",
    "lost_events",
];

/// Structural checks on a report + exact site numbers + symbolization.
pub fn assert_report_complete(report: &Value, pid: u32) {
    assert_eq!(
        report.get("version").and_then(Value::as_u64),
        Some(1),
        "version: {report}"
    );
    assert!(as_f64(report, "duration_s") >= 0.0);
    let totals = report.get("totals").expect("report totals");
    for key in TOTALS_KEYS.iter().chain(&["preexisting_frees"]) {
        as_u64(totals, key);
    }
    assert_eq!(
        as_u64(totals, "lost_events"),
        0,
        "events were lost: {totals}"
    );

    let procs = processes(report);
    let proc_ = process_entry(report, pid);
    assert_eq!(
        proc_.get("comm").and_then(Value::as_str),
        Some("leaky"),
        "comm"
    );
    let exe = proc_
        .get("exe")
        .and_then(Value::as_str)
        .expect("exe string");
    assert!(exe.ends_with("/leaky") || exe == "leaky", "exe = {exe:?}");
    let ptotals = proc_.get("totals").expect("process totals");
    for key in TOTALS_KEYS {
        as_u64(ptotals, key);
    }

    assert_sites_exact(report);

    // Totals cover at least the leak sites.
    for t in [totals, ptotals] {
        assert!(
            as_u64(t, "outstanding_bytes") >= expected_leak_bytes(),
            "outstanding_bytes {} < sum of leak sites {}",
            as_u64(t, "outstanding_bytes"),
            expected_leak_bytes()
        );
        assert!(
            as_u64(t, "outstanding_count") >= expected_leak_count(),
            "{t}"
        );
        assert!(as_u64(t, "allocs") >= expected_leak_count(), "{t}");
        // free() calls made explicitly: 8 cross-thread + 10 half + 16 full.
        assert!(as_u64(t, "frees") >= 8 + 10 + 16, "{t}");
    }

    // Stacks sorted by bytes, descending; allocator frames dropped.
    for p in procs {
        let stacks = p["stacks"].as_array().unwrap();
        let bytes: Vec<u64> = stacks.iter().map(|s| as_u64(s, "bytes")).collect();
        assert!(
            bytes.windows(2).all(|w| w[0] >= w[1]),
            "stacks not sorted by bytes desc: {bytes:?}"
        );
        for s in stacks {
            assert!(!frames(s).is_empty(), "empty frames: {s}");
            if let Some(f) = leaf_function(s) {
                assert!(
                    !ALLOCATOR_FUNCTIONS.contains(&f),
                    "allocator frame `{f}` not dropped from stack {s}"
                );
            }
        }
    }

    assert_sites_symbolized(report);
}

/// frames[0] of every leak-site stack is resolved: function, module, file
/// ending in leaky.c, line inside the site function, hex address.
pub fn assert_sites_symbolized(report: &Value) {
    for s in leak_sites() {
        let stacks = site_stacks(report, s.name);
        assert!(!stacks.is_empty(), "no stack for {}", s.name);
        let (first, last) = leaky_function_lines(s.name);
        for st in stacks {
            let f = &frames(st)[0];
            let addr = f.get("address").and_then(Value::as_str).unwrap_or("");
            assert!(
                addr.starts_with("0x")
                    && addr.len() > 2
                    && u64::from_str_radix(&addr[2..], 16).is_ok(),
                "bad address in {f}"
            );
            let module = f.get("module").and_then(Value::as_str);
            assert!(
                module.is_some_and(|m| m.contains("leaky")),
                "frames[0].module of {} should be the leaky binary: {f}",
                s.name
            );
            let file = f.get("file").and_then(Value::as_str);
            assert!(
                file.is_some_and(|p| p.ends_with("leaky.c")),
                "frames[0].file of {} should end with leaky.c: {f}",
                s.name
            );
            let line = f.get("line").and_then(Value::as_u64).unwrap_or(0);
            assert!(
                line >= first && line <= last,
                "frames[0].line of {} = {line}, expected within {first}..={last} of leaky.c: {f}",
                s.name
            );
            assert_eq!(
                f.get("inlined").and_then(Value::as_bool),
                Some(false),
                "inlined: {f}"
            );
        }
    }
}

/// Asserts a parsed report stack / tick `top` entry has the stack shape.
pub fn assert_stack_shape(s: &Value) {
    as_u64(s, "bytes");
    as_u64(s, "count");
    as_f64(s, "oldest_age_s");
    for f in frames(s) {
        assert!(
            f.get("address").and_then(Value::as_str).is_some(),
            "frame address: {f}"
        );
        for k in ["function", "module", "file", "line"] {
            assert!(
                f.get(k).is_some(),
                "frame without `{k}` (null allowed): {f}"
            );
        }
        assert!(
            f.get("inlined").and_then(Value::as_bool).is_some(),
            "frame inlined: {f}"
        );
    }
}
