//! `battery`: runs the leak-verdict battery (`support/verdicts.rs`) in
//! `--pid` and launch mode at once under `ALLOCTRACE_BIN` (or the default
//! binary) and prints the suspects' precision and recall over its sites, so
//! a change of the ranking is measured. `cargo xtask verdicts` runs it.

use integration_tests::verdicts::{BatteryMode, LEAK_SITES, NON_LEAK_SITES, Verdicts, run_battery};

fn main() {
    integration_tests::require_root();
    let runs: Vec<(BatteryMode, Verdicts)> = std::thread::scope(|scope| {
        let handles: Vec<_> = BatteryMode::ALL
            .into_iter()
            .map(|mode| {
                scope.spawn(move || {
                    let (out, report) = run_battery(mode, &[]);
                    out.assert_success();
                    (mode, Verdicts::of(&report))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a battery run failed"))
            .collect()
    });
    println!(
        "battery: {} leak sites, {} non-leak sites per run",
        LEAK_SITES.len(),
        NON_LEAK_SITES.len()
    );
    println!(
        "{:<8} {:>9} {:>6} {:>11}  wrong / missed",
        "mode", "precision", "recall", "leaks first"
    );
    let (mut true_positives, mut false_positives) = (0, 0);
    for (mode, verdicts) in &runs {
        println!(
            "{:<8} {:>9.2} {:>6.2} {:>11}  {:?} / {:?}",
            mode.name(),
            verdicts.precision(),
            verdicts.recall(),
            if verdicts.leaks_ranked_first {
                "yes"
            } else {
                "no"
            },
            verdicts.wrongly_flagged,
            verdicts.missed,
        );
        println!("         ranked: {}", verdicts.ranked.join(", "));
        true_positives += verdicts.true_positives;
        false_positives += verdicts.false_positives;
    }
    let flagged = (true_positives + false_positives).max(1);
    let leaks = LEAK_SITES.len() * runs.len();
    println!(
        "overall  precision {:.2} ({true_positives}/{flagged}), recall {:.2} ({true_positives}/{leaks})",
        true_positives as f64 / flagged as f64,
        true_positives as f64 / leaks as f64,
    );
}
