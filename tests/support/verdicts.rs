//! The leak-verdict battery (`tests/workloads/patterns.c`): nine heap
//! patterns with known verdicts in one process, each from its own
//! allocation site, traced in `--pid` or launch mode; and the scoring of a
//! report against them (precision and recall of the suspects, and whether
//! every leak ranks above every non-leak). Shared by `tests/verdicts.rs`,
//! which asserts, and the `battery` binary behind `cargo xtask verdicts`,
//! which measures.

use std::path::PathBuf;

use serde_json::Value;

use crate::{
    SETTLE, Tracer, TracerOutput, WORKLOAD_CFLAGS, Workload, compile_c, launch, leaf_function,
    read_json, temp_dir,
};

/// The allocation sites that leak (`leak_*` in the workload).
pub const LEAK_SITES: [&str; 4] = [
    "leak_steady_site",
    "leak_traffic_site",
    "leak_late_site",
    "leak_churn_site",
];

/// The allocation sites that do not leak: caches, pools, batches, start-up
/// memory and the traffic's scratch buffers.
pub const NON_LEAK_SITES: [&str; 6] = [
    "cache_inplace_site",
    "cache_entry_site",
    "pool_site",
    "batch_site",
    "startup_site",
    "traffic_scratch_site",
];

/// Seconds the workload runs its patterns.
pub const BATTERY_SECONDS: &str = "6";
/// Tick interval: 12 ticks over the run.
pub const BATTERY_INTERVAL: &str = "500ms";

/// The battery workload binary.
pub fn patterns_bin() -> PathBuf {
    compile_c("patterns.c", "patterns", WORKLOAD_CFLAGS)
}

/// How the battery is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatteryMode {
    /// `--pid`, attached once the workload started up (its start-up burst
    /// and its cache's fill are before attach), before its patterns run.
    Pid,
    /// `alloctrace -- patterns ...`.
    Launch,
}

impl BatteryMode {
    pub const ALL: [BatteryMode; 2] = [BatteryMode::Pid, BatteryMode::Launch];

    pub fn name(self) -> &'static str {
        match self {
            BatteryMode::Pid => "--pid",
            BatteryMode::Launch => "launch",
        }
    }
}

/// Runs the battery under the tracer (`ALLOCTRACE_BIN` or the default
/// binary) with `extra` arguments; returns how the tracer ended and its
/// final JSON report.
pub fn run_battery(mode: BatteryMode, extra: &[&str]) -> (TracerOutput, Value) {
    let bin = patterns_bin();
    let mut args = vec!["--interval", BATTERY_INTERVAL];
    args.extend(extra);
    match mode {
        BatteryMode::Launch => {
            let command = [bin.as_os_str(), BATTERY_SECONDS.as_ref(), "run".as_ref()];
            launch(&args, &command)
        }
        BatteryMode::Pid => {
            let dir = temp_dir();
            let path = dir.path().join("report.json");
            let mut workload = Workload::spawn_bin(&bin, &[BATTERY_SECONDS, "warm"]);
            let mut tracer_args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            tracer_args.extend(["--report".into(), path.clone().into_os_string()]);
            let tracer = Tracer::spawn(workload.pid, &tracer_args, None);
            workload.go();
            workload.wait_done();
            std::thread::sleep(SETTLE);
            let out = tracer.stop(libc::SIGINT);
            (out, read_json(&path))
        }
    }
}

/// A report scored against the battery's known verdicts. A site is
/// *flagged* when any of its stacks is a suspect.
#[derive(Clone, Debug)]
pub struct Verdicts {
    /// The suspects' leaf functions, most suspicious first.
    pub ranked: Vec<String>,
    /// Leak sites flagged.
    pub true_positives: usize,
    /// Non-leak sites flagged.
    pub false_positives: usize,
    /// Leak sites not flagged.
    pub missed: Vec<&'static str>,
    /// Non-leak sites flagged.
    pub wrongly_flagged: Vec<&'static str>,
    /// Every leak site is a suspect ranked above every suspect of a
    /// non-leak site.
    pub leaks_ranked_first: bool,
}

impl Verdicts {
    pub fn of(report: &Value) -> Self {
        let ranked: Vec<String> = report["suspects"]
            .as_array()
            .unwrap_or_else(|| panic!("no `suspects` array: {report}"))
            .iter()
            .map(|suspect| leaf_function(suspect).unwrap_or("?").to_owned())
            .collect();
        let flagged = |site: &str| ranked.iter().any(|s| s == site);
        let missed: Vec<&str> = LEAK_SITES.into_iter().filter(|s| !flagged(s)).collect();
        let wrongly_flagged: Vec<&str> =
            NON_LEAK_SITES.into_iter().filter(|s| flagged(s)).collect();
        let last_leak = ranked
            .iter()
            .rposition(|s| LEAK_SITES.contains(&s.as_str()));
        let first_other = ranked
            .iter()
            .position(|s| !LEAK_SITES.contains(&s.as_str()));
        let leaks_ranked_first = missed.is_empty()
            && match (last_leak, first_other) {
                (Some(last), Some(first)) => last < first,
                _ => true,
            };
        Self {
            true_positives: LEAK_SITES.len() - missed.len(),
            false_positives: wrongly_flagged.len(),
            missed,
            wrongly_flagged,
            leaks_ranked_first,
            ranked,
        }
    }

    /// Flagged leak sites over flagged sites (1 when nothing is flagged).
    pub fn precision(&self) -> f64 {
        let flagged = self.true_positives + self.false_positives;
        if flagged == 0 {
            return 1.0;
        }
        self.true_positives as f64 / flagged as f64
    }

    /// Flagged leak sites over leak sites.
    pub fn recall(&self) -> f64 {
        self.true_positives as f64 / LEAK_SITES.len() as f64
    }
}

/// The offending stacks' lines of a failed leak gate's stderr (each
/// followed by a `why:` line, left out).
pub fn gate_offenders(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.contains("leak gate failed"))
        .skip(1)
        .filter(|l| l.starts_with("  +"))
        .collect()
}
