//! `alloctrace html REPORT.json [--snapshots DIR] -o FILE.html`: renders the
//! HTML report from a saved JSON report (and the snapshots of its run), so
//! an engineer can look at what a server produced on their own machine. It
//! reads only the files named; it needs no privileges.

use std::{fs, path::PathBuf};

use anyhow::Context as _;

use crate::report::{html, write_atomically};

/// `alloctrace html`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HtmlArgs {
    /// The report (`--report`) or a snapshot.
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// The run's snapshot directory (`--snapshot-dir`): its snapshots
    /// lengthen the memory-over-time chart to the whole run.
    #[arg(long, value_name = "DIR")]
    pub snapshots: Option<PathBuf>,
    /// The page to write.
    #[arg(short, long, value_name = "FILE.html")]
    pub output: PathBuf,
}

pub fn run(cli: &HtmlArgs) -> anyhow::Result<()> {
    let path = &cli.report;
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut report: serde_json::Value = serde_json::from_str(&text)
        .ok()
        .filter(|report: &serde_json::Value| report["processes"].is_array())
        .with_context(|| format!("{} is not an alloctrace JSON report", path.display()))?;
    let snapshots = match &cli.snapshots {
        Some(dir) => html::merge_snapshots(&mut report, &html::read_snapshots(dir)?),
        None => 0,
    };
    write_atomically(&cli.output, move |out| html::render(report, snapshots, out))
}
