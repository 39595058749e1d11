//! `alloctrace html --snapshots DIR`: the snapshots of a run lengthen the
//! report's timeline. Each snapshot is a full report taken at its
//! `duration_s`, so it gives one exact point of each process's totals and of
//! every stack's bytes, however long ago; the report's own timeline is
//! denser but its suspects' series only cover the suspects' history.
//!
//! Snapshots are matched to the report's processes by pid, and their
//! stacks to the report's suspects by frame names (as `diff` matches them).
//! Snapshots taken after the report's end (another run) are ignored.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::report::{FrameName, TIMELINE_SUSPECTS};

/// The `*.json` files of `dir`, oldest first (their names sort by time).
pub fn read_snapshots(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read --snapshots {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not an alloctrace JSON report", path.display()))
        })
        .collect()
}

/// Adds the snapshots' points to the timeline of each of `report`'s
/// processes (creating it for reports written before timelines), and to
/// its top suspects' series. Returns how many snapshots were used.
pub fn merge_snapshots(report: &mut Value, snapshots: &[Value]) -> usize {
    let end_s = report["duration_s"].as_f64().unwrap_or(f64::INFINITY);
    let snapshots: Vec<&Value> = snapshots
        .iter()
        .filter(|snapshot| snapshot["duration_s"].as_f64().is_some_and(|t| t <= end_s))
        .collect();
    let suspects: Vec<(Option<u64>, Vec<String>)> = report["suspects"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|suspect| (suspect["pid"].as_u64(), frame_keys(suspect)))
        .collect();
    let mut used = 0;
    let Some(processes) = report["processes"].as_array_mut() else {
        return 0;
    };
    // Only objects are indexed mutably below (serde_json panics otherwise):
    // a hand-edited report must not crash the renderer.
    for process in processes.iter_mut().filter(|p| p.is_object()) {
        let pid = process["pid"].as_u64();
        let taken: Vec<(f64, &Value)> = snapshots
            .iter()
            .filter_map(|snapshot| {
                let t = snapshot["duration_s"].as_f64()?;
                let mut same = snapshot["processes"].as_array()?.iter();
                Some((t, same.find(|p| p["pid"].as_u64() == pid)?))
            })
            .collect();
        if taken.is_empty() {
            continue;
        }
        used = used.max(taken.len());
        let timeline = &mut process["timeline"];
        if !timeline.is_object() {
            *timeline = json!({"elapsed_s": [], "outstanding_bytes": [],
                               "outstanding_count": [], "stacks": []});
        }
        let totals = taken.iter().map(|(t, p)| {
            let totals = &p["totals"];
            (
                *t,
                [
                    totals["outstanding_bytes"].clone(),
                    totals["outstanding_count"].clone(),
                ],
            )
        });
        merge_columns(
            timeline,
            &["outstanding_bytes", "outstanding_count"],
            totals,
        );
        let mut series = match timeline["stacks"].take() {
            Value::Array(series) => series,
            _ => Vec::new(),
        };
        // Series are numbered among the process's own suspects.
        let own = suspects
            .iter()
            .filter(|(suspect_pid, _)| *suspect_pid == pid);
        for (index, (_, keys)) in own.take(TIMELINE_SUSPECTS).enumerate() {
            let points = taken
                .iter()
                .map(|(t, p)| (*t, [json!(stack_bytes(p, keys))]));
            merge_columns(series_of(&mut series, index), &["bytes"], points);
        }
        timeline["stacks"] = Value::Array(series);
    }
    used
}

/// The series of suspect `index`, added if missing.
fn series_of(series: &mut Vec<Value>, index: usize) -> &mut Value {
    let position = series
        .iter()
        .position(|s| s.is_object() && s["suspect"].as_u64() == Some(index as u64))
        .unwrap_or_else(|| {
            series.push(json!({"suspect": index, "elapsed_s": [], "bytes": []}));
            series.len() - 1
        });
    &mut series[position]
}

/// Merges `points` into the parallel arrays `elapsed_s` and `columns` of
/// `table`, in time order; a point within a millisecond of a kept one is
/// the same tick.
fn merge_columns<const N: usize>(
    table: &mut Value,
    columns: &[&str; N],
    points: impl Iterator<Item = (f64, [Value; N])>,
) {
    let key = |t: f64| (t * 1000.0).round() as i64;
    let mut rows: BTreeMap<i64, (f64, [Value; N])> = BTreeMap::new();
    let times = table["elapsed_s"].as_array().cloned().unwrap_or_default();
    for (i, t) in times.iter().enumerate() {
        let Some(t) = t.as_f64() else { continue };
        rows.insert(key(t), (t, columns.map(|c| table[c][i].clone())));
    }
    for (t, values) in points {
        rows.entry(key(t)).or_insert((t, values));
    }
    table["elapsed_s"] = rows.values().map(|(t, _)| json!(t)).collect();
    for (c, column) in columns.iter().enumerate() {
        table[*column] = rows.values().map(|(_, values)| values[c].clone()).collect();
    }
}

fn frame_keys(stack: &Value) -> Vec<String> {
    serde_json::from_value::<Vec<FrameName>>(stack["frames"].clone())
        .unwrap_or_default()
        .iter()
        .map(FrameName::key)
        .collect()
}

/// Bytes of the stacks of `process` named `keys` (0 when it held none).
fn stack_bytes(process: &Value, keys: &[String]) -> u64 {
    process["stacks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|stack| frame_keys(stack) == keys)
        .filter_map(|stack| stack["bytes"].as_u64())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(bytes: u64, function: &str) -> Value {
        json!({"bytes": bytes, "frames": [{"address": "0x1", "function": function}]})
    }

    fn snapshot(t: f64, leak: u64) -> Value {
        json!({"duration_s": t, "processes": [{"pid": 7,
            "totals": {"outstanding_bytes": leak + 100, "outstanding_count": 2},
            "stacks": [stack(leak, "leak"), stack(100, "cache")]}]})
    }

    #[test]
    fn snapshots_add_points_to_the_totals_and_the_suspects_series() {
        let mut report = json!({
            "duration_s": 10.0,
            "processes": [{"pid": 7, "timeline": {
                "elapsed_s": [8.0, 10.0], "outstanding_bytes": [900, 1100],
                "outstanding_count": [2, 2],
                "stacks": [{"suspect": 0, "elapsed_s": [8.0, 10.0], "bytes": [800, 1000]}]}}],
            "suspects": [{"pid": 7, "frames": [{"address": "0x2", "function": "leak"}]}],
        });
        let snapshots = [snapshot(2.0, 200), snapshot(8.0, 800), snapshot(99.0, 1)];
        assert_eq!(
            merge_snapshots(&mut report, &snapshots),
            2,
            "99 s is another run"
        );
        let timeline = &report["processes"][0]["timeline"];
        assert_eq!(timeline["elapsed_s"], json!([2.0, 8.0, 10.0]));
        assert_eq!(timeline["outstanding_bytes"], json!([300, 900, 1100]));
        assert_eq!(timeline["stacks"][0]["elapsed_s"], json!([2.0, 8.0, 10.0]));
        assert_eq!(timeline["stacks"][0]["bytes"], json!([200, 800, 1000]));
    }

    #[test]
    fn a_report_without_a_timeline_gets_one_from_its_snapshots() {
        let mut report = json!({"duration_s": 10.0, "processes": [{"pid": 7}], "suspects": []});
        merge_snapshots(&mut report, &[snapshot(4.0, 10), snapshot(2.0, 5)]);
        let timeline = &report["processes"][0]["timeline"];
        assert_eq!(timeline["elapsed_s"], json!([2.0, 4.0]));
        assert_eq!(timeline["outstanding_count"], json!([2, 2]));
        assert_eq!(timeline["stacks"], json!([]));
    }
}
