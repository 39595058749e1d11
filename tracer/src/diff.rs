//! `alloctrace diff OLD.json NEW.json`: which stacks' outstanding bytes
//! changed most between two reports (two snapshots of one run, or reports of
//! two runs of the same binary), and optionally a differential flamegraph.
//!
//! Addresses move between runs (ASLR) and between builds, so stacks are
//! matched by their symbolized frames: function names, or for unnamed frames
//! the module without its offset. Stacks of every process in a report are
//! pooled. This reads only the report files; it needs no privileges.

use std::{collections::HashMap, fs, io::Write, path::PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::report::{
    FrameName, bytes, folded_line, signed_bytes, write_atomically, write_differential_flamegraph,
};

/// `alloctrace diff`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The earlier report (or snapshot).
    #[arg(value_name = "OLD.json")]
    pub old: PathBuf,
    /// The later report (or snapshot).
    #[arg(value_name = "NEW.json")]
    pub new: PathBuf,
    /// Also write a differential flamegraph (growth red, shrink blue).
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Stacks listed.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub top: u32,
}

/// The parts of a report a diff reads; everything else is ignored, so
/// reports with more keys (newer versions) still load.
#[derive(Debug, Deserialize)]
struct ReportFile {
    processes: Vec<ProcessFile>,
}

#[derive(Debug, Deserialize)]
struct ProcessFile {
    stacks: Vec<StackFile>,
}

#[derive(Debug, Deserialize)]
struct StackFile {
    bytes: u64,
    count: u64,
    frames: Vec<FrameName>,
}

/// Outstanding bytes and blocks of one stack in one report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub count: u64,
}

/// One stack in both reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackDelta {
    /// Frame keys, leaf first.
    pub frames: Vec<String>,
    pub old: Usage,
    pub new: Usage,
}

impl StackDelta {
    /// New minus old bytes; saturating, as the reports are input this
    /// process does not control.
    pub fn bytes_change(&self) -> i64 {
        signed_difference(self.new.bytes, self.old.bytes)
    }
}

/// `new - old`, clamped to what an `i64` holds.
fn signed_difference(new: u64, old: u64) -> i64 {
    (i128::from(new) - i128::from(old)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

pub fn run(cli: &DiffArgs) -> anyhow::Result<()> {
    let old = load(&cli.old)?;
    let new = load(&cli.new)?;
    let deltas = compare(&old, &new);
    let mut stdout = std::io::stdout().lock();
    print_deltas(&deltas, cli.top as usize, &mut stdout)?;
    if let Some(path) = &cli.flamegraph {
        let folded = |usage: fn(&StackDelta) -> Usage| -> Vec<String> {
            deltas
                .iter()
                .map(|delta| folded_line(&delta.frames, usage(delta).bytes))
                .collect()
        };
        let title = format!(
            "Outstanding bytes: {} → {} (red grew, blue shrank)",
            cli.old.display(),
            cli.new.display()
        );
        write_atomically(path, |out| {
            write_differential_flamegraph(&folded(|d| d.old), &folded(|d| d.new), &title, out)
        })?;
    }
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<ReportFile> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an alloctrace JSON report", path.display()))
}

/// Every stack of either report, matched by frame keys, largest change in
/// bytes first (ties: by frames, so the output is stable).
fn compare(old: &ReportFile, new: &ReportFile) -> Vec<StackDelta> {
    let mut by_frames: HashMap<Vec<String>, (Usage, Usage)> = HashMap::new();
    for (report, is_new) in [(old, false), (new, true)] {
        for stack in report.processes.iter().flat_map(|process| &process.stacks) {
            let frames = stack.frames.iter().map(FrameName::key).collect();
            let (old_usage, new_usage) = by_frames.entry(frames).or_default();
            let usage = if is_new { new_usage } else { old_usage };
            usage.bytes = usage.bytes.saturating_add(stack.bytes);
            usage.count = usage.count.saturating_add(stack.count);
        }
    }
    let mut deltas: Vec<StackDelta> = by_frames
        .into_iter()
        .map(|(frames, (old, new))| StackDelta { frames, old, new })
        .collect();
    deltas.sort_by(|a, b| {
        b.bytes_change()
            .unsigned_abs()
            .cmp(&a.bytes_change().unsigned_abs())
            .then_with(|| a.frames.cmp(&b.frames))
    });
    deltas
}

fn print_deltas(deltas: &[StackDelta], top: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    let total = |usage: fn(&StackDelta) -> Usage| {
        deltas
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(usage(d).bytes))
    };
    let (old_total, new_total) = (total(|d| d.old), total(|d| d.new));
    writeln!(
        out,
        "outstanding {} -> {} ({})",
        bytes(old_total),
        bytes(new_total),
        signed_bytes(signed_difference(new_total, old_total))
    )?;
    for delta in deltas.iter().filter(|d| d.bytes_change() != 0).take(top) {
        let frames: Vec<&str> = delta.frames.iter().take(4).map(String::as_str).collect();
        writeln!(
            out,
            "{:>12} {:>+8} blocks  ({} -> {})  {}",
            signed_bytes(delta.bytes_change()),
            signed_difference(delta.new.count, delta.old.count),
            bytes(delta.old.bytes),
            bytes(delta.new.bytes),
            if frames.is_empty() {
                "[no stack]".to_owned()
            } else {
                frames.join(" < ")
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests {
    use super::*;

    fn report(json: serde_json::Value) -> ReportFile {
        serde_json::from_value(json).unwrap()
    }

    fn frame(address: &str, function: Option<&str>, module: &str) -> serde_json::Value {
        serde_json::json!({
            "address": address, "function": function, "module": module,
            "file": null, "line": null, "inlined": false
        })
    }

    #[test]
    fn stacks_match_by_names_not_addresses_across_runs() {
        // Two runs: the same code at other addresses (ASLR), one unnamed
        // frame at another offset of the same module.
        let old = report(serde_json::json!({"processes": [{"stacks": [
            {"bytes": 100, "count": 1, "frames": [
                frame("0x1000", Some("leak"), "/app"), frame("0x2000", None, "/app+0x2000")]},
            {"bytes": 5000, "count": 5, "frames": [frame("0x1100", Some("cache"), "/app")]},
        ]}]}));
        let new = report(serde_json::json!({"processes": [{"stacks": [
            {"bytes": 900, "count": 9, "frames": [
                frame("0x7f001000", Some("leak"), "/app"), frame("0x7f003000", None, "/app+0x2010")]},
            {"bytes": 5000, "count": 5, "frames": [frame("0x7f001100", Some("cache"), "/app")]},
            {"bytes": 10, "count": 1, "frames": [frame("0x7f001200", Some("new_site"), "/app")]},
        ]}]}));
        let deltas = compare(&old, &new);
        assert_eq!(deltas.len(), 3, "{deltas:?}");
        assert_eq!(deltas[0].frames, ["leak", "[/app]"]);
        assert_eq!(
            (deltas[0].old, deltas[0].new),
            (
                Usage {
                    bytes: 100,
                    count: 1
                },
                Usage {
                    bytes: 900,
                    count: 9
                }
            )
        );
        assert_eq!(deltas[1].frames, ["new_site"]);
        assert_eq!(deltas[2].bytes_change(), 0);
    }

    #[test]
    fn stacks_of_several_processes_are_pooled_and_vanished_ones_shrink() {
        let stack = |bytes: u64| serde_json::json!({"bytes": bytes, "count": 1, "frames": [frame("0x1", Some("f"), "/a")]});
        let old = report(
            serde_json::json!({"processes": [{"stacks": [stack(10)]}, {"stacks": [stack(20)]}]}),
        );
        let new = report(serde_json::json!({"processes": [{"stacks": []}]}));
        let deltas = compare(&old, &new);
        assert_eq!(
            deltas[0].old,
            Usage {
                bytes: 30,
                count: 2
            }
        );
        assert_eq!(deltas[0].bytes_change(), -30);
        let mut text = Vec::new();
        print_deltas(&deltas, 10, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "outstanding 30 B -> 0 B (-30 B)\n       -30 B       -2 blocks  (30 B -> 0 B)  f\n"
        );
    }
}
