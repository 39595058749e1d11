//! `diff` reads reports alloctrace did not necessarily write: whatever JSON
//! (or bytes) they hold, comparing and printing them must not panic.

use proptest::prelude::*;

use super::*;

/// A frame with any names (or none) and any address text.
fn frame() -> impl Strategy<Value = serde_json::Value> {
    (
        proptest::option::of(".{0,12}"),
        proptest::option::of(".{0,20}"),
        ".{0,8}",
    )
        .prop_map(|(function, module, address)| {
            serde_json::json!({ "address": address, "function": function, "module": module })
        })
}

/// A report with any numbers, including ones whose sums overflow.
fn report() -> impl Strategy<Value = String> {
    let stack = (any::<u64>(), any::<u64>(), proptest::collection::vec(frame(), 0..4))
        .prop_map(|(bytes, count, frames)| {
            serde_json::json!({ "bytes": bytes, "count": count, "frames": frames })
        });
    proptest::collection::vec(proptest::collection::vec(stack, 0..5), 0..3).prop_map(|processes| {
        let processes: Vec<_> = processes
            .into_iter()
            .map(|stacks| serde_json::json!({ "stacks": stacks }))
            .collect();
        serde_json::json!({ "version": 1, "processes": processes }).to_string()
    })
}

/// What `diff` does with two report texts, short of the files.
fn diff_texts(old: &str, new: &str) {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<ReportFile>(old),
        serde_json::from_str::<ReportFile>(new),
    ) else {
        return;
    };
    let deltas = compare(&old, &new);
    print_deltas(&deltas, 10, &mut Vec::new()).expect("printing to memory");
    let folded = |usage: fn(&StackDelta) -> Usage| -> Vec<String> {
        deltas
            .iter()
            .map(|delta| folded_line(&delta.frames, usage(delta).bytes))
            .collect()
    };
    let _ = write_differential_flamegraph(
        &folded(|d| d.old),
        &folded(|d| d.new),
        "fuzz",
        &mut Vec::new(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_two_reports_compare_without_panicking(old in report(), new in report()) {
        diff_texts(&old, &new);
    }

    #[test]
    fn any_bytes_are_refused_or_compared_without_panicking(
        old in proptest::collection::vec(any::<u8>(), 0..200),
        new in report(),
    ) {
        diff_texts(&String::from_utf8_lossy(&old), &new);
    }
}
