//! Flamegraphs (SVG) drawn by inferno from folded lines, root at the
//! outermost frame: outstanding bytes by stack, and the differential one of
//! `alloctrace diff` (growth in red, shrink in blue).

use std::io::Write;

use anyhow::Context as _;
use inferno::{
    differential,
    flamegraph::{self, Options},
};

use super::{StackReport, folded::folded_lines};

pub fn write_flamegraph(
    stacks: &[StackReport],
    title: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    draw(&folded_lines(stacks), title, out)
}

/// A differential flamegraph from the folded lines of two moments: frames
/// are as wide as their bytes in `after`, red where they grew, blue where
/// they shrank.
pub fn write_differential_flamegraph(
    before: &[String],
    after: &[String],
    title: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.join("\n").as_bytes(),
        after.join("\n").as_bytes(),
        &mut lines,
    )
    .context("comparing the folded stacks")?;
    let lines = String::from_utf8(lines).context("inferno wrote non-UTF-8 folded lines")?;
    let lines: Vec<String> = lines
        .lines()
        // A stack gone in `after` has no width; leave it out rather than
        // have inferno draw nothing for it.
        .filter(|line| !line.ends_with(" 0"))
        .map(str::to_owned)
        .collect();
    draw(&lines, title, out)
}

/// A flamegraph of folded lines made elsewhere (host-wide mode's, with a
/// process frame under the root).
pub fn write_flamegraph_lines(
    lines: &[String],
    title: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    draw(lines, title, out)
}

fn draw(lines: &[String], title: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    if lines.is_empty() {
        // inferno refuses empty input; an empty graph still says "nothing
        // outstanding" more clearly than a missing file.
        return write_empty(title, out);
    }
    let mut options = Options::default();
    options.title = title.to_owned();
    options.count_name = "bytes".to_owned();
    options.name_type = "Function:".to_owned();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("drawing the flamegraph")
}

fn write_empty(title: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let title = title.replace('&', "&amp;").replace('<', "&lt;");
    write!(
        out,
        r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text><text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">no outstanding allocations</text></svg>"#
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{report::StackKind, symbolize::Frame};

    #[test]
    fn draws_every_stack_frame_by_name() {
        let frame = |name: &str| Frame {
            address: 0x10,
            function: Some(name.to_owned()),
            module: None,
            file: None,
            line: None,
            inlined: false,
            offset: None,
        };
        let stacks = [StackReport {
            kind: StackKind::Heap,
            bytes: 1 << 20,
            count: 2,
            oldest_age_s: 1.0,
            approximate: false,
            age_bytes: Default::default(),
            frames: vec![frame("leaky_site"), frame("main")],
        }];
        let mut svg = Vec::new();
        write_flamegraph(&stacks, "test", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("leaky_site") && svg.contains("main"));
    }

    #[test]
    fn differential_graph_colours_growth_red_and_shrink_blue() {
        let before = ["main;leak 100".to_owned(), "main;cache 5000".to_owned()];
        let after = ["main;leak 900".to_owned(), "main;cache 1000".to_owned()];
        let mut svg = Vec::new();
        write_differential_flamegraph(&before, &after, "diff", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        let fill_of = |name: &str| {
            let title = svg.find(&format!("<title>{name} ")).unwrap();
            let rect = &svg[title..];
            let fill = rect.find("fill=\"").unwrap() + 6;
            rect[fill..fill + rect[fill..].find('"').unwrap()].to_owned()
        };
        // inferno: red (255, x, x) for growth, blue (x, x, 255) for shrink.
        assert!(
            fill_of("leak").starts_with("rgb(255,"),
            "{}",
            fill_of("leak")
        );
        assert!(fill_of("cache").ends_with(",255)"), "{}", fill_of("cache"));
    }

    #[test]
    fn nothing_outstanding_still_writes_an_svg() {
        let mut svg = Vec::new();
        write_flamegraph(&[], "test", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("no outstanding allocations") && svg.ends_with("</svg>"));
    }
}
